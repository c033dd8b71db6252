"""Scheduling as asked, on a simulated cluster: a head without CPUs or GPUs for work and two worker
nodes that declare 8 GPUs each, on their own loopback addresses (Ray Train tells nodes apart by
address). The GPUs are declared, not real, so SFT itself does not run here: its driver-side placement
step does, then Ray Train with that placement and a training function that only reports where it runs.

- `--nnodes 2 --nproc-per-node 4` reserves one 4-GPU bundle per node and pins the 8 workers 4 per
  node; Ray Train then runs 4 workers on each node (local world size 4, node ranks 0 and 1, the
  workers' own placement check passing); asking 3 nodes of 2 stops once, at start, saying what each
  node needs and what nodes have.
- A job that needs more than is free waits, saying so, and runs when the other job's resources are
  released; all of a job's bundles are asked together; no autoscaler request is made or cleared.
- An assigned GPU that torch cannot see is an error; checkpoint folders on a node other than rank 0's
  stay at the limit; the node's scratch folder is removed when a worker fails.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from types import SimpleNamespace

import pytest

GPU_WORKER = {"CPU": 1, "GPU": 1}


@pytest.fixture(scope="module")
def eight_gpu_nodes():
    import ray
    from ray.cluster_utils import Cluster

    ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "num_gpus": 0, "include_dashboard": False})
    try:
        nodes = [cluster.add_node(num_cpus=8, num_gpus=8, node_ip_address=ip) for ip in ("127.0.0.2", "127.0.0.3")]
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, logging_level="ERROR")
        yield {"cluster": cluster, "node_ids": sorted(n.node_id for n in nodes)}
    finally:
        ray.shutdown()
        cluster.shutdown()


def _cfg(nnodes: int, nproc: int, wait_s: float = 20.0):
    # The three fields place_workers reads (SFTConfig has them with the same names).
    return SimpleNamespace(nnodes=nnodes, nproc_per_node=nproc, resource_wait_s=wait_s)


def _gpus_free_again(total: float = 16.0, within: float = 10.0) -> bool:
    import ray

    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if ray.available_resources().get("GPU", 0) == total:
            return True
        time.sleep(0.2)
    return False


def test_two_nodes_of_four_workers_are_pinned_four_per_node_on_eight_gpu_nodes(eight_gpu_nodes):
    from ray_app.trainer.sft import NODE_ID_LABEL, place_workers

    lines = []
    strategy, pins = place_workers(_cfg(2, 4), GPU_WORKER, log=lines.append)
    assert strategy == "PACK" and len(pins) == 8
    pinned = [p[NODE_ID_LABEL] for p in pins]
    assert Counter(pinned) == {eight_gpu_nodes["node_ids"][0]: 4, eight_gpu_nodes["node_ids"][1]: 4}
    assert pinned[:4] == [pinned[0]] * 4  # ranks 0-3 on one node, 4-7 on the other (node rank = rank // 4)
    assert any("[sft] reserved nodes: 4 workers on each of" in line for line in lines)
    assert _gpus_free_again(), "the reservation was not released before the workers' own group"
    # One node, or one worker per node: Ray's strategies alone are exact, no pins.
    assert place_workers(_cfg(1, 4), GPU_WORKER, log=lines.append) == ("STRICT_PACK", None)
    assert place_workers(_cfg(2, 1), GPU_WORKER, log=lines.append) == ("STRICT_SPREAD", None)
    assert _gpus_free_again()


def test_ray_train_runs_four_workers_on_each_node(eight_gpu_nodes, tmp_path):
    import json

    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    from ray_app.trainer.sft import place_workers

    def where_am_i(config):  # nested: Ray pickles it by value
        import json
        import os

        import ray
        import ray.train

        from ray_app.trainer.sft import check_placement

        context = ray.train.get_context()
        check_placement(context, config["cfg"])  # the workers' own guard: 4 on this node, node rank < 2
        record = {"node": ray.get_runtime_context().get_node_id(), "ip": ray.util.get_node_ip_address(),
                  "local_world_size": context.get_local_world_size(), "node_rank": context.get_node_rank()}
        with open(os.path.join(config["out"], f"rank-{context.get_world_rank()}.json"), "w") as f:
            json.dump(record, f)

    cfg = _cfg(2, 4)
    strategy, pins = place_workers(cfg, GPU_WORKER, log=lambda _: None)
    trainer = TorchTrainer(
        where_am_i, train_loop_config={"out": str(tmp_path), "cfg": cfg},
        scaling_config=ray.train.ScalingConfig(num_workers=8, use_gpu=True, resources_per_worker=GPU_WORKER,
                                               placement_strategy=strategy, label_selector=pins),
        torch_config=TorchConfig(backend="gloo"),  # declared GPUs: no NCCL
        run_config=ray.train.RunConfig(name="placement", storage_path=str(tmp_path / "runs"),
                                       failure_config=ray.train.FailureConfig(max_failures=0, controller_failure_limit=0)))
    trainer.fit()
    ranks = [json.loads((tmp_path / f"rank-{r}.json").read_text()) for r in range(8)]
    assert Counter(r["ip"] for r in ranks) == {"127.0.0.2": 4, "127.0.0.3": 4}
    assert [r["node"] for r in ranks] == [p["ray.io/node-id"] for p in pins]
    assert {r["local_world_size"] for r in ranks} == {4} and sorted(r["node_rank"] for r in ranks) == [0] * 4 + [1] * 4
    assert _gpus_free_again(within=30)


def test_three_nodes_asked_of_two_stops_once_at_start_saying_why(eight_gpu_nodes):
    from ray_app.config import ConfigError
    from ray_app.trainer.sft import place_workers
    from ray_app.utils.resources import ResourcesUnavailable

    lines = []
    started = time.monotonic()
    with pytest.raises(ResourcesUnavailable) as e:
        place_workers(_cfg(3, 4, wait_s=2), GPU_WORKER, log=lines.append)
    assert time.monotonic() - started < 10
    assert isinstance(e.value, ConfigError)  # 'error: ...', exit 2
    msg = str(e.value)
    assert ("SFT workers (4 per node x 3 nodes) need 3 x {'CPU': 4, 'GPU': 4} on separate nodes, which the cluster "
            "did not provide within 2s") in msg
    assert "2 x {'CPU': 8, 'GPU': 8}" in msg and "--nnodes" in msg and "--nproc-per-node" in msg
    assert _gpus_free_again()  # the pending request was withdrawn


def test_too_many_nodes_stops_at_once_when_the_autoscaler_cannot_add_them():
    """With the autoscaler's node types known, a STRICT_SPREAD need that can never fit stops without waiting."""
    from ray_app.utils.resources import Capacity, NodeType, ResourcesUnavailable, reserve

    cap = Capacity(nodes=[{}, {"CPU": 16.0, "GPU": 8.0}], autoscaler=True, source="test.yaml",
                   node_types=[NodeType("gpu8", {"CPU": 16.0, "GPU": 8.0}, 1), NodeType("gpu1", {"CPU": 4.0, "GPU": 1.0}, 5)])
    started = time.monotonic()
    with pytest.raises(ResourcesUnavailable) as e:
        reserve([{"CPU": 4, "GPU": 4}] * 3, 600, "SFT workers", hint="--nnodes", strategy="STRICT_SPREAD", capacity=lambda: cap)
    assert time.monotonic() - started < 1
    assert "need 3 x {'CPU': 4, 'GPU': 4} on separate nodes" in str(e.value) and "only 2 nodes that hold one" in str(e.value)


