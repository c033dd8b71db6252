"""Resources that never arrive: wait a bounded time for what a job is about to ask Ray for, then stop
with an error that says what was missing.

Before a job launches Ray Train workers, Ray Data actors or Serve replicas, it calls
`wait_for_resources` (or `reserve`) with one bundle per worker / actor / replica: all of the job's
needs in one list. They are asked of Ray together, as one placement group
(`ray.util.placement_group(bundles, strategy)`), and the job waits until Ray places it. Ray places a
group only on resources that are free now, all bundles at once, so busy nodes do not count and two
kinds of work (reward replicas and generation actors) cannot each pass alone and then not fit
together. A pending group is also what the autoscaler (v1 and v2, KubeRay) sees as demand: it adds
nodes for it, and the demand ends when the group is removed. No `request_resources` call is made, so
no standing request (this job's or another's) is ever replaced or cleared.

While it waits the job says every ~10 s what it waits for and what the cluster has. When the
autoscaler's node types are known and none of them (nor any node) could ever hold a bundle, the job
stops at once; otherwise it stops after `--resource-wait-s`. Without this, Ray would wait for ever,
silently. Once placed, the group is removed right before the job creates its own workers (or, for
SFT across nodes, after reading which nodes it got: trainer/sft.py pins its workers there).

Node types (only for that early verdict and for `gpus_reachable`) come from the autoscaler's cluster
config in the GCS (autoscaler v2, KubeRay) or, for the classic autoscaler (`ray up`, `ray start
--head --autoscaling-config=...`), from the config file its monitor process reads on the head node,
where job drivers run. Ray has no public API for either.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ray_app.errors import ConfigError

# Bookkeeping resources every node has; left out of messages.
_HIDDEN_PREFIXES = ("node:", "memory", "object_store_memory")


class ResourcesUnavailable(ConfigError):
    """The cluster cannot give a job what it asks for (now, or within --resource-wait-s)."""


@dataclass
class NodeType:
    name: str
    resources: dict[str, float]
    max_workers: int


@dataclass
class Capacity:
    """What the cluster has and what its autoscaler could add."""

    nodes: list[dict[str, float]]  # total resources of each alive node
    free: dict[str, float] | None = None  # what is free now, all nodes together (None: not read)
    autoscaler: bool = False  # an autoscaler reports for this cluster
    node_types: list[NodeType] | None = None  # None: unknown (no autoscaler, or its config unreadable)
    source: str = ""  # where node_types came from
    notes: list[str] = field(default_factory=list)


# ------------------------------------------------------------------------------------------------
# Arithmetic on resource dicts
# ------------------------------------------------------------------------------------------------


def _clean(bundle: dict) -> dict[str, float]:
    return {k: float(v) for k, v in bundle.items() if v and float(v) > 0}


def fits(bundle: dict[str, float], node: dict[str, float]) -> bool:
    return all(node.get(k, 0.0) + 1e-9 >= v for k, v in bundle.items())


def _take(node: dict[str, float], bundle: dict[str, float]) -> None:
    for k, v in bundle.items():
        node[k] = node.get(k, 0.0) - v


def effective_bundles(bundles: list[dict], strategy: str = "PACK") -> list[dict[str, float]]:
    """STRICT_PACK puts every bundle on one node: the request is then their sum."""
    bundles = [_clean(b) for b in bundles]
    bundles = [b for b in bundles if b]
    if strategy == "STRICT_PACK" and len(bundles) > 1:
        total: dict[str, float] = {}
        for b in bundles:
            for k, v in b.items():
                total[k] = total.get(k, 0.0) + v
        return [total]
    return bundles


def pack(bundles: list[dict[str, float]], nodes: list[dict[str, float]], strategy: str = "PACK") -> bool:
    """Whether the bundles fit these nodes' totals (first fit, biggest bundles first)."""
    free = [dict(n) for n in nodes]
    used: set[int] = set()
    for b in sorted(bundles, key=lambda b: sorted(b.items(), key=lambda kv: -kv[1]), reverse=True):
        for i, node in enumerate(free):
            if strategy == "STRICT_SPREAD" and i in used:
                continue
            if fits(b, node):
                _take(node, b)
                used.add(i)
                break
        else:
            return False
    return True


