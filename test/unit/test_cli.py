import re
import socket
from pathlib import Path

import pytest
from helpers import make_project, write_conf

from modelserve.cli import main, parser
from modelserve.cmd_deploy import cmd_apply
from modelserve.config import ConfigError
from modelserve.node import free_port


@pytest.mark.parametrize(
    "argv",
    [["check", "-c", "x.ini"], ["-c", "x.ini", "check"], ["--config", "x.ini", "check"]],
)
def test_config_flag_before_or_after_the_subcommand(argv: list[str]) -> None:
    args = parser().parse_args(argv)
    assert (args.command, args.config) == ("check", "x.ini")


def test_apply_is_the_default() -> None:
    args = parser().parse_args([])
    assert (args.command, args.config, args.func) == ("apply", "conf.ini", cmd_apply)


def test_check_touches_no_cluster(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    conf = write_conf(make_project(tmp_path), {}, "[algopkg.Echo]\nbackend = Echo\nroute = echo\n")
    assert main(["check", "-c", str(conf)]) == 0
    assert "OK (1 section(s): /echo)" in capsys.readouterr().out


def test_invalid_file_exits_2_and_names_the_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    conf = write_conf(make_project(tmp_path), {}, "[algopkg.Echo]\nbackend = Echo\nroute = echo\nreplicas = -1\n")
    for command in (["check"], ["apply"], []):
        assert main([*command, "-c", str(conf)]) == 2
        assert "[algopkg.Echo] replicas = '-1'" in capsys.readouterr().err


ECHO = "[algopkg.Echo]\nbackend = Echo\nroute = echo\nmethod = POST\n"


def healthy(route: str = "/echo", replicas: int = 1) -> dict:
    running = [{"state": "RUNNING", "node_ip": "127.0.0.1", "node_id": "n1"}] * replicas
    return {
        "status": "RUNNING",
        "route_prefix": route,
        "deployed_app_config": {"import_path": "modelserve.app:build", "args": {"section": "algopkg.Echo"}},
        "deployments": {"Echo": {"status": "HEALTHY", "replicas": running, "target_num_replicas": replicas}},
    }


def test_an_unreachable_cluster_exits_3(fake, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from modelserve.node import free_port

    closed = f"http://127.0.0.1:{free_port()}"
    conf = write_conf(make_project(tmp_path), {"address": closed}, ECHO)
    assert main(["status", "-c", str(conf)]) == 3
    assert f"cannot reach the Ray dashboard at {closed}" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["--connect-timeout", "2.5", "status"], ["status", "--connect-timeout", "2.5"]])
def test_the_connect_timeout_goes_before_or_after_the_subcommand(argv: list[str]) -> None:
    assert parser().parse_args(argv).connect_timeout == 2.5
    assert parser().parse_args(["status"]).connect_timeout == 10


