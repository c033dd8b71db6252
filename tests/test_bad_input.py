"""Bad input stops a job at once: exit 2, one line naming the flag (or file and line) and what is
allowed, before Ray starts and before anything is built or written.

Each job runs as a user runs it (`python jobs/X.py ...`) with RAY_ADDRESS pointing at a port where no
cluster listens: a job that tried to connect would fail there with another error and status, so exit
2 with our message means Ray was never reached. The storage root does not exist beforehand and must
not exist afterwards (nothing built, nothing written)."""

import json
import time

import pytest

from conftest import run_job

# (job, flags, what the one-line error must name)
BAD_FLAGS = [
    ("sample.py", ["--temperature", "-1"], "--temperature -1.0 is out of range: it must be > 0"),
    ("sample.py", ["--temperature", "nan"], "--temperature nan is out of range"),
    ("sample.py", ["--top-p", "7"], "--top-p 7.0 is out of range: it must be > 0 and <= 1"),
    ("sample.py", ["--questions-per-batch", "0"], "--questions-per-batch 0 is out of range: it must be >= 1"),
    ("sample.py", ["--reward-max-in-flight", "0"], "--reward-max-in-flight 0 is out of range: it must be >= 1"),
    ("sample.py", ["--score-retries", "-1"], "--score-retries -1 is out of range: it must be >= 0"),
    ("sample.py", ["--limit", "-1"], "--limit -1 is out of range: it must be >= 1"),
    ("sample.py", ["--reward-replicas", "0"], "--reward-replicas 0 is out of range: it must be >= 1"),
    ("sample.py", ["--num-samples", "0"], "--num-samples 0 is out of range: it must be >= 1"),
    ("sample.py", ["--serve-port", "70000"], "--serve-port 70000 is out of range: it must be >= 1 and <= 65535"),
    ("sample.py", ["--reward-autoscaling", "--reward-replicas", "3", "--reward-max-replicas", "2"],
     "--reward-max-replicas 2 is below --reward-replicas 3"),
    ("evaluate.py", ["--max-new-tokens", "0"], "--max-new-tokens 0 is out of range: it must be >= 1"),
    ("evaluate.py", ["--batch-size", "0"], "--batch-size 0 is out of range: it must be >= 1"),
    ("evaluate.py", ["--actors-per-model", "0"], "--actors-per-model 0 is out of range: it must be >= 1"),
    ("evaluate.py", ["--num-gpus-per-actor", "-0.5"], "--num-gpus-per-actor -0.5 is out of range: it must be >= 0"),
    ("sft.py", ["--learning-rate", "-1"], "--learning-rate -1.0 is out of range: it must be > 0"),
    ("sft.py", ["--max-steps", "-5"], "--max-steps -5 is out of range: it must be -1 or >= 1"),
    ("sft.py", ["--train-pct", "150"], "--train-pct 150.0 is out of range: it must be > 0 and <= 100"),
    ("sft.py", ["--warmup-ratio", "2"], "--warmup-ratio 2.0 is out of range: it must be >= 0 and <= 1"),
    ("sft.py", ["--zero-stage", "4"], "--zero-stage 4 is out of range: it must be >= 0 and <= 3"),
    ("sft.py", ["--nnodes", "0"], "--nnodes 0 is out of range: it must be >= 1"),
    ("sft.py", ["--wandb-mode", "on"], "--wandb-mode 'on' must be one of 'auto', 'online', 'offline', 'disabled'"),
    ("sft.py", ["--effective-batch-size", "7"], "--effective-batch-size 7 is not a multiple of"),
    ("sft.py", ["--offload-param", "--zero-stage", "2"], "--offload-param needs --zero-stage 3"),
    ("pipeline.py", ["--eval-limit", "-2"], "--eval-limit -2 is out of range: it must be >= 1"),
    ("pipeline.py", ["--small-max-steps", "-3"], "--small-max-steps -3 is out of range: it must be -1 or >= 1"),
    ("pipeline.py", ["--temperature", "0"], "--temperature 0.0 is out of range: it must be > 0"),
    ("coverage.py", ["--num-samples", "1"], "--num-samples 1 is out of range: it must be >= 2"),
    ("prepare_data.py", ["--train-size", "0"], "--train-size 0 is out of range: it must be >= 1"),
    ("prepare_data.py", ["--build-models", "tiny-gemma3-smal"], "--build-models: 'tiny-gemma3-smal' is not an embedded model"),
    ("data_scaling.py", ["--sizes", "100"], "--sizes '100': give at least two sizes"),
    ("data_scaling.py", ["--max-steps", "0"], "--max-steps 0 is out of range: it must be -1 or >= 1"),
]


