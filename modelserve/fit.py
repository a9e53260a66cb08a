"""Does a plan fit the cluster? Checked before deploying, so a plan that cannot be placed fails
at once (naming the section, what it needs and what is free) instead of waiting out the
deploy timeout. Pure: the cluster's numbers come in as arguments.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from modelserve.settings import SectionSpec

_KINDS = (("CPU", "cpu_cost"), ("GPU", "gpu_cost"))
_EPSILON = 1e-9


@dataclass(frozen=True)
class ClusterResources:
    """What the cluster offers: each alive node's totals, what is in use, and what of that is ours."""

    nodes: Sequence[Mapping[str, float]]
    used: Mapping[str, float]
    ours: Mapping[str, float]

    def total(self, kind: str) -> float:
        return sum(node.get(kind, 0.0) for node in self.nodes)

    def free_for_us(self, kind: str) -> float:
        """Free now, plus what our running sections hold (the plan replaces them)."""
        return self.total(kind) - max(0.0, self.used.get(kind, 0.0) - self.ours.get(kind, 0.0))


def _amount(value: float) -> str:
    return f"{value:g}"


def fit_problems(sections: Iterable[SectionSpec], cluster: ClusterResources) -> list[str]:
    """Every way the sections cannot be placed on the cluster, one problem each."""
    specs = list(sections)
    problems = []
    for spec in specs:
        for kind, field in _KINDS:
            need = float(getattr(spec, field))
            biggest = max((node.get(kind, 0.0) for node in cluster.nodes), default=0.0)
            if need > biggest + _EPSILON:
                problems.append(
                    f"[{spec.section}] {field} = {_amount(need)}: each replica needs {_amount(need)} {kind}, and no "
                    f"node of the cluster has more than {_amount(biggest)}; lower {field} or add a node that has it"
                )
        if spec.max_replicas_per_node is not None and spec.replicas.min > spec.max_replicas_per_node * len(
            cluster.nodes
        ):
            problems.append(
                f"[{spec.section}] replicas = {spec.replicas}: at most {spec.max_replicas_per_node} per node "
                f"(max_replicas_per_node) on {len(cluster.nodes)} node(s); lower replicas or add nodes"
            )
    for kind, field in _KINDS:
        wanted = [(s, s.replicas.min * float(getattr(s, field))) for s in specs]  # what autoscaling keeps
        need = sum(amount for _, amount in wanted)
        free = cluster.free_for_us(kind)
        if need > free + _EPSILON:
            parts = ", ".join(f"[{s.section}] {s.replicas.min} x {_amount(getattr(s, field))}" for s, a in wanted if a)
            problems.append(
                f"the sections need {_amount(need)} {kind} in all ({parts}; replicas x {field}), and the cluster has "
                f"{_amount(free)} of its {_amount(cluster.total(kind))} free for them; lower replicas or {field}, "
                "or add nodes"
            )
    return problems
