"""Test helpers: throwaway projects (conf.ini + algopkg + Model_ZOO), HTTP, a real test cluster."""

from __future__ import annotations

import contextlib
import http.client
import io
import ipaddress
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from modelserve import raycompat
from modelserve.cluster import Cluster, dashboard_answers
from modelserve.localhead import session_members, stop_session
from modelserve.node import NodeSpec, free_port, late_port, node_env, ray_start_command

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "test" / "fixtures"
#: Times a proof measured (e.g. dev's reload), printed at the end of the run (conftest.py), also without `-s`.
MEASURED: list[str] = []


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


def mirror_project(root: Path) -> Path:
    """A project dir that sees the repository's own files through symlinks, all but conf.ini.

    A conf.ini written here refers to what the repository's does: the user's packages, model
    files, API key files beside conf.ini, whatever a user's valid section names.
    """
    root.mkdir(parents=True, exist_ok=True)
    for entry in REPO.iterdir():
        if entry.name != "conf.ini" and not entry.name.startswith("."):
            (root / entry.name).symlink_to(entry, target_is_directory=entry.is_dir())
    return root


#: Keys of a section that speak of other sections: dropped when a test takes the example out on its own.
OTHER_SECTIONS_KEYS = ("traffic", "sticky", "mirror_of", "mirror_percent")


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


def assert_error_envelope(reply: Reply, status: int, error_type: str, message: str = "") -> None:
    """The README's error answer: `{"status": 0, "error": {"type", "message"}, "request_id"}`.

    `message` must be part of the error's message; the request id is also the `x-request-id` header.
    """
    assert reply.status == status, (reply.status, reply.body)
    body = reply.body
    assert isinstance(body, dict) and set(body) == {"status", "error", "request_id"}, body
    assert body["status"] == 0 and set(body["error"]) == {"type", "message"}, body
    assert body["error"]["type"] == error_type and message in body["error"]["message"], body
    assert body["error"]["message"] and "Traceback" not in body["error"]["message"], body
    assert body["request_id"] and body["request_id"] == reply.headers.get("x-request-id"), (body, reply.headers)


class Load:
    """Background clients posting to `url` while something changes, recording every outcome.

    A request that gets no HTTP answer (connection refused or reset, a timeout, a broken
    response) is recorded with status 0: it failed as surely as a 5xx did.
    """

    def __init__(
        self,
        url: str,
        clients: int = 1,
        max_requests: int = 200_000,
        timeout_s: float = 10,
        params: dict[str, Any] | None = None,
        pause_s: float = 0.0,
    ) -> None:
        self.url, self.max_requests, self.timeout_s = url, max_requests, timeout_s
        self.params, self.pause_s = dict(params or {}), pause_s
        self.results: list[tuple[float, int]] = []  # (time.monotonic(), HTTP status or 0)
        self.failures: list[tuple[float, int, object]] = []
        self.errors: list[BaseException] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(clients)]

    @property
    def codes(self) -> list[int]:
        return [status for _, status in self.results]

    def _run(self) -> None:
        try:
            while not self._stop.is_set() and len(self.results) < self.max_requests:
                try:
                    reply = call(self.url, {**self.params, "n": len(self.results)}, timeout=self.timeout_s)
                    status, detail = reply.status, reply.body
                except (OSError, http.client.HTTPException) as exc:  # refused, reset, timed out, cut short
                    status, detail = 0, repr(exc)
                self.results.append((time.monotonic(), status))
                if status != 200:
                    self.failures.append((time.monotonic(), status, detail))
                if self.pause_s:
                    self._stop.wait(self.pause_s)
        except BaseException as exc:  # anything else is a bug in the test: never let it pass silently
            self.errors.append(exc)
            raise

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=self.timeout_s + 20)
        if exc_type is not None:
            return  # the block's own exception says more
        assert not any(t.is_alive() for t in self._threads), "a load thread did not stop"
        assert not self.errors, f"a load thread died: {self.errors[0]!r}"
        assert len(self.results) < self.max_requests, "the load ended before the change did"


