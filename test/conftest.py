from __future__ import annotations

import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from helpers import TestCluster, isolate_ray_token, start_test_cluster  # noqa: E402

# Before any test module imports Ray: the tests' own token, never ~/.ray/auth_token.
isolate_ray_token(Path(tempfile.mkdtemp(prefix="modelserve-token-")))


@pytest.fixture(scope="session")
def cluster() -> Iterator[TestCluster]:
    """One real Ray cluster for the whole session (4 logical CPUs, 2 logical GPUs)."""
    started = start_test_cluster()
    yield started
    started.stop()
