"""Autoscaling that scales, and resources that never arrive.

The slow tests run README's "Autoscaling, tried locally" block as typed: a real Ray autoscaler
(Ray's `fake_multinode` provider, cluster/fake_multinode.yaml) on this machine, started with no GPU
worker; a job submitted with `ray job submit --working-dir .` asks for one GPU per generation actor,
a GPU worker joins while it runs, the job succeeds and the worker is removed once idle. Then a job
asking for what no node type has stops at once with the error that names it, and a job on a local
Ray without GPUs stops after its --resource-wait-s. The fast tests check ray_app/utils/resources.py
on its own and on a one-CPU local Ray.

The cluster runs with its own HOME (token), its own RAY_TMPDIR (Ray's session folder) and in its own
session of processes: the teardown ends exactly those processes rather than `ray stop` (the block's
last line), which would stop every Ray on the machine.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
import yaml

from conftest import ROOT
from test_job_submit import readme_block

slow = pytest.mark.slow
DASHBOARD = "http://127.0.0.1:8400"  # README's block: --dashboard-port=8400, above the 8265-8315 local Rays use


# ------------------------------------------------------------------------------------------------
# Fast: the wait on its own
# ------------------------------------------------------------------------------------------------


def _fake_types():
    from ray_app.utils.resources import node_types_from_config

    return node_types_from_config(yaml.safe_load((ROOT / "cluster/fake_multinode.yaml").read_text()))


def test_node_types_from_the_fake_cluster_config_and_what_never_fits():
    from ray_app.utils.resources import Capacity, never_fits

    types = _fake_types()
    assert [(t.name, t.resources, t.max_workers) for t in types] == [("gpu_worker", {"CPU": 2.0, "GPU": 1.0}, 2)]
    cap = Capacity(nodes=[{}], autoscaler=True, node_types=types, source="test")
    assert never_fits([{"CPU": 1, "GPU": 1}], cap) == []
    assert never_fits([{"CPU": 1.0, "GPU": 2.0}], cap) == [{"CPU": 1.0, "GPU": 2.0}]
    assert never_fits([{"CPU": 1.0, "accelerator_type:H100": 0.001}], cap) == [{"CPU": 1.0, "accelerator_type:H100": 0.001}]
    assert never_fits([{"GPU": 8.0}], Capacity(nodes=[{}])) == []  # node types unknown: no verdict


def test_gpus_count_when_a_node_or_an_autoscaler_node_type_has_them():
    """Jobs that are not told how many GPUs to use pick GPUs on a cluster whose GPU workers scale from 0."""
    from ray_app.utils.resources import Capacity, NodeType, gpus_reachable

    head_only = [{"CPU": 0.0}]
    assert gpus_reachable(Capacity(nodes=head_only, autoscaler=True, node_types=_fake_types()))
    assert not gpus_reachable(Capacity(nodes=head_only))  # no autoscaler, no GPU node
    assert not gpus_reachable(Capacity(nodes=head_only, autoscaler=True,
                                       node_types=[NodeType("gpu_worker", {"CPU": 2.0, "GPU": 1.0}, 0)]))  # max 0
    assert gpus_reachable(Capacity(nodes=[{"CPU": 4.0, "GPU": 1.0}]))


def test_packing_follows_the_placement_strategy():
    from ray_app.utils.resources import effective_bundles, pack

    two = [{"CPU": 1, "GPU": 1}] * 2
    nodes = [{"CPU": 2.0, "GPU": 1.0}, {"CPU": 2.0, "GPU": 1.0}]
    assert pack(effective_bundles(two, "PACK"), nodes, "PACK")
    assert pack(effective_bundles(two, "STRICT_SPREAD"), nodes, "STRICT_SPREAD")
    assert effective_bundles(two, "STRICT_PACK") == [{"CPU": 2.0, "GPU": 2.0}]  # all on one node
    assert not pack(effective_bundles(two, "STRICT_PACK"), nodes, "STRICT_PACK")
    assert not pack(effective_bundles(two, "STRICT_SPREAD"), nodes[:1], "STRICT_SPREAD")
    assert effective_bundles([{"CPU": 1, "GPU": 0}], "PACK") == [{"CPU": 1.0}]  # zeros ask for nothing


def test_impossible_request_stops_at_once_naming_resource_offer_and_flags():
    from ray_app.config import ConfigError
    from ray_app.utils.resources import Capacity, ResourcesUnavailable, wait_for_resources

    started = time.monotonic()
    with pytest.raises(ResourcesUnavailable) as e:
        wait_for_resources([{"CPU": 1, "GPU": 2}], 600, "generation actors", hint="--num-gpus-per-actor",
                           capacity=lambda: Capacity(nodes=[{}], autoscaler=True, node_types=_fake_types(), source="x.yaml"))
    assert time.monotonic() - started < 1
    assert isinstance(e.value, ConfigError)  # jobs print it as 'error: ...' and exit 2 (ray_app/cli.py)
    msg = str(e.value)
    assert "generation actors need 1 x {'CPU': 1, 'GPU': 2}" in msg and "gpu_worker {'CPU': 2, 'GPU': 1} x2" in msg
    assert "--num-gpus-per-actor" in msg


def test_on_a_local_ray_without_gpus_a_gpu_request_times_out_and_a_cpu_one_passes():
    import ray

    from ray_app.utils.resources import ResourcesUnavailable, wait_for_resources

    ray.shutdown()
    ray.init(address="local", num_cpus=1, include_dashboard=False, logging_level="ERROR")
    try:
        assert wait_for_resources([{"CPU": 1}], 5, "CPU work", log=pytest.fail) < 1  # there already: no wait, no log
        lines = []
        started = time.monotonic()
        with pytest.raises(ResourcesUnavailable) as e:
            wait_for_resources([{"CPU": 1, "GPU": 1}], 3, "SFT workers", hint="--no-use-gpu", log=lines.append,
                               report_every_s=1)
        assert 3 <= time.monotonic() - started < 10
        assert "did not provide within 3s (--resource-wait-s)" in str(e.value) and "no autoscaler" in str(e.value)
        assert "cluster has {'CPU': 1} on 1 node" in str(e.value) and "--no-use-gpu" in str(e.value)
        assert lines and all(line.startswith("[resources] waiting for 1 x {'CPU': 1, 'GPU': 1} (SFT workers)") for line in lines)
    finally:
        ray.shutdown()


# ------------------------------------------------------------------------------------------------
# Slow: the fake_multinode cluster, jobs through `ray job submit`
# ------------------------------------------------------------------------------------------------


def _port_free(port: int) -> bool:
    import socket

    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def _end_session(sid: int) -> None:
    """Terminate (then kill) every process of session `sid`: the head's processes and the worker
    raylets its autoscaler started, all descendants of the shell that ran `ray start`."""
    import psutil

    procs = []
    for p in psutil.process_iter():
        try:
            if p.pid != os.getpid() and os.getsid(p.pid) == sid:
                procs.append(p)
        except (ProcessLookupError, PermissionError, psutil.Error):
            pass
    for p in procs:
        try:
            p.send_signal(signal.SIGTERM)
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(procs, timeout=15)
    for p in alive:
        try:
            p.kill()
        except psutil.Error:
            pass


@pytest.fixture(scope="module")
def fake_cluster(tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    # Short: Ray's socket paths under it must stay within 107 characters.
    ray_tmp = tempfile.mkdtemp(prefix="rfk-", dir="/tmp")
    real_cache = os.environ.get("XDG_CACHE_HOME") or str(Path("~/.cache").expanduser())
    env = {**os.environ, "HOME": str(home), "XDG_CACHE_HOME": real_cache, "RAY_TMPDIR": ray_tmp, "PYTHONUNBUFFERED": "1"}
    for key in ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_APP_STORAGE_ROOT"):
        env.pop(key, None)
    # README's block uses GCS port 6379 and dashboard port 8400; another cluster may hold them a while.
    deadline = time.time() + 300
    while busy := [p for p in (6379, 8400) if not _port_free(p)]:
        if time.time() > deadline:
            pytest.fail(f"ports {busy} are in use: another Ray runs on this machine; README's block needs them")
        time.sleep(2)
    state = {"home": home, "env": env, "sids": []}
    try:
        yield state
    finally:
        for sid in state["sids"]:
            _end_session(sid)
        shutil.rmtree(ray_tmp, ignore_errors=True)


def _gpu_workers(token: str) -> int | None:
    """Alive nodes with GPUs, from the dashboard's State API (None while it does not answer)."""
    import requests

    try:
        r = requests.get(f"{DASHBOARD}/api/v0/nodes", params={"limit": 100}, timeout=10,
                         headers={"Authorization": f"Bearer {token}"})
        if r.status_code != 200:
            return None
        nodes = r.json()["data"]["result"]["result"]
    except (requests.RequestException, KeyError, ValueError):
        return None
    return sum(1 for n in nodes if n.get("state") == "ALIVE" and (n.get("resources_total") or {}).get("GPU", 0) > 0)


