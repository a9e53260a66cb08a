"""`export kuberay`: the RayService manifest, checked against KubeRay's published CRD schema
(test/fixtures/kuberay, tag v1.7.0) and Ray's ServeDeploySchema; no Ray, no Kubernetes."""

from __future__ import annotations

import json
import zipfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import yaml
from crd import crd_problems
from helpers import controller_in_process, make_project, write_conf

from modelserve import kuberay, node, package_store, plan, raycompat
from modelserve.config import load_config
from modelserve.node_groups import NodeGroup
from modelserve.packaging import staged_package
from modelserve.settings import Config

ZOO = "s3://models/zoo"
GROUPS = (
    NodeGroup("head", cpus=2, memory="8Gi"),
    NodeGroup("gpu", image="registry.example/modelserve-node:2.60", cpus=8, memory="32Gi", gpus=1, max_replicas=3),
    NodeGroup("cpu", cpus=0.5, memory="2Gi", min_replicas=2, max_replicas=2),
)
SECTIONS = (
    """
    [algopkg.Echo]
    backend = Echo
    model = echo_model.txt
    route = echo
    method = POST
    cpu_cost = 0.5
    gpu_cost = 1
    replicas = 2
    user_config = {"k": 1}
    """,
)


@pytest.fixture
def config(tmp_path: Path) -> Config:
    """A project served from the store: the models resolved locally, then the zoo set to `s3://` (no S3 here)."""
    loaded = load_config(write_conf(make_project(tmp_path), {"host": "0.0.0.0", "port": 8000}, *SECTIONS))
    return replace(loaded, serve=replace(loaded.serve, model_zoo=ZOO))


def store_artifacts(config: Config) -> plan.Artifacts:
    digests = {s.section: plan.section_models(s, config).digest for s in config.sections}
    return plan.Artifacts({"Echo": f"{ZOO}/_packages/Echo-0123456789abcdef.zip"}, digests, {}, f"{ZOO}/_packages/m.zip")


def manifest(config: Config) -> tuple[dict[str, Any], dict[str, Any]]:
    serve_config = plan.deploy_config(config, store_artifacts(config))
    return kuberay.rayservice(config, serve_config, "digits", GROUPS), serve_config


