import json
from dataclasses import replace
from pathlib import Path

import pytest
from helpers import make_project, write_conf

from modelserve import auth, plan, traffic
from modelserve.config import load_config
from modelserve.keys import IN_PLACE, ROLL_OUT, Replicas
from modelserve.replica_spec import ReplicaArgs, ReplicaConfig
from modelserve.settings import SECTION_KEYS, Config

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


def artifacts(uri: str = "gcs://_ray_pkg_a.zip", digest: str = "d1", runtime: str = "gcs://rt.zip") -> plan.Artifacts:
    return plan.Artifacts({"Echo": uri}, {"algopkg.Echo": digest}, {"Echo": ("numpy",)}, runtime)


def test_one_application_per_section(config: Config) -> None:
    desired = plan.deploy_config(config, artifacts())
    assert desired["http_options"] == {"host": "127.0.0.1", "port": 9000}
    app, not_found = desired["applications"]
    assert (app["name"], app["route_prefix"], app["import_path"]) == ("Echo", "/echo", "modelserve.app:build")
    assert app["runtime_env"]["py_modules"] == ["gcs://rt.zip", "gcs://_ray_pkg_a.zip"]
    assert app["runtime_env"]["env_vars"]["MODEL_FILES"] == "echo_model.txt"
    # Paths no section owns: our 404 envelope, from an app at "/" that holds no CPU.
    assert (not_found["name"], not_found["route_prefix"]) == ("modelserve-404", "/")
    (deployment,) = not_found["deployments"]
    assert deployment["user_config"] == {"routes": ["echo"]} and deployment["ray_actor_options"]["num_cpus"] == 0
    assert not_found["runtime_env"]["py_modules"] == ["gcs://rt.zip"]
    assert plan.deploy_config(replace(config, sections=()), artifacts())["applications"] == []
    assert app["runtime_env"]["env_vars"]["RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD"] == "0"
    assert app["args"]["model_digest"] == "d1"
    (deployment,) = app["deployments"]
    assert deployment["name"] == "Echo" and deployment["num_replicas"] == 2
    assert deployment["max_ongoing_requests"] == 32 and "max_replicas_per_node" not in deployment
    assert deployment["ray_actor_options"] == {"num_cpus": 0.5, "num_gpus": 0.5}
    assert deployment["user_config"]["user"] == {"k": 1}
    assert deployment["max_surge_percent"] == 25
    assert deployment["logging_config"] == {"enable_access_log": False}


def test_access_log_is_a_deployment_option_that_updates_in_place(config: Config) -> None:
    from dataclasses import replace

    loud = replace(config, serve=replace(config.serve, access_log="on"))
    desired = plan.deploy_config(loud, artifacts())
    assert desired["applications"][0]["deployments"][0]["logging_config"] == {"enable_access_log": True}
    running = running_copy(plan.deploy_config(config, artifacts()))
    assert plan.diff(desired, running) == [plan.Change("Echo", "update in place")]
    as_json = plan.deploy_config(replace(config, serve=replace(config.serve, access_log="json")), artifacts())
    (deployment,) = as_json["applications"][0]["deployments"]
    assert deployment["logging_config"] == {"enable_access_log": False}  # ours instead of Ray's
    assert deployment["user_config"]["access_log_json"] is True
    assert plan.diff(as_json, running) == [plan.Change("Echo", "update in place")]


def test_model_calls_travel_in_user_config_and_change_in_place(config: Config) -> None:
    from dataclasses import replace

    running = running_copy(plan.deploy_config(config, artifacts()))
    assert running["Echo"]["deployments"][0]["user_config"]["model_calls"] == "thread"
    inline = replace(config, sections=(replace(config.sections[0], model_calls="inline"),))
    desired = plan.deploy_config(inline, artifacts())
    assert desired["applications"][0]["deployments"][0]["user_config"]["model_calls"] == "inline"
    assert plan.diff(desired, running) == [plan.Change("Echo", "update in place")]


