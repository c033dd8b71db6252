"""The course's Modal launcher, with this project's Ray jobs: SFT, evaluation and sampling on Modal GPUs.

    modal run cluster/modal_app.py::launch_all          # sft -> evaluate -> sample, in order
    modal run cluster/modal_app.py::sft                 # one stage (also ::evaluate, ::sample)

Each function runs one job (`python jobs/<job>.py --storage-root /outputs ...`) in one container,
where the job starts a single-node Ray cluster on the container's GPUs. The command lines come from
JOB_ARGS below (tests/test_cluster_configs.py parses each with its job's own parser). Data, Ray
Train checkpoints, exported models and results land on the Modal Volume `ray-app-gsm` (mounted at
/outputs; `modal volume ls ray-app-gsm`); Hugging Face downloads are cached on `ray-app-gsm-hf-cache`.

Secrets (create once):
    modal secret create huggingface HF_TOKEN=hf_...     # gated Gemma 3 / Llama weights
    modal secret create wandb WANDB_API_KEY=...         # W&B runs online (else offline, on the volume)

Importing this module needs no Modal credentials (Volumes and Secrets are looked up at run time).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import modal

PROJECT = Path(__file__).resolve().parents[1]
REMOTE_PROJECT = "/app"
OUTPUTS = "/outputs"

PRESET = "gemma3-1b"
SFT_MODEL = "sft/sft-gemma-3-1b-it/final_model"  # where jobs/sft.py exports gemma-3-1b-it (run name sft-<model>)

# The command line of each stage after `python jobs/<job>.py --storage-root /outputs`.
JOB_ARGS: dict[str, list[str]] = {
    "sft": ["--preset", PRESET],
    "evaluate": ["--preset", PRESET, "--models", f"base=gemma-3-1b-it,sft={SFT_MODEL}"],
    "sample": ["--preset", PRESET, "--models", f"sft={SFT_MODEL}"],
}
# GPUs per stage: the preset's 4 SFT workers; one generation actor per model; sampling's actor +
# one reward-model replica (the 8B reward model in bf16 fits one 80 GB GPU with room to spare).
JOB_GPUS: dict[str, str] = {"sft": "A100-80GB:4", "evaluate": "A100-80GB:2", "sample": "A100-80GB:2"}
ORDER = ["sft", "evaluate", "sample"]


def job_command(job: str) -> list[str]:
    """The exact command a stage runs in its container."""
    return ["python", f"{REMOTE_PROJECT}/jobs/{job}.py", "--storage-root", OUTPUTS, *JOB_ARGS[job]]


app = modal.App("ray-app-gsm")
outputs = modal.Volume.from_name("ray-app-gsm", create_if_missing=True)
hf_cache = modal.Volume.from_name("ray-app-gsm-hf-cache", create_if_missing=True)
secrets = [
    modal.Secret.from_name("huggingface", required_keys=["HF_TOKEN"]),
    modal.Secret.from_name("wandb", required_keys=["WANDB_API_KEY"]),
]
# The project installed the way every machine installs it: scripts/setup.sh (torch: PyPI's Linux
# wheel, a CUDA build; DeepSpeed compiled against it).
image = (
    modal.Image.debian_slim(python_version="3.11")
    .apt_install("build-essential", "git")
    .add_local_dir(PROJECT, REMOTE_PROJECT, copy=True,
                   ignore=[".git", "outputs", "wandb", "**/__pycache__", "*.egg-info", ".pytest_cache"])
    .run_commands(f"cd {REMOTE_PROJECT} && RAY_APP_RUNTIME_ONLY=1 TORCH_SPEC=torch bash scripts/setup.sh")
    .env({"RAY_APP_STORAGE_ROOT": OUTPUTS, "HF_HOME": "/hf-cache"})
)
volumes = {OUTPUTS: outputs, "/hf-cache": hf_cache}


def _run(job: str) -> None:
    outputs.reload()  # see what earlier stages committed
    try:
        subprocess.run(job_command(job), check=True, cwd=REMOTE_PROJECT)
    finally:
        outputs.commit()  # keep checkpoints and partial results even when the job fails
        hf_cache.commit()


@app.function(image=image, gpu=JOB_GPUS["sft"], timeout=24 * 3600, volumes=volumes, secrets=secrets)
def sft() -> None:
    _run("sft")


@app.function(image=image, gpu=JOB_GPUS["evaluate"], timeout=6 * 3600, volumes=volumes, secrets=secrets)
def evaluate() -> None:
    _run("evaluate")


@app.function(image=image, gpu=JOB_GPUS["sample"], timeout=12 * 3600, volumes=volumes, secrets=secrets)
def sample() -> None:
    _run("sample")


FUNCTIONS = {"sft": sft, "evaluate": evaluate, "sample": sample}


@app.local_entrypoint()
def launch_all() -> None:
    """SFT, then evaluation of base and SFT models, then sampling scored by the reward model."""
    for job in ORDER:
        print(f"[modal] {job}: {' '.join(job_command(job))}", flush=True)
        FUNCTIONS[job].remote()
    print("[modal] done: results on the volume ray-app-gsm (modal volume ls ray-app-gsm)", flush=True)
