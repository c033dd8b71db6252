import os
import subprocess
import tempfile
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
GSM8K_TEST = SHARED / "data/gsm8k/test.jsonl"

# The Hub is unreachable here; fail fast instead of waiting on timeouts.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_SILENT", "true")
# Jobs run without a storage flag write under the default root; keep that out of the real HOME.
os.environ.setdefault("RAY_APP_STORAGE_ROOT", tempfile.mkdtemp(prefix="ray-app-gsm-tests-"))


def run_job(script: str, *args: str, timeout: int = 1800, check: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run a job the way a user does (`python jobs/X.py ...`), output captured for assertions."""
    proc = subprocess.run(
        [sys.executable, str(ROOT / "jobs" / script), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"{script} {' '.join(args)} exited {proc.returncode}:\n{proc.stdout[-6000:]}\n{proc.stderr[-6000:]}")
    return proc


@pytest.fixture(scope="session")
def full_data(tmp_path_factory) -> Path:
    """The real 4,500/100/100/100 build through Ray tasks (template instances cached across runs)."""
    out = tmp_path_factory.mktemp("data")
    run_job("prepare_data.py", "--out-dir", str(out), "--gsm8k-source", str(GSM8K_TEST), timeout=3000)
    return out


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3_server():
    """A real S3-compatible server (moto's server mode) on loopback; the standard AWS_* variables
    point every process started after this (jobs, Ray nodes) at it. Yields its endpoint URL."""
    import time

    import requests

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while True:
        try:
            requests.get(endpoint, timeout=2)
            break
        except requests.ConnectionError:
            if time.time() > deadline or proc.poll() is not None:
                raise RuntimeError("moto server did not start")
            time.sleep(0.3)
    saved = {k: os.environ.get(k) for k in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")}
    os.environ.update(AWS_ENDPOINT_URL=endpoint, AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
                      AWS_DEFAULT_REGION="us-east-1")
    yield endpoint
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    proc.terminate()
    proc.wait(timeout=30)


def make_bucket(name: str) -> str:
    import boto3

    boto3.client("s3").create_bucket(Bucket=name)
    return f"s3://{name}"


def upload_data(data_dir: Path, dest: str) -> None:
    """Put a built data set under a storage root (as `jobs/prepare_data.py --storage-root` would)."""
    from ray_app import storage

    for f in sorted(data_dir.glob("*.json*")):
        storage.upload_file(f, storage.join(dest, f.name))
