import os
import subprocess
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
