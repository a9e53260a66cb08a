"""Dynamic batching, warm-up and `controller.py bench` on a real cluster."""

from __future__ import annotations

import re
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from helpers import TestCluster, assert_error_envelope, call, make_project, write_conf

from modelserve.cli import main

pytestmark = pytest.mark.integration

BATCHER = """
[algopkg.Batcher]
backend = Batcher
route = batch
method = POST
cpu_cost = 0.5
max_batch_size = 4
batch_wait_ms = 20
warmup = warmup.json
"""


@pytest.fixture(scope="module")
def conf(tmp_path_factory: pytest.TempPathFactory, cluster: TestCluster) -> Path:
    project = make_project(tmp_path_factory.mktemp("batching"))
    path = write_conf(project, cluster.serve(), BATCHER)
    assert main(["-c", str(path)]) == 0
    return path


def post_many(url: str, bodies: list[dict]) -> list:
    with ThreadPoolExecutor(len(bodies)) as pool:
        return list(pool.map(lambda body: call(url, body), bodies))


def test_warmup_ran_before_the_first_request(conf: Path, cluster: TestCluster) -> None:
    reply = call(f"{cluster.base_url}/batch", {"i": 0})
    assert reply.status == 200
    assert reply.body["result"]["warmup_calls"] == 6  # 3 one by one, then once as a batch
    assert call(f"{cluster.base_url}/batch/ping", method="GET").status == 200


def test_results_map_to_their_requests_under_concurrency(conf: Path, cluster: TestCluster) -> None:
    replies = post_many(f"{cluster.base_url}/batch", [{"i": i} for i in range(24)])
    assert [r.status for r in replies] == [200] * 24
    assert [r.body["result"]["i"] for r in replies] == list(range(24))
    sizes = {r.body["result"]["batch_size"] for r in replies}
    assert max(sizes) > 1 and max(sizes) <= 4


def test_a_failing_batch_fails_only_its_bad_request(conf: Path, cluster: TestCluster) -> None:
    """When `infer_batch` raises, its requests are answered one by one through `infer`."""
    url = f"{cluster.base_url}/batch"
    assert_error_envelope(call(url, {"fail": True}), 500, "ModelError", "ValueError: a poisoned request")
    replies = post_many(url, [{"i": i, "fail": i == 0} for i in range(10)])
    assert_error_envelope(replies[0], 500, "ModelError", "ValueError: a poisoned request")
    assert [(r.status, r.body["result"]["i"]) for r in replies[1:]] == [(200, i) for i in range(1, 10)]


def test_a_result_list_of_the_wrong_length_is_an_error(conf: Path, cluster: TestCluster) -> None:
    reply = call(f"{cluster.base_url}/batch", {"short": True})
    assert_error_envelope(reply, 500, "ModelError", "infer_batch returned 0 results for a batch of 1")


def test_batch_keys_change_in_place(conf: Path, cluster: TestCluster, capsys: pytest.CaptureFixture[str]) -> None:
    pids = {r.body["result"]["pid"] for r in post_many(f"{cluster.base_url}/batch", [{"i": i} for i in range(4)])}
    original = conf.read_text()
    conf.write_text(original.replace("max_batch_size = 4", "max_batch_size = 2"))
    try:
        assert main(["-c", str(conf)]) == 0
        assert "update in place  Batcher" in capsys.readouterr().out
        replies = post_many(f"{cluster.base_url}/batch", [{"i": i} for i in range(12)])
        assert {r.body["result"]["pid"] for r in replies} == pids
        assert max(r.body["result"]["batch_size"] for r in replies) == 2
    finally:
        conf.write_text(original)
        assert main(["-c", str(conf)]) == 0


def test_bench_command_against_a_running_route(conf: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "batch", "-c", str(conf), "-n", "80", "-C", "4", "-d", "30"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"requests 8\d\s+in [\d.]+s\s+->\s+[\d.]+ req/s", out), out
    assert re.search(r"p50 [\d.]+\s+p95 [\d.]+\s+p99 [\d.]+\s+max [\d.]+", out) and "non-2xx 0  errors 0" in out
    assert main(["bench", "nope", "-c", str(conf), "-n", "1"]) == 2


def test_under_concurrency_each_request_fails_only_for_its_own_reasons(conf: Path, cluster: TestCluster) -> None:
    """8 clients, 1 request in 10 invalid, `infer_batch` raising for its whole batch as users write it."""
    url = f"{cluster.base_url}/batch"
    bodies = [{"i": i, "invalid": i % 10 == 3} for i in range(160)]
    with ThreadPoolExecutor(8) as pool:
        replies = list(pool.map(lambda body: call(url, body), bodies))
    for body, reply in zip(bodies, replies, strict=True):
        if body["invalid"]:
            assert_error_envelope(reply, 400, "BadRequest", f"request {body['i']} is invalid")
        else:
            assert reply.status == 200 and reply.body["result"]["i"] == body["i"], reply.body
    print(f"\n{len(bodies)} requests, {sum(b['invalid'] for b in bodies)} invalid: each answered for itself")


def test_a_result_slot_may_fail_its_request_alone(conf: Path, cluster: TestCluster) -> None:
    bodies = [{"i": i, "reject": i == 2} for i in range(8)]
    replies = post_many(f"{cluster.base_url}/batch", bodies)
    assert_error_envelope(replies[2], 400, "BadRequest", "request 2 is rejected")
    assert [r.status for i, r in enumerate(replies) if i != 2] == [200] * 7
    assert max(r.body["result"]["batch_size"] for i, r in enumerate(replies) if i != 2) > 1


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (
            "gpu_cost = 1\n",
            "[algopkg.Echo] gpu_cost = 1: each replica needs 1 GPU, and no node of the cluster has more",
        ),
        (
            "replicas = 2\ncpu_cost = 1\n",
            "the sections need 2.5 CPU in all ([algopkg.Batcher] 1 x 0.5, [algopkg.Echo] 2 x 1",
        ),
    ],
)
def test_a_plan_that_cannot_fit_fails_at_once_and_changes_nothing(
    conf: Path, cluster: TestCluster, capsys: pytest.CaptureFixture[str], extra: str, expected: str
) -> None:
    """The module's cluster has 2 CPUs and no GPU, and the Batcher section already runs on it."""
    from modelserve.cluster import Cluster

    before = Cluster(cluster.dashboard_url).details()["applications"]
    echo = "\n[algopkg.Echo]\nbackend = Echo\nroute = echo\nmethod = POST\n" + extra
    trial = conf.parent / "too_big.ini"
    trial.write_text(conf.read_text() + echo)
    began = time.monotonic()
    assert main(["-c", str(trial)]) == 2
    assert time.monotonic() - began < 20
    err = capsys.readouterr().err
    assert expected in err and "nothing was changed" in err, err
    after = Cluster(cluster.dashboard_url).details()["applications"]
    assert after.keys() == before.keys() == {"Batcher", "modelserve-404"}
