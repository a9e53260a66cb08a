"""Docker can't run here: check the image, entrypoint and compose file against what the tests run."""

import os
import subprocess
import sys
from pathlib import Path

import yaml

from modelserve.node import NODE_ENV

DOCKER = Path(__file__).resolve().parents[2] / "docker"


def compose() -> dict:
    return yaml.safe_load((DOCKER / "compose.yaml").read_text())


def test_only_the_head_publishes_and_only_the_http_port_on_loopback() -> None:
    services = compose()["services"]
    assert services["head"]["command"] == "head" and services["worker"]["command"] == "worker"
    assert "ports" not in services["worker"]
    (published,) = services["head"]["ports"]
    assert published == "${MODELSERVE_PUBLISH:-127.0.0.1}:${MODELSERVE_PORT:-8000}:8000"
    assert all(service.get("network_mode") != "host" for service in services.values())


def test_compose_sets_only_variables_the_entrypoint_reads() -> None:
    known = {name for key in NODE_ENV for name in key.split(" / ")}
    services = compose()["services"]
    assert {n for n, s in services.items() if s.get("command") in ("head", "worker")} == {"head", "worker"}
    for name, service in ((n, services[n]) for n in ("head", "worker")):  # the Ray nodes
        assert set(service["environment"]) <= known, (name, set(service["environment"]) - known)
        assert "RAY_AUTH_TOKEN" in service["environment"]  # token auth on every node
    assert compose()["services"]["worker"]["environment"]["RAY_HEAD_ADDRESS"] == "head:6379"


def test_the_image_runs_the_entrypoint_and_installs_the_runtime() -> None:
    dockerfile = (DOCKER / "Dockerfile").read_text()
    assert 'ENTRYPOINT ["tini", "--", "modelserve-entrypoint"]' in dockerfile
    assert "COPY docker/entrypoint.sh /usr/local/bin/modelserve-entrypoint" in dockerfile
    assert "RUN pip install --no-cache-dir ." in dockerfile and "MODELSERVE_INGRESS=fast" in dockerfile


def test_the_entrypoint_script_refuses_a_worker_without_a_head(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "RAY_HEAD_ADDRESS"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    result = subprocess.run(["sh", str(DOCKER / "entrypoint.sh"), "worker"], capture_output=True, text=True, env=env)
    assert result.returncode == 2 and "RAY_HEAD_ADDRESS" in result.stderr
    passthrough = subprocess.run(["sh", str(DOCKER / "entrypoint.sh"), "echo", "hi"], capture_output=True, text=True)
    assert passthrough.stdout == "hi\n"
