"""What the Ray dashboard shows of a job: its Train run (state tracking on for every job) and the
project's own metrics (ray_app/utils/metrics.py) on the node's Prometheus endpoint.

A local Ray head of its own (dashboard and metrics export on loopback, known ports) in a separate
process; a 2-step SFT and a tiny sampling run join it as drivers (RAY_ADDRESS), the way
`ray job submit` runs them. Neither the head nor the jobs get RAY_TRAIN_ENABLE_STATE_TRACKING from
the test: the jobs' own Ray setup (ray_app/utils/ray_init.py) must turn it on.
"""

import json
import os
import re
import secrets
import subprocess
import sys
import threading
import time

import pytest
import requests

from conftest import GSM8K_TEST, ROOT, free_port

pytestmark = pytest.mark.slow

# name on the Prometheus endpoint (Ray adds `ray_`; counters end in _total; histograms have _count)
EXPORTED = {
    "gsm_train_tokens_per_second": "ray_gsm_train_tokens_per_second",
    "gsm_train_tokens": "ray_gsm_train_tokens_total",
    "gsm_samples_generated": "ray_gsm_samples_generated_total",
    "gsm_samples_scored": "ray_gsm_samples_scored_total",
    "gsm_reward_batch_size": "ray_gsm_reward_batch_size_count",
    "gsm_reward_latency_seconds": "ray_gsm_reward_latency_seconds_count",
}

HEAD = """
import json, sys, ray
ray.init(address="local", num_cpus=2, include_dashboard=True, dashboard_host="127.0.0.1", dashboard_port={dash},
         _metrics_export_port={metrics}, _system_config={{"metrics_report_interval_ms": 1000}})
print(json.dumps({{"gcs": ray.get_runtime_context().gcs_address}}), flush=True)
sys.stdin.read()  # the head lives until the test closes stdin
ray.shutdown()
"""

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{.*\})?\s+(\S+)$")


def _scrape(url: str) -> dict[str, float]:
    """Sum of each `ray_gsm_*` series over its label sets."""
    totals: dict[str, float] = {}
    for line in requests.get(url, timeout=5).text.splitlines():
        m = _SAMPLE.match(line)
        if m and m.group(1).startswith("ray_gsm_"):
            totals[m.group(1)] = totals.get(m.group(1), 0.0) + float(m.group(3))
    return totals


def _clean_env(token: str) -> dict:
    """This environment without a Ray address or state tracking; token auth on with a token of the test's own
    (Ray 2.60 turns token auth on for a head started on a machine that has ~/.ray/auth_token)."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_TRAIN_ENABLE_STATE_TRACKING")}
    return {**env, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token,
            "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)}


def _job(script: str, *args: str, env: dict, timeout: int) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, str(ROOT / "jobs" / script), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{script} exited {proc.returncode}:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc


def test_dashboard_lists_train_run_and_prometheus_has_project_metrics(tmp_path):
    token = secrets.token_hex(32)
    env = _clean_env(token)
    data, root = tmp_path / "data", tmp_path / "root"
    _job("prepare_data.py", "--out-dir", str(data), "--gsm8k-source", str(GSM8K_TEST), "--train-size", "100",
         "--num-templates", "10", "--no-use-ray", "--storage-root", str(root), env=env, timeout=300)

    dash, metrics_port = free_port(), free_port()
    head = subprocess.Popen([sys.executable, "-c", HEAD.format(dash=dash, metrics=metrics_port)], cwd=tmp_path, env=env,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    seen: dict[str, float] = {}
    stop = threading.Event()

    def scraper() -> None:  # keep the largest value seen: a finished worker's series may leave the endpoint
        while not stop.is_set():
            try:
                for name, value in _scrape(f"http://127.0.0.1:{metrics_port}/metrics").items():
                    seen[name] = max(seen.get(name, 0.0), value)
            except requests.RequestException:
                pass
            stop.wait(1.0)

    try:
        gcs = json.loads(head.stdout.readline())["gcs"]
        job_env = {**env, "RAY_ADDRESS": gcs}  # the jobs join this cluster, as under `ray job submit`
        threading.Thread(target=scraper, daemon=True).start()
        started = time.time()
        _job("sft.py", "--data-dir", str(data), "--storage-root", str(root), "--run-name", "dashboard-sft",
             "--max-steps", "2", "--logging-steps", "1", "--no-eval-after", "--wandb-mode", "disabled",
             env=job_env, timeout=600)
        sft_s = time.time() - started
        _job("sample.py", "--data-dir", str(data), "--storage-root", str(root), "--models", "base=tiny-gemma3-small",
             "--limit", "2", "--num-samples", "4", "--max-new-tokens", "16", "--questions-per-batch", "1",
             "--reward-num-cpus", "0.5", "--serve-port", str(free_port()), "--out-dir", str(tmp_path / "samples"),
             env=job_env, timeout=600)
        jobs_s = time.time() - started

        # The Train run, from the dashboard's API (the Train view reads the same).
        resp = requests.get(f"http://127.0.0.1:{dash}/api/train/v2/runs/v1", headers={"Authorization": f"Bearer {token}"},
                            timeout=30)
        assert resp.status_code == 200, resp.text[:500]
        runs = {r["name"]: r for r in resp.json()["train_runs"]}
        assert "dashboard-sft" in runs, list(runs)
        assert runs["dashboard-sft"]["status"] == "FINISHED", runs["dashboard-sft"]["status"]

        # The project's metrics on the node's Prometheus endpoint, non-zero (flushed every second here).
        deadline = time.time() + 60
        while time.time() < deadline and not all(seen.get(n, 0) > 0 for n in EXPORTED.values()):
            time.sleep(1)
        print(f"[dashboard] sft {sft_s:.0f}s, sft + sample {jobs_s:.0f}s; train run {runs['dashboard-sft']['status']}; "
              f"metrics: {json.dumps({k: round(v, 1) for k, v in sorted(seen.items()) if k in EXPORTED.values() or k.endswith('_sum')})}")
        missing = [n for n in EXPORTED.values() if not seen.get(n, 0) > 0]
        assert not missing, f"not on http://127.0.0.1:{metrics_port}/metrics with a value > 0: {missing}; seen {seen}"
        assert seen["ray_gsm_samples_generated_total"] == 2 * 4  # questions x N
        assert seen["ray_gsm_samples_scored_total"] == 2 * 4
    finally:
        stop.set()
        head.stdin.close()
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            head.kill()
            head.wait(timeout=30)
