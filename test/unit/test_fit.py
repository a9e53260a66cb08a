"""Does a plan fit the cluster: per replica on some node, and in all."""

from modelserve.fit import ClusterResources, fit_problems
from modelserve.keys import Replicas
from modelserve.settings import SectionSpec


def spec(name: str = "algopkg.A", **values: object) -> SectionSpec:
    if isinstance(values.get("replicas"), int):
        values["replicas"] = Replicas(values["replicas"], values["replicas"])  # type: ignore[arg-type]
    return SectionSpec(section=name, package="A", backend="B", route=name.lower(), **values)  # type: ignore[arg-type]


TWO_CPUS = ClusterResources([{"CPU": 2.0}], used={}, ours={})


def test_what_fits_passes() -> None:
    assert fit_problems([spec(replicas=2, cpu_cost=1.0)], TWO_CPUS) == []
    assert fit_problems([spec(replicas=4, cpu_cost=0.5), spec("algopkg.B", cpu_cost=0.0)], TWO_CPUS) == []


def test_a_gpu_on_a_cluster_without_one_names_the_section_and_what_is_there() -> None:
    (problem, total) = fit_problems([spec(gpu_cost=1.0)], TWO_CPUS)
    assert problem.startswith("[algopkg.A] gpu_cost = 1: each replica needs 1 GPU, and no node of the cluster has more")
    assert total.startswith("the sections need 1 GPU in all ([algopkg.A] 1 x 1; replicas x gpu_cost)")


def test_replicas_beside_other_sections_that_exceed_the_cpus() -> None:
    (problem,) = fit_problems([spec(replicas=2, cpu_cost=1.0), spec("algopkg.B", cpu_cost=0.5)], TWO_CPUS)
    assert "need 2.5 CPU in all ([algopkg.A] 2 x 1, [algopkg.B] 1 x 0.5" in problem
    assert "the cluster has 2 of its 2 free for them" in problem


def test_what_our_running_sections_hold_counts_as_free_and_others_use_does_not() -> None:
    busy = ClusterResources([{"CPU": 2.0}], used={"CPU": 2.0}, ours={"CPU": 1.5})
    assert fit_problems([spec(replicas=2, cpu_cost=0.75)], busy) == []
    (problem,) = fit_problems([spec(replicas=2, cpu_cost=1.0)], busy)
    assert "the cluster has 1.5 of its 2 free for them" in problem


def test_spread_needs_enough_nodes() -> None:
    (problem,) = fit_problems([spec(replicas=3, cpu_cost=0.1, max_replicas_per_node=1)], TWO_CPUS)
    assert problem.startswith("[algopkg.A] replicas = 3: at most 1 per node (max_replicas_per_node) on 1 node(s)")


def test_autoscaling_sections_must_fit_at_their_minimum() -> None:
    assert fit_problems([spec(replicas=Replicas(0, 8), cpu_cost=1.0)], TWO_CPUS) == []
    assert fit_problems([spec(replicas=Replicas(2, 8), cpu_cost=1.0)], TWO_CPUS) == []
    (problem,) = fit_problems([spec(replicas=Replicas(3, 8), cpu_cost=1.0)], TWO_CPUS)
    assert "[algopkg.A] 3 x 1" in problem
