"""`controller.py` driven as a subprocess, as a user runs it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import ECHO_SECTION, REPO, TestCluster, call, make_project, session_commands, wait_for, write_conf

from modelserve.cluster import Cluster, dashboard_answers
from modelserve.node import free_port, late_port

pytestmark = pytest.mark.e2e

LEGACY = """
[algopkg.Legacy]
backend = algo_backend
model = legacy_model.txt
route = legacy
method = POST
cpu_cost = 0.5
user_config = {"threshold": 1.5}
warmup = warmup.json
"""


ECHO = ECHO_SECTION


def controller(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(REPO / "controller.py"), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_project(tmp_path_factory.mktemp("e2e"))


def test_invalid_file_changes_nothing(project: Path, cluster: TestCluster) -> None:
    before = Cluster(cluster.dashboard_url).details().get("applications")
    conf = write_conf(project, cluster.serve(), LEGACY + "replicas = lots\n")
    result = controller("-c", str(conf))
    assert result.returncode == 2
    assert "[algopkg.Legacy] replicas = 'lots': must be a whole number" in result.stderr
    assert "nothing was changed" in result.stderr
    assert Cluster(cluster.dashboard_url).details().get("applications") == before
    check = controller("check", "-c", str(conf))
    assert check.returncode == 2 and "replicas = 'lots'" in check.stderr


def test_original_template_package_serves_unchanged(project: Path, cluster: TestCluster) -> None:
    conf = write_conf(project, cluster.serve(), LEGACY)
    assert controller("check", "-c", str(conf)).returncode == 0
    result = controller("-c", str(conf))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "algopkg.Legacy" in result.stdout and "HEALTHY" in result.stdout
    reply = call(f"{cluster.base_url}/legacy", {"values": [1, 2, 3]})
    assert reply.status == 200
    assert reply.body["result"] == {"model": "legacy-model-v1", "sum": 6.0, "above": 2}
    assert reply.body["info"].startswith("Result from ") and reply.body["status"] == 1
    status = controller("status", "-c", str(conf))
    assert status.returncode == 0 and "1/1" in status.stdout


def test_original_template_failing_to_load_is_not_healthy(project: Path, cluster: TestCluster) -> None:
    (project / "Model_ZOO" / "broken.txt").write_text("broken")
    broken = LEGACY.replace("[algopkg.Legacy]", "[algopkg.Legacy:broken]").replace("legacy_model.txt", "broken.txt")
    conf = write_conf(
        project, cluster.serve(deploy_timeout_s=90), LEGACY, broken.replace("route = legacy", "route = broken")
    )
    result = controller("-c", str(conf))
    assert result.returncode == 1
    assert "[algopkg.Legacy:broken] is DEPLOY_FAILED" in result.stderr
    assert "cannot parse the model file" in result.stderr
    assert call(f"{cluster.base_url}/legacy", {"values": [2]}).status == 200


def test_embedded_default_starts_serves_and_stops_a_local_cluster(tmp_path: Path) -> None:
    """What `make serve` does: no cluster anywhere, the controller starts one on loopback.

    It uses the fallback ingress (Ray Serve's Python proxy); every other test runs on the
    default fast ingress, so the HTTP contract is checked under both.
    """
    project = make_project(tmp_path)
    port, dashboard_port = late_port(), free_port()
    serve = {"port": port, "address": "local", "dashboard_port": dashboard_port, "local_cpus": 2, "local_gpus": 0}
    conf = write_conf(project, {**serve, "ingress": "proxy"}, LEGACY, ECHO)
    base = f"http://127.0.0.1:{port}"
    try:
        result = controller("-c", str(conf))
        assert result.returncode == 0, result.stdout + result.stderr
        head_pid = json.loads((project / ".modelserve" / "cluster.json").read_text())["pid"]
        assert "haproxy" not in session_commands(head_pid)
        reply = call(f"{base}/legacy", {"values": [5]})
        assert reply.body["result"]["sum"] == 5.0 and reply.headers["x-request-id"] == reply.body["request_id"]
        assert call(f"{base}/legacy", raw=b"{oops").status == 400
        assert call(f"{base}/legacy", method="GET").status == 405
        assert call(f"{base}/echo", {"fail": True}).body["error"]["type"] == "ModelError"
        assert call(f"{base}/legacy/ping", method="GET").body["result"] == "pong"
        assert call(f"{base}/-/healthz", method="GET").status == 200
        assert (project / ".modelserve" / "cluster.json").exists()
        again = controller("-c", str(write_conf(project, {**serve, "ingress": "proxy"}, LEGACY)))
        assert again.returncode == 0 and "unchanged  Legacy" in again.stdout and "remove  Echo" in again.stdout
        wait_for(lambda: call(f"{base}/echo", {}).status == 404, 30, "/echo to be removed")
    finally:
        down = controller("down", "--stop-cluster", "-c", str(conf))
    assert down.returncode == 0 and "stopped the local Ray cluster" in down.stdout
    wait_for(lambda: not dashboard_answers(f"http://127.0.0.1:{dashboard_port}"), 30, "the dashboard to stop")
