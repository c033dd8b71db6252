"""Connect to the Ray cluster a job was submitted to, or start a local one on a laptop/CI box."""

from __future__ import annotations

import os


def init_ray(num_cpus: int | None = None, log=print) -> None:
    import ray

    if ray.is_initialized():
        return
    address = os.environ.get("RAY_ADDRESS")
    if address:
        # `ray job submit` sets RAY_ADDRESS; the job joins that cluster (and its dashboard).
        ray.init(address=address, log_to_driver=True)
        log(f"[ray] connected to cluster at {address}: {ray.cluster_resources()}")
        return
    ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=True)
    log(f"[ray] started a local Ray instance: {ray.cluster_resources()}")
