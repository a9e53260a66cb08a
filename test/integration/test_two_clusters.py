"""Two projects on one machine, each with the local Ray cluster its controller starts, both
serving /canary: one cluster's route moves under load never reach the other cluster.

Ray 2.60 gives every cluster's fallback proxy (HAProxy's backup server on every route) port 8500,
bound with SO_REUSEPORT: with two clusters on a host, the fallback connections of a route move
were shared and clients got the other cluster's answers. Each head now has its own ports.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers import call, controller_in_process, listeners, make_project, wait_for, write_conf
from wrk import WrkLoad, assert_no_failure

from modelserve import raycompat
from modelserve.localhead import STATE_FILE, LocalHead, read_local_head
from modelserve.node import free_port, late_port

pytestmark = pytest.mark.integration

CLIENTS = 8
#: Each route move is made this many times (a short window of lost requests shows in some runs only).
REPEATS = 3
SECTION = "x-modelserve-section"
#: Ports a head listens on by itself: each cluster must have its own (worker and replica port
#: blocks are drawn at random per node and may meet; a raylet skips a port that is held).
LISTENER_PORTS = (
    "http",
    "port",
    "dashboard-port",
    "ray-client-server-port",
    "dashboard-agent-listen-port",
    "dashboard-agent-grpc-port",
    "metrics-export-port",
    "runtime-env-agent-port",
    raycompat.HAPROXY_STATS_PORT,
    raycompat.HAPROXY_METRICS_PORT,
    raycompat.FALLBACK_PROXY_HTTP_PORT,
    raycompat.FALLBACK_PROXY_GRPC_PORT,
    raycompat.DASHBOARD_METRIC_PORT,
    raycompat.AUTOSCALER_METRIC_PORT,
)


def echo(variant: str, cluster: str, *extra: str) -> str:
    """An Echo section on /canary whose every answer names its cluster (`user_config` is echoed)."""
    lines = [f"[algopkg.Echo:{variant}]", "backend = Echo", "model = echo_model.txt", "route = canary"]
    config = f'user_config = {{"cluster": "{cluster}"}}'
    return "\n".join([*lines, "method = POST", "cpu_cost = 0.15", config, *extra]) + "\n"


def canary(a: int | None, b: int) -> tuple[str, ...]:
    """Cluster A's canary pair (`a=None`: the owner section removed, the route moves to Echo:b)."""
    pair = [echo("b", "cluster-a", f"traffic = {b}")]
    if a is not None:
        pair.insert(0, echo("a", "cluster-a", f"traffic = {a}"))
    return tuple(pair)


@dataclass
class Project:
    root: Path
    port: int
    dashboard_port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/canary"

    def apply(self, *sections: str) -> tuple[int, str]:
        serve = {"port": self.port, "address": "local", "dashboard_port": self.dashboard_port}
        conf = write_conf(self.root, {**serve, "local_cpus": 2, "local_gpus": 0, "deploy_timeout_s": 180}, *sections)
        return controller_in_process("-c", str(conf))

    def head(self) -> LocalHead:
        head = read_local_head(self.root / ".modelserve")
        assert head is not None, f"no live head recorded in {self.root / '.modelserve' / STATE_FILE}"
        return head


def new_project(factory: pytest.TempPathFactory, name: str) -> Project:
    return Project(make_project(factory.mktemp(name)), late_port(), free_port())


@pytest.fixture(scope="module")
def two(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Project, Project]]:
    """Projects A (the canary pair at 90/10) and B (one section on the same path), each with the
    local cluster its controller starts."""
    a, b = new_project(tmp_path_factory, "cluster_a"), new_project(tmp_path_factory, "cluster_b")
    try:
        for project, sections in ((a, canary(90, 10)), (b, (echo("other", "cluster-b"),))):
            code, out = project.apply(*sections)
            if code == 3:
                # A raylet waits 30 s for its agents to start and its node to register; on a loaded
                # machine it can miss that and its `ray start` ends: once more, from scratch.
                print(f"\nthe head of {project.root.name} did not start, once more: {out.strip()}")
                controller_in_process("down", "--stop-cluster", "-c", str(project.root / "conf.ini"))
                code, out = project.apply(*sections)
            assert code == 0, out
        yield a, b
    finally:
        for project in (a, b):
            controller_in_process("down", "--stop-cluster", "-c", str(project.root / "conf.ini"))


def cluster_of(url: str) -> str:
    reply = call(url, {"n": 1})
    assert reply.status == 200, reply.body
    return str(reply.body["result"]["config"]["cluster"])


