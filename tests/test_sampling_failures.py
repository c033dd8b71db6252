"""Sampling stops at once on bad scores and on a dead reward model, and the resume finishes (issue 17).

Real parts: a local Ray cluster started here (Serve on a free port), `jobs/sample.py` joining it as a
user's job does (RAY_ADDRESS), the embedded tiny policy and reward models, and a real copy of the
reward model that scores one question NaN. One user's story, three runs of the same command:
1. The reward model returns NaN: the job stops with one line (exit 2) naming the model, the question
   and the sample; no part file holds that question, its generated samples wait in pending/.
2. The model is repaired in place and the command rerun (--score-retries 0); its reward app is
   deleted mid-run: the job fails within about one generated batch, the rest never generated, and
   what was generated but not scored waits in pending/.
3. The same command again completes: the pending batches are scored, not generated again, and every
   question has exactly N samples.
"""

import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT, free_port, run_job

PORT = free_port()


@pytest.fixture(scope="module")
def cluster():
    """A Ray instance of our own (2 logical CPUs: one generation actor, one reward replica at 0.5) with
    Serve on PORT; yields its GCS address, which the jobs join."""
    import ray
    from ray import serve

    ray.shutdown()  # not another test module's instance
    ray.init(address="local", num_cpus=2, include_dashboard=False, runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}})
    serve.start(http_options={"host": "127.0.0.1", "port": PORT})
    yield ray.get_runtime_context().gcs_address
    serve.shutdown()
    ray.shutdown()


def _broken_reward_model(good: str, question: str, dest: Path) -> str:
    """A real copy of the reward model at `good` that scores every pair holding `question` NaN.

    The input embedding of one token of that question is NaN (a token not in the reward app's
    health-check pair, which must stay finite for the app to deploy): the health pair and questions
    without that token still score finite numbers."""
    import torch
    from transformers import AutoModelForSequenceClassification

    from ray_app.reward.scorer import RewardScorer
    from ray_app.reward.serve_app import HEALTH_QUESTION, HEALTH_RESPONSE

    scorer = RewardScorer(good)
    health = set(scorer.token_ids([HEALTH_QUESTION], [HEALTH_RESPONSE])[0])
    token = next(t for t in scorer.token_ids([question], [""])[0] if t not in health)
    shutil.copytree(good, dest)  # tokenizer and config as they are
    model = AutoModelForSequenceClassification.from_pretrained(good)
    with torch.no_grad():
        model.get_input_embeddings().weight[token] = float("nan")
    model.save_pretrained(dest)
    broken = RewardScorer(str(dest))
    assert math.isnan(broken.score([question], ["Final answer: 5."])[0])
    assert math.isfinite(broken.score([HEALTH_QUESTION], [HEALTH_RESPONSE])[0])
    return str(dest)


def _questions(folder: Path) -> set[str]:
    return {json.loads(line)["question_id"] for p in folder.glob("*.jsonl") for line in p.read_text().splitlines()}


