"""The course's Modal launcher, with this project's Ray jobs: the whole study on Modal GPUs.

    modal run cluster/modal_app.py::launch_all          # the whole study: jobs/pipeline.py on one 4-GPU container
    modal run cluster/modal_app.py::sft                 # one stage alone (also ::evaluate, ::sample)

`launch_all` runs `jobs/pipeline.py --preset gemma3-1b` in one container with 4 GPUs: SFT of
gemma-3-1b-it (ZeRO-2) and gemma-3-4b-it (ZeRO-3) on the 4 GPUs, greedy evaluation of all four models
on the three test sets, base and SFT sampling scored by the reward model (a Serve replica on one of
the GPUs), analysis, and the report (README.md, report.html) under pipeline/report on the Volume.
Why one function rather than a chain of per-stage containers: the stages share one Ray cluster on
the container's GPUs (the reward replica and the generation actors side by side, no hand-off between
containers), and the pipeline reuses every finished stage and resumes unfinished ones, so a launch
that hits Modal's timeout or is preempted continues where it stopped when launched again. Modal has
no multi-container Ray cluster to spread a study over; 4 GPUs of one node is what the preset plans.

The single-stage functions run one job each (`python jobs/<job>.py --storage-root /outputs ...`),
for a student who wants one step of the course's workflow. Every command line comes from JOB_ARGS
below (tests/test_cluster_configs.py parses each with its job's own parser and checks that the
pipeline's makes every input of Tables 1-3 and the report). Data, Ray Train checkpoints, exported
models and results land on the Modal Volume `ray-app-gsm` (mounted at /outputs; `modal volume ls
ray-app-gsm`); Hugging Face downloads are cached on `ray-app-gsm-hf-cache`.

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
    "pipeline": ["--preset", PRESET],
    "sft": ["--preset", PRESET],
    "evaluate": ["--preset", PRESET, "--models", f"base=gemma-3-1b-it,sft={SFT_MODEL}"],
    "sample": ["--preset", PRESET, "--models", f"sft={SFT_MODEL}"],
}
# GPUs per stage: the preset's 4 SFT workers; one generation actor per model; sampling's actor +
# one reward-model replica (the 8B reward model in bf16 fits one 80 GB GPU with room to spare).
# The pipeline: the preset's 4 SFT workers, then one generation actor per model and one reward replica.
JOB_GPUS: dict[str, str] = {"pipeline": "A100-80GB:4", "sft": "A100-80GB:4", "evaluate": "A100-80GB:2", "sample": "A100-80GB:2"}
STAGES = ["sft", "evaluate", "sample"]  # the single-stage functions, in the order they depend on each other


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
    .run_commands(f"cd {REMOTE_PROJECT} && RAY_APP_RUNTIME_ONLY=1 TORCH_SPEC=torch bash scripts/setup.sh --vllm")
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


@app.function(image=image, gpu=JOB_GPUS["pipeline"], timeout=24 * 3600, volumes=volumes, secrets=secrets)
def study() -> None:
    _run("pipeline")


@app.function(image=image, gpu=JOB_GPUS["sft"], timeout=24 * 3600, volumes=volumes, secrets=secrets)
def sft() -> None:
    _run("sft")


@app.function(image=image, gpu=JOB_GPUS["evaluate"], timeout=6 * 3600, volumes=volumes, secrets=secrets)
def evaluate() -> None:
    _run("evaluate")


@app.function(image=image, gpu=JOB_GPUS["sample"], timeout=12 * 3600, volumes=volumes, secrets=secrets)
def sample() -> None:
    _run("sample")


FUNCTIONS = {"pipeline": study, "sft": sft, "evaluate": evaluate, "sample": sample}


@app.local_entrypoint()
def launch_all() -> None:
    """The whole study: both models' SFT, evaluation of all four models, base and SFT sampling scored
    by the reward model, analysis and the report, in one container (see the module's docstring)."""
    print(f"[modal] study on {JOB_GPUS['pipeline']}: {' '.join(job_command('pipeline'))}", flush=True)
    study.remote()
    print("[modal] done: the report is on the volume ray-app-gsm at pipeline/report/ (README.md, report.html); "
          "modal volume get ray-app-gsm pipeline/report", flush=True)