def wait_for(predicate: Any, timeout_s: float = 60, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(0.25)


def _settled(dashboard_url: str) -> bool:
    apps = (Cluster(dashboard_url).details().get("applications") or {}).values()
    replicas = [r for app in apps for d in (app.get("deployments") or {}).values() for r in d.get("replicas") or []]
    return all(app.get("status") == "RUNNING" for app in apps) and all(r.get("state") == "RUNNING" for r in replicas)


def wait_settled(dashboard_url: str, timeout_s: float = 60) -> None:
    """Until every application runs and no replica starts or stops: a change's last step (a
    replaced or removed replica exiting once it has drained, `node.DRAIN_S`) is over. A load
    that proves a change costs nothing lasts until then."""
    wait_for(lambda: _settled(dashboard_url), timeout_s, "every application RUNNING, no replica starting or stopping")


@dataclass
class TestCluster:
    """A real single-node Ray cluster on loopback, started for the tests and stopped by PID."""

    __test__ = False

    proc: subprocess.Popen[bytes]
    dashboard_url: str
    http_port: int
    temp_dir: str
    gcs_address: str = ""

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def serve(self, **extra: Any) -> dict[str, Any]:
        """`[MODEL SERVE]` keys that point a conf.ini at this cluster."""
        return {"port": self.http_port, "address": self.dashboard_url, "deploy_timeout_s": 120, **extra}

    def stop(self) -> None:
        stop_session(self.proc.pid)
        self.proc.wait(timeout=30)
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def start_test_cluster(
    num_cpus: int = 2, num_gpus: int = 0, ingress: str = "fast", extra_env: Mapping[str, str] | None = None
) -> TestCluster:
    """Logical CPUs and GPUs (no GPU needed): what a module's replicas take, and room for one more.
    `extra_env`: variables the cluster's processes start with.

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
    env = node_env(spec, user_env(extra_env))
    with (Path(temp_dir) / "head.log").open("wb") as log:  # the head keeps its own copy of the descriptor
        proc = subprocess.Popen(
            cmd, stdout=log, stderr=log, stdin=subprocess.DEVNULL, env=env, cwd=REPO, start_new_session=True
        )
    dashboard_url, gcs_address = f"http://127.0.0.1:{spec.dashboard_port}", f"127.0.0.1:{spec.gcs_port}"
    cluster = TestCluster(proc, dashboard_url, late_port(), temp_dir, gcs_address)
    try:
        wait_for(lambda: proc.poll() is not None or dashboard_answers(cluster.dashboard_url), 90, "the Ray head")
        if proc.poll() is not None:
            raise RuntimeError((Path(temp_dir) / "head.log").read_text()[-3000:])
    except BaseException:
        cluster.stop()
        raise
    return cluster


def controller_in_process(*args: str) -> tuple[int, str]:
    """`modelserve.cli.main(args)` in this process: its exit code and everything it printed."""
    from modelserve.cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        code = main(list(args))
    return code, out.getvalue()


def controller(
    *args: str, env: Mapping[str, str | None] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """`python controller.py ARGS` as a user runs it: `user_env(env)`, no terminal."""
    return subprocess.run(
        [sys.executable, str(REPO / "controller.py"), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        env=user_env(env),
    )


def start_node(role: str, env: Mapping[str, str | None], log_path: Path) -> subprocess.Popen[bytes]:
    """A Ray node started by the docker image's entrypoint script, run directly (no docker).

    `env` is what the node is given on top of a user's environment (None removes a variable).
    """
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    full_env = user_env({**env, "PATH": path})
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
        with contextlib.suppress(psutil.Error):
            names.add(psutil.Process(pid).name())
    return names


@dataclass(frozen=True, order=True)
class Listener:
    """A listening TCP socket and the process that holds it."""

    name: str  # the process name; for a Python process, its script or module (`dashboard.py`)
    ip: str
    port: int
    pid: int

    @property
    def public(self) -> bool:
        """Reachable from other hosts: bound to all interfaces or to a non-loopback address."""
        return not ipaddress.ip_address(self.ip).is_loopback


def _program(process: psutil.Process) -> str:
    name = process.name()
    if not name.startswith("python"):
        return name
    args = process.cmdline()[1:]
    for i, arg in enumerate(args):
        if arg == "-m" and i + 1 < len(args):
            return args[i + 1]
        if not arg.startswith("-"):
            return Path(arg).name
    return name


def listeners(sid: int) -> list[Listener]:
    """Every TCP socket the session's processes listen on (IPv4-mapped IPv6 addresses as IPv4)."""
    found = set()
    for pid in session_members(sid):
        with contextlib.suppress(psutil.Error):
            process = psutil.Process(pid)
            name = _program(process)
            for conn in process.net_connections(kind="tcp"):
                if conn.status == psutil.CONN_LISTEN:
                    ip = conn.laddr.ip.removeprefix("::ffff:")
                    found.add(Listener(name, ip, conn.laddr.port, pid))
    return sorted(found)


def isolate_ray_token(directory: Path) -> None:
    """Use a token of the tests' own, never the user's ~/.ray/auth_token.

    Only the token's path is exported: token mode itself is what modelserve turns on, as it
    must for a user who sets nothing (`user_env` keeps it off a controller's environment).
    """
    token = directory / "auth_token"
    if not token.exists():
        token.write_text(secrets.token_hex(32))
    os.environ[raycompat.AUTH_TOKEN_PATH] = str(token)


def user_env(changes: Mapping[str, str | None] | None = None) -> dict[str, str]:
    """The environment a user runs `controller.py` or a node with: no `RAY_AUTH_MODE`.

    In-process calls to `modelserve.cli.main` set `RAY_AUTH_MODE=token` in this process as a
    side effect; a subprocess must not inherit it. `changes` sets variables, or removes
    those given as None.
    """
    env = {k: v for k, v in os.environ.items() if k != raycompat.AUTH_MODE}
    for key, value in (changes or {}).items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


@contextlib.contextmanager
def silent_port() -> Iterator[int]:
    """A loopback port that accepts TCP connections and never answers: no GCS, no HTTP behind it."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(64)  # the kernel completes the handshakes; nothing ever reads
        yield server.getsockname()[1]


@contextlib.contextmanager
def dev_server(conf: Path, ready_path: str) -> Iterator[tuple[str, Path]]:
    """`controller.py dev -c CONF --port <free>` as a user runs it, until the block ends: (its base URL, its output
    file). It is ready once `GET <base><ready_path>` answers 200."""
    from modelserve.node import free_port

    port, log = free_port(), conf.parent / "dev.log"
    with log.open("wb") as out:
        command = [sys.executable, str(REPO / "controller.py"), "-c", str(conf), "dev", "--port", str(port)]
        proc = subprocess.Popen(command, stdout=out, stderr=out, stdin=subprocess.DEVNULL, env=user_env())
    base = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        try:
            with urllib.request.urlopen(base + ready_path, timeout=2) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    try:
        wait_for(lambda: proc.poll() is not None or ready(), 60, "the dev server")
        assert proc.poll() is None, log.read_text()
        yield base, log
    finally:
        proc.terminate()
        proc.wait(timeout=15)
