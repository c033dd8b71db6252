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
from ray_app.errors import UserError


class ConfigMismatch(UserError, ValueError):
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
    old = recorded_settings(path)
    if old is not None:
        diff = differing_fields(old, settings)
        if diff:
            raise ConfigMismatch(
                f"{what} in {storage.parent(path)} was made with other settings ({', '.join(diff)} "
                f"{'differs' if len(diff) == 1 else 'differ'}: {'; '.join(describe_differences(old, settings))}). "
                f"Continuing would mix the two. Use another output location or run name, restore the settings, "
                f"or pass {fresh_flag} to delete the earlier outputs and start over"
            )
        return fp
    storage.write_json(path, {"fingerprint": fp, "settings": settings})
    return fp


def recorded_settings(path: str) -> dict[str, Any] | None:
    """The settings recorded at `path` by `check_or_record`, or None when nothing is recorded there."""
    return storage.read_json(path).get("settings", {}) if storage.exists(path) else None


def describe_differences(old: dict, new: dict) -> list[str]:
    """'name: old -> new' for every differing field ('(not set)' where one side lacks it: e.g. `engine`,
    recorded for vLLM only, so folders made with the default engine keep their fingerprints)."""
    def shown(d: dict, k: str) -> str:
        return repr(d[k]) if k in d else "(not set)"

    return [f"{k}: {shown(old, k)} -> {shown(new, k)}" for k in differing_fields(old, new)]


def recorded_differences(path: str, settings: dict) -> list[str] | None:
    """How `settings` differ from those recorded at `path` ('name: old -> new'), or None when nothing is
    recorded there: how a rerun tells reuse from redo before it starts."""
    old = recorded_settings(path)
    return None if old is None else describe_differences(old, settings)
