import os
import subprocess
import tempfile
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
# The product ships GSM8K's test split (ray_app/data/gsm8k, MIT): no test needs ../shared for it.
GSM8K_TEST = ROOT / "ray_app" / "data" / "gsm8k" / "test.jsonl"

# What some tests read from the project's shared/ folder (beside the checkout in every developer's
# and CI's workspace, never in a user's clone), and where else it can come from.
SHARED_NEEDS = {
    "data/gsm8k/train.jsonl": "GSM8K's train split (openai/grade-school-math, MIT) as JSONL",
    "tokenizers/gemma-3": "the real Gemma 3 tokenizer (tokenizer.json + tokenizer_config.json; Hub: google/gemma-3-1b-it)",
    "tokenizers/llama-3.1": "the real Llama 3.1 tokenizer (Hub: meta-llama/Llama-3.1-8B-Instruct)",
    "schemas/kuberay": "KubeRay's RayCluster/RayJob CRDs (ray-operator/config/crd/bases of ray-project/kuberay)",
}
HUB_TOKENIZERS = {"tokenizers/gemma-3": "google/gemma-3-1b-it", "tokenizers/llama-3.1": "meta-llama/Llama-3.1-8B-Instruct"}


def shared_path(rel: str, module_level: bool = False) -> Path:
    """A path of ../shared that a test needs; when missing, skip saying exactly what to provide."""
    path = SHARED / rel
    if not path.exists():
        pytest.skip(f"needs {SHARED_NEEDS.get(rel, rel)} at {path}: put the project's shared/ folder beside "
                    "the checkout (CI has it)", allow_module_level=module_level)
    return path


def real_tokenizer(rel: str):
    """A real tokenizer: ../shared's copy, else the Hub (cache or network), else skip naming both."""
    from transformers import AutoTokenizer

    if (SHARED / rel).exists():
        return AutoTokenizer.from_pretrained(str(SHARED / rel))
    try:
        return AutoTokenizer.from_pretrained(HUB_TOKENIZERS[rel])
    except Exception as e:  # offline, gated, not cached
        pytest.skip(f"needs {SHARED_NEEDS[rel]}: put the project's shared/ folder beside the checkout (CI has it), "
                    f"or make {HUB_TOKENIZERS[rel]} loadable from the Hub ({type(e).__name__})")

# No Ray call in this process may start or join a Ray instance by itself: Serve's handle routers keep a
# metrics thread that calls ray.wait() after a test's ray.shutdown(), and Ray's auto-init then joined the
# next module's cluster as a driver (CI: test_scheduling's teardown could not remove its head node). Every
# test and job starts Ray explicitly. Set before anything imports ray (the flag is read at import).
os.environ.setdefault("RAY_ENABLE_AUTO_CONNECT", "0")
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
    """The default 4,500/100/100/100 build (bundled GSM8K) through Ray tasks, as README's command makes it."""
    out = tmp_path_factory.mktemp("data")
    run_job("prepare_data.py", "--out-dir", str(out), timeout=3000)
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
