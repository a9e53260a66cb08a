"""A head and a worker (real `ray start` nodes via the docker entrypoint's module) on loopback."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import pytest
from helpers import REPO, call, listeners, make_project, start_node, wait_for, write_conf

from modelserve.cli import main
from modelserve.cluster import Cluster, dashboard_answers, session_members, stop_session
from modelserve.node import free_port, late_port

pytestmark = pytest.mark.integration

SPREAD = """
[algopkg.Echo]
backend = Echo
model = echo_model.txt
route = echo
method = POST
replicas = 2
cpu_cost = 0.5
"""
PINNED = """
[algopkg.Echo:pinned]
backend = Echo
model = echo_model.txt
route = pinned
method = POST
replicas = 2
cpu_cost = 0.25
max_replicas_per_node = 1
"""
PACKED = """
[algopkg.AlgoExample]
backend = algo_backend
model = algoexample_model_v1.npz
route = extract
replicas = 4
cpu_cost = 0.1
gpu_cost = 0.5
"""


@dataclass
class TwoNodes:
    head: subprocess.Popen[bytes]
    worker: subprocess.Popen[bytes] | None
    gcs: str
    dashboard_url: str
    http_port: int
    head_env: dict[str, str]
    worker_env: dict[str, str]
    logs: Path

    def start_worker(self) -> None:
        self.worker = start_node("worker", self.worker_env, self.logs / f"worker-{time.time():.0f}.log")

    def crash_worker(self) -> None:
        """SIGKILL every process of the worker node at once, as a lost machine would."""
        assert self.worker is not None
        for pid in session_members(self.worker.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.worker.wait(timeout=30)


def alive_nodes(dashboard_url: str) -> int:
    import requests

    from modelserve.cluster import use_token_if_available

    use_token_if_available()
    from ray._private.authentication.http_token_authentication import get_auth_headers_if_auth_enabled

    reply = requests.get(f"{dashboard_url}/nodes?view=summary", headers=get_auth_headers_if_auth_enabled({}), timeout=5)
    return sum(1 for n in reply.json()["data"]["summary"] if n["raylet"]["state"] == "ALIVE")


def haproxy_ports() -> dict[str, str]:
    """Chosen here, not by each node's own process, so the two nodes on this host never pick alike."""
    return {f"RAY_SERVE_HAPROXY_{kind}_PORT": str(late_port()) for kind in ("STATS", "METRICS")}


@pytest.fixture(scope="module")
def nodes() -> Iterator[TwoNodes]:
    logs = Path(tempfile.mkdtemp(prefix="msn", dir="/tmp"))
    gcs_port, dashboard_port, http_port = free_port(), free_port(), late_port()
    head_env = {
        "RAY_GCS_PORT": str(gcs_port),
        "RAY_DASHBOARD_PORT": str(dashboard_port),
        "RAY_NUM_CPUS": "2",
        "RAY_NUM_GPUS": "1",
        "RAY_TEMP_DIR": str(logs / "ray"),
        **haproxy_ports(),
    }
    worker_env = {
        "RAY_HEAD_ADDRESS": f"127.0.0.1:{gcs_port}",
        "RAY_NUM_CPUS": "2",
        "RAY_NUM_GPUS": "1",
        "MODELSERVE_WORKER_HTTP_PORT": str(late_port()),
        **haproxy_ports(),
    }
    cluster = TwoNodes(
        start_node("head", head_env, logs / "head.log"),
        None,
        f"127.0.0.1:{gcs_port}",
        f"http://127.0.0.1:{dashboard_port}",
        http_port,
        head_env,
        worker_env,
        logs,
    )
    try:
        wait_for(lambda: dashboard_answers(cluster.dashboard_url), 90, "the head's dashboard")
        cluster.start_worker()
        wait_for(lambda: alive_nodes(cluster.dashboard_url) == 2, 90, "the worker to join")
        yield cluster
    finally:
        for proc in (cluster.worker, cluster.head):
            if proc is not None:
                stop_session(proc.pid)


@pytest.fixture(scope="module")
def conf(nodes: TwoNodes, tmp_path_factory: pytest.TempPathFactory) -> Path:
    project = make_project(tmp_path_factory.mktemp("multinode"))
    serve = {"port": nodes.http_port, "address": nodes.dashboard_url, "deploy_timeout_s": 180}
    path = write_conf(project, serve, SPREAD, PINNED, PACKED)
    assert main(["-c", str(path)]) == 0
    return path


def replicas_per_node(nodes: TwoNodes, app: str) -> Counter[str]:
    details = Cluster(nodes.dashboard_url).details()["applications"].get(app, {})
    replicas = [r for d in details.get("deployments", {}).values() for r in d["replicas"] if r["state"] == "RUNNING"]
    return Counter(r["node_id"] for r in replicas)