def shown(resources: dict[str, float]) -> str:
    """{'CPU': 2, 'GPU': 1} without the per-node bookkeeping keys; whole numbers without '.0'."""
    parts = {k: (int(v) if float(v).is_integer() else round(v, 3)) for k, v in sorted(resources.items())
             if not k.startswith(_HIDDEN_PREFIXES)}
    return json.dumps(parts).replace('"', "'")


def _total(nodes: list[dict[str, float]]) -> dict[str, float]:
    out: dict[str, float] = {}
    for n in nodes:
        for k, v in n.items():
            out[k] = out.get(k, 0.0) + v
    return out


def _describe_bundles(bundles: list[dict[str, float]]) -> str:
    counts: dict[str, int] = {}
    for b in bundles:
        counts[shown(b)] = counts.get(shown(b), 0) + 1
    return " + ".join(f"{n} x {s}" for s, n in counts.items())


def _describe_nodes(nodes: list[dict[str, float]]) -> str:
    """'2 x {'CPU': 16, 'GPU': 8}': each node's total, nodes of one shape counted together (nodes
    without CPUs or GPUs for work, such as a head that runs only drivers, left out)."""
    counts: dict[str, int] = {}
    for n in nodes:
        if shown(n) != "{}":
            counts[shown(n)] = counts.get(shown(n), 0) + 1
    return ", ".join(f"{n} x {s}" for s, n in counts.items()) or "none with CPUs or GPUs for work"


def _describe_capacity(cap: Capacity, per_node: bool = False) -> str:
    has = shown(_total(cap.nodes))
    text = f"cluster has {has if has != '{}' else 'no CPUs or GPUs for work'} on {len(cap.nodes)} node{'s' if len(cap.nodes) != 1 else ''}"
    if per_node:
        text += f" (per node: {_describe_nodes(cap.nodes)})"
    if cap.free is not None:
        text += f", free now {shown(cap.free)}"
    if cap.node_types is not None:
        types = ", ".join(f"{t.name} {shown(t.resources)} x{t.max_workers}" for t in cap.node_types) or "none"
        text += f"; the autoscaler can add: {types}"
    elif cap.autoscaler:
        text += "; an autoscaler runs (its node types unknown here)"
    else:
        text += "; no autoscaler"
    return text


# ------------------------------------------------------------------------------------------------
# Reading the cluster
# ------------------------------------------------------------------------------------------------


def _autoscaler_status() -> dict | None:
    from ray._private import ray_constants
    from ray.experimental.internal_kv import _internal_kv_get, _internal_kv_initialized

    if not _internal_kv_initialized():
        return None
    raw = _internal_kv_get(ray_constants.DEBUG_AUTOSCALING_STATUS)
    return json.loads(raw) if raw else None


def node_types_from_config(config: dict) -> list[NodeType]:
    """Worker node types of an autoscaler YAML (`available_node_types`, head left out)."""
    head = config.get("head_node_type")
    out = []
    for name, spec in (config.get("available_node_types") or {}).items():
        if name == head:
            continue
        limit = spec.get("max_workers", config.get("max_workers", 0))
        out.append(NodeType(name, _clean(spec.get("resources") or {}), int(min(limit, config.get("max_workers", limit)))))
    return out


def _node_types_from_gcs() -> list[NodeType] | None:
    """Autoscaler v2 / KubeRay publish their node groups in the GCS."""
    from ray._private.state import state

    config = state.get_cluster_config()
    if config is None or not config.node_group_configs:
        return None
    return [NodeType(g.name, _clean(dict(g.resources)), g.max_count if g.max_count >= 0 else 10**6)
            for g in config.node_group_configs]


