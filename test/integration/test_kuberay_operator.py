"""What the KubeRay operator does with `controller.py export kuberay`, done on this machine: a Ray head
started with the head group's `rayStartParams` and container environment, `serveConfigV2` PUT to its
dashboard, every route called; then a model change and a replicas change exported and PUT again, in
place, under wrk. The store is moto's S3 server; no Kubernetes.

Two things differ from a pod, on purpose: the dashboard and HTTP port listen on 127.0.0.1 (a pod's
network is private; this machine's is not), and the head's other ports are chosen free (a pod has
the host to itself; this machine may run other clusters).
"""

from __future__ import annotations

import json
import os
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from helpers import (
    TestCluster,
    call,
    controller,
    make_project,
    start_test_cluster,
    wait_for,
    wait_settled,
    write_conf,
)
from s3server import S3Server, environment
from wrk import WrkLoad, assert_no_failure

from modelserve import raycompat

pytestmark = pytest.mark.integration

BUCKET = "models"
TOKEN = secrets.token_hex(32)


def conf_text(model: str, replicas: int) -> tuple[dict[str, Any], str, str]:
    head = """
    [NODES head]
    cpus = 2
    memory = 4Gi
    """
    echo = f"""
    [algopkg.Echo]
    backend = Echo
    model = {model}
    route = echo
    method = POST
    cpu_cost = 0.25
    replicas = {replicas}
    """
    return {"port": 8000, "host": "0.0.0.0", "model_zoo": f"s3://{BUCKET}/zoo"}, head, echo


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    with S3Server() as server:
        home = tmp_path_factory.mktemp("aws")
        with environment({**server.env(home), "MODELSERVE_MODEL_CACHE": str(home / "cache")}):
            client = server.client()
            client.create_bucket(Bucket=BUCKET)
            for version in (1, 2):
                client.put_object(Bucket=BUCKET, Key=f"zoo/echo/{version}/a.txt", Body=f"echo-v{version}\n".encode())
            yield server


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_project(tmp_path_factory.mktemp("k8s"))


def export(project: Path, model: str, replicas: int) -> dict[str, Any]:
    serve, *sections = conf_text(model, replicas)
    write_conf(project, serve, *sections)
    done = controller("-c", str(project / "conf.ini"), "export", "kuberay", "-o", str(project / "rayservice.yaml"))
    assert done.returncode == 0, done.stderr
    manifest: dict[str, Any] = yaml.safe_load((project / "rayservice.yaml").read_text())
    return manifest


def container_env(manifest: dict[str, Any]) -> dict[str, str]:
    """The head container's environment, its Secrets resolved as the kubelet would."""
    head = manifest["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    env = {}
    for item in head.get("env", []):
        if "value" in item:
            env[item["name"]] = str(item["value"])
        elif item.get("valueFrom", {}).get("secretKeyRef", {}).get("key") == "auth_token":
            env[item["name"]] = TOKEN
    for source in head.get("envFrom", []):  # the store's Secret: its keys as they are here
        if "secretRef" in source:
            env.update({k: v for k, v in os.environ.items() if k.startswith("AWS_")})
    return env


@pytest.fixture(scope="module")
def head(s3: S3Server, project: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestCluster]:
    """A head as the manifest's head group starts one: its num-cpus and num-gpus, its environment."""
    manifest = export(project, "echo@1", 1)
    params = manifest["spec"]["rayClusterConfig"]["headGroupSpec"]["rayStartParams"]
    env = container_env(manifest)
    assert env[raycompat.AUTH_MODE] == "token" and env["RAY_AUTH_TOKEN"] == TOKEN
    cache = str(tmp_path_factory.mktemp("pod-cache"))
    token_file = Path(os.environ[raycompat.AUTH_TOKEN_PATH])
    saved_token = token_file.read_text()
    token_file.write_text(TOKEN)  # the controller side's token: the Secret's
    started = start_test_cluster(
        num_cpus=int(params["num-cpus"]),
        num_gpus=int(params.get("num-gpus", 0)),
        extra_env={**env, "MODELSERVE_MODEL_CACHE": cache},
    )
    try:
        yield started
    finally:
        started.stop()
        token_file.write_text(saved_token)


def put(head: TestCluster, manifest: dict[str, Any]) -> None:
    """The operator's step: PUT serveConfigV2 to the dashboard's Serve API (HTTP on this head's port)."""
    serve_config = yaml.safe_load(manifest["spec"]["serveConfigV2"])
    serve_config["http_options"] = {**serve_config.get("http_options", {}), "host": "127.0.0.1", "port": head.http_port}
    response = requests.put(
        f"{head.dashboard_url}/api/serve/applications/",
        json=serve_config,
        headers={"Authorization": f"Bearer {TOKEN}"},
        timeout=60,
    )
    assert response.status_code == 200, response.text


def echo(head: TestCluster) -> dict[str, Any]:
    reply = call(f"{head.base_url}/echo", {"x": 1})
    assert reply.status == 200, reply.body
    result: dict[str, Any] = reply.body["result"]
    return result


def serving(head: TestCluster, model: str) -> bool:
    try:
        return bool(echo(head)["model"] == [model])
    except (AssertionError, OSError):
        return False


def test_the_exported_config_serves_as_an_apply_would_and_changes_in_place_under_load(
    s3: S3Server, project: Path, head: TestCluster
) -> None:
    put(head, export(project, "echo@1", 1))
    wait_for(lambda: serving(head, "echo-v1"), 180, "the exported config serving echo@1")
    answer = echo(head)
    tried = controller("-c", str(project / "conf.ini"), "try", "Echo", "--params", '{"x": 1}')
    assert tried.returncode == 0, tried.stderr
    local = json.loads(tried.stdout)["result"]
    for key in ("params", "model", "config", "version"):  # what the section's own settings decide
        assert answer[key] == local[key], key
    pid = answer["pid"]
    for model, replicas, what in (("echo@2", 1, "a model change"), ("echo@2", 2, "a replicas change")):
        with WrkLoad(f"{head.base_url}/echo", connections=8, body={}, marker='"model"') as load:
            put(head, export(project, model, replicas))
            wait_for(lambda m=model: serving(head, f"echo-v{m[-1]}"), 120, what)
            wait_settled(head.dashboard_url)
            time.sleep(1)
        assert_no_failure(load.result, f"{what}, exported and PUT as the operator does", 10)
        if what == "a replicas change":
            pids = {echo(head)["pid"] for _ in range(40)}
            assert pid in pids and len(pids) == 2, pids  # in place: the running replica kept, one added
        pid = echo(head)["pid"] if what == "a model change" else pid
