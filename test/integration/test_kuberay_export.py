"""`export kuberay` against a real S3 API (moto's server, test/s3server.py); no Ray cluster, no Kubernetes.

The packages and the replica runtime go to `<model_zoo>/_packages/`, once per content; Ray's own
code for remote py_modules (its s3 download, through boto3 and smart_open, then its unzip) turns
them into importable `algopkg/<Package>/` and `modelserve/` directories.
"""

from __future__ import annotations

import dataclasses
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from crd import crd_problems
from helpers import controller_in_process, make_project, write_conf
from s3server import S3Server, environment

from modelserve import kuberay, package_store, plan
from modelserve.config import load_config
from modelserve.node_groups import NodeGroup
from modelserve.settings import Config

pytestmark = pytest.mark.integration

BUCKET, ZOO = "models", "s3://models/zoo"
SECTION = """
[algopkg.Echo]
backend = Echo
model = echo_model.txt
route = echo
method = POST
cpu_cost = 0.5
gpu_cost = 1
"""
GROUPS = (NodeGroup("head", cpus=2, memory="8Gi"), NodeGroup("gpu", cpus=8, memory="32Gi", gpus=1, max_replicas=2))


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    with S3Server() as server:
        home = tmp_path_factory.mktemp("aws")
        with environment(server.env(home)):
            server.client().create_bucket(Bucket=BUCKET)
            server.client().put_object(Bucket=BUCKET, Key="zoo/echo_model.txt", Body=b"echo-plain\n")
            yield server


@pytest.fixture
def project(tmp_path: Path) -> Path:
    return make_project(tmp_path / "project")


def puts(s3: S3Server) -> int:
    return sum(n for (method, path), n in s3.requests.items() if method == "PUT" and "/_packages/" in path)


def test_packages_and_runtime_go_to_the_store_once_and_unpack_as_ray_does(
    s3: S3Server, project: Path, tmp_path: Path
) -> None:
    from ray._private.runtime_env.packaging import unzip_package
    from ray._private.runtime_env.protocol import Protocol

    config = load_config(write_conf(project, {"host": "0.0.0.0", "model_zoo": ZOO}, SECTION))
    s3.requests.clear()
    artifacts = package_store.store_artifacts(config)
    assert puts(s3) == 2, s3.requests  # the package and the runtime
    assert artifacts.package_uri["Echo"].startswith(f"{ZOO}/_packages/Echo-")
    assert artifacts.runtime_uri.startswith(f"{ZOO}/_packages/modelserve-")
    assert package_store.store_artifacts(config) == artifacts and puts(s3) == 2  # same content: no upload
    for uri, module in (
        (artifacts.package_uri["Echo"], "algopkg/Echo/backend.py"),
        (artifacts.runtime_uri, "modelserve/app.py"),
    ):
        local = tmp_path / uri.rsplit("/", 1)[1]
        Protocol.S3.download_remote_uri(source_uri=uri, dest_file=str(local))  # as a node fetches it
        assert zipfile.ZipFile(local).testzip() is None
        unzip_package(str(local), str(tmp_path / local.stem), remove_top_level_directory=True, unlink_zip=True)
        assert (tmp_path / local.stem / module).is_file(), sorted(p.name for p in (tmp_path / local.stem).iterdir())
    # The manifest from these URIs: the CRD's schema and Ray's schema accept it.
    serve_config = plan.deploy_config(config, artifacts)
    document = kuberay.rayservice(config, serve_config, "modelserve", GROUPS)
    assert crd_problems(document) == []
    assert plan.schema_problems(yaml.safe_load(document["spec"]["serveConfigV2"])) == []
    # An edited package is a new object; the runtime's stays.
    (project / "algopkg" / "Echo" / "backend.py").write_text(
        (project / "algopkg" / "Echo" / "backend.py").read_text() + "\n# edited\n"
    )
    edited = package_store.store_artifacts(config)
    assert edited.package_uri["Echo"] != artifacts.package_uri["Echo"] and edited.runtime_uri == artifacts.runtime_uri
    assert puts(s3) == 3


NODES = """
[NODES head]
cpus = 2
memory = 8Gi

[NODES gpu]
cpus = 8
memory = 32Gi
gpus = 1
min_replicas = 0
max_replicas = 2
"""


@pytest.mark.skipif(
    "node_groups" not in {f.name for f in dataclasses.fields(Config)},
    reason="conf.ini's [NODES ...] sections come with the 'nodes' branch",
)
def test_export_writes_a_manifest_the_crd_accepts_from_the_command_line(s3: S3Server, project: Path) -> None:
    conf = write_conf(project, {"host": "0.0.0.0", "model_zoo": ZOO}, SECTION, NODES)
    out = project / "rayservice.yaml"
    code, text = controller_in_process("-c", str(conf), "export", "kuberay", "-o", str(out))
    assert code == 0, text
    document = yaml.safe_load(out.read_text())
    assert crd_problems(document) == []
    serve_config = yaml.safe_load(document["spec"]["serveConfigV2"])
    config = load_config(conf)
    assert serve_config == plan.deploy_config(config, package_store.store_artifacts(config))
    (gpu,) = document["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    assert gpu["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1
