"""Where the cluster is: `[MODEL SERVE] address` (or `RAY_ADDRESS`) to its dashboard's URL.

A dashboard URL is used as given; a GCS address is looked up in the cluster's GCS within the
connect timeout; `local` is the project's own head (localhead.py), else a dashboard on
`dashboard_port` that no other project started, else a head it starts.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from modelserve import localhead, raycompat
from modelserve.cluster import CONNECT_TIMEOUT_S, ClusterError, dashboard_answers, use_token_if_available, wait_hint
from modelserve.serve_settings import ServeSettings


def _accepts_connections(gcs_address: str, timeout_s: float) -> None:
    """A TCP connect to the GCS port: a cluster that is down answers this at once, with no Ray code."""
    host, _, port = gcs_address.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s):
            return
    except ValueError:
        raise ClusterError(f"the Ray address {gcs_address!r} is not host:port, e.g. head:6379") from None
    except OSError as exc:
        # a refusal is an answer: only a wait that ran out says how to wait longer
        reason = f"no answer; {wait_hint(timeout_s)}" if isinstance(exc, TimeoutError) else (exc.strerror or str(exc))
        raise ClusterError(
            f"cannot reach the Ray cluster at {gcs_address}: nothing accepts connections there ({reason}). "
            "Check that the cluster's head runs and that [MODEL SERVE] address "
            "(or RAY_ADDRESS) names its GCS address"
        ) from None


@contextlib.contextmanager
def _terminate_raises() -> Iterator[None]:
    """SIGTERM raises SystemExit while inside (in the main thread), so a child we wait on is stopped too."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _dashboard_from_gcs(gcs_address: str, timeout_s: float = CONNECT_TIMEOUT_S) -> str:
    """The dashboard URL of a cluster known by its GCS address, within about `timeout_s`: a TCP connect
    first, then Ray's GCS client in a child process that is killed at the deadline, or with us on
    SIGINT or SIGTERM (`ray.init` retried for minutes here, deaf to both). The whole lookup, the
    child's start included, ends within `timeout_s`."""
    started = time.monotonic()
    _accepts_connections(gcs_address, timeout_s)
    use_token_if_available()  # the child reads RAY_AUTH_MODE from the environment it inherits
    left_s = max(timeout_s - (time.monotonic() - started), 0.1)
    command = raycompat.dashboard_from_gcs_command(gcs_address, time.time() + left_s)
    try:
        with _terminate_raises():
            done = subprocess.run(command, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=left_s)
    except subprocess.TimeoutExpired:
        raise ClusterError(
            f"the Ray cluster at {gcs_address} did not answer: its port accepts connections, but no Ray GCS "
            f"answered there ({wait_hint(timeout_s)}). Check that [MODEL SERVE] address (or RAY_ADDRESS) names "
            "the head's GCS port (6379 unless RAY_GCS_PORT says otherwise)"
        ) from None
    try:
        answer = json.loads(done.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        answer = {"error": (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]}
    if "error" in answer:
        raise ClusterError(f"cannot connect to the Ray cluster at {gcs_address}: {answer['error']}")
    url = str(answer.get("dashboard") or "")
    if not url:
        raise ClusterError(f"the Ray cluster at {gcs_address} runs no dashboard; start its head with one")
    return url if "://" in url else f"http://{url}"


def resolve_dashboard(
    settings: ServeSettings,
    state_dir: Path,
    start: bool,
    connect_timeout_s: float = CONNECT_TIMEOUT_S,
    stage: str = "",
) -> str | None:
    """Where the cluster's dashboard is, per `[MODEL SERVE] address`; starts a head if allowed. A GCS
    address that does not answer within `connect_timeout_s` is a ClusterError, and so is, for the
    production stage, a local cluster on `dashboard_port` that another project started."""
    address = settings.address
    if address == "auto":
        address = os.environ.get("RAY_ADDRESS", "") or "local"
    if address.startswith(("http://", "https://")):
        return address.rstrip("/")
    if address != "local":
        return _dashboard_from_gcs(address, connect_timeout_s)
    head = localhead.read_local_head(state_dir)
    if head is not None:
        return head.dashboard_url
    default = f"http://127.0.0.1:{settings.dashboard_port}"
    if dashboard_answers(default):
        if not stage:  # a stage's apply touches only that stage: it may share another project's cluster
            localhead.refuse_another_project_s(default, state_dir, settings.dashboard_port)
        return default
    if not start:
        return None
    localhead.refuse_taken_ports(settings)
    return localhead.start_local_head(settings, state_dir).dashboard_url
