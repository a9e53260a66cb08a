from collections.abc import Iterator

import pytest
from fake_dashboard import FakeDashboard, fake_dashboard


@pytest.fixture(autouse=True)
def _no_ray(monkeypatch: pytest.MonkeyPatch) -> None:
    """Unit tests never start or join Ray."""

    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("unit tests must not start or connect to Ray")

    import ray

    import modelserve.cmd_common
    import modelserve.localhead
    import modelserve.node

    monkeypatch.setattr(ray, "init", forbidden)
    monkeypatch.setattr(modelserve.localhead, "start_local_head", forbidden)
    monkeypatch.setattr(modelserve.cmd_common, "Cluster", forbidden)
    monkeypatch.setattr(modelserve.node.os, "execve", forbidden)


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeDashboard]:
    """A fake dashboard (no Ray behind it) that the CLI may talk to."""
    import modelserve.cluster
    import modelserve.cmd_common

    monkeypatch.setattr(modelserve.cmd_common, "Cluster", modelserve.cluster.Cluster)
    with fake_dashboard() as dashboard:
        yield dashboard
