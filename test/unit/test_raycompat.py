"""Everything modelserve takes from one Ray version still exists in the installed Ray.

Ray ignores environment variables it does not know: without this test a renamed flag
would silently cost throughput or make ports collide after an upgrade.
"""

import inspect
import os
import re
import sys
from pathlib import Path

import pytest
import ray

from modelserve import raycompat

RAY_DIR = Path(os.path.dirname(ray.__file__))
MODELSERVE = Path(raycompat.__file__).parent


def test_the_installed_ray_is_the_series_we_target() -> None:
    assert ray.__version__.startswith(raycompat.RAY_SERIES + "."), ray.__version__


def test_every_serve_flag_we_set_is_read_by_ray() -> None:
    constants = (RAY_DIR / "serve" / "_private" / "constants.py").read_text()
    for flag in raycompat.SERVE_FLAGS:
        assert f'"{flag}"' in constants, f"Ray no longer reads {flag}"


def test_the_ports_ray_fixes_per_host_are_read_from_our_variables() -> None:
    """The fallback proxy's ports where the Serve controller hands them out, the head's Prometheus
    pages where the dashboard and the autoscaler bind them: each takes the value we set."""
    import subprocess
    import sys

    chosen = raycompat.host_ports_env(28101, 28102, 28103, 28104)
    code = (
        "from ray.serve._private import proxy_state as p; from ray.dashboard import consts as d; "
        "from ray.autoscaler._private import constants as a; "
        "print(p.RAY_SERVE_FALLBACK_PROXY_HTTP_PORT, p.RAY_SERVE_FALLBACK_PROXY_GRPC_PORT, "
        "d.DASHBOARD_METRIC_PORT, a.AUTOSCALER_METRIC_PORT)"
    )
    env = {**os.environ, **chosen}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.split() == ["28101", "28102", "28103", "28104"], out


def test_the_auth_variables_are_read_by_ray_s_core() -> None:
    (raylet,) = RAY_DIR.glob("_raylet*.so")  # token auth is read in C++
    core = raylet.read_bytes()
    for name in (raycompat.AUTH_MODE, raycompat.AUTH_TOKEN, raycompat.AUTH_TOKEN_PATH):
        assert name.encode() + b"\0" in core, name