def _node_types_from_monitor(status: dict) -> tuple[bool | None, list[NodeType] | None, str]:
    """The classic autoscaler's config: the file its monitor process (on this head node) reads.

    Returns (configured, node types, file): configured is False for a monitor without a config (a
    cluster started by `ray start` / `ray.init` without --autoscaling-config adds no nodes itself),
    None when the monitor cannot be read here (another machine)."""
    import psutil
    import yaml

    pid = status.get("monitor_pid")
    if not pid:
        return None, None, ""
    try:
        proc = psutil.Process(int(pid))
        args = proc.cmdline()
        path = next((a.split("=", 1)[1] for a in args if a.startswith("--autoscaling-config=")), None)
        if path is None and "--autoscaling-config" in args:
            path = args[args.index("--autoscaling-config") + 1]
        if not path:
            return False, None, ""
        file = Path(path).expanduser()
        if not file.is_absolute():
            file = Path(proc.cwd()) / file
        return True, node_types_from_config(yaml.safe_load(file.read_text())), str(file)
    except (psutil.Error, OSError, ValueError, yaml.YAMLError):
        return None, None, ""  # another machine's monitor, or no access: node types stay unknown


def cluster_capacity() -> Capacity:
    """Alive nodes' total resources, and the autoscaler's node types where they can be read."""
    import ray

    nodes = [_clean(n["Resources"]) for n in ray.nodes() if n.get("Alive")]
    cap = Capacity(nodes=nodes, free=_clean(ray.available_resources()))
    types = _node_types_from_gcs()
    if types is not None:
        cap.autoscaler, cap.node_types, cap.source = True, types, "GCS cluster config"
        return cap
    status = _autoscaler_status()
    if status and "autoscaler_report" in status:
        configured, types, source = _node_types_from_monitor(status)
        if configured is None:  # judge by the worker types the autoscaler reports on
            report = status["autoscaler_report"] or {}
            configured = bool(((report.get("node_availability_summary") or {}).get("node_availabilities")))
        cap.autoscaler, cap.node_types, cap.source = bool(configured), types, source
    return cap


def gpus_reachable(cap: Capacity | None = None) -> bool:
    """Whether GPU work can run on this cluster: a node has GPUs now, or a node type its autoscaler can
    add has them (a cluster whose GPU workers scale from zero has none until a job asks)."""
    cap = cap or cluster_capacity()
    shapes = cap.nodes + [t.resources for t in (cap.node_types or []) if t.max_workers > 0]
    return any(s.get("GPU", 0) > 0 for s in shapes)


# ------------------------------------------------------------------------------------------------
# The wait
# ------------------------------------------------------------------------------------------------


def never_fits(bundles: list[dict[str, float]], cap: Capacity) -> list[dict[str, float]]:
    """Bundles no alive node and no node type the autoscaler can add could ever hold."""
    if cap.node_types is None:
        return []
    shapes = cap.nodes + [t.resources for t in cap.node_types if t.max_workers > 0]
    return [b for b in bundles if not any(fits(b, s) for s in shapes)]


def too_few_nodes(bundles: list[dict[str, float]], cap: Capacity) -> int | None:
    """STRICT_SPREAD (one bundle per node): how many nodes could ever hold the biggest bundle, when that
    is fewer than the bundles (alive nodes plus what the autoscaler can add); None when enough, or unknown."""
    if cap.node_types is None or not bundles:
        return None
    biggest = max(bundles, key=lambda b: sorted(b.values(), reverse=True))
    able = sum(1 for n in cap.nodes if fits(biggest, n))
    able += sum(t.max_workers for t in cap.node_types if t.max_workers > 0 and fits(biggest, t.resources))
    return able if able < len(bundles) else None


class Reservation:
    """A placed placement group: the job's resources, held until `release()` (or the `with` block ends)."""

    def __init__(self, pg, waited: float):
        self.pg, self.waited = pg, waited

    def node_ids(self) -> list[str]:
        """The node each bundle was placed on, in bundle order."""
        from ray.util.placement_group import placement_group_table

        where = placement_group_table(self.pg)["bundles_to_node_id"]
        return [where[i] for i in range(len(where))]

    def release(self) -> None:
        if self.pg is not None:
            from ray.util import remove_placement_group

            remove_placement_group(self.pg)
            self.pg = None

    def __enter__(self) -> "Reservation":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _placed(pg, timeout_s: float) -> bool:
    import ray

    ready, _ = ray.wait([pg.ready()], timeout=max(timeout_s, 0.0))
    return bool(ready)


