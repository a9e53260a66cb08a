"""Does a plan fit the cluster: per replica on some node, in all, and what the apply starts at once."""

from modelserve.fit import ClusterResources, Held, Node, fit_problems, replicas_started
from modelserve.keys import IN_PLACE, ROLL_OUT, Replicas
from modelserve.plan import MAX_SURGE_PERCENT, max_surge_percent
from modelserve.raycompat import surge_replicas
from modelserve.settings import SectionSpec


def spec(name: str = "algopkg.A", **values: object) -> SectionSpec:
    if isinstance(values.get("replicas"), int):
        values["replicas"] = Replicas(values["replicas"], values["replicas"])  # type: ignore[arg-type]
    return SectionSpec(section=name, package="A", backend="B", route=name.lower(), **values)  # type: ignore[arg-type]


def cluster(*nodes: tuple[float, float], **apps: Held) -> ClusterResources:
    """Nodes as (CPUs, CPUs in use); apps by application name."""
    return ClusterResources(
        {f"n{i}": Node({"CPU": total}, {"CPU": used}) for i, (total, used) in enumerate(nodes)}, apps
    )


TWO_CPUS = cluster((2.0, 0.0))


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
    busy = cluster((2.0, 2.0), A=Held({"CPU": 0.75}, ["n0", "n0"]))  # 0.5 CPU is someone else's
    assert fit_problems([spec(replicas=2, cpu_cost=0.75)], busy, {"A": IN_PLACE}) == []
    (problem,) = fit_problems([spec(replicas=2, cpu_cost=1.0)], busy, {"A": ROLL_OUT})
    assert "the cluster has 1.5 of its 2 free for them" in problem


def test_another_stage_s_sections_hold_their_room() -> None:
    """Only what this apply replaces or removes is free: another stage's applications stay."""
    busy = cluster((2.0, 1.5), **{"grey.A": Held({"CPU": 1.0}, ["n0"]), "Gone": Held({"CPU": 0.5}, ["n0"])})
    assert fit_problems([spec(cpu_cost=1.0)], busy, {"Gone": "remove"}) == []
    (problem,) = fit_problems([spec(cpu_cost=1.5)], busy, {"Gone": "remove"})
    assert "the cluster has 1 of its 2 free for them" in problem


def test_spread_needs_enough_nodes() -> None:
    (problem,) = fit_problems([spec(replicas=3, cpu_cost=0.1, max_replicas_per_node=1)], TWO_CPUS)
    assert problem.startswith("[algopkg.A] replicas = 3: at most 1 per node (max_replicas_per_node) on 1 node(s)")


def test_autoscaling_sections_must_fit_at_their_minimum() -> None:
    assert fit_problems([spec(replicas=Replicas(0, 8), cpu_cost=1.0)], TWO_CPUS) == []
    assert fit_problems([spec(replicas=Replicas(2, 8), cpu_cost=1.0)], TWO_CPUS) == []
    (problem,) = fit_problems([spec(replicas=Replicas(3, 8), cpu_cost=1.0)], TWO_CPUS)
    assert "[algopkg.A] 3 x 1" in problem


def test_a_new_section_that_scales_to_zero_still_needs_room_for_the_replica_it_starts() -> None:
    """Issue 19.2: `0-N` starts one replica on its first apply (initial_replicas), so it needs its room."""
    full = cluster((2.0, 2.0), Other=Held({"CPU": 2.0}, ["n0"]))
    (problem,) = fit_problems([spec("algopkg.Other", cpu_cost=2.0), spec(replicas=Replicas(0, 2), cpu_cost=0.5)], full)
    assert "[algopkg.A] 1 x 0.5 (replicas = 0-2 starts with 1)" in problem
    assert "the cluster has 2 of its 2 free for them" in problem


def test_an_autoscaling_section_that_changes_starts_again_from_its_initial_replicas() -> None:
    """Ray resets the target to initial_replicas on any config change; an unchanged one keeps its replicas."""
    zero_to_four = spec(replicas=Replicas(0, 4), cpu_cost=0.5)
    assert replicas_started(zero_to_four, IN_PLACE, 0, MAX_SURGE_PERCENT) == 1
    assert replicas_started(zero_to_four, "unchanged", 0, MAX_SURGE_PERCENT) == 0
    assert replicas_started(spec(replicas=Replicas(1, 4)), "unchanged", 3, MAX_SURGE_PERCENT) == 0
    full = cluster((2.0, 2.0), A=Held({"CPU": 0.5}, []), F=Held({"CPU": 2.0}, ["n0"]))  # A scaled to zero
    sections = [zero_to_four, spec("algopkg.F", cpu_cost=2.0)]
    assert fit_problems(sections, full, {"A": "unchanged", "F": "unchanged"}) == []
    (problem,) = fit_problems(sections, full, {"A": IN_PLACE, "F": "unchanged"})
    assert "[algopkg.A] 1 x 0.5 (replicas = 0-4 starts with 1)" in problem


def test_the_surge_is_ray_s_integer_ceiling_of_25_percent_of_the_target() -> None:
    assert [surge_replicas(n, MAX_SURGE_PERCENT) for n in (1, 4, 5, 8, 9)] == [1, 1, 2, 2, 3]
    fixed = spec(replicas=4, cpu_cost=0.5)
    assert replicas_started(fixed, ROLL_OUT, 4, MAX_SURGE_PERCENT) == 1
    assert replicas_started(fixed, ROLL_OUT, 2, MAX_SURGE_PERCENT) == 3  # and what the target grew by
    assert replicas_started(fixed, ROLL_OUT, 4, 0) == 0  # without surge, old replicas stop first