def test_a_job_waits_for_what_another_job_holds_and_runs_when_it_ends(eight_gpu_nodes, monkeypatch):
    import ray
    import ray.autoscaler.sdk
    from ray.util import placement_group, remove_placement_group

    from ray_app.utils.resources import ResourcesUnavailable, wait_for_resources

    # The wait never touches the autoscaler's standing request (another job's, maybe): no request_resources.
    monkeypatch.setattr(ray.autoscaler.sdk, "request_resources", lambda *a, **k: pytest.fail("request_resources called"))
    other = placement_group([{"GPU": 8}, {"GPU": 6}], strategy="STRICT_SPREAD")  # another job: 2 of 16 GPUs free
    assert other.wait(30)
    try:
        # All of a job's needs at once: 2 reward replicas and 2 generation actors do not fit in 2 free GPUs,
        # although each kind alone would.
        assert wait_for_resources([{"GPU": 1}] * 2, 5, "reward replicas", log=pytest.fail) < 1.5
        with pytest.raises(ResourcesUnavailable, match=r"need 4 x \{'GPU': 1\}, which the cluster did not provide within 1s"):
            wait_for_resources([{"GPU": 1}] * 4, 1, "reward replicas and generation actors", log=lambda _: None)

        lines, outcome = [], {}

        def job():
            try:
                outcome["waited"] = wait_for_resources([GPU_WORKER] * 4, 30, "generation actors", log=lines.append,
                                                       report_every_s=0.5)
            except Exception as err:  # noqa: BLE001 - reported by the asserts below
                outcome["error"] = err

        waiter = threading.Thread(target=job)
        waiter.start()
        time.sleep(2.5)
        assert waiter.is_alive(), outcome
        remove_placement_group(other)  # the other job ends
        other = None
        waiter.join(timeout=20)
        assert not waiter.is_alive() and "error" not in outcome, outcome
        assert 2 <= outcome["waited"] < 15
        waiting = [line for line in lines if line.startswith("[resources] waiting for 4 x {'CPU': 1, 'GPU': 1} (generation actors)")]
        assert waiting and "free now" in waiting[0] and "'GPU': 2" in waiting[0].split("free now", 1)[1]
        assert "available after" in lines[-1]
        assert _gpus_free_again()  # released for the job's own actors
    finally:
        if other is not None:
            remove_placement_group(other)


