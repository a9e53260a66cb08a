"""A real local Ray cluster, real HTTP: deploy, call, update in place, roll out, fail, remove.

The module owns its cluster and its applications: `deployed` applies the base sections once,
and a test that changes them puts them back, so any test can run alone.
"""

from __future__ import annotations

import json
import re
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from helpers import (
    ECHO_SECTION,
    FIXTURES,
    TestCluster,
    assert_error_envelope,
    call,
    controller_in_process,
    make_project,
    session_commands,
    wait_for,
    wait_settled,
    write_conf,
)
from wrk import WrkLoad, assert_no_failure

from modelserve import raycompat
from modelserve.cluster import Cluster

pytestmark = pytest.mark.integration

EXAMPLE = """
[algopkg.AlgoExample]
backend = algo_backend
model = algoexample_model_v1.npz
route = extract
method = GET,POST
cpu_cost = 0.5
gpu_cost = 0.5
"""
SMALL = EXAMPLE.replace("[algopkg.AlgoExample]", "[algopkg.AlgoExample:small]").replace("extract", "small")
ECHO = ECHO_SECTION
BASE = (EXAMPLE, SMALL, ECHO)
REPEATS = 3
SAMPLES = json.loads((FIXTURES / "digits_samples.json").read_text())


@pytest.fixture(scope="module")
def cluster_options() -> dict[str, Any]:
    """Three sections of half a CPU (two with half a GPU), room for all to roll out at once and a fourth."""
    return {"num_cpus": 4, "num_gpus": 2}


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_project(tmp_path_factory.mktemp("project"))


def apply(project: Path, cluster: TestCluster, *sections: str, **serve: Any) -> tuple[int, str]:
    """`controller.py -c conf.ini` in-process; its exit code and everything it printed."""
    conf = write_conf(project, {**cluster.serve(), **serve}, *sections)
    code, out = controller_in_process("-c", str(conf))
    return code, out


@pytest.fixture(scope="module")
def deployed(project: Path, cluster: TestCluster) -> str:
    """The base sections, applied once for the module; what the apply printed."""
    code, out = apply(project, cluster, *BASE)
    assert code == 0, out
    return out


def replica_pids(cluster: TestCluster, app: str) -> set[int]:
    details = Cluster(cluster.dashboard_url).details()
    deployments = details["applications"][app]["deployments"].values()
    return {r["pid"] for d in deployments for r in d["replicas"] if r["state"] == "RUNNING"}


def echo(cluster: TestCluster, **params: Any) -> dict[str, Any]:
    reply = call(f"{cluster.base_url}/echo", params)
    assert reply.status == 200, reply.body
    return reply.body["result"]  # type: ignore[no-any-return]


def test_deploy_sections_sharing_a_gpu(cluster: TestCluster, deployed: str) -> None:
    assert re.search(r"algopkg.AlgoExample:small\s+http://127.0.0.1:\d+/small\s+1/1\s+HEALTHY", deployed), deployed
    details = Cluster(cluster.dashboard_url).details()["applications"]
    for app in ("AlgoExample", "AlgoExample:small"):
        (deployment,) = details[app]["deployments"].values()
        assert deployment["required_resources"]["GPU"] == 0.5


def test_the_example_model_classifies_digits(cluster: TestCluster, deployed: str) -> None:
    correct = 0
    for sample in SAMPLES:
        reply = call(f"{cluster.base_url}/extract", {"x": sample["x"]})
        assert reply.status == 200 and reply.body["status"] == 1
        assert reply.headers["x-request-id"] == reply.body["request_id"]
        assert len(reply.body["result"]["probabilities"]) == 10
        correct += reply.body["result"]["class"] == sample["label"]
    assert correct >= 0.9 * len(SAMPLES)
    small = call(f"{cluster.base_url}/small", {"x": SAMPLES[0]["x"]})
    assert small.body["result"]["class"] == SAMPLES[0]["label"]


