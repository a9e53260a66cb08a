"""`controller.py` driven as a subprocess, as a user runs it, with a user's environment.

The first test is `make serve`: the controller starts a local head itself, with the default
(fast) ingress. The module's own cluster runs the fallback ingress (Ray Serve's Python proxy),
so the HTTP contract is checked under both without a third cluster.
"""

from __future__ import annotations

import configparser
import io
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import openapi_spec_validator
import pytest
import requests
from helpers import (
    ECHO_SECTION,
    FIXTURES,
    OTHER_SECTIONS_KEYS,
    REPO,
    TestCluster,
    assert_error_envelope,
    call,
    controller,
    make_project,
    session_commands,
    wait_for,
    write_conf,
)
from PIL import Image

from modelserve.cluster import Cluster, dashboard_answers
from modelserve.localhead import session_members
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
BASE = (LEGACY, ECHO)
SAMPLE = json.loads((FIXTURES / "digits_samples.json").read_text())[0]


def write_png(path: Path, pixels: list[int]) -> None:
    """A 32x32 PNG of an 8x8 digit (values 0-16): what a user would upload."""
    values = np.clip(np.round(np.asarray(pixels, dtype=np.float32) * 255 / 16), 0, 255).astype(np.uint8)
    Image.fromarray(values.reshape(8, 8)).resize((32, 32), Image.Resampling.NEAREST).save(path)


def repository_conf(port: int, dashboard_port: int) -> str:
    """The repository's example section and serve keys as conf.ini has them, on free ports, for a
    local cluster of 2 CPUs. Sections a user added to conf.ini are left out (they are the user's),
    and so are API keys a user gave the example or every route: the tests call it without one."""
    shipped = configparser.ConfigParser(inline_comment_prefixes=(";", "#"), interpolation=None)
    shipped.read(REPO / "conf.ini")
    assert shipped["algopkg.AlgoExample"]["route"] == "extract"
    serve = {**shipped["MODEL SERVE"], "port": port, "address": "local", "dashboard_port": dashboard_port}
    dropped = ("api_keys", *OTHER_SECTIONS_KEYS)  # the user's key, and weights or mirrors naming sections left out
    example = {k: v for k, v in shipped["algopkg.AlgoExample"].items() if k not in dropped}
    serve.pop("api_keys", None)
    out = configparser.ConfigParser(interpolation=None)
    out.read_dict({"MODEL SERVE": {**serve, "local_cpus": 2}, "algopkg.AlgoExample": example})
    text = io.StringIO()
    out.write(text)
    return text.getvalue()


def test_make_serve_starts_a_local_cluster_serves_the_example_and_stops(tmp_path: Path) -> None:
    """What `make serve` runs: no cluster anywhere; the controller starts one with the default ingress.

    First in the module, before the module's cluster starts: one cluster at a time.
    """
    project = make_project(tmp_path)
    port, dashboard_port = late_port(), free_port()
    conf = project / "conf.ini"
    conf.write_text(repository_conf(port, dashboard_port))
    base = f"http://127.0.0.1:{port}"
    try:
        result = controller("-c", str(conf))
        assert result.returncode == 0, result.stdout + result.stderr
        head_pid = json.loads((project / ".modelserve" / "cluster.json").read_text())["pid"]
        assert "haproxy" in session_commands(head_pid)  # the fast ingress
        reply = call(f"{base}/extract", {"x": SAMPLE["x"]})
        assert reply.status == 200 and reply.body["status"] == 1, reply.body
        assert reply.body["result"]["class"] == SAMPLE["label"] and len(reply.body["result"]["probabilities"]) == 10
        assert reply.headers["x-request-id"] == reply.body["request_id"]
        png = tmp_path / "digit.png"
        write_png(png, SAMPLE["x"])
        for answer in (
            requests.post(f"{base}/extract", files={"image": ("digit.png", png.read_bytes(), "image/png")}, timeout=30),
            requests.post(f"{base}/extract", data=png.read_bytes(), headers={"Content-Type": "image/png"}, timeout=30),
        ):
            assert answer.status_code == 200 and answer.json()["result"]["class"] == SAMPLE["label"], answer.text
        # The README's upload: the shipped dark-on-white digit, `-F image=@... -F invert=1`.
        shipped = (REPO / "algopkg" / "AlgoExample" / "digit.png").read_bytes()
        fields = {"image": ("digit.png", shipped), "invert": (None, "1")}
        readme = requests.post(f"{base}/extract", files=fields, timeout=30)
        assert readme.json()["result"]["class"] == 4, readme.text
        api = controller("openapi", "-c", str(conf))
        assert api.returncode == 0, api.stderr
        openapi_spec_validator.validate(json.loads(api.stdout))
        status = controller("status", "-c", str(conf))
        assert status.returncode == 0, status.stdout + status.stderr
        assert re.search(rf"algopkg.AlgoExample\s+{base}/extract\s+1/1\s+HEALTHY", status.stdout), status.stdout
    finally:
        down = controller("down", "--stop-cluster", "-c", str(conf))
    assert down.returncode == 0 and "stopped the local Ray cluster" in down.stdout, down.stdout + down.stderr
    wait_for(lambda: not session_members(head_pid), 30, "the head's processes to stop")
    assert not dashboard_answers(f"http://127.0.0.1:{dashboard_port}")


