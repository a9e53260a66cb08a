"""A real local Ray cluster, real HTTP: deploy, call, update in place, roll out, fail, remove."""

from __future__ import annotations

import json
import re
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from helpers import ECHO_SECTION, FIXTURES, TestCluster, call, make_project, session_commands, wait_for, write_conf

from modelserve.cli import main

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
SAMPLES = json.loads((FIXTURES / "digits_samples.json").read_text())


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_project(tmp_path_factory.mktemp("project"))


def apply(
    project: Path, cluster: TestCluster, capsys: pytest.CaptureFixture[str], *sections: str, **serve: str
) -> tuple[int, str]:
    conf = write_conf(project, {**cluster.serve(), **serve}, *sections)
    code = main(["-c", str(conf)])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def replica_pids(cluster: TestCluster, app: str) -> set[int]:
    from modelserve.cluster import Cluster

    details = Cluster(cluster.dashboard_url).details()
    deployments = details["applications"][app]["deployments"].values()
    return {r["pid"] for d in deployments for r in d["replicas"] if r["state"] == "RUNNING"}


def echo(cluster: TestCluster, **params: Any) -> dict[str, Any]:
    reply = call(f"{cluster.base_url}/echo", params)
    assert reply.status == 200, reply.body
    return reply.body["result"]  # type: ignore[no-any-return]


