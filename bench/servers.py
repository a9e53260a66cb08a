"""The servers under test: each a context manager that starts one, yields where it answers, and stops it."""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from procs import ROOT, clean_env, free_port, late_port, pids_with_arg, session_members, session_of, spawn, stop_session
from procs import answers as _answers
from procs import wait_until as _wait_until

PY = sys.executable
Result = dict[str, Any]
#: One BLAS thread per worker process, as Ray gives each replica (it sets OMP_NUM_THREADS to the replica's
#: CPUs): two workers with a spinning BLAS thread pool each would oversubscribe the cores.
PEER_ENV = {"OMP_NUM_THREADS": "1"}


class ServerError(RuntimeError):
    """A server did not start or answered wrongly; the message says which and shows its log."""


@dataclass
class Running:
    url: str
    sids: list[int]  # sessions holding the server's processes (for CPU accounting)
    unwrap: Callable[[Any], Any] = field(default=lambda body: body)  # response JSON -> the MLP result


def _tail(log: Path, chars: int = 1500) -> str:
    try:
        return log.read_text(errors="replace")[-chars:]
    except OSError:
        return "(no log)"


def _serve(
    name: str, cmd: list[str], work: Path, body: Result, port: int, env: dict[str, str], path: str = "/mlp"
) -> Iterator[Running]:
    """Start a peer in its own session, wait until POST `path` answers, and always stop its whole session."""
    log = work / f"{name}.log"
    proc = spawn(cmd, log, env)
    try:
        url = f"http://127.0.0.1:{port}{path}"
        if not _wait_until(lambda: _answers(url, body), 240, alive=lambda: proc.poll() is None):
            raise ServerError(f"{name} did not answer on {url}; its log ({log}) ends with:\n{_tail(log)}")
        yield Running(url, [proc.pid])
    finally:
        stop_session(proc.pid)


@contextlib.contextmanager
def flask(work: Path, body: Result) -> Iterator[Running]:
    port = free_port()
    cmd = [PY, "-m", "gunicorn", "-w", "2", "-k", "sync", "-b", f"127.0.0.1:{port}", "bench.peers.flask_app:app"]
    yield from _serve("flask", cmd, work, body, port, clean_env(**PEER_ENV))


