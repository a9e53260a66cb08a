"""The fault suite: a replica killed under load, a model that fails on some inputs, fuzzed
request bodies to every route. Real cluster, default (fast) ingress; counts are printed."""

from __future__ import annotations

import http.client
import json
import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests
from helpers import Load, TestCluster, call, controller_in_process, make_project, wait_for, write_conf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytestmark = pytest.mark.integration

SECTIONS = (
    """
    [algopkg.Echo]
    backend = Echo
    model = echo_model.txt
    route = echo
    method = GET,POST
    cpu_cost = 0.25
    replicas = 2
    """,
    """
    [algopkg.Batcher]
    backend = Batcher
    route = batch
    method = POST
    cpu_cost = 0.25
    max_batch_size = 4
    """,
    """
    [algopkg.Legacy]
    backend = algo_backend
    model = legacy_model.txt
    route = legacy
    method = POST
    cpu_cost = 0.25
    """,
    """
    [algopkg.Inputs:typed]
    backend = Typed
    route = typed
    method = GET,POST
    cpu_cost = 0.25
    """,
    """
    [algopkg.Inputs]
    backend = Inputs
    route = inputs
    method = POST
    cpu_cost = 0.25
    max_body_kb = 64
    """,
)
ROUTES = ("echo", "batch", "legacy", "typed", "inputs")


@pytest.fixture(scope="module")
def conf(tmp_path_factory: pytest.TempPathFactory, cluster: TestCluster) -> Path:
    path = write_conf(make_project(tmp_path_factory.mktemp("faults")), cluster.serve(), *SECTIONS)
    code, out = controller_in_process("-c", str(path))
    assert code == 0, out
    return path


def test_a_model_failing_on_one_input_in_a_hundred_fails_exactly_those(conf: Path, cluster: TestCluster) -> None:
    bodies = [{"i": i, "fail": i % 100 == 7} for i in range(600)]
    with ThreadPoolExecutor(8) as pool:
        for route in ("echo", "batch"):
            url = f"{cluster.base_url}/{route}"
            replies = list(pool.map(lambda body, url=url: call(url, body), bodies))
            failed = [b["i"] for b, r in zip(bodies, replies, strict=True) if r.status != 200]
            print(f"/{route}: {len(replies)} requests, {len(failed)} failed: {failed}")
            assert failed == [i for i in range(600) if i % 100 == 7]
            assert all(r.status == 500 and r.body["error"]["type"] == "ModelError" for r in replies if r.status != 200)


def test_a_replica_killed_under_load_is_replaced(conf: Path, cluster: TestCluster) -> None:
    """SIGKILL one of two replicas while 8 clients post: requests fail only while it is gone."""
    url = f"{cluster.base_url}/echo"
    pids = {call(url, {}).body["result"]["pid"] for _ in range(40)}
    assert len(pids) == 2, pids
    victim = min(pids)
    with Load(url, clients=8) as load:
        time.sleep(2)
        killed_at = time.monotonic()
        os.kill(victim, signal.SIGKILL)

        def replaced() -> bool:
            found = set()
            for _ in range(20):
                try:
                    reply = call(url, {})
                except (OSError, http.client.HTTPException):  # the probe may meet the kill too
                    return False
                if reply.status == 200:
                    found.add(reply.body["result"]["pid"])
            return len(found - {victim}) == 2

        wait_for(replaced, 60, "Ray to replace the killed replica")
        back_after = time.monotonic() - killed_at
        time.sleep(2)
    failed = [(round(t - killed_at, 2), status) for t, status, _ in load.failures]
    print(
        f"{len(load.results)} requests under 8 clients; {len(failed)} failed, "
        f"all within {max((t for t, _ in failed), default=0):.1f} s of the kill; "
        f"both replicas answer again {back_after:.1f} s after it"
    )
    assert back_after < 15
    assert all(0 <= t < back_after for t, _ in failed), failed
    assert len(failed) < len(load.results) / 4
    recent = [status for t, status in load.results if t > killed_at + back_after]
    assert recent and set(recent) == {200}


def _deep(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


BODIES = st.one_of(
    st.binary(max_size=2048),
    st.text(max_size=512).map(str.encode),
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
        lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
        max_leaves=20,
    ).map(lambda v: json.dumps(v).encode()),
    st.integers(min_value=1, max_value=100_000).map(_deep),
    st.integers(min_value=300, max_value=5000).map(lambda n: b'{"x": 1' + b"0" * n + b"}"),
    st.sampled_from([b'{"x": 1e999}', b'{"x": NaN}', b'{"text": "\\ud800"}', b"\xff\xfe{}", b'{"a":' * 50]),
)
CONTENT_TYPES = st.sampled_from(
    [
        "application/json",
        "",
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data",
        "multipart/form-data; boundary=x",
        "image/png",
        "application/octet-stream",
        "application/json; charset=latin-1",
        "text/csv",
    ]
)


def _model_said_so(reply: requests.Response) -> bool:
    """A 500 the backend caused (it raised on these params), not our code."""
    try:
        message = reply.json()["error"]["message"]
    except (ValueError, KeyError, TypeError):
        return False
    return message.startswith(("the model failed on this request", "the backend returned a", "the backend's result"))


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(route=st.sampled_from(ROUTES), body=BODIES, content_type=CONTENT_TYPES, method=st.sampled_from(["POST", "GET"]))
def test_fuzzed_bodies_never_get_a_5xx_from_our_code(
    conf: Path, cluster: TestCluster, route: str, body: bytes, content_type: str, method: str
) -> None:
    headers = {"Content-Type": content_type} if content_type else {}
    reply = requests.request(method, f"{cluster.base_url}/{route}", data=body, headers=headers, timeout=30)
    assert reply.status_code < 500 or _model_said_so(reply), (reply.status_code, reply.text[:300])
    assert "Traceback" not in reply.text
    if reply.headers.get("content-type", "").startswith("application/json"):
        envelope: Any = reply.json()
        assert envelope["status"] in (0, 1) and envelope["request_id"]


def test_every_route_is_healthy_after_the_fuzz(conf: Path, cluster: TestCluster) -> None:
    for route in ROUTES:
        assert requests.get(f"{cluster.base_url}/{route}/ping", timeout=10).json()["result"] == "pong"
    assert call(f"{cluster.base_url}/typed", {"text": "ok"}).status == 200
