"""Which device this process may use: the one Ray assigned, never a guess from what the node has.

A Ray actor or task that asked for 0 GPUs runs on the CPU even on a GPU node (otherwise every such
process would pile onto cuda:0); one that asked for GPUs uses the ids Ray gave it. Ray sets
CUDA_VISIBLE_DEVICES to exactly those ids, so the first assigned GPU is `cuda:0` inside the process.
Outside Ray (a bare GPU box, tests, benches), torch decides.

A GPU that Ray assigned but torch cannot use (a node that declares GPUs it does not have, a driver or
container problem, a CPU-only torch build) is an error naming the node and the ids: the work asked
for a GPU, and running it on the CPU instead would be silently slow or run out of memory later.
Simulated clusters whose GPUs are declared on purpose say so, and their work runs on the CPU with
one log line: Ray's `fake_multinode` autoscaler (its nodes inherit `RAY_FAKE_CLUSTER=1` from
`ray start`), or any node started with `RAY_APP_DECLARED_GPUS=cpu` in its environment (the tests'
`ray.cluster_utils` clusters).
"""

from __future__ import annotations

import os

# A node that declares GPUs it has not on purpose (a simulated cluster) sets this to 'cpu'.
DECLARED_GPUS_ENV = "RAY_APP_DECLARED_GPUS"


class AssignedGPUNotVisible(RuntimeError):
    """Ray gave this worker GPUs that torch cannot use."""


def declared_gpus_run_on_cpu() -> bool:
    """Whether this node's GPUs are declared on purpose (a simulated cluster): work then runs on the CPU."""
    return os.environ.get(DECLARED_GPUS_ENV, "").lower() == "cpu" or os.environ.get("RAY_FAKE_CLUSTER") == "1"


def in_ray_worker() -> bool:
    try:
        import ray
    except ImportError:
        return False
    return ray.is_initialized() and ray.get_runtime_context().worker.mode == ray.WORKER_MODE


def ray_assigned_device() -> str | None:
    """What Ray gave this worker: 'cuda:0' (its first assigned GPU) or 'cpu'; None outside Ray."""
    if not in_ray_worker():
        return None
    import ray

    return "cuda:0" if ray.get_gpu_ids() else "cpu"


_warned_no_cuda = False


def assigned_device() -> str:
    """'cuda:0' when Ray assigned this worker a GPU, 'cpu' when it assigned none; torch's pick outside Ray.

    Raises AssignedGPUNotVisible when Ray assigned GPUs that torch cannot see (see the module's notes
    for simulated clusters)."""
    import torch

    device = ray_assigned_device()
    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        import ray

        ids, visible = ray.get_gpu_ids(), os.environ.get("CUDA_VISIBLE_DEVICES")
        node = f"{ray.util.get_node_ip_address()} (node {ray.get_runtime_context().get_node_id()[:12]})"
        if not declared_gpus_run_on_cpu():
            raise AssignedGPUNotVisible(
                f"Ray assigned GPU {ids} on {node} (CUDA_VISIBLE_DEVICES={visible}), but torch {torch.__version__} "
                f"sees no CUDA device there (torch.cuda.is_available() is False): check that node's driver and its "
                f"torch build (a CPU-only wheel?), or that the node does not declare GPUs it has not. A simulated "
                f"cluster whose GPUs are declared on purpose starts its nodes with {DECLARED_GPUS_ENV}=cpu")
        global _warned_no_cuda
        if not _warned_no_cuda:
            _warned_no_cuda = True
            print(f"[devices] Ray assigned GPU {ids} on {node} (CUDA_VISIBLE_DEVICES={visible}); this simulated "
                  f"cluster's GPUs are declared, not real ({DECLARED_GPUS_ENV}=cpu or RAY_FAKE_CLUSTER=1): running on the CPU",
                  flush=True)
        return "cpu"
    return device


def describe_assignment() -> dict:
    """What Ray gave this process (`device`) and where its torch work runs (`runs_on`), for logs and tests."""
    import ray

    return {
        "device": ray_assigned_device() or assigned_device(),
        "runs_on": assigned_device(),
        "ray_gpu_ids": [str(g) for g in ray.get_gpu_ids()] if in_ray_worker() else [],
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "node_ip": ray.util.get_node_ip_address() if in_ray_worker() else None,
        "pid": os.getpid(),
    }
