"""Dynamic batching, warm-up and `controller.py bench` on a real cluster."""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from helpers import TestCluster, call, make_project, write_conf

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


def test_a_failing_batch_fails_only_its_requests(conf: Path, cluster: TestCluster) -> None:
    url = f"{cluster.base_url}/batch"
    alone = call(url, {"fail": True})
    assert alone.status == 500 and "ValueError: a poisoned batch" in alone.body["error"]["message"]
    bodies = [{"i": i, "fail": i == 0} for i in range(10)]
    replies = post_many(url, bodies)
    failed = [r for r in replies if r.status != 200]
    assert replies[0].status == 500 and 1 <= len(failed) <= 4  # at most one batch of 4
    assert all(r.status == 500 and "poisoned" in r.body["error"]["message"] for r in failed)
    assert call(url, {"i": 1}).status == 200


def test_a_result_list_of_the_wrong_length_is_an_error(conf: Path, cluster: TestCluster) -> None:
    reply = call(f"{cluster.base_url}/batch", {"short": True})
    assert reply.status == 500
    assert "infer_batch returned 0 results for a batch of 1" in reply.body["error"]["message"]


def test_batch_keys_change_in_place(conf: Path, cluster: TestCluster, capsys: pytest.CaptureFixture[str]) -> None:
    pids = {r.body["result"]["pid"] for r in post_many(f"{cluster.base_url}/batch", [{"i": i} for i in range(4)])}
    conf.write_text(conf.read_text().replace("max_batch_size = 4", "max_batch_size = 2"))
    assert main(["-c", str(conf)]) == 0
    assert "update in place  Batcher" in capsys.readouterr().out
    replies = post_many(f"{cluster.base_url}/batch", [{"i": i} for i in range(12)])
    assert {r.body["result"]["pid"] for r in replies} == pids
    assert max(r.body["result"]["batch_size"] for r in replies) == 2


def test_bench_command_against_a_running_route(conf: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "batch", "-c", str(conf), "-n", "80", "-C", "4", "-d", "30"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"requests 8\d\s+in [\d.]+s\s+->\s+[\d.]+ req/s", out), out
    assert re.search(r"p50 [\d.]+\s+p95 [\d.]+\s+p99 [\d.]+\s+max [\d.]+", out) and "non-2xx 0  errors 0" in out
    assert main(["bench", "nope", "-c", str(conf), "-n", "1"]) == 2
