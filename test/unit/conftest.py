import pytest


@pytest.fixture(autouse=True)
def _no_ray(monkeypatch: pytest.MonkeyPatch) -> None:
    """Unit tests never start or join Ray."""

    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("unit tests must not start or connect to Ray")

    import ray

    import modelserve.cluster

    monkeypatch.setattr(ray, "init", forbidden)
    monkeypatch.setattr(modelserve.cluster.subprocess, "Popen", forbidden)