def reserve(bundles: list[dict], timeout_s: float, what: str, hint: str = "", strategy: str = "PACK", log=print,
            capacity: Callable[[], Capacity] = cluster_capacity, report_every_s: float = 10.0,
            quiet_s: float = 1.0) -> Reservation:
    """Ask Ray for all of `bundles` at once (one placement group, `strategy`) and wait until it is placed.

    Returns the placed Reservation (release it right before creating the real workers); raises
    ResourcesUnavailable at once when no node nor node type could ever hold a bundle (or, with
    STRICT_SPREAD, enough nodes), else after `timeout_s`. `what` names the work ('SFT workers'),
    `hint` the flags that change the request. A request met within `quiet_s` logs nothing."""
    from ray.util import placement_group, remove_placement_group

    wanted = [b for b in (_clean(b) for b in bundles) if b]
    if not wanted:
        return Reservation(None, 0.0)
    asked = _describe_bundles(wanted) + (" on separate nodes" if strategy == "STRICT_SPREAD" and len(wanted) > 1 else "")
    also = f" ({hint})" if hint else ""
    cap = capacity()
    impossible = never_fits(effective_bundles(wanted, strategy), cap)
    if impossible:
        raise ResourcesUnavailable(
            f"{what} need {asked}, and no node of this cluster nor any node type its autoscaler can add has "
            f"{shown(impossible[0])} ({_describe_capacity(cap)}; node types from {cap.source}). Ask for less{also}, "
            "or add a node type that has it")
    if strategy == "STRICT_SPREAD" and (able := too_few_nodes(wanted, cap)) is not None:
        raise ResourcesUnavailable(
            f"{what} need {asked}, and this cluster has and can add only {able} node{'s' if able != 1 else ''} "
            f"that hold one ({_describe_capacity(cap, per_node=True)}; node types from {cap.source}). "
            f"Ask for less{also}, or raise the autoscaler's max_workers")
    started = time.monotonic()
    pg = placement_group(wanted, strategy=strategy)
    try:
        placed = _placed(pg, min(quiet_s, timeout_s))
        while not placed:
            waited = time.monotonic() - started
            if waited >= timeout_s:
                remove_placement_group(pg)  # withdraw the demand (the autoscaler stops adding nodes for it)
                pg = None
                cap = capacity()
                raise ResourcesUnavailable(
                    f"{what} need {asked}, which the cluster did not provide within {timeout_s:.0f}s "
                    f"(--resource-wait-s): {_describe_capacity(cap, per_node=strategy == 'STRICT_SPREAD')}. "
                    f"Ask for less{also}, add nodes that have it, wait for other jobs to end, or wait longer "
                    "with --resource-wait-s")
            log(f"[resources] waiting for {asked} ({what}): {_describe_capacity(capacity(), per_node=strategy == 'STRICT_SPREAD')}; "
                f"{waited:.0f}s of {timeout_s:.0f}s (--resource-wait-s)")
            placed = _placed(pg, min(report_every_s, timeout_s - waited))
        waited = time.monotonic() - started
        if waited > quiet_s:
            log(f"[resources] {what}: {asked} available after {waited:.0f}s")
        reservation, pg = Reservation(pg, waited), None
        return reservation
    finally:
        if pg is not None:  # an error or an interrupt while waiting: withdraw the request
            try:
                remove_placement_group(pg)
            except Exception:  # noqa: BLE001 - Ray already gone: the group went with it
                pass


def wait_for_resources(bundles: list[dict], timeout_s: float, what: str, hint: str = "", strategy: str = "PACK",
                       log=print, capacity: Callable[[], Capacity] = cluster_capacity,
                       report_every_s: float = 10.0) -> float:
    """Return once Ray has placed all of `bundles` (one dict per worker / actor / replica, every kind of
    work the job is about to start, in one list) on free resources, after releasing them for the job's
    own workers; raise ResourcesUnavailable as `reserve` does. Returns the seconds waited.

    Between the release and the job's own request another job may take the resources: the job's work
    then queues in Ray as usual (the check is that they exist and were free, not a lease)."""
    with reserve(bundles, timeout_s, what, hint=hint, strategy=strategy, log=log, capacity=capacity,
                 report_every_s=report_every_s) as held:
        return held.waited
