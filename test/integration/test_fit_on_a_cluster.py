"""The fit check on a real 2-CPU cluster: what an apply makes Ray start at once must have room,
or the apply fails at once (exit 2) and changes nothing (issue 19, items 2 and 3)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from helpers import ECHO_SECTION, TestCluster, call, make_project, wait_for, write_conf

from modelserve import status
from modelserve.cli import main
from modelserve.cluster import Cluster, ClusterError
from modelserve.envelope import REPLICA_HEADER

pytestmark = pytest.mark.integration

#: With Echo's 0.5 CPU, 1.75 of the cluster's 2 CPUs are taken: 0.25 is free.
FILLER = """
[algopkg.Legacy]
backend = algo_backend
model = legacy_model.txt
route = legacy
method = POST
cpu_cost = 1.25
"""

SCALES_TO_ZERO = """
[algopkg.Inputs]
backend = Inputs
route = inputs
method = POST
cpu_cost = 0.5
replicas = 0-2
"""


@pytest.fixture(scope="module")
def conf(tmp_path_factory: pytest.TempPathFactory, cluster: TestCluster) -> Path:
    path = write_conf(make_project(tmp_path_factory.mktemp("fit")), cluster.serve(), FILLER, ECHO_SECTION)
    # A dashboard that has just started may drop its first Serve API calls while its modules start.
    wait_for(lambda: _answers(Cluster(cluster.dashboard_url)), 120, "the dashboard's Serve API")
    assert main(["-c", str(path)]) == 0
    return path


def _answers(cluster: Cluster) -> bool:
    try:
        return isinstance(cluster.details(), dict)
    except ClusterError:
        return False


def trial(conf: Path, name: str, extra: str = "") -> Path:
    """`conf` with `extra` sections and a short deploy timeout: were the check to let through a plan
    that Ray cannot place, the apply would end after 20 s with exit 1, not at once with exit 2."""
    path = conf.parent / name
    path.write_text(conf.read_text().replace("deploy_timeout_s = 120", "deploy_timeout_s = 20") + extra)
    assert "deploy_timeout_s = 20" in path.read_text()
    return path


def serving(cluster: TestCluster) -> tuple[str, set[str], dict[str, str]]:
    """The replica that answers /echo (which must be version 1), every replica's id, and each app's status."""
    reply = call(f"{cluster.base_url}/echo", {"x": 1})
    assert reply.status == 200 and reply.body["result"]["version"] == 1, reply
    details = Cluster(cluster.dashboard_url).details()
    apps = {name: app["status"] for name, app in details["applications"].items()}
    return reply.headers[REPLICA_HEADER], set(status.replica_ids(details)), apps


def refused(conf: Path, capsys: pytest.CaptureFixture[str]) -> str:
    """Applies `conf`, which must fail at once with exit 2; what it printed on stderr."""
    capsys.readouterr()
    began = time.monotonic()
    code = main(["-c", str(conf)])
    elapsed = time.monotonic() - began
    err = capsys.readouterr().err
    assert code == 2, err
    assert elapsed < 15, f"took {elapsed:.1f} s: {err}"
    assert "nothing was changed" in err, err
    return err


def test_a_new_section_that_scales_to_zero_is_refused_when_its_first_replica_has_no_room(
    conf: Path, cluster: TestCluster, capsys: pytest.CaptureFixture[str]
) -> None:
    """`replicas = 0-2` starts one replica on its first apply: 0.5 CPU, with 0.25 free."""
    before = serving(cluster)
    assert before[2] == {"Legacy": "RUNNING", "Echo": "RUNNING", "modelserve-404": "RUNNING"}
    err = refused(trial(conf, "scales_to_zero.ini", SCALES_TO_ZERO), capsys)
    assert "[algopkg.Inputs] 1 x 0.5 (replicas = 0-2 starts with 1)" in err, err
    assert "need 2.25 CPU in all" in err and "the cluster has 2 of its 2 free for them" in err, err
    assert serving(cluster) == before


def test_a_roll_out_without_room_for_its_extra_replica_is_refused_and_the_old_one_keeps_serving(
    conf: Path, cluster: TestCluster, capsys: pytest.CaptureFixture[str]
) -> None:
    """A code change to the 0.5-CPU Echo: Ray would start its new replica before stopping the old one."""
    before = serving(cluster)
    backend = conf.parent / "algopkg" / "Echo" / "backend.py"
    code = backend.read_text()
    backend.write_text(code.replace("VERSION = 1", "VERSION = 2"))
    try:
        err = refused(trial(conf, "code_change.ini"), capsys)
    finally:
        backend.write_text(code)
    assert "[algopkg.Echo] rolls out, and Ray starts 1 new replica(s) of 0.5 CPU each" in err, err
    assert "the most any node has free is 0.25 CPU" in err, err
    assert "[algopkg.Legacy]" not in err, err
    assert serving(cluster) == before


def test_with_rollout_replace_the_roll_out_takes_the_old_replica_s_room(
    conf: Path, cluster: TestCluster, capsys: pytest.CaptureFixture[str]
) -> None:
    """`rollout = replace`: Ray stops the old replica first, so the same code change fits."""
    answering, replicas, _ = serving(cluster)
    backend = conf.parent / "algopkg" / "Echo" / "backend.py"
    code = backend.read_text()
    replacing = conf.parent / "replace.ini"
    replacing.write_text(conf.read_text() + "rollout = replace\n")  # the last section: Echo
    backend.write_text(code.replace("VERSION = 1", "VERSION = 2"))
    try:
        assert main(["-c", str(replacing)]) == 0, capsys.readouterr()
    finally:
        backend.write_text(code)
    reply = call(f"{cluster.base_url}/echo", {"x": 1})
    assert (reply.status, reply.body["result"]["version"]) == (200, 2)
    assert reply.headers[REPLICA_HEADER] != answering
    details = Cluster(cluster.dashboard_url).details()
    legacy = {r["replica_id"] for r in details["applications"]["Legacy"]["deployments"]["Legacy"]["replicas"]}
    assert legacy <= replicas  # the filler kept its replica