@contextlib.contextmanager
def fastapi(work: Path, body: Result) -> Iterator[Running]:
    port = free_port()
    cmd = [PY, "-m", "uvicorn", "bench.peers.fastapi_app:app", "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["--workers", "2", "--no-access-log", "--log-level", "warning"]
    yield from _serve("fastapi", cmd, work, body, port, clean_env(**PEER_ENV))


@contextlib.contextmanager
def fastapi_async(work: Path, body: Result, path: str = "/mlp") -> Iterator[Running]:
    """FastAPI's faster idiom: `async def` endpoints (no thread-pool hand-off), uvicorn[standard] (uvloop,
    httptools), 2 workers, access log off, 1 BLAS thread each. `path="/noop"`: its no-compute endpoint."""
    port = free_port()
    cmd = [PY, "-m", "uvicorn", "bench.peers.fastapi_async_app:app", "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["--workers", "2", "--no-access-log", "--log-level", "warning", "--loop", "uvloop", "--http", "httptools"]
    yield from _serve("fastapi-async", cmd, work, body, port, clean_env(**PEER_ENV), path)


@contextlib.contextmanager
def ray_plain(work: Path, body: Result) -> Iterator[Running]:
    port = free_port()
    cmd = [PY, str(ROOT / "bench" / "peers" / "ray_serve_plain.py"), str(port)]
    yield from _serve("ray", cmd, work, body, port, clean_env(RAY_AUTH_MODE="disabled"))


@contextlib.contextmanager
def ray_tuned(work: Path, body: Result) -> Iterator[Running]:
    port = late_port()  # HAProxy binds it at the first deploy, as in the modelserve rows
    cmd = [PY, str(ROOT / "bench" / "peers" / "ray_serve_tuned.py"), str(port)]
    yield from _serve("ray-tuned", cmd, work, body, port, clean_env(RAY_AUTH_MODE="disabled"))


@contextlib.contextmanager
def litserve(work: Path, body: Result) -> Iterator[Running]:
    port = free_port()
    cmd = [PY, "-m", "bench.peers.litserve_app", str(port)]
    yield from _serve("litserve", cmd, work, body, port, clean_env(**PEER_ENV))


def _controller(args: list[str], project: Path, timeout_s: float, checkout: Path = ROOT) -> tuple[int, str]:
    """Run controller.py as a user would (in its own session, so a hung one is stopped whole); another
    `checkout`'s runs with that checkout's own .venv."""
    log = project / "controller.log"
    start = log.stat().st_size if log.exists() else 0
    python = PY if checkout == ROOT else str(checkout / ".venv" / "bin" / "python")
    cmd = [python, str(checkout / "controller.py"), *args, "-c", str(project / "conf.ini")]
    proc = spawn(cmd, log, clean_env(), project)
    try:
        code = proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        code = -1
    finally:
        stop_session(proc.pid)
    return code, log.read_text(errors="replace")[start:]


#: bench/conf.ini's section with the benchmark MLP written as an original-template package (no infer_batch).
LEGACY_SECTION = ("[algopkg.BenchMLP]\nbackend = BenchMLP\n", "[algopkg.BenchMLPLegacy]\nbackend = algo_backend\n")


def _project(work: Path, port: int, dashboard_port: int, legacy: bool = False, extra: str = "") -> Path:
    suffix = "-" + extra.split()[0] if extra else ""
    project = work / ("modelserve-legacy" + suffix if legacy else "modelserve")
    project.mkdir()
    for name in ("algopkg", "Model_ZOO"):
        (project / name).symlink_to(ROOT / name)
    conf = (ROOT / "bench" / "conf.ini").read_text()
    conf, n = re.subn(r"^port = 8000$", f"port = {port}\ndashboard_port = {dashboard_port}", conf, flags=re.M)
    if n != 1:
        raise ServerError("bench/conf.ini has no line `port = 8000` under [MODEL SERVE] to replace")
    if legacy:
        if LEGACY_SECTION[0] not in conf:
            raise ServerError(f"bench/conf.ini has no {LEGACY_SECTION[0]!r} to replace")
        conf = conf.replace(LEGACY_SECTION[0], LEGACY_SECTION[1] + (extra + "\n" if extra else ""))
    (project / "conf.ini").write_text(conf)
    return project


def _head_sessions(project: Path, dashboard_port: int) -> set[int]:
    """Sessions of the Ray head this run's controller started (by its state file, or its unique port)."""
    sids = set()
    with contextlib.suppress(OSError, ValueError, KeyError):
        sids.add(int(json.loads((project / ".modelserve" / "cluster.json").read_text())["pid"]))
    for pid in pids_with_arg(f"--dashboard-port={dashboard_port}"):
        sid = session_of(pid)
        if sid is not None and sid != os.getsid(0):
            sids.add(sid)
    return {s for s in sids if session_members(s)}


@contextlib.contextmanager
def modelserve(work: Path, body: Result, legacy: bool = False, extra: str = "") -> Iterator[Running]:
    """This runtime with bench/conf.ini (its defaults, and `extra` keys in the original-template section),
    started and stopped by the real CLI."""
    port, dashboard_port = late_port(), free_port()
    project = _project(work, port, dashboard_port, legacy, extra)
    with applied(project, dashboard_port) as sessions:
        url = f"http://127.0.0.1:{port}/mlp"
        if not _wait_until(lambda: _answers(url, body), 60):
            raise ServerError(f"modelserve reported healthy but {url} does not answer")
        yield Running(url, sessions, unwrap=lambda reply: reply["result"])


@contextlib.contextmanager
def applied(project: Path, dashboard_port: int, checkout: Path = ROOT) -> Iterator[list[int]]:
    """`controller.py` (of `checkout`) applies the project's conf.ini on a local cluster it starts; yields the
    cluster's sessions, and always ends with `down --stop-cluster` (and stops what that left)."""
    try:
        code, out = _controller([], project, 300, checkout)
        if code != 0:
            raise ServerError(f"controller.py exited {code}; its output ends with:\n{out[-2000:]}")
        print(out.rstrip(), flush=True)
        yield sorted(_head_sessions(project, dashboard_port))
    finally:
        leftover = _head_sessions(project, dashboard_port)
        code, out = _controller(["down", "--stop-cluster"], project, 120, checkout)
        if code != 0:
            print(f"warning: `controller.py down --stop-cluster` exited {code}:\n{out[-1000:]}", file=sys.stderr)
        for sid in leftover:
            stop_session(sid)  # a no-op when `down` stopped it


def modelserve_legacy(work: Path, body: Result) -> contextlib.AbstractContextManager[Running]:
    """The same MLP as an original-template package (`_model_inference`, no batch method), default keys."""
    return modelserve(work, body, legacy=True)


def modelserve_legacy_inline(work: Path, body: Result) -> contextlib.AbstractContextManager[Running]:
    """The original-template package with `model_calls = inline`: what the opt-in buys (and costs: no timeout)."""
    return modelserve(work, body, legacy=True, extra="model_calls = inline")


def modelserve_legacy_auto(work: Path, body: Result) -> contextlib.AbstractContextManager[Running]:
    """The original-template package with `replicas = auto`: one replica per CPU (both cores, as 2 workers)."""
    return modelserve(work, body, legacy=True, extra="replicas = auto")


SERVERS: dict[str, tuple[str, Callable[[Path, Result], contextlib.AbstractContextManager[Running]]]] = {
    "modelserve": ("modelserve (defaults)", modelserve),
    "legacy": ("modelserve, original-template package (defaults)", modelserve_legacy),
    "inline": ("modelserve, original-template package, model_calls = inline", modelserve_legacy_inline),
    "auto": ("modelserve, original-template package, replicas = auto", modelserve_legacy_auto),
    "ray": ("plain Ray Serve", ray_plain),
    "raytuned": ("Ray Serve (tuned)", ray_tuned),
    "litserve": ("LitServe (batched, 2 workers)", litserve),
    "flask": ("Flask + gunicorn (2 sync workers)", flask),
    "fastapi": ("FastAPI + uvicorn (2 workers, sync def)", fastapi),
    "fastapiasync": ("FastAPI + uvicorn[standard], 2 workers, async def, access log off, 1 BLAS thread", fastapi_async),
}
PEERS = ("ray", "raytuned", "litserve", "flask", "fastapi", "fastapiasync")
#: The FastAPI rows: the targets are against the faster of the two at each connection count.
FASTAPI_ROWS = ("fastapi", "fastapiasync")
