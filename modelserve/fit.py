"""Does a plan fit the cluster? Checked before deploying, so a plan that cannot be placed fails
at once (naming the section, what it needs and what is free) instead of waiting out the
deploy timeout. Pure: the cluster's numbers come in as arguments.

It counts what the apply makes Ray start (Ray's rules, with their sources: raycompat.surge_replicas):
- A new section starts `replicas`; an autoscaling one starts `initial_replicas`, which the planner
  sets to at least one (plan.deployment_options), so `0-N` starts one. Ray sets an autoscaling
  target back to `initial_replicas` on every config change, so a changed section does too.
- A roll-out with surge (`rollout = surge`) starts its surge of new replicas, plus what the target
  grew by, while every old replica keeps its room; Ray waits forever for room that is not there.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace

from modelserve.keys import ROLL_OUT, Replicas
from modelserve.plan import max_surge_percent
from modelserve.raycompat import surge_replicas
from modelserve.settings import SectionSpec

_KINDS = (("CPU", "cpu_cost"), ("GPU", "gpu_cost"))
_EPSILON = 1e-9
NEW, UNCHANGED, REMOVE = "new", "unchanged", "remove"  # plan.Change actions, with ROLL_OUT and IN_PLACE


@dataclass(frozen=True)
class Node:
    """One alive node: what it offers and what is in use on it (anyone's)."""

    total: Mapping[str, float]
    used: Mapping[str, float] = field(default_factory=dict)

    def free(self, kind: str) -> float:
        return self.total.get(kind, 0.0) - self.used.get(kind, 0.0)


@dataclass(frozen=True)
class Held:
    """A running application's replicas (those not stopping): what each takes, and its node."""

    each: Mapping[str, float]
    nodes: Sequence[str]


@dataclass(frozen=True)
class ClusterResources:
    """The cluster's alive nodes by id, and what each running application holds."""

    nodes: Mapping[str, Node]
    apps: Mapping[str, Held] = field(default_factory=dict)

    def total(self, kind: str) -> float:
        return sum(node.total.get(kind, 0.0) for node in self.nodes.values())

    def used(self, kind: str) -> float:
        return sum(node.used.get(kind, 0.0) for node in self.nodes.values())

    def held(self, app: str, kind: str) -> float:
        held = self.apps.get(app)
        return held.each.get(kind, 0.0) * len(held.nodes) if held else 0.0

    def count(self, app: str) -> int:
        held = self.apps.get(app)
        return len(held.nodes) if held else 0


@dataclass(frozen=True)
class _Start:
    spec: SectionSpec
    action: str
    count: int


def _amount(value: float) -> str:
    return f"{value:g}"


def target_replicas(spec: SectionSpec, action: str, running: int) -> int:
    """How many replicas Ray aims for once the apply is sent."""
    if not spec.replicas.autoscaling:
        return spec.replicas.max
    if action == UNCHANGED:
        return max(running, spec.replicas.min)
    return max(spec.replicas.min, 1)  # initial_replicas, which every config change restores


def replicas_started(spec: SectionSpec, action: str, running: int, surge_percent: int) -> int:
    """How many replicas Ray starts at once, while the running ones still hold their room."""
    target = target_replicas(spec, action, running)
    if action == ROLL_OUT and surge_percent > 0:
        return max(0, min(target, surge_replicas(target, surge_percent) + target - running))
    if action == ROLL_OUT:
        return 0  # old replicas stop first: their room is what the new ones take
    return max(0, target - running)


def fit_problems(
    sections: Iterable[SectionSpec], cluster: ClusterResources, changes: Mapping[str, str] | None = None
) -> list[str]:
    """Every way the sections cannot be placed on the cluster, one problem each. `changes` is what
    the apply does to each application (`plan.diff`: new, roll out, update in place, unchanged,
    remove); a section not in it is new."""
    specs = list(sections)
    actions = dict(changes or {})
    problems = [p for spec in specs for p in _replica_problems(spec, cluster)]
    totals = _total_problems(specs, cluster, actions)
    if totals:
        return problems + totals
    return problems + _start_problems(specs, cluster, actions)


def _replica_problems(spec: SectionSpec, cluster: ClusterResources) -> list[str]:
    problems = []
    for kind, field_name in _KINDS:
        need = float(getattr(spec, field_name))
        biggest = max((node.total.get(kind, 0.0) for node in cluster.nodes.values()), default=0.0)
        if need > biggest + _EPSILON:
            problems.append(
                f"[{spec.section}] {field_name} = {_amount(need)}: each replica needs {_amount(need)} {kind}, and "
                f"no node of the cluster has more than {_amount(biggest)}; lower {field_name} or add a node that has it"
            )
    if spec.max_replicas_per_node is not None and spec.replicas.min > spec.max_replicas_per_node * len(cluster.nodes):
        problems.append(
            f"[{spec.section}] replicas = {spec.replicas}: at most {spec.max_replicas_per_node} per node "
            f"(max_replicas_per_node) on {len(cluster.nodes)} node(s); lower replicas or add nodes"
        )
    return problems


def _total_problems(specs: list[SectionSpec], cluster: ClusterResources, actions: Mapping[str, str]) -> list[str]:
    """What the sections hold once the apply is done, against what is free beside other work (what
    the applications this apply replaces or removes hold counts as free)."""
    problems = []
    replaced = {s.app_name for s in specs} | {app for app, action in actions.items() if action == REMOVE}
    counts = [(s, target_replicas(s, actions.get(s.app_name, NEW), cluster.count(s.app_name))) for s in specs]
    for kind, field_name in _KINDS:
        need = sum(n * float(getattr(s, field_name)) for s, n in counts)
        ours = sum(cluster.held(app, kind) for app in replaced)
        free = cluster.total(kind) - max(0.0, cluster.used(kind) - ours)
        if need > free + _EPSILON:
            parts = ", ".join(
                f"[{s.section}] {n} x {_amount(getattr(s, field_name))}{_first_note(s, actions, n)}"
                for s, n in counts
                if n * getattr(s, field_name)
            )
            problems.append(
                f"the sections need {_amount(need)} {kind} in all ({parts}; replicas x {field_name}), and the cluster "
                f"has {_amount(free)} of its {_amount(cluster.total(kind))} free for them; lower replicas or "
                f"{field_name}, or add nodes"
            )
    return problems


def _first_note(spec: SectionSpec, actions: Mapping[str, str], count: int) -> str:
    if spec.replicas.autoscaling and spec.replicas.min < count and actions.get(spec.app_name) != UNCHANGED:
        return f" (replicas = {spec.replicas} starts with {count})"
    return ""


def _start_problems(specs: list[SectionSpec], cluster: ClusterResources, actions: Mapping[str, str]) -> list[str]:
    """Whether what Ray starts at once has room on the nodes now, beside the replicas that keep
    serving meanwhile (a roll-out's old ones); replicas this apply stops or removes free their
    node's room."""
    room = {node_id: {kind: node.free(kind) for kind, _ in _KINDS} for node_id, node in cluster.nodes.items()}
    for spec in specs:
        action = actions.get(spec.app_name, NEW)
        running = cluster.count(spec.app_name)
        if action != ROLL_OUT:
            _release(room, cluster, spec.app_name, running - target_replicas(spec, action, running))
    for app, action in actions.items():
        if action == REMOVE:
            _release(room, cluster, app, cluster.count(app))
    starts = []
    for spec in specs:
        action = actions.get(spec.app_name, NEW)
        count = replicas_started(spec, action, cluster.count(spec.app_name), max_surge_percent(spec))
        if count:
            starts.append(_Start(spec, action, count))
    best = {kind: max((r[kind] for r in room.values()), default=0.0) for kind, _ in _KINDS}
    problems = []
    for start in sorted(starts, key=lambda s: (-s.spec.gpu_cost, -s.spec.cpu_cost)):
        placed = sum(_place(room, start.spec) for _ in range(start.count))
        if placed < start.count:
            problems.append(_start_problem(start, placed, best, cluster))
    return problems


def _release(room: dict[str, dict[str, float]], cluster: ClusterResources, app: str, count: int) -> None:
    held = cluster.apps.get(app)
    if held is None or count <= 0:
        return
    for node_id in list(held.nodes)[-count:]:
        if node_id in room:
            for kind in room[node_id]:
                room[node_id][kind] += held.each.get(kind, 0.0)


def _place(room: dict[str, dict[str, float]], spec: SectionSpec) -> bool:
    need = {"CPU": float(spec.cpu_cost), "GPU": float(spec.gpu_cost)}
    for free in room.values():
        if all(free[kind] + _EPSILON >= amount for kind, amount in need.items()):
            for kind, amount in need.items():
                free[kind] -= amount
            return True
    return False


def _start_problem(start: _Start, placed: int, best: Mapping[str, float], cluster: ClusterResources) -> str:
    spec = start.spec
    size = " + ".join(f"{_amount(getattr(spec, f))} {kind}" for kind, f in _KINDS if getattr(spec, f) or kind == "CPU")
    free = ", ".join(
        f"{_amount(best[kind])} {kind} (the cluster has {_amount(cluster.total(kind) - cluster.used(kind))} "
        f"free of {_amount(cluster.total(kind))})"
        for kind, f in _KINDS
        if getattr(spec, f) or kind == "CPU"
    )
    if start.action == ROLL_OUT:
        what = (
            f"rolls out, and Ray starts {start.count} new replica(s) of {size} each before it stops an old one, "
            "so it needs room for them beside the replicas that run now"
        )
        fix = (
            "free that room first (remove or scale down a section, or stop other work), lower "
            f"{_costs(spec)}, add a node, or set `rollout = replace` (an old replica stops before its "
            "replacement starts: no room needed, one replica fewer meanwhile)"
        )
    else:
        first = f" (replicas = {spec.replicas} starts with {start.count})" if spec.replicas.autoscaling else ""
        what = f"starts {start.count} replica(s) of {size} each{first}"
        fix = f"free room first (remove or scale down a section), lower replicas or {_costs(spec)}, or add a node"
    return (
        f"[{spec.section}] {what}; {placed} of them fit: the most any node has free is {free}; {fix}. "
        "Ray would wait for that room until the deploy timeout"
    )


def _costs(spec: SectionSpec) -> str:
    return "cpu_cost and gpu_cost" if spec.gpu_cost else "cpu_cost"


def resolve_auto(specs: Sequence[SectionSpec], cluster: ClusterResources) -> list[SectionSpec]:
    """`replicas = auto` as a number: one replica per CPU that its `cpu_cost` finds free on the node with
    the most room (what the section's own replicas hold there counts as free, so a re-apply keeps the
    count), at most one per CPU of that node, at least one. Sections count in order, each taking its room."""
    taken: dict[str, float] = {}
    resolved = []
    for spec in specs:
        if not spec.replicas.auto:
            resolved.append(spec)
            continue
        held = cluster.apps.get(spec.app_name)
        best, room, cpus = "", 0.0, 1
        for node_id, node in cluster.nodes.items():
            own = held.each.get("CPU", 0.0) * list(held.nodes).count(node_id) if held else 0.0
            free = min(node.total.get("CPU", 0.0), node.free("CPU") + own - taken.get(node_id, 0.0))
            if free > room:
                best, room, cpus = node_id, free, max(1, int(node.total.get("CPU", 0.0)))
        count = max(1, min(cpus, int(room // spec.cpu_cost) if spec.cpu_cost else cpus))
        if best:
            taken[best] = taken.get(best, 0.0) + count * spec.cpu_cost
        resolved.append(replace(spec, replicas=Replicas(count, count, auto=True)))
    return resolved
