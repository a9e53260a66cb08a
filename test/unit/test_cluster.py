"""cluster.py and address.py without Ray: finding the dashboard, connecting, reading a cluster."""

import os
import time
from pathlib import Path

import pytest
from fake_dashboard import fake_dashboard
from helpers import silent_port

from modelserve import address, cluster, localhead, raycompat
from modelserve.node import free_port
from modelserve.serve_settings import ServeSettings


def settings(**values: object) -> ServeSettings:
    return ServeSettings(root=Path("."), **values)  # type: ignore[arg-type]


def test_a_dashboard_url_is_used_as_given(tmp_path: Path) -> None:
    assert address.resolve_dashboard(settings(address="http://head:8265/"), tmp_path, start=False) == "http://head:8265"


def test_auto_follows_ray_address(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAY_ADDRESS", "http://elsewhere:8265")
    assert address.resolve_dashboard(settings(), tmp_path, start=False) == "http://elsewhere:8265"


def test_local_without_a_cluster_is_none_unless_it_may_start_one(tmp_path: Path) -> None:
    local = settings(address="local", dashboard_port=free_port())
    assert address.resolve_dashboard(local, tmp_path, start=False) is None
    with pytest.raises(AssertionError, match="must not start"):  # the unit tier forbids starting Ray
        address.resolve_dashboard(local, tmp_path, start=True)


def test_the_token_is_used_when_one_exists(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "absent"))
    assert cluster.use_token_if_available() is False and "RAY_AUTH_MODE" not in os.environ
    monkeypatch.setenv("RAY_AUTH_TOKEN", "abc")
    assert cluster.use_token_if_available() is True and os.environ["RAY_AUTH_MODE"] == "token"
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    assert cluster.use_token_if_available() is False


def test_a_gcs_address_where_nothing_listens_fails_at_once(tmp_path: Path) -> None:
    dead = f"127.0.0.1:{free_port()}"
    began = time.monotonic()
    with pytest.raises(cluster.ClusterError) as caught:
        address.resolve_dashboard(settings(address=dead), tmp_path, start=False, connect_timeout_s=3)
    assert time.monotonic() - began < 2  # a TCP connect refused: no Ray code runs
    message = str(caught.value)
    assert f"cannot reach the Ray cluster at {dead}: nothing accepts connections there" in message
    assert "waited" not in message and "[MODEL SERVE] address" in message  # refused at once: no wait to lengthen


def test_a_gcs_port_that_never_answers_fails_within_the_timeout(tmp_path: Path) -> None:
    """The port accepts TCP but no gRPC answers: Ray's GCS client (in a child process, killed at the
    deadline) would wait 10 s or more by itself."""
    with silent_port() as port:
        began = time.monotonic()
        with pytest.raises(cluster.ClusterError, match=f"the Ray cluster at 127.0.0.1:{port} did not answer"):
            address.resolve_dashboard(settings(address=f"127.0.0.1:{port}"), tmp_path, start=False, connect_timeout_s=1)
        took = time.monotonic() - began
    print(f"a silent GCS port: gave up after {took:.1f} s (connect timeout 1 s)")
    assert took < 1 + 1  # the child's start is within the timeout: 1 s, and this test's own overhead


def test_a_dashboard_that_never_answers_fails_within_the_timeout() -> None:
    with silent_port() as port:
        began = time.monotonic()
        with pytest.raises(cluster.ClusterError) as caught:
            cluster.Cluster(f"http://127.0.0.1:{port}", connect_timeout_s=1).check_reachable()
        assert time.monotonic() - began < 3
    assert f"cannot reach the Ray dashboard at http://127.0.0.1:{port} (no answer; waited 1 s" in str(caught.value)


def test_resources_read_each_node_s_use_and_where_each_application_s_replicas_run(fake) -> None:
    fake.nodes = [{"CPU": 2.0}, {"CPU": 4.0, "GPU": 1.0}]
    fake.used_by_node = {"n0": {"CPU": 1.5}, "n1": {"CPU": 0.5, "GPU": 0.0}}
    replicas = [
        {"state": "RUNNING", "node_id": "n0"},
        {"state": "STARTING", "node_id": "n1"},
        {"state": "STOPPING", "node_id": "n0"},  # on its way out
        {"state": "STARTING", "node_id": None},  # not placed yet: holds nothing
    ]
    details = {
        "applications": {"Echo": {"deployments": {"Echo": {"required_resources": {"CPU": 0.5}, "replicas": replicas}}}}
    }
    found = cluster.Cluster(fake.url).resources(details)
    assert {n: (node.total, node.free("CPU")) for n, node in found.nodes.items()} == {
        "n0": ({"CPU": 2.0}, 0.5),
        "n1": ({"CPU": 4.0, "GPU": 1.0}, 3.5),
    }
    assert (found.apps["Echo"].each, list(found.apps["Echo"].nodes)) == ({"CPU": 0.5}, ["n0", "n1"])
    fake.used_by_node = None  # without Ray's use per node: what the replicas hold there
    assert {n: node.free("CPU") for n, node in cluster.Cluster(fake.url).resources(details).nodes.items()} == {
        "n0": 1.5,
        "n1": 3.5,
    }
    # Ray's report lags an apply (the autoscaler refreshes it every few seconds): it does not yet
    # count the replicas Serve placed, and the fit check let through a roll-out with no room.
    fake.used_by_node = {"n0": {"CPU": 0.0}, "n1": {"CPU": 0.0, "GPU": 0.0}}
    assert {n: node.free("CPU") for n, node in cluster.Cluster(fake.url).resources(details).nodes.items()} == {
        "n0": 1.5,
        "n1": 3.5,
    }


def test_local_never_takes_another_project_s_local_cluster(tmp_path: Path) -> None:
    """A second project on the host whose `dashboard_port` meets the first's local cluster: its
    apply would have replaced the first project's sections there (seen: `remove Sleepy`)."""
    mine, theirs = tmp_path / "mine" / ".modelserve", tmp_path / "theirs" / ".modelserve"
    with fake_dashboard() as fake:
        local = settings(address="local", dashboard_port=int(fake.url.rpartition(":")[2]))
        fake.head_labels = {raycompat.PROJECT_LABEL: localhead.project_id(theirs)}
        with pytest.raises(cluster.ClusterError) as caught:
            address.resolve_dashboard(local, mine, start=True)
        message = str(caught.value)
        assert "is the local cluster of another project on this host" in message, message
        assert f"/tmp/ray-{localhead.project_id(theirs)}" in message and f"address = {fake.url}" in message
        assert address.resolve_dashboard(local, mine, start=False, stage="grey") == fake.url  # a stage beside it
        assert address.resolve_dashboard(local, theirs, start=False) == fake.url  # its own project's
        fake.head_labels = {}  # a cluster started by hand or by modelserve.node: anyone's
        assert address.resolve_dashboard(local, mine, start=False) == fake.url
        named = settings(address=fake.url)  # named on purpose
        fake.head_labels = {raycompat.PROJECT_LABEL: localhead.project_id(theirs)}
        assert address.resolve_dashboard(named, mine, start=False) == fake.url
