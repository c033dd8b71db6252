"""Config fingerprints: every output says which settings made it, and a run refuses to continue
from storage that other settings made.

A fingerprint is a short hash of the settings that change what a stage produces (not of those that
only change how fast or where: logging, worker counts for inference, ports). Each stage writes its
settings and fingerprint next to its outputs at start; a rerun compares, and on a difference stops
with the fields that differ and how to start over.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from ray_app import storage


class ConfigMismatch(ValueError):
    """Outputs in storage were made with other settings; the message names the fields."""


def fingerprint(settings: dict) -> str:
    canonical = json.dumps(settings, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def differing_fields(old: dict, new: dict) -> list[str]:
    return sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))


def check_or_record(path: str, settings: dict, what: str, fresh_flag: str) -> str:
    """Compare `settings` with those recorded at `path` (a JSON file in storage), or record them.

    Returns the fingerprint; raises ConfigMismatch naming every differing field, old -> new.
    """
    fp = fingerprint(settings)
    if storage.exists(path):
        recorded: dict[str, Any] = storage.read_json(path)
        old = recorded.get("settings", {})
        diff = differing_fields(old, settings)
        if diff:
            shown = "; ".join(f"{k}: {old.get(k)!r} -> {settings.get(k)!r}" for k in diff)
            raise ConfigMismatch(
                f"{what} in {storage.parent(path)} was made with other settings ({', '.join(diff)} "
                f"{'differs' if len(diff) == 1 else 'differ'}: {shown}). "
                f"Continuing would mix the two. Use another output location or run name, restore the settings, "
                f"or pass {fresh_flag} to delete the earlier outputs and start over"
            )
        return fp
    storage.write_json(path, {"fingerprint": fp, "settings": settings})
    return fp


def recorded_differences(path: str, settings: dict) -> list[str] | None:
    """The fields in which `settings` differ from those recorded at `path` (as 'name: old -> new'), or
    None when nothing is recorded there: how a rerun tells reuse from redo before it starts."""
    if not storage.exists(path):
        return None
    old = storage.read_json(path).get("settings", {})
    return [f"{k}: {old.get(k)!r} -> {settings.get(k)!r}" for k in differing_fields(old, settings)]