def test_http_errors_are_json_envelopes(cluster: TestCluster, deployed: str) -> None:
    base = cluster.base_url
    assert_error_envelope(call(f"{base}/extract", raw=b"{not json"), 400, "BadRequest", "not valid JSON")
    wrong_method = call(f"{base}/echo", method="GET")
    assert_error_envelope(wrong_method, 405, "MethodNotAllowed", "GET is not accepted here; use POST")
    assert wrong_method.headers["allow"] == "POST"
    assert_error_envelope(call(f"{base}/extract", {"x": [1, 2]}), 400, "BadRequest", "64 pixel values")
    failing = call(f"{base}/echo", {"fail": True})
    assert_error_envelope(failing, 500, "ModelError")
    assert failing.body["error"]["message"] == "the model failed on this request: ValueError: asked to fail"
    assert "Traceback" not in json.dumps(failing.body)
    assert_error_envelope(call(f"{base}/echo", {"bad": True}), 400, "BadRequest", "bad params")
    assert_error_envelope(call(f"{base}/echo/nope", {}), 404, "NotFound", "no such path")
    assert call(f"{base}/extract", {"x": SAMPLES[0]["x"]}).status == 200  # other routes keep serving


def test_the_default_ingress_is_haproxy(cluster: TestCluster, deployed: str) -> None:
    assert "haproxy" in session_commands(cluster.proc.pid)


def test_query_string_health_and_ping(cluster: TestCluster, deployed: str) -> None:
    reply = call(f"{cluster.base_url}/extract?x=1", method="GET")
    assert_error_envelope(reply, 400, "BadRequest", "64 pixel values")
    ping = call(f"{cluster.base_url}/extract/ping", method="GET")
    assert ping.status == 200 and ping.body["result"] == "pong"
    assert call(f"{cluster.base_url}/-/healthz", method="GET").status == 200


def test_model_files_and_env_reach_the_backend(project: Path, cluster: TestCluster, deployed: str) -> None:
    result = echo(cluster, hello="world")
    model_file = project / "Model_ZOO" / "echo_model.txt"
    assert result["params"] == {"hello": "world"} and result["model"] == [model_file.read_text().strip()]
    assert result["env"] == {
        "MODEL_ZOO": str(project / "Model_ZOO"),
        "MODEL_NAME": "Echo",
        "MODEL_FILES": "echo_model.txt",
    }
    assert result["serve_env"] == raycompat.replica_env()


def test_a_model_error_is_logged_with_its_traceback_not_sent(cluster: TestCluster, deployed: str) -> None:
    (log,) = echo(cluster)["log_files"]
    reply = call(f"{cluster.base_url}/echo", {"fail": True})
    assert_error_envelope(reply, 500, "ModelError", "asked to fail")
    request_id = reply.body["request_id"]

    def logged() -> bool:
        text = Path(log).read_text()
        return request_id in text and "Traceback" in text.split(request_id, 1)[1][:4000]

    wait_for(logged, timeout_s=10, what=f"the traceback of request {request_id} in {log}")
    after = Path(log).read_text().split(request_id, 1)[1]
    assert (
        "\nTraceback (most recent call last):\n  File " in after and "('Traceback" not in after
    )  # as Python prints it
    assert "\nValueError: asked to fail\n" in after


def test_controller_logs_shows_a_section_s_replica_logs(project: Path, cluster: TestCluster, deployed: str) -> None:
    reply = call(f"{cluster.base_url}/echo", {"fail": True})
    replica = reply.headers["x-modelserve-replica"]
    conf = str(project / "conf.ini")

    def shown() -> str:
        code, out = controller_in_process("logs", "algopkg.Echo", "-n", "200", "-c", conf)
        assert code == 0, out
        return out if reply.body["request_id"] in out else ""

    out = wait_for(shown, timeout_s=10, what="the failed request in `controller.py logs`")
    assert f"==> replica {replica} on " in out and "ValueError: asked to fail" in out
    code, out = controller_in_process("logs", "Nope", "-c", conf)
    assert code == 2 and "logs: no section 'Nope' runs on the cluster (running: algopkg.AlgoExample" in out


