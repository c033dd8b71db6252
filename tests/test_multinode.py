"""A simulated multi-node GPU cluster on loopback: a head without GPUs or CPUs for work, and worker
nodes that declare one GPU each, each with its own address and its own HOME / cache folder, so a
node-local path handed to another node fails here as it would on a real cluster. Storage is a real
S3-compatible server. SFT places one worker per node, survives losing a node (a replacement joins,
as the autoscaler would add one), and a second job reads the trained model from the bucket."""

import json
import os
import secrets
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from conftest import ROOT, make_bucket, upload_data

pytestmark = pytest.mark.slow

NODE_CPUS = 2


def _node_env(home: Path) -> dict:
    home.mkdir(parents=True, exist_ok=True)
    # Own HOME and cache per node: embedded models, downloads and template caches are node-local.
    # TORCH_EXTENSIONS_DIR stays shared: it holds DeepSpeed's compiled CPU ops, as a node image would.
    torch_ext = os.environ.get("TORCH_EXTENSIONS_DIR") or str(Path("~/.cache/torch_extensions").expanduser())
    return {"HOME": str(home), "XDG_CACHE_HOME": str(home / ".cache"), "TORCH_EXTENSIONS_DIR": torch_ext,
            "HF_HUB_OFFLINE": "1", "WANDB_SILENT": "true",
            # The GPUs these nodes declare are not real: work given one runs on the CPU (utils/devices.py).
            "RAY_APP_DECLARED_GPUS": "cpu",
            "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": os.environ["RAY_AUTH_TOKEN"]}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, s3_server, full_data):
    import ray
    from ray.cluster_utils import Cluster

    ray.shutdown()
    homes = tmp_path_factory.mktemp("nodes")
    # Token auth on, as Ray 2.60 turns it on once this machine has a token: nodes with their own HOME
    # find no ~/.ray/auth_token, so (as on a real cluster) the token travels in their environment.
    token_file = Path("~/.ray/auth_token").expanduser()
    token = os.environ.get("RAY_AUTH_TOKEN") or (token_file.read_text().strip() if token_file.is_file() else secrets.token_hex(32))
    saved = {k: os.environ.get(k) for k in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN")}
    os.environ.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token)
    # Ray reads the auth mode once per process: re-read it from the environment just set (run alone,
    # this process has read "disabled" already; after other tests it may have read "token").
    from ray._private.authentication_test_utils import reset_auth_token_state

    reset_auth_token_state()
    # The head runs drivers, controllers and Serve's proxy, but no work: 0 CPUs, 0 GPUs for tasks.
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "num_gpus": 0, "include_dashboard": True,
                                                            "dashboard_port": 0})
    try:
        nodes = {}
        for name, ip in (("node-b", "127.0.0.2"), ("node-c", "127.0.0.3")):
            nodes[name] = cluster.add_node(num_cpus=NODE_CPUS, num_gpus=1, node_ip_address=ip, env_vars=_node_env(homes / name))
        cluster.wait_for_nodes()
        yield {"cluster": cluster, "nodes": nodes, "homes": homes}
    finally:
        # Always, also when a node failed to start: a head left running would be joined by every
        # later `ray.init()` on this machine (Ray records it as the current cluster).
        ray.shutdown()
        cluster.shutdown()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _driver_env(cluster) -> dict:
    return {**os.environ, "RAY_ADDRESS": cluster.address, "PYTHONUNBUFFERED": "1"}


def test_devices_come_from_rays_assignment(cluster):
    """On nodes that declare GPUs: a 0-GPU actor chooses the CPU, a 1-GPU actor the GPU Ray gave it;
    a 0-GPU generation actor really loads its model on the CPU."""
    import ray

    from ray_app.utils.devices import describe_assignment

    ray.init(address=cluster["cluster"].address)
    try:
        probe = ray.remote(describe_assignment)
        cpu = ray.get(probe.options(num_cpus=1, num_gpus=0).remote())
        gpu = ray.get(probe.options(num_cpus=1, num_gpus=1).remote())
        assert cpu["node_ip"] in ("127.0.0.2", "127.0.0.3") and cpu["device"] == "cpu"
        assert gpu["device"] == "cuda:0" and gpu["ray_gpu_ids"] == [gpu["cuda_visible_devices"]]
    finally:
        ray.shutdown()


def _wait_for(predicate, timeout: float, what: str):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(1)
    raise AssertionError(f"timed out waiting for {what}")


