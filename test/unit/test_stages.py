"""Stages: a conf.ini applied as `--stage grey` beside production, without Ray."""

import re
from pathlib import Path

import pytest
from helpers import make_project, write_conf
from test_cli import ECHO, healthy

from modelserve import plan, stages, status
from modelserve.cli import main
from modelserve.config import load_config

SPLIT = ECHO + "traffic = 100\n"


def test_a_stage_serves_under_its_name_with_one_replica_each(tmp_path: Path) -> None:
    config = load_config(write_conf(make_project(tmp_path), {}, SPLIT + "replicas = 2-6\n"))
    grey = stages.staged(config, "grey")
    (spec,) = grey.sections
    assert (spec.app_name, spec.route, str(spec.replicas)) == ("grey.Echo", "grey/echo", "1")
    artifacts = plan.Artifacts({"Echo": "gcs://p.zip"}, {"algopkg.Echo": "d"}, {}, "gcs://rt.zip")
    apps = {a["name"]: a for a in plan.deploy_config(grey, artifacts)["applications"]}
    assert set(apps) == {"grey.Echo"}  # no 404 app: production's serves
    assert apps["grey.Echo"]["route_prefix"] == "/grey/echo"
    (deployment,) = apps["grey.Echo"]["deployments"]
    assert deployment["user_config"]["traffic"]["targets"][0]["app"] == "grey.Echo"
    assert apps["grey.Echo"]["deployments"][0]["num_replicas"] == 1
    assert stages.staged(config, "") is config


def test_which_stage_an_application_belongs_to() -> None:
    for name, stage in [
        ("Echo", ""),
        ("Echo:v2", ""),
        ("modelserve-404", ""),
        ("modelserve-404", ""),
        ("grey.Echo", "grey"),
        ("grey.Echo:v2", "grey"),
    ]:
        assert stages.stage_of(name) == stage, name
    running = {"Echo": {"name": "Echo"}, "grey.Echo": {"name": "grey.Echo"}, "modelserve-404": {}}
    assert set(stages.others(running, "grey")) == {"Echo", "modelserve-404"}
    assert set(stages.others(running, "")) == {"grey.Echo"}


@pytest.mark.parametrize("name", ["a/b", "a.b", "gr ey", "x?"])
def test_a_stage_name_is_one_path_segment(tmp_path: Path, name: str, capsys: pytest.CaptureFixture[str]) -> None:
    conf = write_conf(make_project(tmp_path), {}, ECHO)
    with pytest.raises(SystemExit) as caught:
        main(["check", "--stage", name, "-c", str(conf)])
    assert caught.value.code == 2 and "a stage name is one path segment" in capsys.readouterr().err


def test_applies_of_one_stage_carry_the_others_as_they_run(fake, tmp_path: Path) -> None:
    production = healthy()
    production["deployed_app_config"] = {"name": "Echo", "route_prefix": "/echo", "args": {"section": "algopkg.Echo"}}
    fake.details["applications"] = {"Echo": production}
    fake.details["http_options"] = {"host": "127.0.0.1", "port": 8123}
    conf = write_conf(make_project(tmp_path), {"address": fake.url, "port": 8123}, ECHO)

    def cluster(config: dict) -> None:  # the cluster runs what it is given, healthy
        apps = {}
        for app in config["applications"]:
            row = healthy(route=app.get("route_prefix") or "")
            row["deployed_app_config"] = app
            apps[app["name"]] = row
        fake.details["applications"] = apps

    fake.on_deploy = cluster
    main(["--stage", "grey", "-c", str(conf)])
    names = [a["name"] for a in fake.deployed[-1]["applications"]]
    assert names == ["grey.Echo", "Echo"]  # production's app rides along, as it ran
    assert fake.deployed[-1]["applications"][1] == production["deployed_app_config"]
    main(["-c", str(conf)])  # a production apply keeps the stage
    assert {a["name"] for a in fake.deployed[-1]["applications"]} == {"Echo", "modelserve-404", "grey.Echo"}
    assert main(["down", "--stage", "grey", "-c", str(conf)]) == 0
    assert {a["name"] for a in fake.deployed[-1]["applications"]} == {"Echo", "modelserve-404"}
    assert re.fullmatch(r"\d+", str(fake.deployed[-1]["http_options"]["port"]))


def test_the_apply_table_of_a_stage_prints_the_stage_url(
    fake, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The stage's section has the name of a production section that owns a split route: the table
    must not print production's URL for it (nor the reverse)."""
    fake.details["http_options"] = {"host": "127.0.0.1", "port": 8123}
    conf = write_conf(make_project(tmp_path), {"address": fake.url, "port": 8123}, SPLIT)

    def cluster(config: dict) -> None:
        apps = {}
        for app in config["applications"]:
            row = healthy(route=app.get("route_prefix") or "")
            row["deployed_app_config"] = app
            apps[app["name"]] = row
        fake.details["applications"] = apps

    fake.on_deploy = cluster
    assert main(["-c", str(conf)]) == 0
    assert re.search(r"^algopkg\.Echo\s+http://127\.0\.0\.1:8123/echo\s", capsys.readouterr().out, re.M)
    assert main(["--stage", "grey", "-c", str(conf)]) == 0
    table = capsys.readouterr().out
    assert re.search(r"^algopkg\.Echo\s+http://127\.0\.0\.1:8123/grey/echo\s", table, re.M), table
    for stage, url in [("", "h/echo"), ("grey", "h/grey/echo")]:  # what `status [--stage grey]` prints
        assert [(r.section, r.url) for r in status.rows(fake.details, "h", stage=stage)] == [("algopkg.Echo", url)]
