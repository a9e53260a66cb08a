"""One Python environment per package: `env = pip` builds it from requirements.txt on the nodes."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from helpers import TestCluster, call, controller_in_process, make_project, write_conf

from modelserve.cluster import Cluster

pytestmark = pytest.mark.integration

OLD = """
[algopkg.EnvOld]
backend = EnvOld
route = old
method = POST
env = pip
cpu_cost = 0.25
"""
NEW = OLD.replace("EnvOld", "EnvNew").replace("route = old", "route = new")
PLAIN = """
[algopkg.Echo]
backend = Echo
model = echo_model.txt
route = echo
method = GET,POST
cpu_cost = 0.25
"""


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_project(tmp_path_factory.mktemp("envs"))


def pids(cluster: TestCluster) -> dict[str, set[int]]:
    apps = Cluster(cluster.dashboard_url).details()["applications"]
    return {
        name: {r["pid"] for d in app["deployments"].values() for r in d["replicas"] if r["state"] == "RUNNING"}
        for name, app in apps.items()
    }


def apply(project: Path, cluster: TestCluster) -> tuple[int, str]:
    """`controller.py -c conf.ini` in-process; its exit code and everything it printed."""
    conf = write_conf(project, cluster.serve(deploy_timeout_s=240), OLD, NEW, PLAIN)
    code, out = controller_in_process("-c", str(conf))
    return code, out


@pytest.fixture(scope="module")
def deployed(project: Path, cluster: TestCluster) -> None:
    code, out = apply(project, cluster)
    assert code == 0, out


def test_two_packages_see_their_own_versions(cluster: TestCluster, deployed: None) -> None:
    old = call(f"{cluster.base_url}/old", {}).body["result"]
    new = call(f"{cluster.base_url}/new", {}).body["result"]
    assert (old["inflection"], new["inflection"]) == ("0.5.0", "0.5.1")
    assert old["prefix"] != new["prefix"]
    with pytest.raises(ImportError):
        import inflection  # noqa: F401 - the base environment does not have it


def test_same_requirements_rebuild_nothing(project: Path, cluster: TestCluster, deployed: None) -> None:
    before = pids(cluster)
    code, out = apply(project, cluster)
    assert code == 0 and len(re.findall(r"^\s+unchanged  ", out, re.M)) == 3, out
    assert pids(cluster) == before


def test_an_env_that_cannot_be_built_fails_only_its_section(
    project: Path, cluster: TestCluster, deployed: None
) -> None:
    requirements = project / "algopkg" / "EnvOld" / "requirements.txt"
    good = requirements.read_text()
    before = pids(cluster)
    requirements.write_text("modelserve-no-such-package-4b1d==1.0\n")
    try:
        code, out = apply(project, cluster)
    finally:
        requirements.write_text(good)
    assert code == 1
    assert "[algopkg.EnvOld] was DEPLOY_FAILED, rolled back" in out, out
    (line,) = [row for row in out.splitlines() if row.startswith("[algopkg.EnvOld] was ")]
    assert re.search(r"No matching distribution|Could not find|modelserve-no-such-package-4b1d", line), line
    errors = (project / ".modelserve" / "last_errors.log").read_text()  # the full error: pip's own words
    assert "modelserve-no-such-package-4b1d" in errors
    assert re.search(r"No matching distribution|Could not find", errors), errors
    assert call(f"{cluster.base_url}/old", {}).body["result"]["inflection"] == "0.5.0"  # the old version serves
    after = pids(cluster)
    assert after["EnvNew"] == before["EnvNew"] and after["Echo"] == before["Echo"]