def test_unchanged_reapply_restarts_nothing(project: Path, cluster: TestCluster, deployed: str) -> None:
    before = replica_pids(cluster, "Echo") | replica_pids(cluster, "AlgoExample")
    code, out = apply(project, cluster, *BASE)
    assert code == 0 and len(re.findall(r"^\s+unchanged  ", out, re.M)) == 3, out
    assert replica_pids(cluster, "Echo") | replica_pids(cluster, "AlgoExample") == before


def test_replicas_and_user_config_update_in_place(project: Path, cluster: TestCluster, deployed: str) -> None:
    (old_pid,) = replica_pids(cluster, "Echo")
    changed = ECHO + 'replicas = 2\nuser_config = {"threshold": 0.7}\n'
    try:
        code, out = apply(project, cluster, EXAMPLE, SMALL, changed)
        assert code == 0 and "update in place  Echo" in out, out
        pids = replica_pids(cluster, "Echo")
        assert len(pids) == 2 and old_pid in pids
        # Overlapping requests, so HAProxy (least connections) sends them to both replicas.
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda _: echo(cluster, sleep_s=0.2), range(16)))
        assert {a["pid"] for a in answers} == pids  # both replicas answered, the old one too
        assert all(a["config"] == {"threshold": 0.7} for a in answers), [(a["pid"], a["config"]) for a in answers]
    finally:
        code, out = apply(project, cluster, *BASE)
        assert code == 0, out


def test_access_log_is_off_by_default_and_turns_on_in_place(project: Path, cluster: TestCluster, deployed: str) -> None:
    def access_logged(reply: Any) -> bool:
        (log,) = reply.body["result"]["log_files"]
        lines = Path(log).read_text().splitlines()
        return any(reply.body["request_id"] in line and "POST /echo 200" in line for line in lines)

    before = replica_pids(cluster, "Echo")
    quiet = call(f"{cluster.base_url}/echo", {"n": 1})
    time.sleep(1)
    assert quiet.status == 200 and not access_logged(quiet)

    try:
        code, out = apply(project, cluster, *BASE, access_log="on")
        assert code == 0 and "update in place  Echo" in out, out
        assert replica_pids(cluster, "Echo") == before
        loud = call(f"{cluster.base_url}/echo", {"n": 2})
        assert loud.status == 200
        wait_for(lambda: access_logged(loud), timeout_s=10, what="an access-log line for the request")
    finally:
        code, out = apply(project, cluster, *BASE)
    assert code == 0 and replica_pids(cluster, "Echo") == before, out


def echo_load(cluster: TestCluster) -> WrkLoad:
    """wrk at 8 connections on /echo; every 2xx must be the model's answer (Echo returns its pid)."""
    return WrkLoad(f"{cluster.base_url}/echo", connections=8, body={"n": 1}, marker='"pid"')


def test_code_change_rolls_out_without_dropping_requests(project: Path, cluster: TestCluster, deployed: str) -> None:
    backend = project / "algopkg" / "Echo" / "backend.py"
    for i in range(1, REPEATS + 1):
        version = echo(cluster)["version"]
        backend.write_text(backend.read_text().replace(f"VERSION = {version}\n", f"VERSION = {version + 1}\n"))
        with echo_load(cluster) as load:
            code, out = apply(project, cluster, *BASE)
            wait_settled(cluster.dashboard_url)  # the old replica has drained and exited
            time.sleep(1)
        assert code == 0 and "roll out  Echo" in out, out
        assert_no_failure(load.result, f"a code change rolled out ({i} of {REPEATS})", 10)
        assert {echo(cluster)["version"] for _ in range(10)} == {version + 1}


def test_model_file_change_rolls_out(project: Path, cluster: TestCluster, deployed: str) -> None:
    for i in range(1, REPEATS + 1):
        (project / "Model_ZOO" / "echo_model.txt").write_text(f"echo-model-v{i + 1}\n")
        with echo_load(cluster) as load:
            code, out = apply(project, cluster, *BASE)
            wait_settled(cluster.dashboard_url)  # the old replica has drained and exited
            time.sleep(1)
        assert code == 0 and "roll out  Echo" in out, out
        assert_no_failure(load.result, f"a model file change rolled out ({i} of {REPEATS})", 10)
        assert echo(cluster)["model"] == [f"echo-model-v{i + 1}"]