def test_sft_across_nodes_survives_losing_a_node_and_a_second_job_reads_the_model_from_s3(cluster, full_data):
    from ray_app import storage

    root = make_bucket("multinode") + "/gsm"
    upload_data(full_data, root + "/data")  # the data in the storage root, where every node reads it
    run, steps = "sft-2nodes", 16
    run_dir = f"{root}/sft/{run}"
    cmd = [sys.executable, str(ROOT / "jobs/sft.py"), "--storage-root", root, "--run-name", run,
           "--nnodes", "2", "--nproc-per-node", "1", "--no-use-gpu", "--max-steps", str(steps), "--save-steps", "4",
           "--logging-steps", "2", "--max-failures", "2", "--eval-limit", "8", "--max-new-tokens", "24"]
    log = []
    driver = subprocess.Popen(cmd, cwd=ROOT, env=_driver_env(cluster["cluster"]), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    reader = threading.Thread(target=lambda: log.extend(driver.stdout), daemon=True)
    reader.start()

    # Lose node-c once Ray Train has registered a checkpoint (its snapshot in the bucket lists it); a
    # replacement node joins a little later.
    snapshot = f"{run_dir}/checkpoint_manager_snapshot.json"
    _wait_for(lambda: (storage.exists(snapshot) and "checkpoint_" in storage.read_text(snapshot)) or driver.poll() is not None,
              900, "the first registered checkpoint")
    assert driver.poll() is None, "".join(log)[-5000:]
    cluster["cluster"].remove_node(cluster["nodes"]["node-c"])
    time.sleep(5)
    cluster["cluster"].add_node(num_cpus=NODE_CPUS, num_gpus=1, node_ip_address="127.0.0.4",
                                env_vars=_node_env(cluster["homes"] / "node-d"))
    driver.wait(timeout=1500)
    reader.join(timeout=10)
    output = "".join(log)
    assert driver.returncode == 0, output[-8000:]

    manifest = storage.read_json(f"{run_dir}/run_manifest.json")
    print(output[-3000:])  # shown by pytest when an assertion below fails
    assert manifest["global_step"] == steps  # the planned optimizer steps, after the restart
    assert manifest["resumed_from_checkpoint"] is True and manifest["resumed_from_step"] in (4, 8, 12)
    ips = [p["node_ip"] for p in manifest["placement"]]
    assert sorted(ips) == ["127.0.0.2", "127.0.0.4"], manifest["placement"]  # one per node, the replacement included
    assert all(p["device"] == "cpu" for p in manifest["placement"])  # asked for no GPUs: CPU, on GPU nodes
    assert manifest["after_training_check"]["device"] == "cpu"  # ran as a Ray task, not in the driver
    assert "[sft] placement: rank 0 on 127.0.0.2" in output or "[sft] placement: rank 0 on 127.0.0.4" in output

    # Checkpoints and the exported model are objects in the bucket; no local 's3:' folder appeared.
    objects = storage.list_files(run_dir, recursive=True)
    assert any("/checkpoint_" in p and "global_step" in p for p in objects)
    assert f"{run_dir}/final_model/model.safetensors" in objects
    assert not (ROOT / "s3:").exists()
    # Each node built the embedded model in its own cache from the data in the bucket.
    for node in ("node-b", "node-d"):
        assert list((cluster["homes"] / node / ".cache/ray_app/models").glob("tiny-gemma3-small-*/config.json")), node

    # A second job reads the model from the bucket (relative to the storage root) on a worker node
    # (no GPU for its actors: the GPUs these nodes declare are not real).
    out = subprocess.run([sys.executable, str(ROOT / "jobs/evaluate.py"), "--storage-root", root,
                          "--models", f"sft=sft/{run}/final_model", "--datasets", "gsm_symbolic_test", "--limit", "3",
                          "--max-new-tokens", "16", "--num-gpus-per-actor", "0"], cwd=ROOT, env=_driver_env(cluster["cluster"]),
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    predictions = [json.loads(line) for line in storage.read_text(f"{root}/eval/predictions.jsonl").splitlines()]
    assert len(predictions) == 3 and {p["model"] for p in predictions} == {"sft"}
    eval_manifest = storage.read_json(f"{root}/eval/eval_manifest.json")
    assert eval_manifest["settings"]["models"]["sft"].startswith(f"{run_dir}/final_model@")