@pytest.fixture(scope="module")
def cluster_options() -> dict[str, Any]:
    return {"num_cpus": 2, "num_gpus": 0, "ingress": "proxy"}


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_project(tmp_path_factory.mktemp("e2e"))


def apply(project: Path, cluster: TestCluster, *sections: str, **serve: Any) -> Any:
    return controller("-c", str(write_conf(project, cluster.serve(**serve), *sections)))


@pytest.fixture(scope="module")
def deployed(project: Path, cluster: TestCluster) -> None:
    result = apply(project, cluster, *BASE)
    assert result.returncode == 0, result.stdout + result.stderr


def test_invalid_file_changes_nothing(project: Path, cluster: TestCluster, deployed: None) -> None:
    before = Cluster(cluster.dashboard_url).details().get("applications")
    conf = write_conf(project, cluster.serve(), LEGACY + "replicas = lots\n", ECHO)
    result = controller("-c", str(conf))
    assert result.returncode == 2
    assert "[algopkg.Legacy] replicas = 'lots': must be a whole number" in result.stderr
    assert "nothing was changed" in result.stderr
    assert Cluster(cluster.dashboard_url).details().get("applications") == before
    check = controller("check", "-c", str(conf))
    assert check.returncode == 2 and "replicas = 'lots'" in check.stderr


def test_original_template_package_serves_unchanged(project: Path, cluster: TestCluster, deployed: None) -> None:
    conf = write_conf(project, cluster.serve(), *BASE)
    assert controller("check", "-c", str(conf)).returncode == 0
    reply = call(f"{cluster.base_url}/legacy", {"values": [1, 2, 3]})
    assert reply.status == 200
    assert reply.body["result"] == {"model": "legacy-model-v1", "sum": 6.0, "above": 2}
    assert reply.body["info"].startswith("Result from ") and reply.body["status"] == 1
    assert reply.headers["x-request-id"] == reply.body["request_id"]
    status = controller("status", "-c", str(conf))
    assert status.returncode == 0 and re.search(r"algopkg.Legacy\s+\S+/legacy\s+1/1\s+HEALTHY", status.stdout), status


def test_the_http_contract_holds_on_the_proxy_ingress(cluster: TestCluster, deployed: None) -> None:
    base = cluster.base_url
    assert "haproxy" not in session_commands(cluster.proc.pid)
    assert_error_envelope(call(f"{base}/legacy", raw=b"{oops"), 400, "BadRequest", "not valid JSON")
    wrong_method = call(f"{base}/legacy", method="GET")
    assert_error_envelope(wrong_method, 405, "MethodNotAllowed", "use POST")
    assert wrong_method.headers["allow"] == "POST"
    assert_error_envelope(call(f"{base}/echo", {"fail": True}), 500, "ModelError", "ValueError: asked to fail")
    assert_error_envelope(call(f"{base}/echo", {"bad": True}), 400, "BadRequest", "bad params")
    assert_error_envelope(call(f"{base}/echo/nope", {}), 404, "NotFound", "no such path")
    assert call(f"{base}/legacy/ping", method="GET").body["result"] == "pong"
    assert call(f"{base}/-/healthz", method="GET").status == 200


def test_original_template_failing_to_load_is_not_healthy(project: Path, cluster: TestCluster, deployed: None) -> None:
    (project / "Model_ZOO" / "broken.txt").write_text("broken")
    broken = LEGACY.replace("[algopkg.Legacy]", "[algopkg.Legacy:broken]").replace("legacy_model.txt", "broken.txt")
    try:
        result = apply(project, cluster, *BASE, broken.replace("route = legacy", "route = broken"), deploy_timeout_s=90)
        assert result.returncode == 1, result.stdout + result.stderr
        assert "[algopkg.Legacy:broken] was DEPLOY_FAILED" in result.stderr
        assert "cannot parse the model file" in result.stderr
        assert call(f"{cluster.base_url}/legacy", {"values": [2]}).status == 200
    finally:
        restored = apply(project, cluster, *BASE)
    assert restored.returncode == 0 and "remove  Legacy:broken" in restored.stdout, restored.stdout + restored.stderr