def test_api_keys_travel_as_digests_and_rotate_in_place(config: Config, tmp_path: Path) -> None:
    from dataclasses import replace

    keys = tmp_path / "keys.txt"
    keys.write_text("# team A\nkey-one-0123456789abcdef\n\nsha256:" + "ab" * 32 + "\n")
    guarded = replace(config, serve=replace(config.serve, root=tmp_path, api_keys="keys.txt"))
    desired = plan.deploy_config(guarded, artifacts())
    (deployment,) = desired["applications"][0]["deployments"]
    assert deployment["user_config"]["api_keys"] == sorted([auth.digest("key-one-0123456789abcdef"), "ab" * 32])
    assert "key-one" not in json.dumps(desired)  # only digests leave the controller
    keys.write_text("key-two-0123456789abcdef\n")
    rotated = plan.deploy_config(guarded, artifacts())
    assert plan.diff(rotated, running_copy(desired)) == [plan.Change("Echo", "update in place")]


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


def test_the_replica_contract_round_trips_through_json(config: Config) -> None:
    import json

    desired = plan.deploy_config(config, artifacts())
    app = desired["applications"][0]
    args = ReplicaArgs.from_json(json.loads(json.dumps(app["args"])))
    assert args == plan.replica_args(config.sections[0], config, "d1")
    assert (args.package, args.backend, args.model_files, args.methods) == (
        "Echo",
        "Echo",
        ("echo_model.txt",),
        ("GET",),
    )
    user = ReplicaConfig.from_json(json.loads(json.dumps(app["deployments"][0]["user_config"])))
    assert user == ReplicaConfig({"k": 1}, 32, 5.0, route="/echo")


def test_spread_is_a_deployment_option(config: Config) -> None:
    from dataclasses import replace

    spread = replace(config, sections=(replace(config.sections[0], max_replicas_per_node=1),))
    assert plan.deploy_config(spread, artifacts())["applications"][0]["deployments"][0]["max_replicas_per_node"] == 1


@pytest.mark.parametrize("name", sorted(SECTION_KEYS))
def test_the_apply_table_says_what_each_key_declares(config: Config, name: str) -> None:
    """Changing a key to its example value is labelled as the key declares (roll out or in place)."""
    from dataclasses import replace

    field_name, key = SECTION_KEYS[name]
    if name == "api_keys":  # its example names a key file
        (config.serve.root / key.example).write_text("a-team-key-0123456789\n")
    spec = config.sections[0]
    if name in ("target_ongoing_requests", "upscale_delay_s", "downscale_delay_s"):  # autoscaling's own keys
        spec = replace(spec, replicas=Replicas(1, 4))
        config = replace(config, sections=(spec,))
    changed = replace(spec, **{field_name: key.parse(key.example)})
    assert getattr(changed, field_name) != getattr(spec, field_name), f"the example of {name} is its current value"
    running = running_copy(plan.deploy_config(config, artifacts()))
    desired = plan.deploy_config(replace(config, sections=(changed,)), artifacts())
    assert key.change in (ROLL_OUT, IN_PLACE)
    if name in ("traffic", "sticky", "mirror_of", "mirror_percent"):  # the route owner's split changes in place
        assert all(c.action in ("unchanged", IN_PLACE, "new") for c in plan.diff(desired, running))
        return
    assert plan.diff(desired, running) == [plan.Change("Echo", key.change)]


def test_ray_restarts_replicas_for_placement_so_they_roll_out(config: Config) -> None:
    from dataclasses import replace

    running = running_copy(plan.deploy_config(config, artifacts()))
    for change in ({"cpu_cost": 2.0}, {"gpu_cost": 1.0}, {"max_replicas_per_node": 3}):
        desired = plan.deploy_config(replace(config, sections=(replace(config.sections[0], **change),)), artifacts())
        assert plan.diff(desired, running) == [plan.Change("Echo", "roll out")], change


def test_a_new_runtime_rolls_out(config: Config) -> None:
    running = running_copy(plan.deploy_config(config, artifacts()))
    assert plan.diff(plan.deploy_config(config, artifacts(runtime="gcs://rt2.zip")), running)[0].action == "roll out"