def test_a_roll_out_with_no_room_for_its_extra_replica_fails_at_once() -> None:
    """Issue 19.3: a 0.5-CPU section with 0.25 CPU free cannot start its new replica beside the old one."""
    tight = cluster((2.0, 1.75), A=Held({"CPU": 0.5}, ["n0"]), F=Held({"CPU": 1.25}, ["n0"]))
    sections = [spec(cpu_cost=0.5), spec("algopkg.F", cpu_cost=1.25)]
    assert fit_problems(sections, tight, {"A": IN_PLACE, "F": "unchanged"}) == []
    (problem,) = fit_problems(sections, tight, {"A": ROLL_OUT, "F": "unchanged"})
    assert problem.startswith(
        "[algopkg.A] rolls out, and Ray starts 1 new replica(s) of 0.5 CPU each before it stops an old one"
    )
    assert "the most any node has free is 0.25 CPU (the cluster has 0.25 free of 2)" in problem
    assert "remove or scale down a section" in problem and "lower cpu_cost" in problem
    assert "or set `rollout = replace`" in problem


def test_a_roll_out_that_replaces_old_replicas_needs_no_room_beyond_what_the_section_holds() -> None:
    """`rollout = replace` is Ray's max_surge_percent = 0: an old replica stops, then its replacement starts."""
    assert (max_surge_percent(spec()), max_surge_percent(spec(rollout="replace"))) == (MAX_SURGE_PERCENT, 0)
    tight = cluster((2.0, 1.75), A=Held({"CPU": 0.5}, ["n0"]), F=Held({"CPU": 1.25}, ["n0"]))
    sections = [spec(cpu_cost=0.5, rollout="replace"), spec("algopkg.F", cpu_cost=1.25)]
    assert fit_problems(sections, tight, {"A": ROLL_OUT, "F": "unchanged"}) == []
    (problem,) = fit_problems([sections[0], spec("algopkg.F", cpu_cost=1.5)], tight, {"A": ROLL_OUT, "F": ROLL_OUT})
    assert "need 2 CPU in all" not in problem and "[algopkg.F] rolls out" in problem


def test_the_extra_replica_must_fit_on_one_node_not_only_in_all() -> None:
    two_nodes = cluster((1.0, 0.75), (1.0, 0.75), A=Held({"CPU": 0.5}, ["n0"]))
    (problem,) = fit_problems([spec(cpu_cost=0.5)], two_nodes, {"A": ROLL_OUT})
    assert "the most any node has free is 0.25 CPU (the cluster has 0.5 free of 2)" in problem


def test_room_a_removed_or_scaled_down_section_frees_counts_on_its_node() -> None:
    tight = cluster((1.0, 1.0), (1.0, 0.75), A=Held({"CPU": 0.5}, ["n1"]), B=Held({"CPU": 0.5}, ["n0", "n0"]))
    sections = [spec(cpu_cost=0.5), spec("algopkg.B", replicas=1, cpu_cost=0.5)]
    assert fit_problems(sections, tight, {"A": ROLL_OUT, "B": IN_PLACE}) == []
    assert fit_problems([spec(cpu_cost=0.75)], tight, {"A": ROLL_OUT, "B": "remove"}) == []
    (problem,) = fit_problems([spec(cpu_cost=0.75)], tight, {"A": ROLL_OUT, "B": "unchanged"})
    assert "[algopkg.A] rolls out" in problem


def test_new_sections_are_placed_replica_by_replica_on_the_nodes() -> None:
    halves = cluster((1.0, 0.5), (1.0, 0.5))
    assert fit_problems([spec(replicas=2, cpu_cost=0.5)], halves) == []
    (problem,) = fit_problems([spec(cpu_cost=0.75)], halves)
    assert problem.startswith("[algopkg.A] starts 1 replica(s) of 0.75 CPU each; 0 of them fit")


def test_an_update_in_place_or_an_unchanged_section_needs_nothing_more() -> None:
    full = cluster((2.0, 2.0), A=Held({"CPU": 1.0}, ["n0", "n0"]))
    for action in (IN_PLACE, "unchanged"):
        assert fit_problems([spec(replicas=2, cpu_cost=1.0)], full, {"A": action}) == []


def test_replicas_auto_is_one_per_cpu_its_cost_finds_free_and_keeps_its_count_on_a_reapply() -> None:
    from dataclasses import replace

    from modelserve.fit import resolve_auto
    from modelserve.keys import replicas

    auto = replicas("auto")
    assert auto.auto and str(auto) == "auto" and auto.max == 1  # 1 until an apply counts it
    two_cpus = ClusterResources({"n1": Node({"CPU": 2.0}), "n2": Node({"CPU": 1.0})})
    whole = SectionSpec("algopkg.A", "A", backend="B", route="a", replicas=auto, cpu_cost=1.0)
    quarter = replace(whole, section="algopkg.A:q", route="q", cpu_cost=0.25)
    fixed = replace(whole, section="algopkg.A:f", route="f", replicas=Replicas(2, 2))
    assert [s.replicas.max for s in resolve_auto([whole], two_cpus)] == [2]  # the node with most room
    assert [s.replicas.max for s in resolve_auto([quarter], two_cpus)] == [2]  # at most one per CPU
    assert [s.replicas.max for s in resolve_auto([fixed, whole, quarter], two_cpus)] == [2, 2, 1]
    busy = ClusterResources(
        {"n1": Node({"CPU": 2.0}, {"CPU": 2.0})}, {whole.app_name: Held({"CPU": 1.0}, ["n1", "n1"])}
    )
    assert resolve_auto([whole], busy)[0].replicas.max == 2  # its own replicas' room counts as free
    full = ClusterResources({"n1": Node({"CPU": 2.0}, {"CPU": 2.0})})
    assert resolve_auto([whole], full)[0].replicas.max == 1  # at least one: the fit check says what is short
