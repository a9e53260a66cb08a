"""A head and a worker (real `ray start` nodes via the docker entrypoint's module) on loopback.

Set up as the README's cluster section has a user do it: one token, given as `RAY_AUTH_TOKEN`
to every node and to the controller, and `address = <head>:<gcs port>` in conf.ini.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import signal
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import boto3
import psutil
import pytest
import requests
from helpers import (
    MEASURED,
    Listener,
    Load,
    call,
    controller,
    controller_in_process,
    listeners,
    make_project,
    start_node,
    wait_for,
    write_conf,
)
from s3server import S3Server

from modelserve import raycompat
from modelserve.cli import main
from modelserve.cluster import Cluster, dashboard_answers, use_token_if_available
from modelserve.localhead import session_members, stop_session
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


#: Blocks of replica HTTP ports, below the kernel's ephemeral range (as `modelserve.node` picks them).
DIRECT_INGRESS_BLOCKS = range(20000, 28000, 100)


@dataclass
class NodePorts:
    """What a node is told to listen on for the fast ingress: HAProxy's pages, replicas' HTTP ports.

    Ray 2.60 reads the replicas' block only where the Serve controller runs (the head): it hands
    out every replica's port, on any node, from there.
    """

    stats: int
    metrics: int
    direct_http: range

    @classmethod
    def pick(cls, block: int) -> NodePorts:
        return cls(late_port(), late_port(), range(block, block + 100))

    def env(self) -> dict[str, str]:
        return raycompat.fast_ingress_env(self.stats, self.metrics, self.direct_http.start)


@dataclass
class TwoNodes:
    head: subprocess.Popen[bytes]
    worker: subprocess.Popen[bytes] | None
    gcs: str
    dashboard_url: str
    http_port: int
    worker_http_port: int
    token_env: dict[str, str | None]
    head_env: dict[str, str | None]
    worker_env: dict[str, str | None]
    ports: dict[str, NodePorts]  # "head", "worker"
    logs: Path
    model_caches: dict[str, Path]  # "head", "worker": each node's own MODELSERVE_MODEL_CACHE

    def start_worker(self) -> None:
        self.worker = start_node("worker", self.worker_env, self.logs / f"worker-{time.time():.0f}.log")

    def crash_worker(self) -> None:
        """SIGKILL every process of the worker node at once, as a lost machine would."""
        assert self.worker is not None
        for pid in session_members(self.worker.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.worker.wait(timeout=30)


def alive_raylets(dashboard_url: str) -> list[dict[str, Any]]:
    use_token_if_available()
    reply = requests.get(f"{dashboard_url}/nodes?view=summary", headers=raycompat.auth_headers(), timeout=5)
    return [n["raylet"] for n in reply.json()["data"]["summary"] if n["raylet"]["state"] == "ALIVE"]


def alive_nodes(dashboard_url: str) -> int:
    return len(alive_raylets(dashboard_url))


BUCKET, STORED_MODEL = "models", "zoo/echo/1/a.txt"
#: The stored model's content: no file on this machine holds it, only the object store.
STORED_TEXT = "echo-from-the-store-v1"


@dataclass
class Store:
    """The object store both nodes read model files from, and the standard AWS variables for it."""

    server: S3Server
    env: dict[str, str]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    """moto's S3 server (test/s3server.py) holding one versioned model: `echo@1`."""
    with S3Server() as server:
        home = tmp_path_factory.mktemp("aws")  # no AWS files of the user's
        env = server.env(home)
        client = boto3.client(
            "s3",
            endpoint_url=server.endpoint,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )
        client.create_bucket(Bucket=BUCKET)
        client.put_object(Bucket=BUCKET, Key=STORED_MODEL, Body=f"{STORED_TEXT}\n".encode())
        yield Store(server, env)