def test_deploy_sections_sharing_a_gpu(project: Path, cluster: TestCluster, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = apply(project, cluster, capsys, EXAMPLE, SMALL, ECHO)
    assert code == 0, out
    assert re.search(r"algopkg.AlgoExample:small\s+http://127.0.0.1:\d+/small\s+1/1\s+HEALTHY", out), out
    from modelserve.cluster import Cluster

    details = Cluster(cluster.dashboard_url).details()["applications"]
    for app in ("AlgoExample", "AlgoExample:small"):
        (deployment,) = details[app]["deployments"].values()
        assert deployment["required_resources"]["GPU"] == 0.5


def test_the_example_model_classifies_digits(cluster: TestCluster) -> None:
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


def test_http_errors_are_json_envelopes(cluster: TestCluster) -> None:
    base = cluster.base_url
    bad_json = call(f"{base}/extract", raw=b"{not json")
    assert bad_json.status == 400 and bad_json.body["error"]["type"] == "BadRequest"
    wrong_method = call(f"{base}/echo", method="GET")
    assert wrong_method.status == 405 and wrong_method.headers["allow"] == "POST"
    bad_params = call(f"{base}/extract", {"x": [1, 2]})
    assert bad_params.status == 400 and "64 pixel values" in bad_params.body["error"]["message"]
    failing = call(f"{base}/echo", {"fail": True})
    assert failing.status == 500 and failing.body["status"] == 0
    assert failing.body["error"] == {
        "type": "ModelError",
        "message": "the model failed on this request: ValueError: asked to fail",
    }
    assert "Traceback" not in json.dumps(failing.body) and failing.body["request_id"]
    assert call(f"{base}/echo", {"bad": True}).status == 400
    assert call(f"{base}/echo/nope", {}).status == 404
    assert call(f"{base}/extract", {"x": SAMPLES[0]["x"]}).status == 200  # other routes keep serving


def test_the_default_ingress_is_haproxy(cluster: TestCluster) -> None:
    assert "haproxy" in session_commands(cluster.proc.pid)


def test_query_string_health_and_ping(cluster: TestCluster) -> None:
    reply = call(f"{cluster.base_url}/extract?x=1", method="GET")
    assert reply.status == 400 and "64 pixel values" in reply.body["error"]["message"]
    ping = call(f"{cluster.base_url}/extract/ping", method="GET")
    assert ping.status == 200 and ping.body["result"] == "pong"
    assert call(f"{cluster.base_url}/-/healthz", method="GET").status == 200


def test_model_files_and_env_reach_the_backend(project: Path, cluster: TestCluster) -> None:
    result = echo(cluster, hello="world")
    assert result["params"] == {"hello": "world"} and result["model"] == ["echo-model-v1"]
    assert result["env"] == {
        "MODEL_ZOO": str(project / "Model_ZOO"),
        "MODEL_NAME": "Echo",
        "MODEL_FILES": "echo_model.txt",
    }
    assert result["serve_env"] == {"RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0", "RAY_SERVE_LOG_TO_STDERR": "0"}


def test_a_model_error_is_logged_with_its_traceback_not_sent(cluster: TestCluster) -> None:
    (log,) = echo(cluster)["log_files"]
    reply = call(f"{cluster.base_url}/echo", {"fail": True})
    assert reply.status == 500 and "Traceback" not in json.dumps(reply.body)
    request_id = reply.body["request_id"]

    def logged() -> bool:
        text = Path(log).read_text()
        return request_id in text and "Traceback" in text.split(request_id, 1)[1][:4000]

    wait_for(logged, timeout_s=10, what=f"the traceback of request {request_id} in {log}")


def test_unchanged_reapply_restarts_nothing(
    project: Path, cluster: TestCluster, capsys: pytest.CaptureFixture[str]
) -> None:
    before = replica_pids(cluster, "Echo") | replica_pids(cluster, "AlgoExample")
    code, out = apply(project, cluster, capsys, EXAMPLE, SMALL, ECHO)
    assert code == 0 and len(re.findall(r"^\s+unchanged  ", out, re.M)) == 3, out
    assert replica_pids(cluster, "Echo") | replica_pids(cluster, "AlgoExample") == before


def test_replicas_and_user_config_update_in_place(
    project: Path, cluster: TestCluster, capsys: pytest.CaptureFixture[str]
) -> None:
    (old_pid,) = replica_pids(cluster, "Echo")
    changed = ECHO + 'replicas = 2\nuser_config = {"threshold": 0.7}\n'
    code, out = apply(project, cluster, capsys, EXAMPLE, SMALL, changed)
    assert code == 0 and "update in place  Echo" in out, out
    pids = replica_pids(cluster, "Echo")
    assert len(pids) == 2 and old_pid in pids
    seen = {echo(cluster)["pid"]: echo(cluster)["config"] for _ in range(20)}
    assert all(config == {"threshold": 0.7} for config in seen.values())


def test_access_log_is_off_by_default_and_turns_on_in_place(
    project: Path, cluster: TestCluster, capsys: pytest.CaptureFixture[str]
) -> None:
    def access_logged(reply: Any) -> bool:
        (log,) = reply.body["result"]["log_files"]
        lines = Path(log).read_text().splitlines()
        return any(reply.body["request_id"] in line and "POST /echo 200" in line for line in lines)

    code, out = apply(project, cluster, capsys, EXAMPLE, SMALL, ECHO)
    assert code == 0, out
    before = replica_pids(cluster, "Echo")
    quiet = call(f"{cluster.base_url}/echo", {"n": 1})
    time.sleep(1)
    assert quiet.status == 200 and not access_logged(quiet)

    code, out = apply(project, cluster, capsys, EXAMPLE, SMALL, ECHO, access_log="on")
    assert code == 0 and "update in place  Echo" in out, out
    assert replica_pids(cluster, "Echo") == before
    loud = call(f"{cluster.base_url}/echo", {"n": 2})
    assert loud.status == 200
    wait_for(lambda: access_logged(loud), timeout_s=10, what="an access-log line for the request")

    code, out = apply(project, cluster, capsys, EXAMPLE, SMALL, ECHO)
    assert code == 0 and replica_pids(cluster, "Echo") == before, out


class Load:
    """A bounded background client counting answers while a change is applied."""

    def __init__(self, url: str, max_requests: int = 5000) -> None:
        self.url, self.max_requests = url, max_requests
        self.codes: list[int] = []
        self.failures: list[object] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set() and len(self.codes) < self.max_requests:
            reply = call(self.url, {"n": len(self.codes)}, timeout=10)
            self.codes.append(reply.status)
            if reply.status != 200:
                self.failures.append((time.monotonic(), reply.status, reply.body))

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


def test_code_change_rolls_out_without_dropping_requests(
    project: Path, cluster: TestCluster, capsys: pytest.CaptureFixture[str]
) -> None:
    backend = project / "algopkg" / "Echo" / "backend.py"
    backend.write_text(backend.read_text().replace("VERSION = 1", "VERSION = 2"))
    with Load(f"{cluster.base_url}/echo") as load:
        code, out = apply(project, cluster, capsys, EXAMPLE, SMALL, ECHO)
    assert code == 0 and "roll out  Echo" in out, out
    assert len(load.codes) > 10 and set(load.codes) == {200}, load.failures[:5]
    assert {echo(cluster)["version"] for _ in range(10)} == {2}


def test_model_file_change_rolls_out(project: Path, cluster: TestCluster, capsys: pytest.CaptureFixture[str]) -> None:
    (project / "Model_ZOO" / "echo_model.txt").write_text("echo-model-v2\n")
    code, out = apply(project, cluster, capsys, EXAMPLE, SMALL, ECHO)
    assert code == 0 and "roll out  Echo" in out, out
    assert echo(cluster)["model"] == ["echo-model-v2"]


def test_failed_load_keeps_the_running_version(
    project: Path, cluster: TestCluster, capsys: pytest.CaptureFixture[str]
) -> None:
    backend = project / "algopkg" / "Echo" / "backend.py"
    good = backend.read_text()
    backend.write_text(good.replace("FAIL_LOAD = False", "FAIL_LOAD = True"))
    try:
        with Load(f"{cluster.base_url}/echo") as load:
            code, out = apply(project, cluster, capsys, EXAMPLE, SMALL, ECHO)
        assert code == 1, out
        assert "[algopkg.Echo] is DEPLOY_FAILED" in out and "echo model is corrupted" in out
        assert set(load.codes) == {200}, load.failures[:5]
        assert echo(cluster)["version"] == 2
    finally:
        backend.write_text(good)


def test_removed_section_answers_404(project: Path, cluster: TestCluster, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = apply(project, cluster, capsys, EXAMPLE, ECHO)
    assert code == 0 and "remove  AlgoExample:small" in out, out
    wait_for(lambda: call(f"{cluster.base_url}/small", {"x": SAMPLES[0]["x"]}).status == 404, 30, "/small to be gone")
    assert call(f"{cluster.base_url}/extract", {"x": SAMPLES[0]["x"]}).status == 200