def test_each_cluster_has_its_own_ports_and_temp_dir(two: tuple[Project, Project]) -> None:
    heads = [project.head() for project in two]
    print("\n" + "\n".join(json.dumps(head.ports, sort_keys=True) for head in heads))
    mine = [{name: head.ports[name] for name in LISTENER_PORTS} for head in heads]
    assert not set(mine[0].values()) & set(mine[1].values()), mine
    assert all(len(set(ports.values())) == len(ports) for ports in mine), mine
    temp_dirs = {head.temp_dir for head in heads}
    assert len(temp_dirs) == 2 and "/tmp/ray" not in temp_dirs and all(Path(d).is_dir() for d in temp_dirs)
    for head, ports in zip(heads, mine, strict=True):
        fallback = ports[raycompat.FALLBACK_PROXY_HTTP_PORT]

        def fallback_listens(head: LocalHead = head, fallback: int = fallback) -> bool:
            return fallback in {f.port for f in listeners(head.pid)}

        wait_for(fallback_listens, 60, f"the fallback proxy of the head {head.pid} on port {fallback}")
        assert not {8500, 44227, 44217} & {f.port for f in listeners(head.pid)}
    assert [cluster_of(project.url) for project in two] == ["cluster-a", "cluster-b"]


def test_a_project_whose_http_port_another_cluster_holds_is_refused(
    two: tuple[Project, Project], tmp_path_factory: pytest.TempPathFactory
) -> None:
    third = new_project(tmp_path_factory, "cluster_c")
    third.port = two[0].port
    code, out = third.apply(echo("c", "cluster-c"))
    assert code == 3, out
    assert f"[MODEL SERVE] port = {third.port}: port {third.port} is held by haproxy" in out, out
    assert not (third.root / ".modelserve" / STATE_FILE).exists()


def test_a_project_that_meets_another_s_local_cluster_on_its_dashboard_port_leaves_it_alone(
    two: tuple[Project, Project], tmp_path_factory: pytest.TempPathFactory
) -> None:
    """A third project with a port of its own but A's `dashboard_port` (the default both kept) found
    A's cluster there and replaced A's sections with its own. It is refused, and A serves on."""
    a = two[0]
    third = new_project(tmp_path_factory, "cluster_d")
    third.dashboard_port = a.dashboard_port
    serve = {"port": third.port, "address": "local", "dashboard_port": a.dashboard_port}
    conf = write_conf(third.root, serve, echo("d", "cluster-d"))
    for command in ((), ("status",), ("down",)):
        code, out = controller_in_process(*command, "-c", str(conf))
        assert code == 3 and "is the local cluster of another project on this host" in out, (command, out)
    assert call(a.url, {"n": 1}).status == 200 and cluster_of(a.url) == "cluster-a"
    code, out = a.apply(*canary(90, 10))
    assert code == 0 and "unchanged  Echo:a" in out and "unchanged  Echo:b" in out, out  # nothing was removed


def test_route_moves_beside_another_cluster_lose_nothing_and_stay_in_their_cluster(
    two: tuple[Project, Project],
) -> None:
    """The route moves that lost requests with another cluster on the host, 3 times each (from
    90/10: to 50/50, to 0/100, the owner section removed), once straight from 50/50 to the removal,
    and the owner section added back at 90/10 between the rounds: every answer from cluster A."""
    a, b = two
    steps: list[tuple[str, tuple[str, ...]]] = []
    for i in range(1, REPEATS + 1):
        steps.append((f"90/10 -> 50/50 ({i} of {REPEATS})", canary(50, 50)))
        if i == 2:
            steps.append(("50/50 -> the owner section removed (straight)", canary(None, 100)))
        else:
            steps.append((f"50/50 -> 0/100 ({i} of {REPEATS})", canary(0, 100)))
            steps.append((f"0/100 -> the owner section removed ({i} of {REPEATS})", canary(None, 100)))
        if i < REPEATS:
            steps.append((f"the owner section added back at 90/10 ({i} of {REPEATS - 1})", canary(90, 10)))
    for what, sections in steps:
        with WrkLoad(a.url, CLIENTS, body={"n": 1}, marker="cluster-a", count_header=SECTION, duration_s=180) as load:
            code, out = a.apply(*sections)
            assert code == 0, out
            time.sleep(2)
        result = assert_no_failure(load.result, what, min_requests=100)
        assert set(result.by_header) <= {"algopkg.Echo:a", "algopkg.Echo:b"}, result.summary(what)
    assert cluster_of(a.url) == "cluster-a" and cluster_of(b.url) == "cluster-b"
