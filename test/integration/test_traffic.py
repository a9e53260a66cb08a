"""Traffic on a real cluster through the default (fast) ingress: a canary split by weight and
by a sticky header, weights shifted in place under load, mirrored traffic, autoscaling with
Ray Serve's autoscaler, scale to zero and the first request after it. Counts are printed."""

from __future__ import annotations

import re
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests
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


def echo(variant: str, route: str, *extra: str) -> str:
    lines = [f"[algopkg.Echo:{variant}]", "backend = Echo", "model = echo_model.txt", f"route = {route}"]
    return "\n".join([*lines, "method = POST", "cpu_cost = 0.2", *extra]) + "\n"


def canary(weight_a: int, weight_b: int, *extra: str) -> tuple[str, ...]:
    return (
        echo("a", "canary", f"traffic = {weight_a}", *extra),
        echo("b", "canary", f"traffic = {weight_b}", *extra),
        echo("p", "primary"),
        echo("slowcopy", "slowcopy", "mirror_of = Echo:p", 'user_config = {"sleep_all_s": 0.3}'),
        echo("failcopy", "failcopy", "mirror_of = algopkg.Echo:p", 'user_config = {"fail_all": true}'),
    )


def apply(project: Path, cluster: TestCluster, *sections: str) -> tuple[int, str]:
    return controller_in_process("-c", str(write_conf(project, cluster.serve(), SCALED, ZERO, *sections)))


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_project(tmp_path_factory.mktemp("traffic"))


@pytest.fixture(scope="module")
def conf(project: Path, cluster: TestCluster) -> Path:
    code, out = apply(project, cluster, *canary(90, 10))
    assert code == 0, out
    return project / "conf.ini"


def split(url: str, n: int, headers: dict[str, str] | None = None) -> dict[str, int]:
    """How many of `n` requests (8 at a time) each section answered; every one must be a 200."""
    with ThreadPoolExecutor(8) as pool:
        replies = list(pool.map(lambda i: post(url, {"i": i}, headers), range(n)))
    assert {r.status_code for r in replies} == {200}, [r.text for r in replies if r.status_code != 200][:3]
    counts: dict[str, int] = {}
    for reply in replies:
        section = reply.headers["x-modelserve-section"]
        counts[section] = counts.get(section, 0) + 1
    return counts


def post(url: str, params: dict[str, Any], headers: dict[str, str] | None = None) -> requests.Response:
    return requests.post(url, json=params, headers=headers or {}, timeout=30)


def pids(url: str) -> dict[str, set[int]]:
    found: dict[str, set[int]] = {}
    for i in range(60):
        reply = post(url, {"i": i})
        found.setdefault(reply.headers["x-modelserve-section"], set()).add(reply.json()["result"]["pid"])
    return found


def test_a_shared_route_splits_by_weight(conf: Path, cluster: TestCluster) -> None:
    counts = split(f"{cluster.base_url}/canary", 400)
    print(f"90/10 over 400 requests: {counts}")
    assert set(counts) == {"algopkg.Echo:a", "algopkg.Echo:b"}
    assert abs(counts["algopkg.Echo:b"] - 40) <= 25, counts  # 4 standard deviations


def test_weights_shift_in_place_under_load_and_sticky_keeps_a_user(
    conf: Path, project: Path, cluster: TestCluster
) -> None:
    url = f"{cluster.base_url}/canary"
    before = pids(url)
    with Load(url, clients=4) as load:
        code, out = apply(project, cluster, *canary(50, 50, "sticky = header:x-user-id"))
        assert code == 0 and "update in place  modelserve-route.canary" in out, out
        assert re.search(r"unchanged  Echo:a\n", out) and re.search(r"unchanged  Echo:b\n", out), out
        time.sleep(1)
    print(f"shifted 90/10 -> 50/50 under 4 clients: {len(load.results)} requests, {len(load.failures)} failed")
    assert load.results and not load.failures, load.failures[:3]
    counts = split(url, 400)
    print(f"50/50 over 400 requests: {counts}")
    assert abs(counts["algopkg.Echo:a"] - 200) <= 40, counts
    after = pids(url)
    assert {k: v <= before[k] for k, v in after.items()} == {"algopkg.Echo:a": True, "algopkg.Echo:b": True}
    users = {user: split(url, 12, {"x-user-id": user}) for user in (f"user-{i}" for i in range(12))}
    assert all(len(sections) == 1 for sections in users.values()), users
    assert {s for sections in users.values() for s in sections} == {"algopkg.Echo:a", "algopkg.Echo:b"}

    code, out = apply(project, cluster, *canary(0, 100))
    assert code == 0, out
    assert split(url, 100) == {"algopkg.Echo:b": 100}