def test_the_metrics_report_interval_is_read_by_ray_s_core() -> None:
    """The tests' clusters export metrics every second (test_traffic counts a mirror's copies)."""
    import subprocess
    import sys

    read = "import ray; print(ray._config.metrics_report_interval_ms())"
    env = {**os.environ, raycompat.METRICS_REPORT_INTERVAL_MS: "1234"}
    out = subprocess.run([sys.executable, "-c", read], env=env, capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "1234", out


def test_the_private_helpers_we_call_exist_with_our_signature() -> None:
    from ray._private.authentication.http_token_authentication import get_auth_headers_if_auth_enabled
    from ray._raylet import Config
    from ray.dashboard.modules.serve.sdk import ServeSubmissionClient

    upload = inspect.signature(ServeSubmissionClient._upload_package_if_needed).parameters
    assert {"package_path", "include_gitignore", "include_parent_dir"} <= set(upload)
    for method in ("deploy_applications", "get_serve_details", "delete_applications"):
        assert callable(getattr(ServeSubmissionClient, method)), method
    assert list(inspect.signature(get_auth_headers_if_auth_enabled).parameters) == ["user_headers"]
    assert callable(Config.initialize)


def test_metrics_reach_the_exporter_as_often_as_status_says() -> None:
    from ray._raylet import Config

    assert Config.metrics_report_interval_ms() == raycompat.METRICS_EXPORT_INTERVAL_S * 1000


def test_the_deploy_schema_check_reports_what_ray_rejects() -> None:
    assert raycompat.deploy_schema_problems({"applications": []}) == []
    bad = {"applications": [{"name": "a", "import_path": "x", "route_prefix": "/a", "deployments": []}]}
    (problem,) = raycompat.deploy_schema_problems(bad)
    assert problem.startswith("applications.0.import_path: ") and "invalid import path" in problem


def test_no_other_module_names_a_ray_flag_or_private_symbol() -> None:
    pattern = re.compile(r"RAY_SERVE_\w+|ray\._\w+|_private\b|\._upload_package_if_needed|ServeSubmissionClient")
    for path in sorted(MODELSERVE.glob("*.py")):
        if path.name != "raycompat.py":
            assert not pattern.findall(path.read_text()), f"{path.name}: {pattern.findall(path.read_text())}"


def test_ray_still_surges_and_restarts_autoscaling_from_initial_replicas_as_the_fit_check_counts() -> None:
    """When this fails, Ray changed what a roll-out or a changed autoscaling section starts:
    check `raycompat.surge_replicas` and fit.py against its new code."""
    from ray.serve._private.autoscaling_state import DeploymentAutoscalingState
    from ray.serve._private.deployment_state import DeploymentState

    start = inspect.getsource(DeploymentState._surge_replicas_to_start)
    assert "surge = (surge_percent * target + 99) // 100" in start
    assert "available_slots = surge + self._get_target_replica_delta()" in start
    stop = inspect.getsource(DeploymentState._surge_replicas_to_stop)
    assert "surplus = self._replicas.count(states=[ReplicaState.RUNNING]) - target" in stop
    register = inspect.getsource(DeploymentAutoscalingState.register)
    assert "config_changed(info)" in register and "target_num_replicas = config.initial_replicas" in register
    assert [raycompat.surge_replicas(n, 25) for n in (1, 4, 5, 9)] == [1, 1, 2, 3]
    from ray.serve._private.constants import DEFAULT_ROLLING_UPDATE_PERCENTAGE

    assert DEFAULT_ROLLING_UPDATE_PERCENTAGE == 0.2  # `rollout = replace` in the README: 20% at a time


def test_ray_s_replica_print_still_garbles_printing_to_a_file() -> None:
    """When this fails, Ray fixed its print: drop `mend_redirected_print`."""
    import io

    from ray.serve._private import logging_utils

    out = io.StringIO()
    logging_utils.redirected_print("a", "b", file=out)
    assert out.getvalue() == "('a', 'b')\n"


def test_the_mended_print_writes_tracebacks_as_python_prints_them(monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins
    import io
    import logging
    import sys

    from ray.serve._private import logging_utils

    monkeypatch.setattr(builtins, "print", logging_utils.redirected_print)
    assert raycompat.mend_redirected_print() and not raycompat.mend_redirected_print()
    out = io.StringIO()
    print("a", "b", file=out)
    assert out.getvalue() == "a b\n"
    try:
        raise ValueError("boom")
    except ValueError:
        text = logging.Formatter().formatException(sys.exc_info())
    assert text.startswith("Traceback (most recent call last):\n  File ") and text.endswith("ValueError: boom")


def test_deployment_handles_still_take_the_direct_transport_option() -> None:
    import inspect

    from ray.serve.handle import DeploymentHandle

    assert "_by_reference" in inspect.signature(DeploymentHandle.options).parameters


_COMPARE = """
import json
from modelserve import raycompat
raycompat.refresh_auth_mode()
print(json.dumps([raycompat.auth_headers(), raycompat.ray_auth_headers()]))
"""


@pytest.mark.parametrize("how", ["env", "path", "default file", "auth off"])
def test_our_token_header_is_the_one_ray_sends(how: str, tmp_path: Path) -> None:
    """`auth_headers` reads the token as Ray's C++ loader does, without importing Ray (each case in a fresh process:
    Ray's loader caches the token)."""
    import json
    import subprocess
    import sys

    token = "0123456789abcdef0123456789abcdef"
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    env["HOME"] = str(tmp_path)
    env[raycompat.AUTH_MODE] = "disabled" if how == "auth off" else "token"
    if how == "env":
        env[raycompat.AUTH_TOKEN] = token
    elif how == "path":
        (tmp_path / "tok").write_text(token + "\n")
        env[raycompat.AUTH_TOKEN_PATH] = str(tmp_path / "tok")
    else:
        (tmp_path / ".ray").mkdir()
        (tmp_path / ".ray" / "auth_token").write_text(token)
    out = subprocess.run([sys.executable, "-c", _COMPARE], env=env, capture_output=True, text=True, timeout=60)
    ours, rays = json.loads(out.stdout.strip().splitlines()[-1])
    assert ours == rays, (ours, rays)
    assert bool(ours) == (how != "auth off")


def test_the_serve_rest_paths_we_call_are_ray_s() -> None:
    from ray.dashboard.modules.serve import sdk

    from modelserve.cluster import Cluster

    assert sdk.DEPLOY_PATH == sdk.STATUS_PATH == sdk.DELETE_PATH == Cluster.SERVE_API


def test_the_dashboard_address_is_read_from_the_gcs_where_ray_s_head_writes_it() -> None:
    """The GCS client calls and the key-value key `dashboard_from_gcs_command` runs (a head writes its
    dashboard's address there; `ray.init` reads it back as `dashboard_url`)."""
    from ray._private import ray_constants
    from ray._raylet import InnerGcsClient

    node = (RAY_DIR / "_private" / "node.py").read_text()
    services = (RAY_DIR / "_private" / "services.py").read_text()
    key = raycompat.DASHBOARD_KV_KEY.decode()
    assert f'b"{key}"' in node and f'"{key}"' in services
    assert ray_constants.KV_NAMESPACE_DASHBOARD == raycompat.DASHBOARD_KV_NAMESPACE
    assert "timeout_ms" in (InnerGcsClient.standalone.__doc__ or "")
    assert "namespace=None, timeout=None" in (InnerGcsClient.internal_kv_get.__doc__ or "")
    command = raycompat.dashboard_from_gcs_command("127.0.0.1:1", 1234.5)
    assert command[:2] == [sys.executable, "-c"] and command[-2:] == ["127.0.0.1:1", "1234.5"]
    compile(command[2], "<dashboard_from_gcs>", "exec")


def test_ray_start_takes_our_project_label_and_the_node_list_returns_labels() -> None:
    """A local head is labelled with its project (`ray start --labels`, hidden in Ray 2.60); the
    State API's node list returns each node's labels and whether it is the head."""
    import dataclasses

    from ray._private.label_utils import parse_node_labels_string, validate_node_labels
    from ray.scripts.scripts import start
    from ray.util.state.common import NodeState

    assert any(raycompat.LABELS_OPTION in param.opts for param in start.params)
    (flag,) = raycompat.labels_flag({raycompat.PROJECT_LABEL: "0a1b2c3d4e"})
    labels = parse_node_labels_string(flag.partition("=")[2])
    assert labels == {raycompat.PROJECT_LABEL: "0a1b2c3d4e"}
    validate_node_labels(labels)  # raises on a key or value Ray does not take
    assert {"labels", "is_head_node", "state"} <= {field.name for field in dataclasses.fields(NodeState)}
    nodes = [{"is_head_node": False, "state": "ALIVE", "labels": {"a": "1"}}]
    nodes.append({"is_head_node": True, "state": "ALIVE", "labels": {raycompat.PROJECT_LABEL: "x"}})
    assert raycompat.head_labels(nodes) == {raycompat.PROJECT_LABEL: "x"}
