from pathlib import Path

import pytest

from modelserve.node import (
    NodeError,
    NodeSpec,
    chosen_ports,
    ensure_token,
    late_port,
    main,
    node_env,
    ray_start_command,
    spec_from_env,
)


def flags(cmd: list[str]) -> dict[str, str]:
    return dict(arg[2:].split("=", 1) for arg in cmd if arg.startswith("--") and "=" in arg)


def test_head_defaults_expose_nothing() -> None:
    spec = spec_from_env("head", {})
    cmd = ray_start_command(spec)
    assert "--head" in cmd and "--block" in cmd
    assert flags(cmd)["dashboard-host"] == "127.0.0.1" and flags(cmd)["node-ip-address"] == "127.0.0.1"
    assert flags(cmd)["port"] == "6379" and flags(cmd)["dashboard-port"] == "8265"
    env = node_env(spec, {})
    assert env["RAY_AUTH_MODE"] == "token" and env["RAY_SERVE_ENABLE_HA_PROXY"] == "1"
    stats, metrics = int(env["RAY_SERVE_HAPROXY_STATS_PORT"]), int(env["RAY_SERVE_HAPROXY_METRICS_PORT"])
    assert stats != metrics and {stats, metrics} <= set(range(28000, 32768))
    low, high = int(env["RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT"]), int(env["RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT"])
    assert 20000 <= low < high < 28000


def test_no_port_is_one_every_cluster_on_the_host_would_take() -> None:
    """Ray's fixed ports (fallback proxy 8500/9500, Prometheus pages 44227/44217, workers
    10002-19999) are chosen per head; a port given in the environment wins."""
    from modelserve import raycompat

    spec = spec_from_env("head", {})
    cmd, env = ray_start_command(spec), node_env(spec, {})
    ports = chosen_ports(cmd, env)
    fixed = {name: ports[name] for name in raycompat.host_ports_env(0, 0, 0, 0)}
    assert len(set(fixed.values())) == 4 and set(fixed.values()) <= set(range(28000, 32768)), fixed
    low, high = ports["min-worker-port"], ports["max-worker-port"]
    assert high - low == 499 and 10002 <= low < high <= 19999
    assert {ports["port"], ports["dashboard-port"]} == {6379, 8265}
    assert (
        node_env(spec, {"RAY_SERVE_FALLBACK_PROXY_HTTP_PORT": "8600"})["RAY_SERVE_FALLBACK_PROXY_HTTP_PORT"] == "8600"
    )
    assert not set(fixed) & set(node_env(spec_from_env("worker", {"RAY_HEAD_ADDRESS": "h:1"}), {}))


def test_late_ports_are_below_the_ephemeral_range_and_never_repeat() -> None:
    """HAProxy binds them minutes later: no outgoing connection may have been given one meanwhile."""
    ephemeral_low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    ports = [late_port() for _ in range(300)]
    assert len(set(ports)) == len(ports)
    if ephemeral_low > 28000:  # else there is no such band and late_port falls back to free_port
        assert all(28000 <= port < min(32768, ephemeral_low) for port in ports)


def test_worker_settings_from_env() -> None:
    env = {
        "RAY_HEAD_ADDRESS": "10.0.0.1:6379",
        "RAY_NUM_CPUS": "8",
        "RAY_NUM_GPUS": "2",
        "RAY_RESOURCES": '{"camera": 1}',
        "MODELSERVE_INGRESS": "proxy",
        "MODELSERVE_WORKER_HTTP_PORT": "8001",
    }
    spec = spec_from_env("worker", env)
    cmd = ray_start_command(spec)
    assert "--head" not in cmd
    assert flags(cmd)["address"] == "10.0.0.1:6379" and flags(cmd)["num-cpus"] == "8" and flags(cmd)["num-gpus"] == "2"
    assert flags(cmd)["resources"] == '{"camera": 1}'
    node = node_env(spec, {"RAY_SERVE_ENABLE_HA_PROXY": "1"})
    assert "RAY_SERVE_ENABLE_HA_PROXY" not in node and node["RAY_SERVE_WORKER_PROXY_HTTP_PORT"] == "8001"


def test_auto_node_ip_is_the_address_toward_the_head() -> None:
    assert (
        spec_from_env("worker", {"RAY_HEAD_ADDRESS": "127.0.0.1:6379", "MODELSERVE_NODE_IP": "auto"}).node_ip
        == "127.0.0.1"
    )


@pytest.mark.parametrize(
    ("role", "env", "message"),
    [
        ("worker", {}, "RAY_HEAD_ADDRESS"),
        ("head", {"RAY_NUM_CPUS": "many"}, "RAY_NUM_CPUS='many'"),
        ("head", {"MODELSERVE_INGRESS": "warp"}, "MODELSERVE_INGRESS"),
        ("tail", {}, "unknown role"),
    ],
)
def test_bad_settings_say_which_variable(role: str, env: dict, message: str) -> None:
    with pytest.raises(NodeError, match=message):
        spec_from_env(role, env)


def test_token_is_created_by_a_head_and_required_by_a_worker(tmp_path: Path) -> None:
    env = {"RAY_AUTH_TOKEN_PATH": str(tmp_path / "token")}
    with pytest.raises(NodeError, match="give this worker the head's token"):
        ensure_token(env, create=False)
    ensure_token(env, create=True)
    token = (tmp_path / "token").read_text()
    assert len(token) == 64 and (tmp_path / "token").stat().st_mode & 0o077 == 0
    ensure_token(env, create=False)
    assert (tmp_path / "token").read_text() == token


def test_main_usage_and_errors(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    assert main(["--help"]) == 0 and "RAY_HEAD_ADDRESS" in capsys.readouterr().out
    monkeypatch.delenv("RAY_HEAD_ADDRESS", raising=False)
    assert main(["worker"]) == 2 and "RAY_HEAD_ADDRESS" in capsys.readouterr().err


def test_a_stopping_replica_drains_for_5_s_unless_the_node_is_told_otherwise() -> None:
    from modelserve import raycompat

    spec = spec_from_env("head", {})
    assert {k: node_env(spec, {})[k] for k in raycompat.draining_env(5)} == raycompat.draining_env(5)
    given = raycompat.draining_env(12)
    assert {k: node_env(spec, given)[k] for k in given} == given


def test_a_head_s_labels_are_given_to_ray_start() -> None:
    from modelserve import raycompat

    spec = NodeSpec(role="head", labels=((raycompat.PROJECT_LABEL, "0a1b2c3d4e"),))
    assert flags(ray_start_command(spec))["labels"] == f"{raycompat.PROJECT_LABEL}=0a1b2c3d4e"
    assert not any(arg.startswith("--labels") for arg in ray_start_command(spec_from_env("head", {})))
