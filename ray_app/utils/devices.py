"""Which device this process may use: the one Ray assigned, never a guess from what the node has.

A Ray actor or task that asked for 0 GPUs runs on the CPU even on a GPU node (otherwise every such
process would pile onto cuda:0); one that asked for GPUs uses the ids Ray gave it. Ray sets
CUDA_VISIBLE_DEVICES to exactly those ids, so the first assigned GPU is `cuda:0` inside the process.
Outside Ray (a bare GPU box, tests, benches), torch decides.
"""

from __future__ import annotations


def in_ray_worker() -> bool:
    try:
        import ray
    except ImportError:
        return False
    return ray.is_initialized() and ray.get_runtime_context().worker.mode == ray.WORKER_MODE


def assigned_device() -> str:
    """'cuda:0' when Ray assigned this worker a GPU, 'cpu' when it assigned none; torch's pick outside Ray."""
    if in_ray_worker():
        import ray

        return "cuda:0" if ray.get_gpu_ids() else "cpu"
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def describe_assignment() -> dict:
    """What Ray gave this process, for logs and tests."""
    import os

    import ray

    return {
        "device": assigned_device(),
        "ray_gpu_ids": [str(g) for g in ray.get_gpu_ids()] if in_ray_worker() else [],
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "node_ip": ray.util.get_node_ip_address() if in_ray_worker() else None,
        "pid": os.getpid(),
    }