def test_nan_rewards_stop_naming_the_question_a_dead_reward_app_fails_fast_and_the_resume_completes(
        cluster, full_data, tmp_path):
    from ray import serve

    from ray_app.models.registry import resolve_model_path

    limit, n = 12, 2
    good = resolve_model_path("tiny-llama-reward", corpus_file=str(full_data / "gsm_symbolic_train.jsonl"))
    first = json.loads((full_data / "gsm_symbolic_test.jsonl").read_text().splitlines()[0])
    reward = _broken_reward_model(good, first["question"], tmp_path / "reward")  # outside the storage root, as a
    # model a user brings is

    def args(limit: int) -> list[str]:
        return ["--data-dir", str(full_data), "--storage-root", str(tmp_path / "root"), "--out-dir", "samples",
                "--models", "small=tiny-gemma3-small", "--limit", str(limit), "--num-samples", str(n),
                "--max-new-tokens", "32", "--questions-per-batch", "1", "--reward-model", reward, "--reward-num-cpus", "0.5",
                "--score-retries", "0", "--serve-port", str(PORT)]

    env = {**os.environ, "RAY_ADDRESS": cluster}  # the jobs join this cluster, as under `ray job submit`
    out = tmp_path / "root" / "samples"
    took = {}

    # 1. Sampling the first 2 questions, the first one's rewards are NaN: exit 2 with one line naming the
    # model, the question and a sample; nothing of that batch written.
    started = time.perf_counter()
    proc = run_job("sample.py", *args(2), check=False, env=env, timeout=300)
    took["nan run"] = time.perf_counter() - started
    assert proc.returncode == 2, f"exit {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    error = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    # A user error: one line, no traceback of the job's own (the replica's log lines come through Ray's log).
    assert len(error) == 1 and not [line for line in proc.stderr.splitlines() if line.startswith("Traceback")], proc.stderr[-3000:]
    assert "non-finite reward" in error[0] and reward in error[0] and "model small" in error[0], error[0]
    assert f"question {first['id']} sample 0 (nan)" in error[0], error[0]
    assert first["id"] not in _questions(out / "parts"), "a batch with a NaN reward was written"
    assert first["id"] in _questions(out / "pending")  # generated, not scored: kept for the rerun

    # 2. The model repaired in place (same name: same settings), the command rerun for all the questions;
    # its reward app is deleted once a batch generated by this run is scored.
    shutil.copytree(good, reward, dirs_exist_ok=True)
    scored_before, kept_before = _questions(out / "parts"), _questions(out / "pending")
    pending_before = len(list((out / "pending").glob("*.jsonl")))
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, str(ROOT / "jobs" / "sample.py"), *args(limit)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None and not _questions(out / "parts") - scored_before - kept_before:
            time.sleep(0.1)
        apps = [a for a in serve.status().applications if a.startswith("reward-")]
        assert proc.poll() is None and len(apps) == 1, (apps, proc.poll(), proc.stdout.read() if proc.poll() is not None else "")
        serve.delete(apps[0], _blocking=False)  # the run's reward deployment is gone
        deleted_at = time.perf_counter()
        stdout, stderr = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    took["failing run"], took["failed after the delete"] = time.perf_counter() - started, time.perf_counter() - deleted_at
    assert proc.returncode not in (0, 2), f"exit {proc.returncode}:\n{stdout[-3000:]}\n{stderr[-3000:]}"
    assert "RewardModelUnavailable" in stderr or "DeploymentUnavailableError" in stderr, stderr[-3000:]
    # The NaN run's pending batches were scored first (the model is repaired), one log line each.
    assert stdout.count(" pending samples (") == pending_before and scored_before | kept_before <= _questions(out / "parts")
    scored, kept = _questions(out / "parts"), _questions(out / "pending")
    stopped = [line for line in stdout.splitlines() if line.startswith("[sample] stopped (")]
    assert len(stopped) == 1 and f"samples kept in {out / 'pending'}" in stopped[0], stdout[-3000:]
    assert kept - kept_before and not scored & kept, (scored, kept)
    # Within about one batch: generation stopped before the end (the 10 questions to do came as 4 batches).
    generated = (scored | kept) - scored_before - kept_before
    assert len(generated) < limit - len(scored_before | kept_before), (len(scored), len(kept), stdout[-2000:])
    pending_files = list((out / "pending").glob("*.jsonl"))
    pending_rows = {(r["question_id"], r["sample_idx"]): r["response"] for p in pending_files
                    for r in map(json.loads, p.read_text().splitlines())}
    assert len(pending_rows) == n * len(kept)

    # 3. The same command again: the pending batches are scored first, never generated again, and the
    # run completes with exactly N samples per question.
    started = time.perf_counter()
    resume = run_job("sample.py", *args(limit), env={"RAY_ADDRESS": cluster}, timeout=300)
    took["resume"] = time.perf_counter() - started
    m = json.loads((out / "sample_manifest.json").read_text())
    assert m["rows"] == limit * n and m["resumed_pairs"] == len(scored)
    assert m["scored_from_pending"] == {"batches": len(pending_files), "samples": n * len(kept)}, m["scored_from_pending"]
    assert m["scored_this_run"] == n * (limit - len(scored))
    assert f"small: {limit - len(scored) - len(kept)} questions x {n} samples generated" in resume.stdout, resume.stdout[-3000:]
    assert not list((out / "pending").glob("*.jsonl")), "pending files left after their parts were written"
    import pandas as pd

    df = pd.read_parquet(out / "samples.parquet")
    assert len(df) == limit * n and (df.groupby("question_id").size() == n).all()
    assert not df.duplicated(["question_id", "sample_idx"]).any() and df["reward"].map(math.isfinite).all()
    final = {(r.question_id, r.sample_idx): r.response for r in df.itertuples()}
    assert all(final[k] == v for k, v in pending_rows.items())  # the pending samples, as generated
    print(f"[sampling failures] {json.dumps({k: round(v, 1) for k, v in took.items()})}; when the app was deleted "
          f"{len(scored)} questions were scored and {len(kept)} pending of {limit}")