def test_replicas_spread_over_both_nodes(nodes: TwoNodes, conf: Path) -> None:
    assert sorted(replicas_per_node(nodes, "Echo:pinned").values()) == [1, 1]
    assert len(replicas_per_node(nodes, "Echo")) == 2


def test_gpu_fractions_pack_two_replicas_per_gpu_on_each_node(nodes: TwoNodes, conf: Path) -> None:
    assert sorted(replicas_per_node(nodes, "AlgoExample").values()) == [2, 2]


def test_status_shows_the_node_of_each_replica(nodes: TwoNodes, conf: Path) -> None:
    gcs_conf = conf.parent / "gcs.ini"
    gcs_conf.write_text(conf.read_text().replace(f"address = {nodes.dashboard_url}", f"address = {nodes.gcs}"))
    result = subprocess.run(
        [sys.executable, str(REPO / "controller.py"), "status", "-c", str(gcs_conf)],
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    row = next(line for line in result.stdout.splitlines() if line.startswith("algopkg.AlgoExample "))
    assert "4/4" in row and len(re.findall(r"[\d.]+/[0-9a-f]{6} x2", row)) == 2, row


def test_losing_a_worker_keeps_serving_and_rejoining_restores_replicas(nodes: TwoNodes, conf: Path) -> None:
    url = f"http://127.0.0.1:{nodes.http_port}/echo"
    codes: list[tuple[float, int]] = []
    stop = threading.Event()

    def client() -> None:
        while not stop.is_set() and len(codes) < 20000:
            try:
                status = call(url, {"n": 1}, timeout=10).status
            except OSError:  # the connection was lost: a failed request too
                status = 0
            codes.append((time.monotonic(), status))

    threads = [threading.Thread(target=client) for _ in range(4)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(2)
        killed_at = time.monotonic()
        nodes.crash_worker()
        wait_for(lambda: alive_nodes(nodes.dashboard_url) == 1, 90, "the head to see the worker gone")
        wait_for(lambda: sum(replicas_per_node(nodes, "Echo").values()) == 2, 120, "a replacement replica on the head")
        time.sleep(2)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
    failed = [status for _, status in codes if status != 200]
    after = [status for t, status in codes if t > killed_at]
    print(f"\nrequests {len(codes)}, after the kill {len(after)}, failed {len(failed)}: {Counter(failed)}")
    assert len(after) > 50 and after[-20:] == [200] * 20
    assert len(failed) <= 4  # at most the requests in flight on the lost node (4 clients)
    assert sum(replicas_per_node(nodes, "Echo:pinned").values()) == 1  # one per node: waits for a node
    nodes.start_worker()
    wait_for(lambda: alive_nodes(nodes.dashboard_url) == 2, 90, "the worker to rejoin")
    wait_for(lambda: sorted(replicas_per_node(nodes, "Echo:pinned").values()) == [1, 1], 120, "2/2 pinned replicas")
    assert call(f"http://127.0.0.1:{nodes.http_port}/pinned", {"n": 1}).status == 200


def listens_on(sid: int, process: str, ports: set[int]) -> bool:
    return ports <= {port for name, _, port in listeners(sid) if name.startswith(process)}


def test_what_listens_where(nodes: TwoNodes, conf: Path) -> None:
    """The dashboard and the HTTP port stay on loopback; what Ray opens on all interfaces is known."""
    found = listeners(nodes.head.pid)
    dashboard_port = int(nodes.dashboard_url.rsplit(":", 1)[1])
    print("\n" + "\n".join(f"  {name:28} {ip:>15}:{port}" for name, ip, port in found))
    assert {ip for _, ip, port in found if port == dashboard_port} == {"127.0.0.1"}
    assert {ip for _, ip, port in found if port == nodes.http_port} == {"127.0.0.1"}
    public = {name for name, ip, _ in found if ip in ("0.0.0.0", "::")}
    # Ray 2.60's own gRPC servers (token-protected) and HAProxy's read-only stats/metrics pages.
    known = ("gcs_server", "raylet", "haproxy", "ray::", "ray-dashboard", "python")
    assert public and all(name.startswith(known) for name in public), public
    # Each node's HAProxy serves its stats and metrics on the ports that node was given.
    assert nodes.worker is not None
    for pid, env in ((nodes.head.pid, nodes.head_env), (nodes.worker.pid, nodes.worker_env)):
        given = {int(env[f"RAY_SERVE_HAPROXY_{kind}_PORT"]) for kind in ("STATS", "METRICS")}
        wait_for(partial(listens_on, pid, "haproxy", given), 30, f"HAProxy to listen on {given}")