def test_the_manifest_validates_against_kuberays_crd_schema(config: Config) -> None:
    document, _ = manifest(config)
    assert crd_problems(document) == []
    assert (document["apiVersion"], document["kind"], document["metadata"]["name"]) == (
        "ray.io/v1",
        "RayService",
        "digits",
    )
    # The check can fail: a wrong type, a missing required field and a misspelt key are each caught.
    broken = json.loads(json.dumps(document))
    broken["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["minReplicas"] = "1"
    del broken["spec"]["rayClusterConfig"]["workerGroupSpecs"][1]["groupName"]
    broken["spec"]["rayClusterConfig"]["headGroupSpec"]["rayStartParam"] = {}
    problems = crd_problems(broken)
    assert any("minReplicas" in p and "not of type 'integer'" in p for p in problems), problems
    assert any("'groupName' is a required property" in p for p in problems), problems
    assert ".spec.rayClusterConfig.headGroupSpec.rayStartParam" in problems, problems


def test_serve_config_v2_is_the_plan_an_apply_sends_and_ray_accepts_it(config: Config) -> None:
    document, serve_config = manifest(config)
    parsed = yaml.safe_load(document["spec"]["serveConfigV2"])
    assert parsed == serve_config == plan.deploy_config(config, store_artifacts(config))
    assert plan.schema_problems(parsed) == []
    (app, _) = parsed["applications"]
    assert app["runtime_env"]["py_modules"] == [f"{ZOO}/_packages/m.zip", f"{ZOO}/_packages/Echo-0123456789abcdef.zip"]
    assert app["runtime_env"]["env_vars"]["MODEL_ZOO"] == ZOO
    assert app["deployments"][0]["user_config"]["user"] == {"k": 1}
    text = kuberay.to_yaml(document)  # what `export` writes: serveConfigV2 as a `|` block
    assert yaml.safe_load(text) == document and "  serveConfigV2: |\n    proxy_location: EveryNode\n" in text


def test_groups_become_head_and_worker_groups_with_gpus_as_nvidia_limits(config: Config) -> None:
    cluster = manifest(config)[0]["spec"]["rayClusterConfig"]
    head, (gpu, cpu) = cluster["headGroupSpec"], cluster["workerGroupSpecs"]
    assert head["rayStartParams"] == {"dashboard-host": "0.0.0.0", "num-cpus": "2", "num-gpus": "0"}
    (head_container,) = head["template"]["spec"]["containers"]
    assert head_container["resources"]["limits"] == {"cpu": "2", "memory": "8Gi"}
    assert {p["name"]: p["containerPort"] for p in head_container["ports"]}["serve"] == 8000
    assert (gpu["groupName"], gpu["replicas"], gpu["minReplicas"], gpu["maxReplicas"]) == ("gpu", 1, 1, 3)
    assert gpu["rayStartParams"] == {"num-cpus": "8", "num-gpus": "1"}
    (gpu_container,) = gpu["template"]["spec"]["containers"]
    assert gpu_container["image"] == "registry.example/modelserve-node:2.60"
    assert gpu_container["resources"]["limits"] == {"cpu": "8", "memory": "32Gi", "nvidia.com/gpu": 1}
    assert gpu_container["resources"]["requests"] == gpu_container["resources"]["limits"]
    (cpu_container,) = cpu["template"]["spec"]["containers"]
    assert cpu_container["resources"]["limits"] == {"cpu": "500m", "memory": "2Gi"}
    assert "num-cpus" not in cpu["rayStartParams"]  # KubeRay derives it from the 500m limit
    assert cluster["enableInTreeAutoscaling"] is True  # the gpu group scales 1-3


def test_every_node_gets_token_auth_haproxy_and_the_drain_period_of_modelserve_node(config: Config) -> None:
    document = manifest(config)[0]
    cluster = document["spec"]["rayClusterConfig"]
    spec = node.NodeSpec(role="head")
    ours = node.node_env(spec, base={})
    containers = [cluster["headGroupSpec"]["template"]["spec"]["containers"][0]] + [
        w["template"]["spec"]["containers"][0] for w in cluster["workerGroupSpecs"]
    ]
    for container in containers:
        env = {e["name"]: e for e in container["env"]}
        for name in (raycompat.AUTH_MODE, raycompat.ENABLE_HA_PROXY, *raycompat.draining_env(node.DRAIN_S)):
            assert env[name]["value"] == ours[name], name
        secret = env[raycompat.AUTH_TOKEN]["valueFrom"]["secretKeyRef"]
        assert secret == {"name": "digits-ray-token", "key": "auth_token"}
    # The operator reads the same Secret for its own calls to the dashboard (the PUT of serveConfigV2).
    assert cluster["authOptions"] == {"mode": "token", "secretName": "digits-ray-token"}
    assert document["spec"]["upgradeStrategy"] == {"type": "NewCluster"}
    assert document["spec"]["serveService"]["spec"]["ports"] == [{"name": "serve", "port": 8000, "targetPort": 8000}]


def test_a_local_model_zoo_or_host_is_refused_naming_the_key_and_the_fix(config: Config) -> None:
    assert kuberay.refusals(config, GROUPS) == []
    local = replace(config, serve=replace(config.serve, model_zoo="Model_ZOO", host="127.0.0.1"))
    problems = kuberay.refusals(local, ())
    assert any(p.startswith("[MODEL SERVE] model_zoo = Model_ZOO is local") and "s3://" in p for p in problems)
    assert any(p.startswith("[MODEL SERVE] host = 127.0.0.1") and "host = 0.0.0.0" in p for p in problems)
    assert any("[NODES head]" in p for p in problems)
    section = replace(config.sections[0], model_zoo="/srv/models")
    problems = kuberay.refusals(replace(config, sections=(section,)), GROUPS)
    assert problems == [
        "[algopkg.Echo] model_zoo = /srv/models is local: packages and model files must reach the pods from an "
        "object store: set model_zoo = s3://bucket/prefix"
    ]


def test_export_with_a_local_model_zoo_exits_2_and_writes_no_file(tmp_path: Path) -> None:
    conf = write_conf(make_project(tmp_path), {"host": "0.0.0.0"}, *SECTIONS)
    out = tmp_path / "rayservice.yaml"
    code, text = controller_in_process("-c", str(conf), "export", "kuberay", "-o", str(out))
    assert code == 2, text
    assert "[MODEL SERVE] model_zoo = Model_ZOO is local" in text and "no manifest was written" in text, text
    assert not out.exists()


def test_a_package_zip_unpacks_as_ray_unpacks_a_remote_py_module(tmp_path: Path) -> None:
    """Ray strips the one top-level directory of an `s3://` zip and puts the rest on the path: the
    zip holds `<name>-<digest>/algopkg/...` so `algopkg.Echo` imports on the node (Ray's own unzip)."""
    from ray._private.runtime_env.packaging import unzip_package

    project = make_project(tmp_path / "project")
    with staged_package(project / "algopkg", "Echo") as staged:
        data = package_store.zipped(staged, "Echo-0123")
        assert data == package_store.zipped(staged, "Echo-0123")  # same files, same bytes
    (tmp_path / "Echo.zip").write_bytes(data)
    assert {n.split("/")[0] for n in zipfile.ZipFile(tmp_path / "Echo.zip").namelist()} == {"Echo-0123"}
    unzip_package(str(tmp_path / "Echo.zip"), str(tmp_path / "node"), remove_top_level_directory=True, unlink_zip=True)
    assert sorted(p.name for p in (tmp_path / "node").iterdir()) == ["algopkg"]
    assert (tmp_path / "node" / "algopkg" / "__init__.py").is_file()
    assert (tmp_path / "node" / "algopkg" / "Echo" / "backend.py").is_file()
    assert not (tmp_path / "node" / "algopkg" / "AlgoExample").exists()  # only the section's package


@pytest.mark.parametrize(
    ("groups", "expected"),
    [
        ("[NODES head]\ncpus = 2\n", "[algopkg.Echo] gpu_cost = 1: no [NODES ...] group has a GPU"),
        (
            "[NODES head]\ncpus = 2\n\n[NODES gpu]\ngpus = 1\ncpus = 4\nmin_replicas = 3\nmax_replicas = 2\n",
            "[NODES gpu] min_replicas = 3",
        ),
        ("[NODES head]\ncpus = 2\ngpus = 1\n", "[MODEL SERVE] model_zoo = Model_ZOO is local"),
    ],
    ids=["a GPU section and no GPU group", "min_replicas above max_replicas", "a local model_zoo"],
)
def test_bad_inputs_are_named_by_check_and_by_export_and_no_file_is_written(
    tmp_path: Path, groups: str, expected: str
) -> None:
    conf = write_conf(make_project(tmp_path), {"host": "0.0.0.0"}, *SECTIONS, groups)
    out = tmp_path / "rayservice.yaml"
    for command in (["check"], ["export", "kuberay", "-o", str(out)]):
        code, text = controller_in_process("-c", str(conf), *command)
        if command == ["check"] and "model_zoo" in expected:
            assert code == 0, text  # a local model_zoo is fine for an apply: only the export refuses it
            continue
        assert code == 2 and expected in text, (command, text)
    assert not out.exists()
