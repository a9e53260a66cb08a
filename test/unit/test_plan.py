from pathlib import Path

import pytest
from helpers import make_project, write_conf

from modelserve import plan
from modelserve.config import Config, load_config

SECTION = """
[algopkg.Echo]
backend = Echo
model = echo_model.txt
route = echo
replicas = 2
gpu_cost = 0.5
cpu_cost = 0.5
user_config = {"k": 1}
"""


@pytest.fixture
def config(tmp_path: Path) -> Config:
    return load_config(write_conf(make_project(tmp_path), {"port": 9000}, SECTION))


def artifacts(uri: str = "gcs://_ray_pkg_a.zip", digest: str = "d1") -> plan.Artifacts:
    return plan.Artifacts(package_uri={"Echo": uri}, model_digest={"algopkg.Echo": digest})


def test_one_application_per_section(config: Config) -> None:
    desired = plan.deploy_config(config, artifacts())
    assert desired["http_options"] == {"host": "127.0.0.1", "port": 9000}
    (app,) = desired["applications"]
    assert (app["name"], app["route_prefix"], app["import_path"]) == ("Echo", "/echo", "modelserve.app:build")
    assert app["runtime_env"]["py_modules"] == ["gcs://_ray_pkg_a.zip"]
    assert app["runtime_env"]["env_vars"]["MODEL_FILES"] == "echo_model.txt"
    assert app["runtime_env"]["env_vars"]["RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD"] == "0"
    assert app["args"]["model_digest"] == "d1"
    (deployment,) = app["deployments"]
    assert deployment["num_replicas"] == 2
    assert deployment["ray_actor_options"] == {"num_cpus": 0.5, "num_gpus": 0.5}
    assert deployment["user_config"]["user"] == {"k": 1}
    assert deployment["max_surge_percent"] == 25
    assert deployment["logging_config"] == {"enable_access_log": False}


def test_access_log_is_a_deployment_option_that_updates_in_place(config: Config) -> None:
    from dataclasses import replace

    loud = replace(config, serve=replace(config.serve, access_log=True))
    desired = plan.deploy_config(loud, artifacts())
    assert desired["applications"][0]["deployments"][0]["logging_config"] == {"enable_access_log": True}
    running = running_copy(plan.deploy_config(config, artifacts()))
    assert plan.diff(desired, running) == [plan.Change("Echo", "update in place")]


def test_package_environments(config: Config) -> None:
    from dataclasses import replace

    spec = config.sections[0]
    pip = plan.package_env(replace(spec, env="pip"), plan.Artifacts({}, {}, {"Echo": ("numpy==1.26",)}))
    assert pip == {"pip": {"packages": ["numpy==1.26"], "pip_check": False}}
    assert plan.package_env(replace(spec, env="conda:Echo"), artifacts()) == {"conda": "Echo"}
    assert plan.package_env(spec, artifacts()) == {}


def running_copy(desired: dict) -> dict:
    """What Ray reports back: our keys plus defaults it fills in."""
    apps = {}
    for app in desired["applications"]:
        copy = {**app, "deployments": [{**d, "graceful_shutdown_timeout_s": 20} for d in app["deployments"]]}
        apps[app["name"]] = copy
    return apps


def test_diff_classifies_changes(config: Config) -> None:
    desired = plan.deploy_config(config, artifacts())
    running = running_copy(desired)
    assert plan.diff(desired, running) == [plan.Change("Echo", "unchanged")]
    assert plan.diff(desired, {}) == [plan.Change("Echo", "new")]
    assert plan.diff(plan.deploy_config(config, artifacts(uri="gcs://other")), running)[0].action == "roll out"
    assert plan.diff(plan.deploy_config(config, artifacts(digest="d2")), running)[0].action == "roll out"
    scaled = plan.deploy_config(config, artifacts())
    scaled["applications"][0]["deployments"][0]["num_replicas"] = 3
    assert plan.diff(scaled, running)[0].action == "update in place"
    assert plan.diff({"applications": []}, running) == [plan.Change("Echo", "remove")]