def _unreachable_ray(tmp_path) -> dict:
    root = tmp_path / "root-never-made"
    return {"RAY_ADDRESS": "127.0.0.1:1", "RAY_APP_STORAGE_ROOT": str(root)}, root


def test_bad_flags_stop_at_once_naming_the_flag(tmp_path):
    """32 bad flags over 7 jobs: exit 2 naming the flag and its range, Ray never reached, nothing written."""
    env, root = _unreachable_ray(tmp_path)
    failures = []
    for job, flags, message in BAD_FLAGS:
        started = time.perf_counter()
        proc = run_job(job, *flags, check=False, timeout=120, env=env)
        took = time.perf_counter() - started
        lines = [line for line in proc.stderr.splitlines() if "error:" in line]
        if proc.returncode != 2 or not lines or message not in lines[-1] or "Traceback" in proc.stderr:
            failures.append(f"{job} {' '.join(flags)}: exit {proc.returncode} after {took:.1f}s, stderr:\n{proc.stderr[-1500:]}")
    assert not failures, "\n\n".join(failures)
    assert not root.exists(), f"a refused job wrote under the storage root: {sorted(root.rglob('*'))}"


def test_a_bad_value_in_a_config_file_names_file_section_and_key(tmp_path):
    env, root = _unreachable_ray(tmp_path)
    config = tmp_path / "mine.yaml"
    config.write_text("sample:\n  top_p: 1.5\n")
    proc = run_job("sample.py", "--config", str(config), check=False, env=env)
    assert proc.returncode == 2, proc.stderr
    assert f"{config} [sample]: 'top_p' is 1.5, but it is out of range: it must be > 0 and <= 1" in proc.stderr
    assert not root.exists()


def test_help_shows_ranges():
    out = run_job("sample.py", "--help").stdout
    assert "[default: 0.95; range: > 0 and <= 1]" in out
    assert "range: >= 0]" in run_job("sft.py", "--help").stdout


@pytest.mark.parametrize("bad_line, message", [
    ('{"question": "How many?", "answer": "She has 3 apples."}', "'answer' has no numeric '#### N' line"),
    ('{"question": "How many?", "answer": "3 #### 3"', "malformed JSON"),
    ('{"question": "", "answer": "#### 3"}', "'question' must be a non-empty string"),
    ('{"question": "How many?"}', "missing field(s) answer"),
    ('["How many?", "#### 3"]', "expected a JSON object, got list"),
])
def test_bad_training_rows_stop_sft_on_the_driver_naming_file_and_line(tmp_path, bad_line, message):
    """Row 3 is bad: the job stops before Ray starts (RAY_ADDRESS is unreachable), naming file:3."""
    env, root = _unreachable_ray(tmp_path)
    good = {"question": "Tom has 2 apples and buys 1 more. How many apples?", "answer": "2 + 1 = <<2+1=3>>3\n#### 3"}
    train = tmp_path / "train.jsonl"
    train.write_text("\n".join([json.dumps(good), json.dumps(good), bad_line, json.dumps(good)]) + "\n")
    proc = run_job("sft.py", "--train-file", str(train), "--max-steps", "1", check=False, env=env)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert f"error: {train}:3: " in proc.stderr and message in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (root / "sft").exists() and not (root / "data").exists()


def test_a_bug_keeps_its_traceback():
    """Only our user-error types become one line; a ValueError from a library (a bug) keeps its traceback."""
    from ray_app import cli
    from ray_app.config import ConfigError

    def buggy() -> int:
        raise ValueError("a library's bug")

    with pytest.raises(ValueError, match="a library's bug"):
        cli.run(buggy)
    assert cli.run(lambda: (_ for _ in ()).throw(ConfigError("fix this flag"))) == 2


def test_readme_range_block_is_what_the_commands_print():
    """README's block under 'Every numeric option has a range', run as typed, prints its output block."""
    import re
    import subprocess

    from conftest import ROOT

    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("Every numeric option has a range"):]
    commands, expected = re.findall(r"```bash\n(.*?)```\n```\n(.*?)```", section, re.S)[0]
    printed = ""
    for command in commands.strip().splitlines():
        proc = subprocess.run(["bash", "-c", command], cwd=ROOT, capture_output=True, text=True, timeout=60)
        printed += proc.stdout + "".join(line + "\n" for line in proc.stderr.splitlines() if "error:" in line)
    assert printed == expected
