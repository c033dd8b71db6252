"""Runs sharing a Ray cluster keep to their own Serve app (issue 15, isolation).

Two sampling runs with different settings and different reward models, started at the same time on
one real local Ray cluster, each score with their own app and model (checked against the scorer run
directly, and over HTTP at each app's own route), record it in their manifests, and delete only their
own app. A run that fails after deploying, or is interrupted, leaves no app behind.
"""

import dataclasses
import shutil
import threading
import time

import pytest
import requests

from conftest import ROOT, free_port

PORT = free_port()
OTHER = "reward-someone-else"  # an app the runs under test do not own


@pytest.fixture(scope="module")
def cluster(reward_models):
    """A Ray instance of our own (4 logical CPUs: two runs' generation actors and reward replicas) with
    Serve already running on PORT, as a cluster where someone else started Serve first, and someone
    else's reward app (OTHER), which no run may touch."""
    import ray
    from ray import serve

    from ray_app.reward.serve_app import ServeSettings, deploy_reward_model

    ray.shutdown()  # not another test module's instance
    ray.init(address="local", num_cpus=4, include_dashboard=False, runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}})
    serve.start(http_options={"host": "127.0.0.1", "port": PORT})
    deploy_reward_model(ServeSettings(model_path=reward_models[0], num_cpus=0.25, port=PORT), OTHER)
    yield
    serve.shutdown()
    ray.shutdown()


@pytest.fixture(scope="module")
def reward_models(full_data, tmp_path_factory):
    """The embedded reward model and a copy with its score head negated: two real models that score
    every pair differently (B = -A), so a run scored by the other's model cannot pass for its own."""
    import torch
    from transformers import AutoModelForSequenceClassification

    from ray_app.models.registry import resolve_model_path

    a = resolve_model_path("tiny-llama-reward", corpus_file=str(full_data / "gsm_symbolic_train.jsonl"))
    b = tmp_path_factory.mktemp("reward_b") / "negated"
    shutil.copytree(a, b)  # tokenizer and config as they are
    model = AutoModelForSequenceClassification.from_pretrained(a)
    with torch.no_grad():
        model.score.weight.mul_(-1)
    model.save_pretrained(b)
    return a, str(b)


def _cfg(full_data, out, reward_model, temperature, port):
    from ray_app.config import SampleConfig

    return SampleConfig(models="small=tiny-gemma3-small", data_dir=str(full_data), limit=3, num_samples=2, max_new_tokens=16,
                        questions_per_batch=1, temperature=temperature, reward_model=reward_model, reward_num_cpus=0.5,
                        out_dir=str(out), serve_port=port, resource_wait_s=120)


def _app_of(cfg) -> str:
    from ray_app.inference.sampling import run_app_name

    return run_app_name(cfg)


def test_app_names_are_per_run(tmp_path):
    """No Ray: one name per (folder, settings), readable, short, and a valid route."""
    import re

    from ray_app.reward.serve_app import reward_app_name, route_for

    a = reward_app_name(str(tmp_path / "samples"), "fp1")
    assert a == reward_app_name(str(tmp_path / "samples") + "/", "fp1")  # the same run again: its own app
    assert a.startswith("reward-") and "samples" in a and route_for(a) == f"/{a}"
    others = {reward_app_name(str(tmp_path / "samples"), "fp2"), reward_app_name(str(tmp_path / "other"), "fp1"),
              reward_app_name("s3://bucket/x/samples", "fp1"), reward_app_name("/" + "deep-folder-name/" * 20, "fp1")}
    assert len(others | {a}) == 5
    for name in others | {a}:
        assert len(name) <= 48 and re.fullmatch(r"reward-[a-z0-9-]+[0-9a-f]{10}", name), name