def test_the_plan_passes_ray_s_own_schema_and_its_rejections_name_the_section(config: Config) -> None:
    desired = plan.deploy_config(config, plan.Artifacts.placeholder(config))
    assert plan.schema_problems(desired) == []
    desired["applications"][0]["deployments"][0]["max_ongoing_requests"] = 0
    (problem, *_) = plan.schema_problems(desired)
    assert problem.startswith("[algopkg.Echo] Ray Serve rejects deployments.0.max_ongoing_requests"), problem


def test_a_replica_range_turns_on_rays_autoscaling_in_place(config: Config) -> None:
    fixed = plan.deploy_config(config, artifacts())
    (deployment,) = fixed["applications"][0]["deployments"]
    assert deployment["num_replicas"] == 2 and "autoscaling_config" not in deployment
    spec = replace(config.sections[0], replicas=Replicas(0, 3), downscale_delay_s=5.0)
    scaled = plan.deploy_config(replace(config, sections=(spec,)), artifacts())
    (deployment,) = scaled["applications"][0]["deployments"]
    assert "num_replicas" not in deployment
    assert deployment["autoscaling_config"] == {
        "min_replicas": 0,
        "max_replicas": 3,
        "initial_replicas": 1,  # the first apply proves the model loads, then it may scale to zero
        "target_ongoing_requests": 2.0,
        "upscale_delay_s": 30.0,
        "downscale_delay_s": 5.0,
    }
    assert plan.schema_problems(scaled) == []
    assert plan.diff(scaled, running_copy(fixed)) == [plan.Change("Echo", "update in place")]
    assert plan.diff(fixed, running_copy(scaled)) == [plan.Change("Echo", "update in place")]


def test_a_shared_route_is_split_by_its_owner_and_weights_change_in_place(config: Config) -> None:
    echo = config.sections[0]
    v2 = replace(echo, section="algopkg.Echo:v2", traffic=10)
    shadow = replace(echo, section="algopkg.Echo:shadow", route="shadow", mirror_of="Echo", mirror_percent=50)
    split = replace(config, sections=(replace(echo, traffic=90), v2, shadow))
    digests = {s.section: "d1" for s in split.sections}
    three = plan.Artifacts({"Echo": "gcs://_ray_pkg_a.zip"}, digests, {"Echo": ("numpy",)}, "gcs://rt.zip")
    desired = plan.deploy_config(split, three)
    apps = {a["name"]: a for a in desired["applications"]}
    assert set(apps) == {"Echo", "Echo:v2", "Echo:shadow", "modelserve-404"}  # no process between
    assert apps["Echo"]["route_prefix"] == "/echo"
    assert apps["Echo:v2"]["route_prefix"] == "/modelserve-split/echo/Echo:v2"  # where the owner forwards
    assert apps["Echo:shadow"]["route_prefix"] == "/shadow"
    assert "traffic" not in apps["Echo:v2"]["deployments"][0]["user_config"]
    assert "traffic" not in apps["Echo:shadow"]["deployments"][0]["user_config"]
    (deployment,) = apps["Echo"]["deployments"]
    assert deployment["user_config"]["traffic"] == {
        "targets": [
            {"app": "Echo", "deployment": "Echo", "section": "algopkg.Echo", "weight": 90, "path": ""},
            {
                "app": "Echo:v2",
                "deployment": "Echo",
                "section": "algopkg.Echo:v2",
                "weight": 10,
                "path": "/modelserve-split/echo/Echo:v2",
            },
        ],
        "sticky": "",
        "mirrors": {
            "algopkg.Echo": [
                {"app": "Echo:shadow", "deployment": "Echo", "section": "algopkg.Echo:shadow", "percent": 50}
            ]
        },
        "forward": f"http://127.0.0.1:{config.serve.port}",
    }
    assert plan.schema_problems(desired) == []
    running = running_copy(desired)
    assert plan.route_owners(running) == {"echo": "Echo", "shadow": "Echo:shadow"}  # not the side routes
    for a, b in ((50, 50), (0, 100)):  # the route stays with its owner: the weights move in place
        shifted = replace(split, sections=(replace(echo, traffic=a), replace(v2, traffic=b), shadow))
        after = plan.deploy_config(shifted, three, plan.route_owners(running))
        assert plan.diff(after, running) == [
            plan.Change("Echo", "update in place"),
            plan.Change("Echo:v2", "unchanged"),
            plan.Change("Echo:shadow", "unchanged"),
        ]
    promoted = plan.deploy_config(replace(split, sections=(replace(v2, traffic=100), shadow)), three)
    apps = {a["name"]: a for a in promoted["applications"]}
    assert apps["Echo:v2"]["route_prefix"] == "/echo" and "traffic" in apps["Echo:v2"]["deployments"][0]["user_config"]