@pytest.fixture(scope="module")
def nodes(store: Store) -> Iterator[TwoNodes]:
    logs = Path(tempfile.mkdtemp(prefix="msn", dir="/tmp"))
    gcs_port, dashboard_port, http_port, worker_http_port = free_port(), free_port(), late_port(), late_port()
    # The README's shared token, given as RAY_AUTH_TOKEN only. It is the tests' own token
    # (RAY_AUTH_TOKEN_PATH, see conftest), so this process's in-process calls can use it too.
    token = Path(os.environ[raycompat.AUTH_TOKEN_PATH]).read_text().strip()
    token_env: dict[str, str | None] = {raycompat.AUTH_TOKEN: token, raycompat.AUTH_TOKEN_PATH: None}
    head_block, worker_block = random.sample(DIRECT_INGRESS_BLOCKS, 2)
    ports = {"head": NodePorts.pick(head_block), "worker": NodePorts.pick(worker_block)}
    # The store's address and credentials, and a model cache of each node's own (the worker downloads for itself).
    model_caches = {"head": logs / "model-cache-head", "worker": logs / "model-cache-worker"}
    head_env = {
        **token_env,
        **store.env,
        "MODELSERVE_MODEL_CACHE": str(model_caches["head"]),
        "RAY_GCS_PORT": str(gcs_port),
        "RAY_DASHBOARD_PORT": str(dashboard_port),
        "RAY_NUM_CPUS": "2",
        "RAY_NUM_GPUS": "1",
        "RAY_TEMP_DIR": str(logs / "ray"),
        **ports["head"].env(),
    }
    worker_env = {
        **token_env,
        **store.env,
        "MODELSERVE_MODEL_CACHE": str(model_caches["worker"]),
        "RAY_HEAD_ADDRESS": f"127.0.0.1:{gcs_port}",
        "RAY_NUM_CPUS": "2",
        "RAY_NUM_GPUS": "1",
        "MODELSERVE_WORKER_HTTP_PORT": str(worker_http_port),
        **ports["worker"].env(),
    }
    cluster = TwoNodes(
        start_node("head", head_env, logs / "head.log"),
        None,
        f"127.0.0.1:{gcs_port}",
        f"http://127.0.0.1:{dashboard_port}",
        http_port,
        worker_http_port,
        token_env,
        head_env,
        worker_env,
        ports,
        logs,
        model_caches,
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
                proc.wait(timeout=30)


@pytest.fixture(scope="module")
def conf(nodes: TwoNodes, tmp_path_factory: pytest.TempPathFactory) -> Path:
    project = make_project(tmp_path_factory.mktemp("multinode"))
    serve = {"port": nodes.http_port, "address": nodes.dashboard_url, "deploy_timeout_s": 180}
    path = write_conf(project, serve, SPREAD, PINNED, PACKED)
    assert main(["-c", str(path)]) == 0
    return path


@pytest.fixture(scope="module")
def gcs_conf(nodes: TwoNodes, conf: Path) -> Path:
    """The same file with the README's `address = <head ip>:6379` (the GCS port of the test's head)."""
    text = conf.read_text()
    assert f"address = {nodes.dashboard_url}\n" in text
    path = conf.parent / "gcs.ini"
    path.write_text(text.replace(f"address = {nodes.dashboard_url}\n", f"address = {nodes.gcs}\n"))
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


def test_a_controller_given_the_token_applies_by_gcs_address(nodes: TwoNodes, gcs_conf: Path) -> None:
    """`RAY_AUTH_TOKEN=... python controller.py` with `address = <head>:<gcs port>`, as the README says."""
    assert requests.get(f"{nodes.dashboard_url}/nodes?view=summary", timeout=5).status_code in (401, 403)
    result = controller("-c", str(gcs_conf), env=nodes.token_env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert len(re.findall(r"^\s+unchanged  ", result.stdout, re.M)) == 3, result.stdout


def test_status_shows_the_node_of_each_replica(nodes: TwoNodes, gcs_conf: Path) -> None:
    result = controller("status", "-c", str(gcs_conf), env=nodes.token_env, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    row = next(line for line in result.stdout.splitlines() if line.startswith("algopkg.AlgoExample "))
    assert "4/4" in row and len(re.findall(r"[\d.]+/[0-9a-f]{6} x2", row)) == 2, row


def test_losing_a_worker_keeps_serving_and_rejoining_restores_replicas(nodes: TwoNodes, conf: Path) -> None:
    with Load(f"http://127.0.0.1:{nodes.http_port}/echo", clients=4) as load:
        time.sleep(2)
        killed_at = time.monotonic()
        nodes.crash_worker()
        wait_for(lambda: alive_nodes(nodes.dashboard_url) == 1, 90, "the head to see the worker gone")
        wait_for(lambda: sum(replicas_per_node(nodes, "Echo").values()) == 2, 120, "a replacement replica on the head")
        time.sleep(2)
    failed = [status for status in load.codes if status != 200]
    after = [status for t, status in load.results if t > killed_at]
    print(f"\nrequests {len(load.results)}, after the kill {len(after)}, failed {len(failed)}: {Counter(failed)}")
    try:
        assert len(after) > 50 and after[-20:] == [200] * 20
        # What was in flight on the lost node (4 clients), and what reached it before the ingress dropped it.
        assert len(failed) <= 8, load.failures[:8]
        assert sum(replicas_per_node(nodes, "Echo:pinned").values()) == 1  # one per node: waits for a node
    finally:
        nodes.start_worker()  # the module's other tests need both nodes
    wait_for(lambda: alive_nodes(nodes.dashboard_url) == 2, 90, "the worker to rejoin")
    wait_for(lambda: sorted(replicas_per_node(nodes, "Echo:pinned").values()) == [1, 1], 120, "2/2 pinned replicas")
    assert call(f"http://127.0.0.1:{nodes.http_port}/pinned", {"n": 1}).status == 200


def node_pid(nodes: TwoNodes, role: str) -> int:
    proc = nodes.head if role == "head" else nodes.worker
    assert proc is not None
    return proc.pid


def start_flags(pid: int) -> dict[str, str]:
    """The `--flag=value` arguments of a process (a node's `ray start`, a raylet)."""
    return dict(a[2:].split("=", 1) for a in psutil.Process(pid).cmdline() if a.startswith("--") and "=" in a)


def raylet_ports(nodes: TwoNodes) -> dict[str, set[int]]:
    """The node manager and object manager ports of each live raylet, by role (Ray picks them)."""
    ports = {}
    for raylet in alive_raylets(nodes.dashboard_url):
        role = "head" if raylet.get("isHeadNode") else "worker"
        ports[role] = {int(raylet["nodeManagerPort"]), int(raylet["objectManagerPort"])}
    return ports


def known_public(nodes: TwoNodes, role: str, raylet: set[int]) -> dict[tuple[str, int], str]:
    """(process, port) -> what it is, for every listener a node may open beyond loopback."""
    flags, ports = start_flags(node_pid(nodes, role)), nodes.ports[role]
    known = {("raylet", port): "raylet (node and object manager)" for port in raylet}
    known |= {
        ("ray::DashboardAgent", int(flags["metrics-export-port"])): "agent: metrics export",
        ("ray::DashboardAgent", int(flags["dashboard-agent-listen-port"])): "agent: HTTP",
        ("ray::DashboardAgent", int(flags["dashboard-agent-grpc-port"])): "agent: gRPC",
        ("ray::RuntimeEnvAgent", int(flags["runtime-env-agent-port"])): "runtime env agent",
        ("haproxy", ports.stats): "HAProxy stats page",
        ("haproxy", ports.metrics): "HAProxy Prometheus page",
    }
    if role == "head":
        # Prometheus pages Ray 2.60's head serves on all interfaces, at ports Ray fixes for every
        # cluster on a host (44227, 44217) unless told: `modelserve.node` chooses them per head.
        environ = psutil.Process(node_pid(nodes, role)).environ()
        known |= {
            ("gcs_server", int(flags["port"])): "GCS",
            ("ray.util.client.server", int(flags["ray-client-server-port"])): "Ray Client server",
            ("dashboard.py", int(environ[raycompat.DASHBOARD_METRIC_PORT])): "dashboard: Prometheus page",
            ("monitor.py", int(environ[raycompat.AUTOSCALER_METRIC_PORT])): "autoscaler: Prometheus page",
        }
    return known


BETWEEN_DEPLOYMENTS = "a replica's gRPC server for calls between deployments (Ray binds [::]:0)"


def what_is(found: Listener, known: dict[tuple[str, int], str], worker_ports: range, block: range) -> str | None:
    if (found.name, found.port) in known:
        return known[(found.name, found.port)]
    if found.name.startswith(("ray::", "ray-dashboard-")) and found.port in worker_ports:
        return "a Ray worker's gRPC server"
    if found.name.startswith("ray::ServeReplica:") and found.port not in block:
        return BETWEEN_DEPLOYMENTS
    return None


def describe(found: list[Listener], label: dict[Listener, str | None]) -> str:
    return "\n".join(f"  {f.name[:40]:40} {f.ip:>15}:{f.port:<6} {label.get(f) or ''}" for f in found)


def serving(sid: int, ports: NodePorts, http_port: int, block: range) -> list[Listener] | None:
    """A node's listeners once its HAProxy and every replica on it listen (HAProxy starts after the deploy)."""
    found = listeners(sid)
    haproxy = {f.port for f in found if f.name == "haproxy"}
    replicas = {f.pid for f in found if f.name.startswith("ray::ServeReplica:")}
    direct = {f.pid for f in found if f.port in block}
    return found if {ports.stats, ports.metrics, http_port} <= haproxy and replicas and replicas <= direct else None


def worker_port_range(sid: int) -> range:
    """The ports the node's raylet gives its workers' gRPC servers."""
    raylet = next(p for p in psutil.Process(sid).children(recursive=True) if p.name() == "raylet")
    flags = start_flags(raylet.pid)
    return range(int(flags["min_worker_port"]), int(flags["max_worker_port"]) + 1)


def test_what_listens_where(nodes: TwoNodes, conf: Path) -> None:
    """HTTP, the dashboard and the replicas' own ports stay on loopback; what listens beyond it is known."""
    dashboard_port = int(nodes.dashboard_url.rsplit(":", 1)[1])
    http_ports = {"head": nodes.http_port, "worker": nodes.worker_http_port}
    raylets = raylet_ports(nodes)
    block = nodes.ports["head"].direct_http  # every replica's, on either node (see NodePorts)
    for role in ("head", "worker"):
        sid, ports = node_pid(nodes, role), nodes.ports[role]
        environ = psutil.Process(sid).environ()
        assert {k: environ.get(k) for k in ports.env()} == ports.env()  # the node started with its ports
        try:
            found = wait_for(partial(serving, sid, ports, http_ports[role], block), 60, f"the {role}'s HAProxy")
        except AssertionError as exc:
            raise AssertionError(f"{exc} ({ports}, HTTP {http_ports[role]}):\n{describe(listeners(sid), {})}") from None
        known = known_public(nodes, role, raylets[role])
        label = {f: what_is(f, known, worker_port_range(sid), block) for f in found if f.public}
        print(f"\n{role} (session {sid}), replicas' ports {block}:\n{describe(found, label)}")

        assert {(f.name, f.ip) for f in found if f.port == http_ports[role]} == {("haproxy", "127.0.0.1")}
        if role == "head":
            assert {f.ip for f in found if f.port == dashboard_port} == {"127.0.0.1"}
            # The fallback proxy (HAProxy's backup server) on the head's own port, not Ray's 8500.
            fallback = int(environ[raycompat.FALLBACK_PROXY_HTTP_PORT])
            assert fallback != 8500 and {f.ip for f in found if f.port == fallback} == {"127.0.0.1"}, fallback
        # Each replica serves HAProxy on one port of the block, on loopback only.
        direct = [f for f in found if f.port in block]
        replicas = {f.pid for f in found if f.name.startswith("ray::ServeReplica:")}
        assert {f.pid for f in direct} == replicas and len(direct) == len(replicas), direct
        assert all(f.name.startswith("ray::ServeReplica:") and f.ip == "127.0.0.1" for f in direct), direct
        # Beyond loopback only what is known: HAProxy on exactly its two pages, at most one
        # gRPC port per replica besides its worker's.
        assert not [f for f, what in label.items() if what is None], f"unknown listeners on the {role}: {label}"
        assert {f.port for f in label if f.name == "haproxy"} == {ports.stats, ports.metrics}
        between = Counter(f.pid for f, what in label.items() if what == BETWEEN_DEPLOYMENTS)
        assert set(between.values()) <= {1}, between


S3_SECTION = f"""
[algopkg.Echo:s3]
backend = Echo
model_zoo = s3://{BUCKET}/zoo
model = echo@1
route = s3echo
method = POST
replicas = 2
cpu_cost = 0.25
max_replicas_per_node = 1
"""


def node_of(nodes: TwoNodes, pid: int) -> str:
    """Which node's session a process belongs to: "head" or "worker"."""
    return next(role for role in ("head", "worker") if os.getsid(pid) == node_pid(nodes, role))


def test_a_section_from_the_object_store_is_served_by_both_nodes_each_downloading_once(
    nodes: TwoNodes, store: Store, conf: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 21: model files reach a worker from the store alone, through the worker's own cache."""
    for key, value in store.env.items():  # the controller (this process) resolves the model in the store
        monkeypatch.setenv(key, value)
    path = conf.parent / "s3.ini"
    path.write_text(conf.read_text() + S3_SECTION)
    store.server.requests.clear()
    assert main(["-c", str(path)]) == 0
    gets = store.server.gets(f"{BUCKET}/{STORED_MODEL}")
    MEASURED.append(f"s3 on two nodes (one replica each, each node its own cache): {gets} GETs of the object")
    assert sorted(replicas_per_node(nodes, "Echo:s3").values()) == [1, 1]
    code, out = controller_in_process("status", "-c", str(path))
    row = next(line for line in out.splitlines() if line.startswith("algopkg.Echo:s3 "))
    assert code == 0 and "2/2" in row and "echo@1" in row, out
    assert len(re.findall(r"[\d.]+/[0-9a-f]{6}", row)) == 2, row  # NODES: one replica on each

    seen: dict[str, dict[str, Any]] = {}  # node -> a reply's body and headers from a replica there

    def both_answered() -> bool:
        for port in (nodes.http_port, nodes.worker_http_port):
            reply = call(f"http://127.0.0.1:{port}/s3echo", {})
            assert reply.status == 200, reply.body
            result = reply.body["result"]
            seen[node_of(nodes, result["pid"])] = {**result, "replica": reply.headers["x-modelserve-replica"]}
        return len(seen) == 2

    wait_for(both_answered, 30, "an answer from the replica on each node")
    for role, result in seen.items():
        assert result["model"] == [STORED_TEXT], (role, result)
        assert result["env"]["MODEL_ZOO"] == f"s3://{BUCKET}/zoo", (role, result)  # no directory given
    replicas = {role: r["replica"] for role, r in seen.items()}
    print(f"\nreplicas answering: {replicas}; GETs of the object at the server: {gets}")
    assert gets == 2, store.server.requests  # once per node, not per replica nor by the controller

    # Each node's replica loaded the file from its own node's cache: the worker downloaded for itself.
    for role, cache in nodes.model_caches.items():
        blobs = list((cache / "blobs").iterdir())
        assert [b.read_text() for b in blobs] == [f"{STORED_TEXT}\n"], (role, blobs)
        replica = psutil.Process(seen[role]["pid"])
        assert replica.environ().get("MODELSERVE_MODEL_CACHE") == str(cache), role
        held = {Path(f.path) for f in replica.open_files()}  # the replica's use mark on the blob
        assert cache / "locks" / f"{blobs[0].name}.use" in held, (role, held)