def test_two_runs_at_once_each_score_with_their_own_app(cluster, full_data, reward_models, tmp_path):
    from ray import serve

    from ray_app.inference.sampling import run_sampling
    from ray_app.reward.scorer import RewardScorer

    started = time.perf_counter()
    # Run B asks for another HTTP port than the one Serve runs on: it must say so and use the running one.
    cfgs = {"a": _cfg(full_data, tmp_path / "run_a", reward_models[0], 0.7, PORT),
            "b": _cfg(full_data, tmp_path / "run_b", reward_models[1], 1.0, PORT + 1)}
    apps = {k: _app_of(c) for k, c in cfgs.items()}
    assert apps["a"] != apps["b"] and all(a.startswith("reward-") for a in apps.values())
    logs: dict = {k: [] for k in cfgs}
    results, errors = {}, {}
    barrier = threading.Barrier(len(cfgs))

    def run(k):
        barrier.wait()
        try:
            results[k] = run_sampling(cfgs[k], log=logs[k].append)
        except BaseException as e:  # pragma: no cover - reported below
            errors[k] = e

    threads = [threading.Thread(target=run, args=(k,), daemon=True) for k in cfgs]
    for t in threads:
        t.start()
    # While both run: both apps are up at once, each answering at its own route with its own model.
    scorers = {"a": RewardScorer(reward_models[0]), "b": RewardScorer(reward_models[1])}
    question, response = "Tom has 2 pens and buys 3. How many?", "2 + 3 = 5\nFinal answer: 5."
    both_up, http_scores = False, {}
    deadline = time.time() + 600
    while any(t.is_alive() for t in threads) and time.time() < deadline:
        status = serve.status().applications
        running = {k for k, a in apps.items() if a in status and status[a].status == "RUNNING"}
        both_up = both_up or running == set(apps)
        for k in running - set(http_scores):
            r = requests.post(f"http://127.0.0.1:{PORT}/{apps[k]}/score", json={"question": question, "responses": [response]},
                              timeout=60)
            if r.status_code == 200:
                http_scores[k] = r.json()["scores"][0]
        time.sleep(0.2)
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors
    assert set(results) == set(cfgs), "a run did not finish"
    assert both_up, "the two runs' apps were never up at the same time: the test did not run them together"

    for k, cfg in cfgs.items():
        df, serving = results[k]["samples"], results[k]["reward_serving"]
        assert len(df) == 3 * 2 and df["reward"].notna().all()
        assert serving["app"] == apps[k] and serving["route"] == f"/{apps[k]}"
        assert serving["url"] == f"http://127.0.0.1:{PORT}/{apps[k]}/score"  # the running port, not the asked one
        assert serving["reward_model"] == cfg.reward_model and serving["reward_model_identity"] == cfg.reward_model
        assert results[k]["settings"]["temperature"] == cfg.temperature
        # Every reward is its own model's (the scorer run directly), none the other run's.
        direct = scorers[k].score(list(df["question"]), list(df["response"]))
        assert list(df["reward"]) == pytest.approx(direct, abs=1e-4), k
        other = scorers["b" if k == "a" else "a"].score(list(df["question"]), list(df["response"]))
        assert all(abs(x - y) > 1e-3 for x, y in zip(df["reward"], other)), k
        if k in http_scores:
            assert http_scores[k] == pytest.approx(scorers[k].score([question], [response])[0], abs=1e-4)
    assert http_scores, "neither app answered over HTTP at its own route"
    said = [line for line in logs["b"] if "Serve already runs" in line]
    assert len(said) == 1 and f"127.0.0.1:{PORT}" in said[0] and f"127.0.0.1:{PORT + 1}" in said[0] and "cluster-wide" in said[0]
    assert not [line for line in logs["a"] if "Serve already runs" in line]
    assert any(apps["a"] in line and f"/{apps['a']}/score" in line for line in logs["a"])
    left = set(serve.status().applications) & set(apps.values())
    assert not left, f"apps left behind: {left}"
    _assert_other_untouched()
    print(f"[isolation] two concurrent runs in {time.perf_counter() - started:.0f}s; HTTP checked for {sorted(http_scores)}")


def _assert_other_untouched():
    from ray import serve

    from ray_app.reward.serve_app import DEPLOYMENT_NAME

    other = serve.status().applications.get(OTHER)
    assert other is not None and other.status == "RUNNING" and DEPLOYMENT_NAME in other.deployments, other


class _Interrupt:
    """A log that presses Ctrl-C (raises KeyboardInterrupt) right after the reward app is deployed."""

    def __init__(self):
        self.lines = []

    def __call__(self, line):
        self.lines.append(line)
        if "serving as Serve app" in line:
            raise KeyboardInterrupt


@pytest.mark.parametrize("failure", ["generation actor fails", "ctrl-c"])
def test_a_run_that_fails_after_deploying_leaves_no_app(cluster, full_data, reward_models, tmp_path, failure):
    from ray import serve

    from ray_app.inference.sampling import run_sampling

    cfg = _cfg(full_data, tmp_path / "run", reward_models[0], 0.7, PORT)
    if failure != "ctrl-c":
        # A policy model folder that does not exist: the run deploys its reward app, then the
        # generation actor fails to load the model.
        cfg = dataclasses.replace(cfg, models=f"small={tmp_path / 'no-such-model'}")
    app = _app_of(cfg)
    if failure == "ctrl-c":
        log = _Interrupt()
        with pytest.raises(KeyboardInterrupt):
            run_sampling(cfg, log=log)
        lines = log.lines
    else:
        lines = []
        with pytest.raises(Exception) as raised:
            run_sampling(cfg, log=lines.append)
        assert "no-such-model" in str(raised.value), raised.value
    assert any(f"serving as Serve app {app}" in line for line in lines), lines  # it did deploy first
    assert app not in serve.status().applications, f"the failed run left its app {app}"
    _assert_other_untouched()