def test_an_assigned_gpu_torch_cannot_see_is_an_error_naming_node_and_ids(monkeypatch):
    import ray
    import torch

    from ray_app.utils import devices

    monkeypatch.delenv("RAY_FAKE_CLUSTER", raising=False)
    monkeypatch.delenv(devices.DECLARED_GPUS_ENV, raising=False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    monkeypatch.setattr(devices, "ray_assigned_device", lambda: "cuda:0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(ray, "get_gpu_ids", lambda: [3])
    monkeypatch.setattr(ray.util, "get_node_ip_address", lambda: "10.0.0.7")
    monkeypatch.setattr(ray, "get_runtime_context", lambda: SimpleNamespace(get_node_id=lambda: "ab12" * 14))
    with pytest.raises(devices.AssignedGPUNotVisible) as e:
        devices.assigned_device()
    assert "Ray assigned GPU [3] on 10.0.0.7 (node ab12ab12ab12)" in str(e.value)
    assert "CUDA_VISIBLE_DEVICES=3" in str(e.value) and "torch.cuda.is_available() is False" in str(e.value)
    # A simulated cluster that declares its GPUs on purpose runs the work on the CPU.
    monkeypatch.setenv(devices.DECLARED_GPUS_ENV, "cpu")
    assert devices.assigned_device() == "cpu"


def _fake_train_context(monkeypatch, world_rank: int, local_rank: int, reports: list):
    import ray.train

    context = SimpleNamespace(get_world_rank=lambda: world_rank, get_local_rank=lambda: local_rank,
                              get_world_size=lambda: 8, get_node_rank=lambda: world_rank // 4)
    monkeypatch.setattr(ray.train, "get_context", lambda: context)
    monkeypatch.setattr(ray.train, "report", lambda metrics, checkpoint=None: reports.append(checkpoint))


def test_checkpoint_folders_on_a_node_other_than_rank_0s_stay_at_the_limit(tmp_path, monkeypatch):
    """HF rotates checkpoints only on world rank 0; the report callback rotates on every node."""
    from ray_app.trainer.sft import SAVE_TOTAL_LIMIT, _make_callbacks

    reports = []
    _fake_train_context(monkeypatch, world_rank=4, local_rank=0, reports=reports)  # node rank 1's first worker
    callbacks = _make_callbacks(SimpleNamespace(fail_at_step=0, resolved_run_name="run", run_dir=str(tmp_path)))
    report = next(c for c in callbacks if type(c).__name__ == "ReportCheckpointToRay")
    scratch = tmp_path / "scratch"
    for step in (2, 4, 6, 8):
        (scratch / f"checkpoint-{step}" / "global_step").mkdir(parents=True)
        (scratch / f"checkpoint-{step}" / "global_step" / "shard.pt").write_bytes(b"x" * 16)
        report.on_save(SimpleNamespace(output_dir=str(scratch)), SimpleNamespace(log_history=[], global_step=step), None)
        assert sorted(p.name for p in scratch.iterdir()) == [f"checkpoint-{step}"][:SAVE_TOTAL_LIMIT]
    assert len(reports) == 4 and all(r is not None for r in reports)  # each save was handed to Ray Train first


def test_node_scratch_is_removed_when_a_worker_fails(tmp_path, monkeypatch):
    from dataclasses import asdict

    from ray_app.config import SFTConfig
    from ray_app.trainer import sft

    monkeypatch.setattr(sft.tempfile, "gettempdir", lambda: str(tmp_path))
    _fake_train_context(monkeypatch, world_rank=4, local_rank=0, reports=[])
    cfg = SFTConfig()
    stale = sft.scratch_dir(cfg.resolved_run_name, cfg.run_dir, "earlier")  # left by a worker killed outright
    stale.mkdir(parents=True)
    other = sft.scratch_dir(cfg.resolved_run_name, "s3://another/root/sft/run", "theirs")  # same name, another run folder
    other.mkdir(parents=True)

    def fails(config, output_dir):
        (output_dir / "checkpoint-2").mkdir(parents=True)
        raise RuntimeError("lost a rank")

    monkeypatch.setattr(sft, "_train_on_worker", fails)
    with pytest.raises(RuntimeError, match="lost a rank"):
        sft.train_func({"sft": asdict(cfg), "attempt_id": "now"})
    assert not sft.scratch_dir(cfg.resolved_run_name, cfg.run_dir, "now").exists() and not stale.exists()
    assert other.exists()
