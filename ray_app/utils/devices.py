"""Which device this process may use: the one Ray assigned, never a guess from what the node has.

A Ray actor or task that asked for 0 GPUs runs on the CPU even on a GPU node (otherwise every such
process would pile onto cuda:0); one that asked for GPUs uses the ids Ray gave it. Ray sets
CUDA_VISIBLE_DEVICES to exactly those ids, so the first assigned GPU is `cuda:0` inside the process.
Outside Ray (a bare GPU box, tests, benches), torch decides.

A GPU that Ray assigned but torch cannot use (a node that declares GPUs it does not have, as the
local `fake_multinode` autoscaling cluster does, or a CPU-only torch build) is not used: the process
says so in one log line and runs on the CPU rather than failing on its first `.to("cuda")`.
"""

from __future__ import annotations


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
    """'cuda:0' when Ray assigned this worker a GPU (and torch can use it), 'cpu' when it assigned none
    or torch has no CUDA; torch's pick outside Ray."""
    import torch

    device = ray_assigned_device()
    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        global _warned_no_cuda
        if not _warned_no_cuda:
            import os

            import ray

            _warned_no_cuda = True
            print(f"[devices] Ray assigned GPU {ray.get_gpu_ids()} (CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')}) "
                f"but torch sees no CUDA device (a node that declares GPUs it has not, or a CPU-only torch); running on the CPU",
                flush=True)
        return "cpu"
    return device


def describe_assignment() -> dict:
    """What Ray gave this process (`device`) and where its torch work runs (`runs_on`), for logs and tests."""
    import os

    import ray

    return {
        "device": ray_assigned_device() or assigned_device(),
        "runs_on": assigned_device(),
        "ray_gpu_ids": [str(g) for g in ray.get_gpu_ids()] if in_ray_worker() else [],
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "node_ip": ray.util.get_node_ip_address() if in_ray_worker() else None,
        "pid": os.getpid(),
    }
