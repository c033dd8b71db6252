"""README's cluster commands, run exactly as typed, from a clone of the repository with no `../shared`
beside it and the Hub unreachable (as in a user's clone): README's data command builds the default
data, then `ray start --head` (token auth on, as Ray 2.60 does) and jobs submitted with `ray job
submit --working-dir .` from a new HOME, which run in a temporary copy of the checkout and build the
data themselves. Outputs must land in the storage root (~/ray-app-gsm of that HOME), never in that
copy; later jobs use the model an earlier one trained; a rerun with another learning rate or
temperature is refused and names the setting."""

import hashlib
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import ROOT

pytestmark = pytest.mark.slow


def readme_block(marker: str) -> str:
    """The shell block that follows `<!-- marker -->` in README.md."""
    text = (ROOT / "README.md").read_text()
    match = re.search(rf"<!-- {marker} -->\s*```bash\n(.*?)```", text, re.S)
    assert match, f"README.md has no ```bash block after <!-- {marker} -->"
    return match.group(1)


def clone_without_shared(dest: Path) -> Path:
    """The repository as a user clones it, in a folder with no `shared/` beside it: the files git
    tracks and the untracked ones it does not ignore (so uncommitted work is tested too)."""
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, check=True).stdout.decode().split("\0")
    clone = dest / "ray-app-gsm-clone"
    for name in filter(None, files):
        src = ROOT / name
        if src.is_file():
            (clone / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, clone / name)
    assert not (clone.parent / "shared").exists() and not (clone / ".." / "shared").exists()
    return clone


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    """A clone with no ../shared, and a HOME of its own (token, storage root) sharing the real caches
    (templates, compiled ops); the Hub is unreachable (HF_HUB_OFFLINE, set by conftest)."""
    clone = clone_without_shared(tmp_path_factory.mktemp("elsewhere"))
    home = tmp_path_factory.mktemp("home")
    real_cache = os.environ.get("XDG_CACHE_HOME") or str(Path("~/.cache").expanduser())
    env = {**os.environ, "HOME": str(home), "XDG_CACHE_HOME": real_cache, "PYTHONUNBUFFERED": "1",
           "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    for key in ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_APP_STORAGE_ROOT"):
        env.pop(key, None)
    yield clone, home, env
    subprocess.run(["ray", "stop", "--force"], env=env, capture_output=True, timeout=120)


def bash(script: str, env: dict, timeout: int = 1800, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", script], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def test_readme_data_command_in_a_clone_without_shared(home, tmp_path):
    """README's data command, as typed, in the clone: the default build needs nothing outside it."""
    clone, _, env = home
    assert "python jobs/prepare_data.py                   # the four data sets" in (clone / "README.md").read_text()
    data_home = tmp_path / "data-home"
    data_home.mkdir()
    proc = bash("python jobs/prepare_data.py", {**env, "HOME": str(data_home)}, timeout=900, cwd=clone)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-6000:]
    data = data_home / "ray-app-gsm" / "data"
    manifest = json.loads((data / "manifest.json").read_text())
    assert manifest["sources"]["gsm8k"].endswith("(bundled, MIT)") and manifest["files"]["gsm_symbolic_train"]["rows"] == 4500
    assert manifest["separation"]["test_rows_matching_train"] == {"gsm8k_non_overlapping": 0, "gsm8k_same_templates": 0,
                                                                   "gsm_symbolic_test": 0}


def test_readme_cluster_commands_as_typed(home):
    clone, home, env = home
    commands = readme_block("cluster-quickstart")
    assert "ray get-auth-token --generate\nray start --head" in commands and "ray job submit --working-dir . -- python jobs/sft.py --max-steps 2" in commands
    # Run the block as typed, but keep the cluster up for the checks below (the block ends with `ray stop`).
    body, stop = commands.rstrip().rsplit("\n", 1)
    assert stop.strip().startswith("ray stop")
    proc = bash("set -euo pipefail\n" + body, env, cwd=clone)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-10000:]
    assert out.count("succeeded") >= 3, out[-4000:]
    # The first job built the data in the root, inside the cluster, from the copy shipped in the package.
    assert "[data] no complete data sets in" in out and "[data] built in" in out
    import requests

    assert requests.get("http://127.0.0.1:8265/api/jobs/", timeout=30).status_code == 401  # token auth is on

    root = home / "ray-app-gsm"
    run = root / "sft" / "sft-tiny-gemma3-small"
    assert (run / "final_model" / "config.json").is_file() and list(run.glob("checkpoint_*"))
    assert f"[storage] root: {root}" in out
    assert f"[sft] done in" in out and f"final model -> {run / 'final_model'}" in out
    # Nothing was written into the jobs' temporary working_dir copies (where relative outputs/ used to go).
    copies = list(Path("/tmp/ray").glob("session_*/runtime_resources/working_dir_files/_ray_pkg_*"))
    assert copies and not [c for c in copies if (c / "outputs").exists()]
    # Later jobs used the trained model (relative to the root), on the same storage.
    eval_manifest = (root / "eval" / "eval_manifest.json").read_text()
    assert str(run / "final_model") in eval_manifest
    samples = root / "samples" / "samples.parquet"
    import pandas as pd

    df = pd.read_parquet(samples)
    assert len(df) == 4 * 8 and set(df["model"]) == {"sft"} and df["reward"].notna().all()
    # Logs read as lines: no carriage-return progress redraws, one summary line per stage.
    assert out.count("\r") < 5, f"{out.count(chr(13))} carriage returns in the job logs"
    for line in ("[sft] done in", "[eval] done:", "[sample] done:"):
        assert line in out, line

    env_submit = {**env, "RAY_AUTH_MODE": "token", "RAY_ADDRESS": "http://127.0.0.1:8265"}
    # The analysis job and a bench need no path flag either: they read and write under the root.
    proc = bash("ray job submit --working-dir . -- python jobs/analyze.py --ns 1,2,4 && "
                "ray job submit --working-dir . -- python bench/generation_batching.py --questions 4 --max-new-tokens 8",
                env_submit, timeout=600, cwd=clone)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-6000:]
    assert (root / "report" / "table2_scaling.csv").is_file() and "tokens/s" in proc.stdout
    # Another learning rate into the same run: refused, naming the field; the run is untouched.
    manifest_before = (run / "run_manifest.json").read_bytes()
    proc = bash("ray job submit --working-dir . -- python jobs/sft.py --max-steps 2 --learning-rate 5e-4", env_submit, timeout=600,
                cwd=clone)
    assert proc.returncode != 0
    assert "learning_rate differs: learning_rate: 0.001 -> 0.0005" in proc.stdout + proc.stderr
    assert (run / "run_manifest.json").read_bytes() == manifest_before

    # Another temperature into the same samples folder: refused; samples.parquet keeps its bytes.
    digest = hashlib.sha256(samples.read_bytes()).hexdigest()
    proc = bash("ray job submit --working-dir . -- python jobs/sample.py --models sft=sft/sft-tiny-gemma3-small/final_model "
                "--limit 4 --temperature 0.9", env_submit, timeout=600, cwd=clone)
    assert proc.returncode != 0 and "temperature differs: temperature: 0.7 -> 0.9" in proc.stdout + proc.stderr
    assert hashlib.sha256(samples.read_bytes()).hexdigest() == digest
    # (A fresh run that replaces them with the new setting's rows is the pipeline's changed-settings test.)

    proc = bash(stop, env, cwd=clone)
    assert proc.returncode == 0, proc.stderr[-2000:]
