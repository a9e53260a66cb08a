from __future__ import annotations

import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from helpers import TestCluster, isolate_ray_token, start_test_cluster  # noqa: E402

# Before any test module imports Ray: the tests' own token, never ~/.ray/auth_token.
isolate_ray_token(Path(tempfile.mkdtemp(prefix="modelserve-token-")))


@pytest.fixture(scope="module")
def cluster_options() -> dict[str, Any]:
    """`start_test_cluster` arguments; a module that needs more overrides this fixture."""
    return {"num_cpus": 2, "num_gpus": 0}


@pytest.fixture(scope="module")
def cluster(cluster_options: dict[str, Any]) -> Iterator[TestCluster]:
    """One small real Ray cluster per test module: each module owns its applications."""
    started = start_test_cluster(**cluster_options)
    yield started
    started.stop()


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Each "0 failed" proof's wrk counts (test/wrk.py), also without `-s`."""
    from helpers import MEASURED
    from wrk import REPORTS

    if MEASURED:
        terminalreporter.section(f"measured: {len(MEASURED)} time(s)")
        for line in MEASURED:
            terminalreporter.write_line(line)
    if REPORTS:
        terminalreporter.section(f"wrk: {len(REPORTS)} load phase(s), counts by kind")
        for line in REPORTS:
            terminalreporter.write_line(line)
