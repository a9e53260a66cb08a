"""Test helpers: throwaway projects (conf.ini + algopkg + Model_ZOO), HTTP, a real test cluster."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelserve.cluster import dashboard_answers, session_members, stop_session
from modelserve.node import NodeSpec, free_port, late_port, node_env, ray_start_command

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "test" / "fixtures"
#: Ray keeps a stopping replica serving 30 s so HAProxy can drop it first; tests shorten
#: that, but not below HAProxy's update latency (at 1 s a replica that took over a
#: stopped one's port was sent its requests, which answered 404).
FAST_DRAIN_ENV = {"RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "5", "RAY_SERVE_PROXY_MIN_DRAINING_PERIOD_S": "5"}


#: The Echo fixture package as a conf.ini section (POST, half a CPU).
ECHO_SECTION = """
[algopkg.Echo]
backend = Echo
model = echo_model.txt
route = echo
method = POST
cpu_cost = 0.5
"""


def make_project(root: Path) -> Path:
    """A project dir with the example and the fixture packages, and their model files."""
    (root / "algopkg").mkdir(parents=True, exist_ok=True)
    (root / "algopkg" / "__init__.py").write_text("")
    for source in (REPO / "algopkg", FIXTURES / "algopkg"):
        for package in source.iterdir():
            if package.is_dir() and (package / "backend.py").exists():
                shutil.copytree(package, root / "algopkg" / package.name, dirs_exist_ok=True)
    zoo = root / "Model_ZOO"
    zoo.mkdir(exist_ok=True)
    for source in (REPO / "Model_ZOO", FIXTURES / "Model_ZOO"):
        for model in source.iterdir():
            shutil.copy(model, zoo / model.name)
    return root


def write_conf(root: Path, serve: dict[str, Any], *sections: str) -> Path:
    head = "[MODEL SERVE]\n" + "".join(f"{k} = {v}\n" for k, v in serve.items())
    body = "\n".join(textwrap.dedent(s).strip() + "\n" for s in sections)
    path = root / "conf.ini"
    path.write_text(head + "\n" + body)
    return path


@dataclass
class Reply:
    status: int
    body: Any
    headers: dict[str, str]


def call(url: str, params: Any = None, method: str = "POST", raw: bytes | None = None, timeout: float = 30) -> Reply:
    data = raw if raw is not None else (None if params is None else json.dumps(params).encode())
    request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, text, headers = response.status, response.read(), dict(response.headers)
    except urllib.error.HTTPError as exc:
        status, text, headers = exc.code, exc.read(), dict(exc.headers)
    try:
        body = json.loads(text)
    except ValueError:
        body = text.decode(errors="replace")
    return Reply(status, body, {k.lower(): v for k, v in headers.items()})


def wait_for(predicate: Any, timeout_s: float = 60, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(0.25)


@dataclass
class TestCluster:
    """A real single-node Ray cluster on loopback, started for the tests and stopped by PID."""

    __test__ = False

    proc: subprocess.Popen[bytes]
    dashboard_url: str
    http_port: int
    temp_dir: str

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def serve(self, **extra: Any) -> dict[str, Any]:
        """`[MODEL SERVE]` keys that point a conf.ini at this cluster."""
        return {"port": self.http_port, "address": self.dashboard_url, "deploy_timeout_s": 120, **extra}

    def stop(self) -> None:
        stop_session(self.proc.pid)
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def start_test_cluster(num_cpus: int = 4, num_gpus: int = 2, ingress: str = "fast") -> TestCluster:
    """Logical CPUs and GPUs (no GPU needed): enough to place fractional-GPU replicas.

    It runs from the repository root on purpose: its `algopkg/` must not shadow the
    package snapshots the replicas are deployed with.
    """
    temp_dir = tempfile.mkdtemp(prefix="msr", dir="/tmp")
    spec = NodeSpec(
        role="head",
        gcs_port=free_port(),
        dashboard_port=free_port(),
        num_cpus=num_cpus,
        num_gpus=num_gpus,
        ingress=ingress,
        temp_dir=temp_dir,
    )
    cmd = ray_start_command(spec)
    env = node_env(spec)
    env.update(FAST_DRAIN_ENV)
    log = open(Path(temp_dir) / "head.log", "wb")  # noqa: SIM115 - the head writes it until stopped
    proc = subprocess.Popen(
        cmd, stdout=log, stderr=log, stdin=subprocess.DEVNULL, env=env, cwd=REPO, start_new_session=True
    )
    cluster = TestCluster(proc, f"http://127.0.0.1:{spec.dashboard_port}", late_port(), temp_dir)
    try:
        wait_for(lambda: proc.poll() is not None or dashboard_answers(cluster.dashboard_url), 90, "the Ray head")
        if proc.poll() is not None:
            raise RuntimeError((Path(temp_dir) / "head.log").read_text()[-3000:])
    except BaseException:
        cluster.stop()
        raise
    return cluster


def start_node(role: str, env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    """A Ray node started by the docker image's entrypoint script, run directly (no docker)."""
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    full_env = {**os.environ, **FAST_DRAIN_ENV, **env, "PATH": path}
    with log_path.open("wb") as log:
        return subprocess.Popen(
            ["sh", str(REPO / "docker" / "entrypoint.sh"), role],
            stdout=log,
            stderr=log,
            stdin=subprocess.DEVNULL,
            env=full_env,
            cwd=REPO,
            start_new_session=True,
        )


def session_commands(sid: int) -> set[str]:
    """Command names of the live processes in a session (a cluster started in its own session)."""
    names = set()
    for pid in session_members(sid):
        with contextlib.suppress(OSError):
            names.add(Path(f"/proc/{pid}/comm").read_text().strip())
    return names


def _listening_inodes() -> dict[str, tuple[str, int]]:
    """inode -> (address, port) of every listening TCP socket, from /proc/net/tcp{,6}."""
    found = {}
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] != "0A":  # LISTEN
                continue
            hex_ip, hex_port = fields[1].split(":")
            raw = bytes.fromhex(hex_ip)
            if width == 8:
                ip = ".".join(str(b) for b in reversed(raw))
            else:
                words = [raw[i : i + 4][::-1] for i in range(0, 16, 4)]
                ip = "::" if not any(raw) else ":".join(w.hex() for w in words)
                if raw[:12] == bytes(10) + b"\xff\xff":
                    ip = ".".join(str(b) for b in words[3])
            found[fields[9]] = (ip, int(hex_port, 16))
    return found


def listeners(sid: int) -> list[tuple[str, str, int]]:
    """(process name, address, port) of every socket the session's processes listen on."""
    inodes = _listening_inodes()
    result = set()
    for pid in session_members(sid):
        try:
            name = Path(f"/proc/{pid}/comm").read_text().strip()
            links = [os.readlink(fd) for fd in Path(f"/proc/{pid}/fd").iterdir()]
        except OSError:
            continue
        for link in links:
            inode = link[len("socket:[") : -1] if link.startswith("socket:[") else ""
            if inode in inodes:
                result.add((name, *inodes[inode]))
    return sorted(result)


def isolate_ray_token(directory: Path) -> None:
    """Use a token of the tests' own, never the user's ~/.ray/auth_token."""
    token = directory / "auth_token"
    if not token.exists():
        token.write_text(os.urandom(16).hex())
    os.environ["RAY_AUTH_TOKEN_PATH"] = str(token)
    os.environ["RAY_AUTH_MODE"] = "token"
