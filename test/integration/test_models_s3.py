"""Model files from an object store on a real local cluster: moto's S3 server (test/s3server.py),
the node cache counted at the server, `@latest` pinned, a version rolled out and back under wrk,
and a store that cannot be read refused before the cluster changes."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from helpers import (
    MEASURED,
    TestCluster,
    call,
    controller,
    controller_in_process,
    make_project,
    start_test_cluster,
    wait_settled,
    write_conf,
)
from s3server import S3Server, environment
from wrk import WrkLoad, assert_no_failure

pytestmark = pytest.mark.integration

BUCKET, ZOO = "models", "s3://models/zoo"


def section(model: str, replicas: int = 2, extra: str = "") -> str:
    return f"""
    [algopkg.Echo]
    backend = Echo
    model = {model}
    route = echo
    method = POST
    cpu_cost = 0.25
    replicas = {replicas}
    {extra}
    """


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """The store, and the standard AWS variables pointing at it for this process (the controller)."""
    with S3Server() as server:
        home = tmp_path_factory.mktemp("aws")
        with environment(server.env(home)):
            client = server.client()
            client.create_bucket(Bucket=BUCKET)
            for version in (1, 2):
                client.put_object(Bucket=BUCKET, Key=f"zoo/echo/{version}/a.txt", Body=f"echo-v{version}\n".encode())
            client.put_object(Bucket=BUCKET, Key="zoo/echo_model.txt", Body=b"echo-plain\n")
            yield server


@pytest.fixture(scope="module")
def cluster(s3: S3Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestCluster]:
    """The nodes get the store's address and credentials from their environment, as a fleet's nodes do."""
    aws = {k: v for k, v in os.environ.items() if k.startswith("AWS_")}
    cache = str(tmp_path_factory.mktemp("model-cache"))
    started = start_test_cluster(num_cpus=2, extra_env={**aws, "MODELSERVE_MODEL_CACHE": cache})
    yield started
    started.stop()


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_project(tmp_path_factory.mktemp("s3project"))


def apply(project: Path, cluster: TestCluster, model: str, *args: str, replicas: int = 2) -> tuple[int, str]:
    write_conf(project, cluster.serve(model_zoo=ZOO), section(model, replicas))
    return controller_in_process("-c", str(project / "conf.ini"), *args)


def served(cluster: TestCluster) -> Any:
    reply = call(f"{cluster.base_url}/echo", {})
    assert reply.status == 200, reply.body
    return reply.body["result"]["model"]


def object_gets(s3: S3Server) -> int:
    return sum(n for (method, path), n in s3.requests.items() if method == "GET" and path.startswith("/models/zoo/"))


def test_two_replicas_on_one_node_fetch_each_file_once_and_a_reapply_fetches_nothing(
    s3: S3Server, cluster: TestCluster, project: Path
) -> None:
    s3.requests.clear()
    code, out = apply(project, cluster, "echo@latest")
    assert code == 0, out
    assert s3.gets("models/zoo/echo/2/a.txt") == 1, s3.requests  # 2 replicas, 1 download
    assert s3.gets("models/zoo/echo/1/a.txt") == 0  # @latest is 2
    assert {tuple(served(cluster)) for _ in range(10)} == {("echo-v2",)}
    MEASURED.append(f"s3: 2 replicas on one node, 1 file: {object_gets(s3)} GET of the object at the server")
    status = controller_in_process("-c", str(project / "conf.ini"), "status")[1]
    assert "MODEL" in status and "echo@2" in status, status
    s3.requests.clear()
    code, out = apply(project, cluster, "echo@latest")
    assert code == 0 and object_gets(s3) == 0, (out, s3.requests)  # nothing changed: nothing fetched
    # A roll-out whose files the node has: new replicas start from the cache.
    write_conf(project, cluster.serve(model_zoo=ZOO), section("echo@latest", 2, "max_replicas_per_node = 2"))
    started = time.monotonic()
    code, out = controller_in_process("-c", str(project / "conf.ini"))
    took = time.monotonic() - started
    assert code == 0 and "roll out" in out, out
    assert object_gets(s3) == 0, s3.requests
    MEASURED.append(f"s3: a roll-out from a warm node cache: 0 GETs, apply returned in {took:.1f} s")
    wait_settled(cluster.dashboard_url)


def test_latest_is_pinned_until_the_next_apply_then_rolls_and_rolls_back_under_load(
    s3: S3Server, cluster: TestCluster, project: Path
) -> None:
    code, out = apply(project, cluster, "echo@latest")
    assert code == 0, out
    s3.client().put_object(Bucket=BUCKET, Key="zoo/echo/3/a.txt", Body=b"echo-v3\n")
    time.sleep(1)
    assert set(tuple(served(cluster)) for _ in range(10)) == {("echo-v2",)}  # pinned: the upload changes nothing
    listing = controller("-c", str(project / "conf.ini"), "models")
    assert listing.returncode == 0, listing.stderr
    assert "1 *2 3" in listing.stdout and "echo@latest" in listing.stdout and "echo@2" in listing.stdout, listing.stdout
    for model, expected in (("echo@latest", "echo-v3"), ("echo@2", "echo-v2")):
        with WrkLoad(f"{cluster.base_url}/echo", connections=8, body={}, marker='"model"') as load:
            code, out = apply(project, cluster, model)
            wait_settled(cluster.dashboard_url)
            time.sleep(1)
        assert code == 0 and "roll out" in out, out
        assert_no_failure(load.result, f"model = {model}: rolled to {expected}", 10)
        assert {tuple(served(cluster)) for _ in range(10)} == {(expected,)}


def test_an_object_rewritten_under_the_same_name_rolls_the_section(
    s3: S3Server, cluster: TestCluster, project: Path
) -> None:
    code, out = apply(project, cluster, "echo_model.txt", replicas=1)
    assert code == 0, out
    assert served(cluster) == ["echo-plain"]
    code, out = apply(project, cluster, "echo_model.txt", replicas=1)
    assert code == 0 and "roll out" not in out, out  # the same ETag: nothing to do
    s3.client().put_object(Bucket=BUCKET, Key="zoo/echo_model.txt", Body=b"echo-plain-retrained\n")
    code, out = apply(project, cluster, "echo_model.txt", replicas=1)
    assert code == 0 and "roll out  Echo" in out, out  # a new ETag: the apply table says so
    wait_settled(cluster.dashboard_url)
    assert {tuple(served(cluster)) for _ in range(10)} == {("echo-plain-retrained",)}


@pytest.mark.parametrize(
    ("zoo", "model", "cause"),
    [
        (ZOO, "absent.txt", "no such key"),
        (ZOO, "echo@9", "no such version; the versions there are: 1, 2"),
        ("s3://no-such-bucket/zoo", "echo@1", "no such bucket"),
        (ZOO, "echo@1", "endpoint unreachable"),  # the store is down: AWS_ENDPOINT_URL where nothing listens
    ],
)
def test_a_store_that_cannot_serve_the_model_is_named_and_nothing_changes(
    s3: S3Server, cluster: TestCluster, project: Path, zoo: str, model: str, cause: str
) -> None:
    code, out = apply(project, cluster, "echo@2")
    assert code == 0, out
    before = served(cluster)
    write_conf(project, cluster.serve(model_zoo=zoo), section(model))
    env = {"AWS_ENDPOINT_URL": "http://127.0.0.1:9"} if cause == "endpoint unreachable" else None
    for command in (("check",), ()):
        started = time.monotonic()
        done = controller("-c", str(project / "conf.ini"), *command, env=env, timeout=120)
        assert done.returncode == 2, done.stdout + done.stderr
        assert f"[algopkg.Echo] model = {model!r}: " in done.stderr and cause in done.stderr, done.stderr
        assert time.monotonic() - started < 30
    assert served(cluster) == before


MANY = """
[algopkg.Adapters]
backend = Adapter
models = s3://models/adapters
route = adapters
method = POST
cpu_cost = 0.25
"""


def test_a_section_of_many_models_loads_each_from_the_store_once_per_node(
    s3: S3Server, cluster: TestCluster, project: Path
) -> None:
    client = s3.client()
    client.put_object(Bucket=BUCKET, Key="adapters/a1", Body=b"2\n")  # a model that is one file
    client.put_object(Bucket=BUCKET, Key="adapters/a2/scale.txt", Body=b"3\n")  # one that is a folder
    write_conf(project, cluster.serve(model_zoo=ZOO), section("echo@2", replicas=1), MANY)
    code, out = controller_in_process("-c", str(project / "conf.ini"))
    assert code == 0, out

    def gets() -> int:
        return sum(n for (method, path), n in s3.requests.items() if method == "GET" and "/adapters/" in path)

    for _ in range(2):
        for model, scale in (("a1", 2.0), ("a2", 3.0)):
            answer = requests.post(
                f"{cluster.base_url}/adapters",
                json={"x": [1]},
                headers={"serve_multiplexed_model_id": model},
                timeout=60,
            )
            assert answer.status_code == 200, answer.text
            assert answer.json()["result"]["y"] == [scale]
    assert gets() == 2  # each model's file once: the second round is answered from memory