@slow
def test_readme_block_gpu_worker_from_zero_for_a_job_and_gone_when_idle_and_an_impossible_request_refused(fake_cluster):
    home, env = fake_cluster["home"], fake_cluster["env"]
    commands = readme_block("autoscaling-local")
    # The job names no GPU count: it must ask for GPUs because the autoscaler can add GPU nodes.
    assert "--autoscaling-config=cluster/fake_multinode.yaml" in commands and "--num-gpus-per-actor" not in commands
    body, stop = commands.rstrip().rsplit("\n", 1)
    assert stop.strip() == "ray stop"  # run as the fixture's teardown, limited to this cluster's processes
    # The block as typed, in two parts: up to the submission (the head and its autoscaler, the data),
    # then the submission. On a busy machine the head's job agent can register a few seconds after
    # `ray start` returns ("No available agent to submit job"): as a user would, submit again.
    block = body.splitlines()
    at = next(i for i, line in enumerate(block) if line.startswith("ray job submit"))
    exports = [line for line in block[:at] if line.startswith("export ")]
    started = time.time()
    setup = subprocess.Popen(["bash", "-c", "set -euo pipefail\n" + "\n".join(block[:at])], cwd=ROOT, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    # `ray start` leaves its daemons in the setup shell's session (its id: the shell's pid); the
    # fixture ends that session.
    fake_cluster["sids"].append(setup.pid)
    setup_out, _ = setup.communicate(timeout=900)
    assert setup.returncode == 0, setup_out[-8000:]

    token_file = home / ".ray" / "auth_token"
    token = token_file.read_text().strip()
    samples: list[tuple[float, int]] = []  # (time, GPU workers alive)
    for attempt in range(10):
        proc = subprocess.Popen(["bash", "-c", "set -euo pipefail\n" + "\n".join(exports + block[at:])], cwd=ROOT, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        lines: list[tuple[float, str]] = []
        reader = threading.Thread(target=lambda: lines.extend((time.time(), line) for line in proc.stdout), daemon=True)
        reader.start()
        while proc.poll() is None and time.time() - started < 900:
            count = _gpu_workers(token)
            if count is not None:
                samples.append((time.time(), count))
            time.sleep(1)
        proc.wait(timeout=60)
        reader.join(timeout=10)
        out = "".join(line for _, line in lines)
        if proc.returncode == 0 or "No available agent to submit job" not in out:
            break
        time.sleep(3)
    assert proc.returncode == 0, out[-8000:]
    job_ended = time.time()

    submitted = next(t for t, line in lines if "submitted successfully" in line)
    succeeded = next(t for t, line in lines if "succeeded" in line and "Job 'raysubmit_" in line)
    assert samples and samples[0][1] == 0, samples[:5]  # started with no GPU worker
    up = [t for t, n in samples if n >= 1 and t >= submitted]
    assert up, f"no GPU worker joined while the job ran: {samples}"
    assert up[0] <= succeeded
    # The generation actor ran on the GPU worker's (declared) GPU, on the CPU.
    assert "[devices] Ray assigned GPU [0]" in out and "running on the CPU" in out
    manifest = json.loads((home / "ray-app-gsm" / "eval" / "eval_manifest.json").read_text())
    assert manifest["num_gpus_per_actor"] == 1 and manifest["rows"] == 2
    assert "[eval] done: 2 predictions" in out

    # Idle: the worker goes (idle_timeout_minutes 0.25), the head stays.
    deadline = time.time() + 150
    while True:
        count = _gpu_workers(token)
        if count == 0:
            break
        assert time.time() < deadline, f"GPU worker still up {time.time() - job_ended:.0f}s after the job"
        time.sleep(1)
    down = time.time()
    print(f"[autoscaling] GPU worker up {up[0] - submitted:.1f}s after submission; job took {succeeded - submitted:.1f}s; "
          f"worker gone {down - succeeded:.1f}s after the job succeeded")

    # On the same cluster and data: a job asking for what no node type has ends at once with the error.
    submit_env = {**env, "RAY_AUTH_MODE": "token", "RAY_ADDRESS": DASHBOARD}
    started = time.time()
    proc = subprocess.run(["ray", "job", "submit", "--working-dir", ".", "--", "python", "jobs/evaluate.py",
                           "--num-gpus-per-actor", "2", "--resource-wait-s", "15", "--datasets", "gsm_symbolic_test",
                           "--limit", "2"], cwd=ROOT, env=submit_env, capture_output=True, text=True, timeout=300)
    took = time.time() - started
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "exit code 2" in out, out[-5000:]
    assert ("error: generation actors need 1 x {'CPU': 1, 'GPU': 2}, and no node of this cluster nor any node type its "
            "autoscaler can add has {'CPU': 1, 'GPU': 2}") in out
    assert "gpu_worker {'CPU': 2, 'GPU': 1} x2" in out and "--num-gpus-per-actor" in out
    assert took < 60, took


@slow
def test_gpu_request_on_a_local_ray_without_gpus_ends_after_resource_wait_s(tmp_path):
    """No autoscaler: the job waits its --resource-wait-s for nodes to join, then stops (exit 2)."""
    root = tmp_path / "root"
    subprocess.run([sys.executable, "jobs/prepare_data.py", "--no-use-ray", "--num-templates", "4", "--train-size", "40",
                    "--build-models", "", "--storage-root", str(root)], cwd=ROOT, check=True, capture_output=True, timeout=600)
    env = {**os.environ, "RAY_TMPDIR": tempfile.mkdtemp(prefix="rwl-", dir="/tmp"), "PYTHONUNBUFFERED": "1"}
    env.pop("RAY_ADDRESS", None)
    started = time.time()
    proc = subprocess.run([sys.executable, "jobs/evaluate.py", "--storage-root", str(root), "--num-gpus-per-actor", "1",
                           "--resource-wait-s", "12", "--datasets", "gsm_symbolic_test", "--limit", "2"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    took = time.time() - started
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out[-5000:]
    assert "[resources] waiting for 1 x {'CPU': 1, 'GPU': 1} (generation actors)" in out
    assert "error: generation actors need 1 x {'CPU': 1, 'GPU': 1}, which the cluster did not provide within 12s" in out
    assert "no autoscaler" in out and "--num-gpus-per-actor" in out
    assert took < 60, took