def test_part_rows_with_non_finite_rewards_count_as_not_finished(tmp_path):
    """Part files older versions wrote with NaN or inf rewards: those questions are not finished (the
    resume samples them again) and the gathered samples leave them out, instead of failing every run."""
    from ray_app import storage
    from ray_app.inference.sampling import finished_questions, gather_parts

    parts = tmp_path / "parts"

    def row(q, k, reward):
        return {"model": "small", "dataset": "d", "question_id": q, "sample_idx": k, "question": "?", "response": "r",
                "pred": "1", "gold": "1", "correct": True, "reward": reward, "num_tokens": 3, "finish_reason": "stop",
                "generation_started_at": 1.0, "generated_at": 2.0, "scored_at": 3.0, "reward_replica_pid": 1}

    storage.write_jsonl(str(parts / "fp-small-a.jsonl"), [row("q1", 0, 0.5), row("q1", 1, 0.25), row("q2", 0, float("nan")),
                                                          row("q2", 1, 0.1), row("q3", 0, float("inf")), row("q3", 1, -1.0)])
    lines: list = []
    assert finished_questions(str(parts), 2, "fp", lines.append) == {("small", "q1")}
    assert len(lines) == 1 and "ignoring 2 question(s) with a non-finite reward (small/q2, small/q3" in lines[0], lines
    df = gather_parts(str(parts), 2, {"small": {"q1"}}, {"small": "fp"})
    assert list(df["question_id"]) == ["q1", "q1"]


def test_inf_refused_by_the_reward_app_names_the_question_and_sample():
    """The reward app refuses +-inf as it refuses NaN (serve_app.NonFiniteScore, which a Serve handle
    raises wrapped in a RayTaskError): the sampler names the question and sample, and does not retry."""
    import pandas as pd
    import ray

    from ray_app.inference.sampling import NonFiniteReward, _non_finite, _non_finite_refusal
    from ray_app.reward.serve_app import NonFiniteScore
    from ray_app.utils.io import DataError

    raised = ray.exceptions.RayTaskError("score", "traceback", NonFiniteScore([1], [float("-inf")], 2)).as_instanceof_cause()
    refusal = _non_finite_refusal(raised)
    assert refusal is not None and _non_finite_refusal(RuntimeError("replica died")) is None
    batch = pd.DataFrame({"model": ["small"] * 2, "question_id": ["q7"] * 2, "sample_idx": [0, 1]})
    error = _non_finite(batch, list(zip(refusal.indices, refusal.values)), "my-reward")
    assert isinstance(error, NonFiniteReward) and isinstance(error, DataError)
    assert "reward model my-reward returned a non-finite reward for 1 of 2 samples of model small: question q7 sample 1 (-inf)" in str(error)