def test_failed_load_keeps_the_running_version(project: Path, cluster: TestCluster, deployed: str) -> None:
    backend = project / "algopkg" / "Echo" / "backend.py"
    good = backend.read_text()
    version = echo(cluster)["version"]
    backend.write_text(good.replace("FAIL_LOAD = False", "FAIL_LOAD = True"))
    try:
        for i in range(1, REPEATS + 1):
            with echo_load(cluster) as load:
                code, out = apply(project, cluster, *BASE)
                wait_settled(cluster.dashboard_url)  # the failed replica is gone
                time.sleep(1)
            assert code == 1, out
            assert "[algopkg.Echo] was DEPLOY_FAILED, rolled back" in out and "echo model is corrupted" in out
            assert_no_failure(load.result, f"a version that fails to load, rolled back ({i} of {REPEATS})", 10)
            assert echo(cluster)["version"] == version
    finally:
        backend.write_text(good)
        code, out = apply(project, cluster, *BASE)
        assert code == 0, out


def test_a_rejected_user_config_is_rolled_back_and_loses_no_capacity(
    project: Path, cluster: TestCluster, deployed: str
) -> None:
    """Two replicas; a `user_config` their `reconfigure` rejects, applied under load."""
    two = ECHO + 'replicas = 2\nuser_config = {"lowercase": true}\n'
    try:
        code, out = apply(project, cluster, EXAMPLE, SMALL, two)
        assert code == 0, out
        pids = replica_pids(cluster, "Echo")
        for i in range(1, REPEATS + 1):
            with echo_load(cluster) as load:
                code, out = apply(project, cluster, EXAMPLE, SMALL, two.replace("true", '"yes"'))
                wait_settled(cluster.dashboard_url)
                time.sleep(1)
            assert code == 1, out
            assert (
                "[algopkg.Echo] was DEPLOY_FAILED, rolled back to its last good configuration: "
                "ValueError: lowercase must be true or false, not 'yes'"
            ) in out, out
            assert "Traceback" not in out
            assert re.search(r"algopkg.Echo\s+\S+/echo\s+2/2\s+HEALTHY", out), out
            assert_no_failure(load.result, f"a rejected user_config, rolled back ({i} of {REPEATS})", 10)
        status = controller_in_process("status", "-c", str(project / "conf.ini"))
        assert re.search(r"algopkg.Echo\s+\S+/echo\s+2/2\s+HEALTHY", status[1]), status
        answers = {echo(cluster)["config"]["lowercase"] for _ in range(10)}
        assert answers == {True} and len(replica_pids(cluster, "Echo")) == 2, (answers, pids)
    finally:
        code, out = apply(project, cluster, *BASE)
        assert code == 0, out


def test_removed_section_answers_404(project: Path, cluster: TestCluster, deployed: str) -> None:
    extra = ECHO.replace("[algopkg.Echo]", "[algopkg.Echo:extra]").replace("route = echo", "route = extra")
    code, out = apply(project, cluster, *BASE, extra)
    assert code == 0 and call(f"{cluster.base_url}/extra", {}).status == 200, out
    code, out = apply(project, cluster, *BASE)
    assert code == 0 and "remove  Echo:extra" in out, out
    # No section owns the path any more: the 404 envelope, naming the routes there are.
    gone = wait_for(lambda: (r := call(f"{cluster.base_url}/extra", {})).status == 404 and r, 30, "/extra to be gone")
    assert_error_envelope(gone, 404, "NotFound", "no route serves '/extra'; the routes here are: ")
    assert "/extra," not in gone.body["error"]["message"] and "/echo" in gone.body["error"]["message"]
    assert_error_envelope(call(f"{cluster.base_url}/never/was", method="GET"), 404, "NotFound", "/extract")
    assert call(f"{cluster.base_url}/extract", {"x": SAMPLES[0]["x"]}).status == 200
