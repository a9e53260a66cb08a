"""Stages: a conf.ini applied as `--stage grey` beside production, without Ray."""

import copy
import json
import re
from pathlib import Path
from typing import Any

import pytest
from helpers import FIXTURES, make_project, write_conf
from test_cli import ECHO, healthy

from modelserve import plan, raycompat, stages, status
from modelserve.apply import carried
from modelserve.cli import main
from modelserve.cluster import ClusterError
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


def runs_what_it_is_given(fake: Any) -> Any:
    def cluster(config: dict) -> None:  # the cluster runs what it is given, healthy
        apps = {}
        for app in config["applications"]:
            row = healthy(route=app.get("route_prefix") or "")
            row["deployed_app_config"] = app
            apps[app["name"]] = row
        fake.details["applications"] = apps

    return cluster


def test_applies_of_one_stage_carry_the_others_as_they_run(fake, tmp_path: Path) -> None:
    production = healthy()
    production["deployed_app_config"] = {"name": "Echo", "route_prefix": "/echo", "import_path": "modelserve.app:build"}
    production["deployed_app_config"]["args"] = {"section": "algopkg.Echo"}
    fake.details["applications"] = {"Echo": production}
    fake.details["http_options"] = {"host": "127.0.0.1", "port": 8123}
    conf = write_conf(make_project(tmp_path), {"address": fake.url, "port": 8123}, ECHO)

    fake.on_deploy = runs_what_it_is_given(fake)
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

    fake.on_deploy = runs_what_it_is_given(fake)
    assert main(["-c", str(conf)]) == 0
    assert re.search(r"^algopkg\.Echo\s+http://127\.0\.0\.1:8123/echo\s", capsys.readouterr().out, re.M)
    assert main(["--stage", "grey", "-c", str(conf)]) == 0
    table = capsys.readouterr().out
    assert re.search(r"^algopkg\.Echo\s+http://127\.0\.0\.1:8123/grey/echo\s", table, re.M), table
    for stage, url in [("", "h/echo"), ("grey", "h/grey/echo")]:  # what `status [--stage grey]` prints
        assert [(r.section, r.url) for r in status.rows(fake.details, "h", stage=stage)] == [("algopkg.Echo", url)]


def real_details() -> dict[str, Any]:
    """Serve's details (`GET /api/serve/applications/`) from a real Ray 2.60 cluster, read just after a
    production apply removed a mirror: Echo:p running; Echo:bad DEPLOY_FAILED (its `reconfigure`
    rejected its user_config); Echo:badcopy DELETING, for which Ray reports no config; the 404 app."""
    return copy.deepcopy(json.loads((FIXTURES / "serve_details_deleting_and_failed.json").read_text()))


def test_only_complete_applications_are_carried() -> None:
    details = real_details()
    kept = carried(details, "grey")
    assert sorted(kept) == ["Echo:bad", "Echo:p", "modelserve-404"]  # not the one being deleted
    assert kept["Echo:bad"] == details["applications"]["Echo:bad"]["deployed_app_config"]  # failed: as it runs
    assert raycompat.deploy_schema_problems({"applications": list(kept.values())}) == []


def test_an_application_without_a_config_that_is_not_being_deleted_stops_the_apply() -> None:
    details = real_details()
    details["applications"]["Echo:badcopy"]["status"] = "RUNNING"  # e.g. one deployed with serve.run
    with pytest.raises(ClusterError, match=r"no configuration for Echo:badcopy \(RUNNING\).*nothing was changed"):
        carried(details, "grey")
    assert "Echo:badcopy" not in carried(details, "")  # production's own app: the apply replaces it


def test_a_grey_stage_applies_beside_an_application_being_deleted(fake, tmp_path: Path) -> None:
    """The issue's sequence ended with production's removed mirror still DELETING; the grey apply sent it
    without an import_path, and the cluster refused the whole configuration (HTTP 400)."""
    fake.details = real_details()
    fake.on_deploy = runs_what_it_is_given(fake)
    conf = write_conf(make_project(tmp_path), {"address": fake.url}, ECHO)
    assert main(["--stage", "grey", "-c", str(conf)]) == 0
    sent = fake.deployed[-1]["applications"]
    assert [a["name"] for a in sent] == ["grey.Echo", "Echo:p", "Echo:bad", "modelserve-404"]
    assert all(a.get("import_path") for a in sent)


def test_down_where_nothing_is_deployed_says_so_and_sends_nothing(
    fake, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    conf = str(write_conf(make_project(tmp_path), {"address": fake.url}, ECHO))
    leaving = {"grey.Echo": {"status": "DELETING", "deployed_app_config": None, "deployments": {}}}
    for apps in (real_details()["applications"], {}, leaving):  # other stages only, nothing, one being deleted
        fake.details = {"applications": apps, "http_options": {}}
        assert main(["down", "--stage", "grey", "-c", conf]) == 0
        assert f"nothing is deployed on stage 'grey' of {fake.url}; nothing to remove" in capsys.readouterr().out
    fake.details = {"applications": leaving, "http_options": {}}
    assert main(["down", "-c", conf]) == 0
    out = capsys.readouterr().out
    assert f"nothing is deployed on {fake.url}; nothing to remove" in out
    assert fake.deployed == []
