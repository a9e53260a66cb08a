"""`controller.py` against a cluster that is not there, as a user meets it: the GCS address of a
cluster that was killed, one where no cluster ever ran, and a port that accepts connections but
never answers. A command that reads a cluster gives up within `--connect-timeout` (10 s by default)
with exit 3, and SIGTERM or SIGINT stop it at once. Timings are printed."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from helpers import (
    ECHO_SECTION,
    REPO,
    controller,
    make_project,
    silent_port,
    start_test_cluster,
    user_env,
    wait_for,
    write_conf,
)

from modelserve.node import free_port

pytestmark = pytest.mark.e2e

#: Python's start and modelserve's imports on a busy machine, on top of the wait itself.
START_S = 5.0


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_project(tmp_path_factory.mktemp("unreachable"))


def status(project: Path, address: str, *args: str) -> tuple[subprocess.CompletedProcess[str], float]:
    conf = write_conf(project, {"address": address}, ECHO_SECTION)
    began = time.monotonic()
    result = controller("status", "-c", str(conf), *args, timeout=120)
    return result, time.monotonic() - began


def test_status_of_a_killed_cluster_exits_3_within_seconds(project: Path) -> None:
    cluster = start_test_cluster(num_cpus=1)
    try:
        live, took = status(project, cluster.gcs_address, "--connect-timeout", "30")  # a just-started head, busy
        print(f"status by GCS address, cluster running: exit {live.returncode} in {took:.1f} s")
        assert live.returncode == 0, live.stderr  # the lookup works, token and all
    finally:
        cluster.stop()
    dead, took = status(project, cluster.gcs_address)
    print(f"status by GCS address, cluster killed: exit {dead.returncode} in {took:.1f} s")
    assert dead.returncode == 3 and took < START_S + 5, (took, dead.stderr)
    assert f"cannot reach the Ray cluster at {cluster.gcs_address}: nothing accepts connections" in dead.stderr
    assert "Failed to connect to GCS" not in dead.stderr  # no Ray retry loop ran


def test_status_where_no_cluster_ever_ran_exits_3_within_seconds(project: Path) -> None:
    result, took = status(project, f"127.0.0.1:{free_port()}")
    print(f"status by GCS address, no cluster ever: exit {result.returncode} in {took:.1f} s")
    assert result.returncode == 3 and took < START_S + 5, (took, result.stderr)


def test_status_of_a_port_that_never_answers_exits_3_after_the_connect_timeout(project: Path) -> None:
    with silent_port() as port:
        result, took = status(project, f"127.0.0.1:{port}", "--connect-timeout", "2")
    print(f"status by GCS address, a silent port, --connect-timeout 2: exit {result.returncode} in {took:.1f} s")
    assert result.returncode == 3 and took < 2 + START_S, (took, result.stderr)  # the lookup's own start within the 2 s
    assert f"the Ray cluster at 127.0.0.1:{port} did not answer" in result.stderr


def looking_up(pid: int) -> bool:
    """Whether the controller `pid` waits on its GCS lookup (a child process running Ray's GCS client)."""
    try:
        return any("InnerGcsClient" in " ".join(c.cmdline()) for c in psutil.Process(pid).children())
    except psutil.Error:
        return False


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_stops_the_wait_at_once(project: Path, sig: signal.Signals) -> None:
    with silent_port() as port:
        conf = write_conf(project, {"address": f"127.0.0.1:{port}"}, ECHO_SECTION)
        command = [sys.executable, str(REPO / "controller.py"), "status", "-c", str(conf), "--connect-timeout", "120"]
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=user_env())
        wait_for(lambda: looking_up(proc.pid), 60, "the controller to wait for the GCS")
        time.sleep(1)
        sent = time.monotonic()
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
        took = time.monotonic() - sent
    print(f"{sig.name} during the wait for a silent port: exit {proc.returncode} {took:.1f} s after it")
    assert proc.returncode == 128 + sig and took < 3, (took, err)