def test_the_owner_of_a_route_is_the_one_that_has_it_else_the_largest_share(config: Config) -> None:
    echo = config.sections[0]
    a, b = replace(echo, traffic=40), replace(echo, section="algopkg.Echo:b", traffic=60)
    assert traffic.owner([a, b], {}) is b
    assert traffic.owner([a, replace(b, traffic=40)], {}) is a  # a tie: the first in the file
    assert traffic.owner([a, b], {"echo": "Echo"}) is a  # it owns the route now
    assert traffic.owner([a, b], {"echo": "Echo:gone"}) is b
    running = {
        "Echo": {"route_prefix": "/echo"},
        "Echo:b": {"route_prefix": None},
        "modelserve-404": {"route_prefix": "/"},
    }
    assert plan.route_owners(running) == {"echo": "Echo"}
    assert traffic.forward_url("0.0.0.0", 8000) == "http://127.0.0.1:8000"
    assert traffic.forward_url("127.0.0.1", 8000) == "http://127.0.0.1:8000"
    assert traffic.forward_url("10.1.2.3", 8000) == "http://10.1.2.3:8000"  # the ingress listens there only


def test_unchanged_covers_every_app_the_404_one_included(config: Config) -> None:
    desired = plan.deploy_config(config, artifacts())
    running = running_copy(desired)
    assert plan.unchanged(desired, running)
    without_404 = {name: app for name, app in running.items() if name == "Echo"}
    assert not plan.unchanged(desired, without_404)
    assert not plan.unchanged(desired, {**running, "Old": running["Echo"]}), "a section to remove is a change"
    assert not plan.unchanged(plan.deploy_config(config, artifacts(digest="d2")), running)


def test_a_new_section_s_share_stays_with_the_owner_until_it_serves(config: Config) -> None:
    echo = config.sections[0]
    v2, v3 = (replace(echo, section=f"algopkg.Echo:{v}", traffic=25) for v in ("v2", "v3"))
    split = replace(config, sections=(replace(echo, traffic=50), v2, v3))
    digests = {s.section: "d1" for s in split.sections}
    desired = plan.deploy_config(split, plan.Artifacts({"Echo": "gcs://_ray_pkg_a.zip"}, digests, {}, "gcs://rt.zip"))

    def weights(apps: list) -> dict[str, int]:
        (owner,) = [a for a in apps if a["name"] == "Echo"]
        return {t["app"]: t["weight"] for t in owner["deployments"][0]["user_config"]["traffic"]["targets"]}

    held, starting = traffic.held_back(desired["applications"], {"Echo", "Echo:v2"})  # v3 just added
    assert starting == ["Echo:v3"] and weights(held) == {"Echo": 75, "Echo:v2": 25, "Echo:v3": 0}
    assert plan.schema_problems({**desired, "applications": held}) == []
    assert weights(desired["applications"]) == {"Echo": 50, "Echo:v2": 25, "Echo:v3": 25}  # left as it was
    assert traffic.held_back(desired["applications"], {"Echo", "Echo:v2", "Echo:v3"}) == (desired["applications"], [])
    assert traffic.held_back(desired["applications"], set())[1] == []  # a new route: no traffic to protect yet