@pytest.mark.parametrize("value", ["0", "-1", "soon", "inf"])
def test_a_connect_timeout_is_seconds_above_0(value: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        parser().parse_args(["status", "--connect-timeout", value])
    assert caught.value.code == 2 and "give a number of seconds above 0" in capsys.readouterr().err


@pytest.mark.parametrize("command", [["status"], ["down"], ["logs", "Echo"], ["openapi"], ["metrics"], []])
def test_every_command_that_reads_a_dead_gcs_address_exits_3_at_once(
    command: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import time

    from modelserve.node import free_port

    dead = f"127.0.0.1:{free_port()}"
    conf = write_conf(make_project(tmp_path), {"address": dead}, ECHO)
    assert main([*command, "-c", str(conf)]) == 3  # an apply validates first (Ray's schema: once)
    began = time.monotonic()
    assert main([*command, "-c", str(conf)]) == 3
    assert time.monotonic() - began < 3
    assert f"cannot reach the Ray cluster at {dead}: nothing accepts connections there" in capsys.readouterr().err


def test_apply_refuses_to_start_a_local_cluster_on_a_held_port(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Checked before anything starts (the unit tier forbids starting Ray): exit 3, the key named."""
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        serve = {"address": "local", "port": port, "dashboard_port": free_port()}
        conf = write_conf(make_project(tmp_path), serve, ECHO)
        assert main(["-c", str(conf)]) == 3
    err = capsys.readouterr().err
    assert f"[MODEL SERVE] port = {port}: port {port} is held by python" in err, err
    assert "set `port` in conf.ini to a free port" in err and not (tmp_path / ".modelserve" / "cluster.json").exists()


def test_status_without_any_cluster_exits_3(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from modelserve.node import free_port

    conf = write_conf(make_project(tmp_path), {"address": "local", "dashboard_port": free_port()}, ECHO)
    assert main(["status", "-c", str(conf)]) == 3
    assert "no Ray cluster is running" in capsys.readouterr().err


def test_apply_sends_the_plan_and_reports_healthy(fake, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fake.details["applications"] = {"Echo": healthy()}
    conf = write_conf(make_project(tmp_path), {"address": fake.url, "port": 8123}, ECHO)
    assert main(["-c", str(conf)]) == 0
    out = capsys.readouterr().out
    (sent,) = fake.deployed
    assert [a["name"] for a in sent["applications"]] == ["Echo", "modelserve-404"]
    assert sent["http_options"]["port"] == 8123
    assert "new  Echo" not in out and re.search(r"algopkg.Echo\s+http://127.0.0.1:8123/echo\s+1/1\s+HEALTHY", out)


def test_apply_stops_waiting_at_the_deploy_timeout(fake, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import time

    starting = healthy()
    starting["status"], starting["deployments"]["Echo"]["status"] = "DEPLOYING", "UPDATING"
    fake.details["applications"] = {"Echo": starting}
    conf = write_conf(make_project(tmp_path), {"address": fake.url, "deploy_timeout_s": 2}, ECHO)
    began = time.monotonic()
    assert main(["-c", str(conf)]) == 1
    assert 2 <= time.monotonic() - began < 10
    captured = capsys.readouterr()
    assert "DEPLOYING" in captured.out
    assert "[algopkg.Echo] was DEPLOYING, left as it is: not healthy within 2 s" in captured.err


def test_apply_warns_when_serve_listens_on_another_port(
    fake, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fake.details = {"applications": {"Echo": healthy()}, "http_options": {"port": 9999}}
    conf = write_conf(make_project(tmp_path), {"address": fake.url, "port": 8123}, ECHO)
    assert main(["-c", str(conf)]) == 0
    assert "already listens on port 9999; [MODEL SERVE] port = 8123 takes effect" in capsys.readouterr().err


@pytest.mark.parametrize("breakage", ["broken", "missing"])
def test_status_and_down_work_from_the_last_apply_when_conf_ini_is_unusable(
    fake, tmp_path: Path, capsys: pytest.CaptureFixture[str], breakage: str
) -> None:
    fake.details["applications"] = {"Echo": healthy()}
    conf = write_conf(make_project(tmp_path), {"address": fake.url, "port": 8123}, ECHO)
    assert main(["-c", str(conf)]) == 0
    capsys.readouterr()
    if breakage == "broken":
        conf.write_text(conf.read_text() + "replicas = lots\n")
    else:
        conf.unlink()
    assert main(["status", "-c", str(conf)]) == 0
    captured = capsys.readouterr()
    assert "acting on the cluster of the last apply" in captured.err and fake.url in captured.err
    assert re.search(r"algopkg.Echo\s+http://127.0.0.1:8123/echo\s+1/1\s+HEALTHY", captured.out)
    fake.on_deploy = lambda config: fake.details.update(applications={})  # the cluster removes what it is told to
    assert main(["down", "-c", str(conf)]) == 0
    assert fake.deployed[-1] == {"applications": []}
    assert f"removed 1 section(s) from {fake.url}" in capsys.readouterr().out


def test_a_broken_conf_ini_without_a_last_apply_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    conf = write_conf(make_project(tmp_path), {}, ECHO + "replicas = lots\n")
    assert main(["status", "-c", str(conf)]) == 2
    err = capsys.readouterr().err
    assert "replicas = 'lots'" in err and "no earlier apply here to fall back on" in err


def test_check_validates_the_plan_with_ray_s_schema(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    conf = write_conf(make_project(tmp_path), {}, ECHO)
    assert main(["check", "-c", str(conf)]) == 0


def test_a_plan_that_cannot_fit_fails_at_once_and_changes_nothing(
    fake, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fake.nodes = [{"CPU": 2.0}]
    conf = write_conf(make_project(tmp_path), {"address": fake.url}, ECHO + "gpu_cost = 1\n")
    assert main(["-c", str(conf)]) == 2
    err = capsys.readouterr().err
    assert "[algopkg.Echo] gpu_cost = 1: each replica needs 1 GPU, and no node of the cluster has more than 0" in err
    assert "nothing was changed" in err and fake.deployed == []


def test_a_section_that_fails_its_update_gets_its_last_good_configuration_back(
    fake, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = healthy(replicas=2)
    good["deployed_app_config"] = {**good["deployed_app_config"], "name": "Echo", "route_prefix": "/echo"}
    fake.details["applications"] = {"Echo": good}
    traceback = (
        'Traceback (most recent call last):\n  File "backend.py", line 9, in reconfigure\n'
        "ValueError: lowercase must be true or false, not 'yes'"
    )

    def cluster(config: dict) -> None:
        app, _not_found = config["applications"]
        if app == good["deployed_app_config"]:
            fake.details["applications"] = {"Echo": good}
        else:
            failed = healthy(replicas=1)
            failed["status"], failed["deployments"]["Echo"]["status"] = "DEPLOY_FAILED", "DEPLOY_FAILED"
            failed["deployments"]["Echo"]["message"] = traceback
            fake.details["applications"] = {"Echo": failed}

    fake.on_deploy = cluster
    conf = write_conf(make_project(tmp_path), {"address": fake.url}, ECHO + 'user_config = {"lowercase": "yes"}\n')
    assert main(["-c", str(conf)]) == 1
    captured = capsys.readouterr()
    assert [len(fake.deployed), fake.deployed[-1]["applications"][0]] == [2, good["deployed_app_config"]]
    assert re.search(r"algopkg.Echo\s+\S+\s+2/2\s+HEALTHY", captured.out), captured.out
    assert (
        "[algopkg.Echo] was DEPLOY_FAILED, rolled back to its last good configuration: "
        "ValueError: lowercase must be true or false, not 'yes'"
    ) in captured.err
    assert "Traceback" not in captured.err
    assert traceback in (tmp_path / ".modelserve" / "last_errors.log").read_text()


def test_bench_errors_are_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    conf = write_conf(make_project(tmp_path), {}, ECHO)
    assert main(["bench", "nope", "-c", str(conf), "-n", "1"]) == 2
    err = capsys.readouterr().err
    assert "bench: no section serves route 'nope' (routes: echo)" in err and "nothing was changed" not in err
    assert main(["bench", "echo", "-c", str(conf), "--body", str(tmp_path / "absent.json")]) == 2
    assert "bench: --body" in capsys.readouterr().err


def test_status_piped_into_head_ends_without_a_traceback(fake, tmp_path: Path) -> None:
    import subprocess
    import sys

    fake.details["applications"] = {f"Echo:{i}": healthy() for i in range(3000)}  # far more than a pipe holds
    conf = write_conf(make_project(tmp_path), {"address": fake.url}, ECHO)
    result = subprocess.run(
        f"{sys.executable} {Path(__file__).resolve().parents[2] / 'controller.py'} status -c {conf} | head -1",
        shell=True, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.stdout.startswith("SECTION") and result.stdout.count("\n") == 1
    assert "Traceback" not in result.stderr and "BrokenPipeError" not in result.stderr, result.stderr


def test_sections_being_removed_are_not_failures(fake, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fake.details["applications"] = {"Echo": {"status": "DELETING", "deployed_app_config": None, "deployments": {}}}
    conf = write_conf(make_project(tmp_path), {"address": fake.url}, ECHO)
    assert main(["status", "-c", str(conf)]) == 0
    assert re.search(r"algopkg.Echo\s+\S*\s+0/0\s+DELETING", capsys.readouterr().out)


def test_an_unchanged_re_apply_sends_nothing(fake, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Serve runs this very plan, healthy: the apply reads, compares and reports, without a PUT or a wait."""
    fake.details["applications"] = {"Echo": healthy()}
    conf = write_conf(make_project(tmp_path), {"address": fake.url, "port": 8123}, ECHO)
    assert main(["-c", str(conf)]) == 0
    (sent,) = fake.deployed
    fake.details["applications"] = {
        app["name"]: {**healthy(app["route_prefix"]), "deployed_app_config": app} for app in sent["applications"]
    }
    capsys.readouterr()
    assert main(["-c", str(conf)]) == 0
    assert len(fake.deployed) == 1, "an unchanged plan was sent again"
    out = capsys.readouterr().out
    assert "unchanged  Echo" in out and re.search(r"algopkg.Echo\s+http://127.0.0.1:8123/echo\s+1/1\s+HEALTHY", out)
    unhealthy = fake.details["applications"]["Echo"]
    unhealthy["status"] = "DEPLOY_FAILED"
    main(["-c", str(conf)])
    assert len(fake.deployed) == 2, "an unchanged plan is sent again where something is not healthy"


def test_apply_timings_name_each_phase(fake, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fake.details["applications"] = {"Echo": healthy()}
    conf = write_conf(make_project(tmp_path), {"address": fake.url}, ECHO)
    assert main(["apply", "--timings", "-c", str(conf)]) == 0
    phases = [line.split("  ")[0] for line in capsys.readouterr().err.splitlines() if line.startswith("timing:")]
    assert phases[0] == "timing: read and validate conf.ini" and phases[-1] == "timing: total", phases
    assert "timing: send the plan to Serve" in phases


def test_ray_s_schema_is_not_imported_again_for_a_plan_it_passed(tmp_path: Path) -> None:
    from modelserve import apply as apply_module
    from modelserve import plan
    from modelserve.config import load_config

    conf = write_conf(make_project(tmp_path), {}, ECHO)
    config = load_config(str(conf))
    desired = plan.deploy_config(config, plan.Artifacts.placeholder(config))
    calls: list[int] = []
    real = apply_module.validated

    def counted(config_: object, desired_: dict) -> dict:
        calls.append(1)
        return real(config_, desired_)  # type: ignore[arg-type]

    state = tmp_path / ".modelserve"
    try:
        apply_module.validated = counted  # type: ignore[assignment]
        apply_module.validated_once(config, desired, state)
        apply_module.validated_once(config, desired, state)
        assert len(calls) == 1
        desired["applications"][0]["args"]["model_files"] = ["other.txt"]
        desired["applications"][0]["runtime_env"]["env_vars"]["MODEL_FILES"] = "other.txt"
        desired["applications"][0]["deployments"][0]["user_config"] = {"x": 1}
        apply_module.validated_once(config, desired, state)
        assert len(calls) == 1, "free-form args and user_config are no part of the schema's verdict"
        desired["applications"][0]["deployments"][0]["num_replicas"] = "two"
        with pytest.raises(ConfigError):
            apply_module.validated_once(config, desired, state)
        assert len(calls) == 2, "a plan of another shape is validated again"
    finally:
        apply_module.validated = real
