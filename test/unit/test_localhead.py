"""localhead.py without Ray: port checks, the local head's record, stopping a session."""

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from modelserve import localhead
from modelserve.address import resolve_dashboard
from modelserve.cluster import ClusterError
from modelserve.node import free_port
from modelserve.serve_settings import ServeSettings


def settings(**values: object) -> ServeSettings:
    return ServeSettings(root=Path("."), **values)  # type: ignore[arg-type]


def test_held_ports_are_named_with_their_key_and_holder() -> None:
    with socket.socket() as http, socket.socket() as dashboard:
        for sock in (http, dashboard):
            sock.bind(("0.0.0.0" if sock is http else "127.0.0.1", 0))
            sock.listen()
        held = settings(port=http.getsockname()[1], dashboard_port=dashboard.getsockname()[1])
        with pytest.raises(ClusterError) as caught:
            localhead.refuse_taken_ports(held)
    message = str(caught.value)
    for key, port in (("port", held.port), ("dashboard_port", held.dashboard_port)):
        assert f"[MODEL SERVE] {key} = {port}: port {port} is held by python" in message, message
        assert f"set `{key}` in conf.ini to a free port" in message
    localhead.refuse_taken_ports(held)  # closed now: nothing to refuse


def test_a_port_left_in_time_wait_is_not_held() -> None:
    with socket.socket() as server:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as HAProxy and uvicorn do
        server.bind(("127.0.0.1", 0))
        server.listen()
        client = socket.create_connection(server.getsockname())
        accepted, _ = server.accept()
        accepted.close()  # the server side closes first: its port keeps a TIME_WAIT connection
        client.close()
        port = server.getsockname()[1]
    localhead.refuse_taken_ports(settings(port=port, dashboard_port=free_port()))


def test_each_project_s_head_has_a_short_temp_dir_of_its_own(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 120) / ".modelserve"
    first, second = localhead.local_temp_dir(deep), localhead.local_temp_dir(tmp_path / ".modelserve")
    assert first != second and first == localhead.local_temp_dir(deep) and first.startswith("/tmp/ray-")
    assert len(first) + len("/session_2026-12-06_01-12-23_123456_1234567/sockets/plasma_store") < 107


def test_a_recorded_head_is_used_only_while_its_process_lives(tmp_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    record = {"pid": proc.pid, "dashboard_url": "http://127.0.0.1:1", "gcs_address": "x", "log_path": "y"}
    (tmp_path / localhead.STATE_FILE).write_text(json.dumps(record))
    try:
        assert localhead.read_local_head(tmp_path) == localhead.LocalHead(**record)
        assert resolve_dashboard(settings(address="local"), tmp_path, start=False) == "http://127.0.0.1:1"
    finally:
        assert localhead.stop_local_head(tmp_path)
    assert proc.wait(timeout=10) is not None
    assert localhead.read_local_head(tmp_path) is None and not (tmp_path / localhead.STATE_FILE).exists()
    (tmp_path / localhead.STATE_FILE).write_text("{not json")
    assert localhead.read_local_head(tmp_path) is None


def test_stop_session_stops_every_process_of_the_session_and_nothing_else() -> None:
    """A leader that started a child in its session; the child ignores SIGTERM and is killed."""
    child = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(120)"
    spawn = f"import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', {child!r}]); time.sleep(120)"
    leader = subprocess.Popen([sys.executable, "-c", spawn], start_new_session=True)
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    try:
        deadline = time.monotonic() + 10
        while len(localhead.session_members(leader.pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        members = localhead.session_members(leader.pid)
        assert len(members) == 2 and leader.pid in members
        localhead.stop_session(leader.pid, grace_s=1)
        assert localhead.session_members(leader.pid) == []
        assert bystander.poll() is None
    finally:
        leader.wait(timeout=5)
        bystander.kill()
        bystander.wait()
