"""The reward deployment autoscales under the sampler's load and shrinks back after it.

A real Serve deployment of the embedded reward model on a small local Ray instance, with Serve's own
autoscaling_config as `jobs/sample.py` builds it (target derived from the sampler's in-flight count),
driven through the sampler's own code path: `reward_max_in_flight` threads, each sending generated
batches (one question x N samples per request, as the sampler does) through `_score_and_write`, which
calls `handle.score.remote(...)` and writes the scored part file. Only the delays are short, so the
test takes about a minute instead of Serve's default 30 s up / 10 min down.
"""

import json
import threading
import time

import pytest

from conftest import GSM8K_TEST, ROOT, free_port, shared_path

pytestmark = pytest.mark.slow

MAX_REPLICAS = 3
APP_NAME = "reward-autoscaling-test"


def _replica_states(app: str, deployment: str) -> dict:
    from ray import serve

    status = serve.status().applications.get(app)
    if status is None or deployment not in status.deployments:
        return {}
    return {str(k): v for k, v in status.deployments[deployment].replica_states.items() if v}


def _running(app: str, deployment: str) -> int:
    return _replica_states(app, deployment).get("RUNNING", 0)


def _generated_batches(num_samples: int, questions: int) -> list:
    """Batches shaped like the generation actor's output: one question x N samples each, the
    question's worked GSM8K answer (with a varied ending) as the responses."""
    import pandas as pd

    rows = [json.loads(line) for line in GSM8K_TEST.read_text().splitlines()[:questions]]
    now = time.time()
    batches = []
    for i, row in enumerate(rows):
        reasoning = row["answer"].split("####")[0].strip()
        gold = row["answer"].split("####")[1].strip()
        batches.append(pd.DataFrame([{
            "model": "sft", "dataset": "gsm8k", "question_id": f"q{i}", "sample_idx": k, "question": row["question"],
            "response": f"{reasoning}\nFinal answer: {int(gold.replace(',', '')) + k}.", "pred": gold, "gold": gold,
            "correct": k == 0, "num_tokens": 64, "finish_reason": "stop", "generation_started_at": now, "generated_at": now,
        } for k in range(num_samples)]))
    return batches


def test_reward_replicas_scale_up_under_sampler_load_and_back(tmp_path):
    import ray
    from ray import serve

    from ray_app.config import SampleConfig
    from ray_app.inference.sampling import _score_and_write, reward_target_ongoing_requests
    from ray_app.reward.serve_app import DEPLOYMENT_NAME, ServeSettings, autoscaling_config, deploy_reward_model

    corpus = tmp_path / "corpus.jsonl"  # the embedded reward model's tokenizer is built from GSM rows
    corpus.write_text("".join(shared_path("data/gsm8k/train.jsonl").read_text().splitlines(keepends=True)[:3000]))
    cfg = SampleConfig(reward_autoscaling=True, reward_max_replicas=MAX_REPLICAS, reward_num_cpus=0.5,
                       reward_upscale_delay_s=2.0, reward_downscale_delay_s=5.0)
    in_flight = cfg.reward_max_in_flight  # the sampler's thread pool: 8 requests in flight at most
    target = reward_target_ongoing_requests(cfg)
    assert in_flight == 8 and target == 2  # 8 // 3: the full load asks for ceil(8 / 2) = 4 -> max 3 replicas
    assert -(-in_flight // target) > 1  # the sampler's load can ask for more than one replica
    settings = ServeSettings(
        model_path=cfg.reward_model, corpus_file=str(corpus), num_replicas=cfg.reward_replicas, num_cpus=cfg.reward_num_cpus,
        max_batch_size=cfg.reward_max_batch_size, autoscaling=True, max_replicas=MAX_REPLICAS, port=free_port(),
        target_ongoing_requests=target, upscale_delay_s=cfg.reward_upscale_delay_s,
        # Ray 2.60: handles push their ongoing-request counts every 10 s (RAY_SERVE_HANDLE_AUTOSCALING_METRIC_
        # PUSH_INTERVAL_S; the metrics_interval_s field is deprecated), so the window the controller averages
        # over must be longer than that, or it sees no load at all.
        downscale_delay_s=cfg.reward_downscale_delay_s, look_back_period_s=12.0)
    assert autoscaling_config(settings)["target_ongoing_requests"] == 2

    # address="local": a fresh instance of our own, never a cluster someone else started on this machine.
    ray.shutdown()  # not another test's instance either
    ray.init(address="local", num_cpus=2, include_dashboard=False, runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}})
    handle = None
    try:
        started = time.time()
        handle = deploy_reward_model(settings, APP_NAME, blocking_timeout_s=180)
        timeline = [(0.0, _replica_states(APP_NAME, DEPLOYMENT_NAME))]
        before = timeline[0][1].get("RUNNING", 0)
        assert before == 1, timeline

        batches = _generated_batches(cfg.num_samples, 24)
        stop, errors, scored = threading.Event(), [], [0]

        def sampler_thread(offset: int) -> None:  # one of the sampler pool's workers, kept busy
            i = offset
            while not stop.is_set():
                try:
                    n, _ = _score_and_write(handle, batches[i % len(batches)], str(tmp_path / "parts"), "fp", 2, print)
                    scored[0] += n
                except Exception as e:  # pragma: no cover - reported below
                    errors.append(e)
                    return
                i += in_flight

        threads = [threading.Thread(target=sampler_thread, args=(k,), daemon=True) for k in range(in_flight)]
        load_began = time.time()
        for t in threads:
            t.start()
        under = 1
        deadline = time.time() + 150
        while time.time() < deadline and not errors:
            states = _replica_states(APP_NAME, DEPLOYMENT_NAME)
            under = max(under, states.get("RUNNING", 0))
            if states != timeline[-1][1]:
                timeline.append((round(time.time() - load_began, 1), states))
            if under >= 2:
                break
            time.sleep(1)
        scaled_up_after = time.time() - load_began
        time.sleep(3)  # a little more load on the larger deployment
        under = max(under, _running(APP_NAME, DEPLOYMENT_NAME))
        stop.set()
        for t in threads:
            t.join(timeout=120)
        assert not errors, errors
        print(f"[autoscaling] replicas before load {before}, under load {under} (after {scaled_up_after:.0f}s), "
              f"{scored[0]} samples scored under load; replica states over time (s since the load began): {timeline}")
        assert under > 1, f"never scaled past 1 replica under {in_flight} in-flight requests: {timeline}"

        load_ended = time.time()
        after = under
        deadline = time.time() + 120
        while time.time() < deadline:
            after = _running(APP_NAME, DEPLOYMENT_NAME)
            if after == 1:
                break
            time.sleep(1)
        print(f"[autoscaling] back to {after} replica(s) {time.time() - load_ended:.0f}s after the load ended "
              f"(test took {time.time() - started:.0f}s)")
        assert after == 1, f"still {after} replicas {time.time() - load_ended:.0f}s after the load ended"
        serve.delete(APP_NAME)
    finally:
        if handle is not None:
            # Stop this driver's router thread too: left running, it keeps pushing autoscaling metrics
            # after ray.shutdown() and, at interpreter exit, starts Ray again to do so.
            handle.shutdown()
        serve.shutdown()
        ray.shutdown()
