"""Traffic on a real cluster through the default (fast) ingress: autoscaling with Ray Serve's
autoscaler, scale to zero and the first request after it. Counts are printed."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from helpers import Load, TestCluster, call, controller_in_process, make_project, wait_for, write_conf

from modelserve.cluster import Cluster

pytestmark = pytest.mark.integration

SCALED = """
[algopkg.Echo]
backend = Echo
model = echo_model.txt
route = echo
method = POST
cpu_cost = 0.25
replicas = 1-3
target_ongoing_requests = 1
upscale_delay_s = 0
downscale_delay_s = 2
"""
ZERO = """
[algopkg.Echo:zero]
backend = Echo
model = echo_model.txt
route = zero
method = POST
cpu_cost = 0.25
replicas = 0-1
downscale_delay_s = 2
"""


@pytest.fixture(scope="module")
def conf(tmp_path_factory: pytest.TempPathFactory, cluster: TestCluster) -> Path:
    path = write_conf(make_project(tmp_path_factory.mktemp("traffic")), cluster.serve(), SCALED, ZERO)
    code, out = controller_in_process("-c", str(path))
    assert code == 0, out
    return path


def running(cluster: TestCluster, app: str, states: tuple[str, ...] = ("RUNNING",)) -> int:
    details = Cluster(cluster.dashboard_url).details()
    (deployment,) = details["applications"][app]["deployments"].values()
    return sum(1 for r in deployment.get("replicas") or [] if r.get("state") in states)


def test_load_adds_replicas_and_quiet_removes_them(conf: Path, cluster: TestCluster) -> None:
    url = f"{cluster.base_url}/echo"
    assert running(cluster, "Echo") == 1
    started = time.monotonic()
    with Load(url, clients=6, params={"sleep_s": 0.2}) as load:
        # each request holds its replica for 0.2 s: 6 clients want 6 replicas at target 1, max 3
        wait_for(lambda: running(cluster, "Echo") == 3, 90, "3 replicas under load")
        up_after = time.monotonic() - started
        time.sleep(1)
    print(f"scaled 1 -> 3 replicas in {up_after:.1f} s under 6 clients; {len(load.results)} requests")
    assert set(load.codes) == {200}, load.failures[:3]
    wait_for(lambda: running(cluster, "Echo") == 1, 90, "back to 1 replica when quiet")


def test_scale_to_zero_and_the_first_request_after_it(conf: Path, cluster: TestCluster) -> None:
    url = f"{cluster.base_url}/zero"
    assert call(url, {"warm": 1}).status == 200
    every_state = ("RUNNING", "STARTING", "UPDATING", "RECOVERING", "STOPPING", "PENDING_MIGRATION")
    wait_for(lambda: running(cluster, "Echo:zero", every_state) == 0, 120, "the section to scale to zero when idle")
    started = time.monotonic()
    with ThreadPoolExecutor(4) as pool:
        replies = list(pool.map(lambda i: call(url, {"i": i}, timeout=120), range(4)))
    took = time.monotonic() - started
    print(f"4 requests at zero replicas: {[r.status for r in replies]} in {took:.1f} s")
    assert [r.status for r in replies] == [200] * 4, [(r.status, r.body) for r in replies]
    assert [r.body["result"]["params"]["i"] for r in replies] == [0, 1, 2, 3]
    assert running(cluster, "Echo:zero") == 1