def p50_ms(url: str, n: int = 300) -> float:
    timings = []
    with requests.Session() as session:
        for i in range(n):
            started = time.perf_counter()
            assert session.post(url, json={"i": i}, timeout=30).status_code == 200
            timings.append((time.perf_counter() - started) * 1000)
    return statistics.median(timings)


def test_mirrors_never_change_the_primarys_answers_and_are_counted(conf: Path, cluster: TestCluster) -> None:
    primary = f"{cluster.base_url}/primary"
    with ThreadPoolExecutor(8) as pool:
        replies = list(pool.map(lambda i: post(primary, {"i": i}), range(300)))
    assert [r.status_code for r in replies] == [200] * 300
    assert {r.headers["x-modelserve-section"] for r in replies} == {"algopkg.Echo:p"}
    assert [r.json()["result"]["params"]["i"] for r in replies] == list(range(300))
    plain, routed = p50_ms(f"{cluster.base_url}/echo"), p50_ms(f"{cluster.base_url}/canary")
    mirrored = p50_ms(primary)
    print(
        f"p50 at 1 connection: plain route {plain:.2f} ms, split route {routed:.2f} ms (+{routed - plain:.2f}), "
        f"mirrored route with a slow and a failing mirror {mirrored:.2f} ms"
    )
    # The primary never waits for its mirrors (the slow one takes 300 ms a request). On these 2 cores the
    # copies' own work (the failing mirror's error path) shows as a few ms; on a cluster it runs elsewhere.
    assert mirrored < routed + 10

    def counted() -> str | None:
        code, out = controller_in_process("status", "-c", str(conf))
        counts = r"<- algopkg.Echo:p \(100%\): sent ([\d.]+), failed ([\d.]+), dropped ([\d.]+)"
        slow = re.search(r"mirror algopkg.Echo:slowcopy " + counts, out)
        failing = re.search(r"mirror algopkg.Echo:failcopy " + counts, out)
        if slow and failing and float(failing.group(2)) > 0 and float(slow.group(1)) + float(slow.group(3)) > 0:
            return out
        return None

    out = wait_for(counted, 40, "status to show the mirrors' counts")
    print("\n".join(line for line in out.splitlines() if "mirror" in line or line.startswith("/")))


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


GREY = """
[algopkg.Echo]
backend = Echo
model = echo_model.txt
route = echo
method = POST
cpu_cost = 0.1
replicas = 1-3
"""


def test_a_grey_stage_runs_beside_production_and_goes_alone(conf: Path, project: Path, cluster: TestCluster) -> None:
    production = {call(f"{cluster.base_url}/echo", {}).body["result"]["pid"] for _ in range(10)}
    grey_dir = project / "grey"
    grey_dir.mkdir(exist_ok=True)
    grey_conf = write_conf(make_project(grey_dir), cluster.serve(), GREY)
    code, out = controller_in_process("--stage", "grey", "-c", str(grey_conf))
    assert code == 0 and "new  grey.Echo" in out and "/grey/echo" in out, out
    grey = call(f"{cluster.base_url}/grey/echo", {"stage": "grey"})
    assert grey.status == 200 and grey.body["result"]["pid"] not in production
    # A production apply leaves the stage alone, and the stage apply left production alone.
    code, out = controller_in_process("-c", str(conf))
    assert code == 0 and "grey" not in out, out
    assert {call(f"{cluster.base_url}/echo", {}).body["result"]["pid"] for _ in range(10)} <= production
    assert call(f"{cluster.base_url}/grey/echo", {}).status == 200
    code, out = controller_in_process("status", "--stage", "grey", "-c", str(grey_conf))
    assert code == 0 and re.search(r"algopkg.Echo\s+\S+/grey/echo\s+1/1\s+HEALTHY", out), out
    assert "/canary" not in out and "Echo:a" not in out
    code, out = controller_in_process("down", "--stage", "grey", "-c", str(grey_conf))
    assert code == 0 and "removed 1 section(s) from stage 'grey'" in out, out
    gone = wait_for(lambda: (r := call(f"{cluster.base_url}/grey/echo", {})).status == 404 and r, 30, "grey to go")
    assert gone.body["error"]["type"] == "NotFound"
    assert call(f"{cluster.base_url}/echo", {}).status == 200
    code, out = controller_in_process("status", "-c", str(conf))
    assert code == 0 and "algopkg.Echo:a" in out, out
