"""A Ray head this controller starts on this machine: its ports, its record, stopping it.

A local head runs `ray start --head --block` in its own process group, its ports and
temp dir recorded in `.modelserve/cluster.json`; stopping it stops exactly that group,
never other clusters on the machine. address.py decides when one is needed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import socket
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psutil

from modelserve import raycompat
from modelserve.cluster import Cluster, ClusterError, dashboard_answers, use_token_if_available
from modelserve.node import NodeSpec, chosen_ports, ensure_token, free_port, node_env, ray_start_command
from modelserve.serve_settings import ServeSettings

STATE_FILE = "cluster.json"


@dataclass
class LocalHead:
    """A head node this controller started (saved in `.modelserve/cluster.json`)."""

    pid: int
    dashboard_url: str
    gcs_address: str
    log_path: str
    temp_dir: str = ""
    ports: dict[str, int] = field(default_factory=dict)  # `ray start` flag or variable -> port

    def alive(self) -> bool:
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True


def port_taken(port: int, host: str) -> bool:
    """Something listens on `port` where a listener on `host` would be (a closed port's
    TIME_WAIT connections do not count: SO_REUSEADDR)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def _holder(port: int) -> str:
    """Who listens on `port`: `haproxy (pid 123)`, or `another process` where it cannot be seen."""
    with contextlib.suppress(psutil.Error, OSError):
        for conn in psutil.net_connections(kind="tcp"):
            if conn.status == psutil.CONN_LISTEN and conn.laddr.port == port and conn.pid:
                return f"{psutil.Process(conn.pid).name()} (pid {conn.pid})"
    return "another process"


def refuse_taken_ports(settings: ServeSettings) -> None:
    """A local cluster never shares a port another process or cluster on this host holds:
    HAProxy and Ray's proxy bind with SO_REUSEPORT, so the kernel would split the connections."""
    wanted = (("port", settings.port, settings.host), ("dashboard_port", settings.dashboard_port, "127.0.0.1"))
    problems = [
        f"[MODEL SERVE] {key} = {port}: port {port} is held by {_holder(port)}, another cluster or program on "
        f"this host; set `{key}` in conf.ini to a free port, or stop what holds it"
        for key, port, host in wanted
        if port_taken(port, host)
    ]
    if problems:
        raise ClusterError("the local Ray cluster was not started:\n  " + "\n  ".join(problems))


def project_id(state_dir: Path) -> str:
    """The project a local head belongs to: a short hash of its `.modelserve` directory's path."""
    return hashlib.sha256(str(state_dir.resolve()).encode()).hexdigest()[:10]


def local_temp_dir(state_dir: Path) -> str:
    """Ray's session directory for the project's own head, never the shared /tmp/ray: short, as
    Ray's Unix sockets under it must fit in 107 characters."""
    return f"/tmp/ray-{project_id(state_dir)}"


def refuse_another_project_s(dashboard_url: str, state_dir: Path, dashboard_port: int) -> None:
    """The local cluster found on `dashboard_port` is not one another project's controller started:
    this project's apply would replace that project's sections (and `down` remove them)."""
    owner = Cluster(dashboard_url, connect_timeout_s=5).head_labels().get(raycompat.PROJECT_LABEL, "")
    if owner and owner != project_id(state_dir):
        raise ClusterError(
            f"the Ray cluster whose dashboard answers on 127.0.0.1:{dashboard_port} ([MODEL SERVE] dashboard_port) "
            f"is the local cluster of another project on this host (its temp dir is /tmp/ray-{owner}); this "
            "project would replace that project's sections there. Give this project its own `dashboard_port` "
            f"and `port` in [MODEL SERVE] (it then starts a cluster of its own), or set `address = {dashboard_url}` "
            "to use that cluster on purpose, or apply with --stage NAME beside it"
        )


def start_local_head(settings: ServeSettings, state_dir: Path, timeout_s: float = 90.0) -> LocalHead:
    """Start a head node on loopback, with token auth, and wait for its dashboard.

    Its ports are the configured ones (`refuse_taken_ports` first) and others chosen free, its
    temp dir its own; both are recorded in `.modelserve/cluster.json`."""
    ensure_token(os.environ, create=True)
    use_token_if_available()
    state_dir.mkdir(parents=True, exist_ok=True)
    spec = NodeSpec(
        role="head",
        gcs_port=free_port(),
        dashboard_port=settings.dashboard_port,
        num_cpus=settings.local_cpus,
        num_gpus=settings.local_gpus,
        ingress=settings.ingress,
        temp_dir=local_temp_dir(state_dir),
        labels=((raycompat.PROJECT_LABEL, project_id(state_dir)),),
    )
    cmd, env = ray_start_command(spec), node_env(spec)
    log_path = state_dir / "ray-head.log"
    with log_path.open("ab") as log:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env, start_new_session=True)
    head = LocalHead(
        proc.pid,
        f"http://127.0.0.1:{spec.dashboard_port}",
        f"127.0.0.1:{spec.gcs_port}",
        str(log_path),
        spec.temp_dir,
        {"http": settings.port, **chosen_ports(cmd, env)},
    )
    deadline = time.monotonic() + timeout_s
    while not dashboard_answers(head.dashboard_url):
        if proc.poll() is not None or time.monotonic() > deadline:
            stop_session(proc.pid)
            tail = log_path.read_text(errors="replace")[-2000:]
            raise ClusterError(f"the local Ray head did not start; its log ({log_path}) ends with:\n{tail}")
        time.sleep(0.5)
    (state_dir / STATE_FILE).write_text(json.dumps(asdict(head), indent=2))
    return head


def read_local_head(state_dir: Path) -> LocalHead | None:
    try:
        head = LocalHead(**json.loads((state_dir / STATE_FILE).read_text()))
    except (OSError, ValueError, TypeError):
        return None
    return head if head.alive() else None


def session_members(sid: int) -> list[int]:
    """Live processes of a session (zombies, which no signal ends, do not count)."""
    members = []
    for proc in psutil.process_iter(["status"]):
        with contextlib.suppress(psutil.Error, OSError):
            if proc.info["status"] != psutil.STATUS_ZOMBIE and os.getsid(proc.pid) == sid:
                members.append(proc.pid)
    return members


def stop_session(sid: int, grace_s: float = 5.0) -> None:
    """Stop every process of the session led by `sid`: SIGTERM, then SIGKILL after `grace_s`.

    A head started with `start_new_session=True` leads a session that holds all
    of its processes, including workers Ray puts in process groups of their own.
    """
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 10.0)):
        for pid in session_members(sid) or [sid]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(sid, os.WNOHANG)
            if not session_members(sid):
                return
            time.sleep(0.2)


def stop_local_head(state_dir: Path) -> bool:
    head = read_local_head(state_dir)
    (state_dir / STATE_FILE).unlink(missing_ok=True)
    if head is None:
        return False
    stop_session(head.pid)
    return True
