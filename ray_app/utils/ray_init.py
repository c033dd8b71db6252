"""Connect to the Ray cluster a job was submitted to, or start a local one on a laptop/CI box."""

from __future__ import annotations

import os
from pathlib import Path


# The dashboard's Train view lists a run only when the driver that runs `TorchTrainer.fit()` has this
# set (Ray Train reads it there at fit time and passes it on to its controller and workers).
TRAIN_STATE_TRACKING = {"RAY_TRAIN_ENABLE_STATE_TRACKING": "1"}


def init_ray(num_cpus: int | None = None, log=print) -> None:
    for key, value in TRAIN_STATE_TRACKING.items():
        os.environ.setdefault(key, value)  # every job's driver, joining a cluster or starting one
    import ray

    if ray.is_initialized():
        return
    address = os.environ.get("RAY_ADDRESS")
    if address:
        # `ray job submit` sets RAY_ADDRESS to the cluster's GCS; the job joins that cluster. A shell
        # set up for `ray job submit` has the dashboard's http:// address there: a script run from it
        # joins the Ray cluster running on this machine.
        if address.startswith(("http://", "https://")):
            os.environ.pop("RAY_ADDRESS")  # ray.init reads it too, and refuses an http:// address
            address = "auto"
        ray.init(address=address, log_to_driver=True)
        log(f"[ray] connected to cluster at {address}: {ray.cluster_resources()}")
        return
    # Workers import this checkout's ray_app, whichever copy is pip-installed.
    project_root = str(Path(__file__).resolve().parents[2])
    pythonpath = os.pathsep.join(p for p in (project_root, os.environ.get("PYTHONPATH", "")) if p)
    # The dashboard also serves the State API that Ray Train's controller polls; it binds to loopback.
    # address="local": a new instance of our own. Without it ray.init() joins the last cluster whose address
    # Ray recorded on this machine (/tmp/ray/ray_current_cluster), which may be dead or another user's.
    ray.init(
        address="local",
        num_cpus=num_cpus,
        include_dashboard=True,
        log_to_driver=True,
        runtime_env={"env_vars": {"PYTHONPATH": pythonpath, **TRAIN_STATE_TRACKING}},
    )
    log(f"[ray] started a local Ray instance: {ray.cluster_resources()}")


def ensure_connected(log=print) -> None:
    """Connect (or start a local Ray) the first time a stage needs the cluster: a rerun whose stages are
    all reused never starts Ray. Idempotent."""
    import ray

    if ray.is_initialized():
        return
    from ray_app.utils.progress import quiet_ray_data_progress

    init_ray(log=log)
    quiet_ray_data_progress()
