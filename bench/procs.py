"""Processes the benchmark starts: free ports, sessions, waiting for HTTP, CPU accounting (psutil)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import psutil
import requests

from modelserve import raycompat
from modelserve.localhead import session_members, stop_session  # noqa: F401 - used by run.py too
from modelserve.node import free_port, late_port  # noqa: F401

ROOT = Path(__file__).resolve().parents[1]


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without what chooses a cluster, its auth or its ingress: each server picks its own."""
    env = {k: v for k, v in os.environ.items() if k not in raycompat.CLUSTER_CHOICE_ENV}
    env.update(extra)
    return env


def spawn(cmd: list[str], log: Path, env: Mapping[str, str], cwd: Path = ROOT) -> subprocess.Popen[bytes]:
    """Start `cmd` as the leader of a new session, so `stop_session` finds all its descendants."""
    with log.open("ab") as out:
        return subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=out, env=dict(env), cwd=cwd, start_new_session=True
        )


def pids_with_arg(arg: str) -> list[int]:
    """Processes whose command line contains exactly `arg` (used to find a Ray head by its unique port)."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        if arg in (proc.info["cmdline"] or []):
            found.append(proc.pid)
    return found


def session_of(pid: int) -> int | None:
    try:
        return os.getsid(pid)
    except OSError:
        return None


def wait_until(ready: Callable[[], bool], timeout_s: float, alive: Callable[[], bool] = lambda: True) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if ready():
            return True
        if not alive():
            return False
        time.sleep(0.5)
    return False


def answers(url: str, body: dict[str, Any]) -> bool:
    try:
        return requests.post(url, json=body, timeout=2).status_code == 200
    except requests.RequestException:
        return False


def _short_name(cmdline: list[str], pid: int) -> str:
    """The program and its first two arguments (Ray's process titles put the actor there)."""
    words = [a for a in cmdline if a]
    return " ".join([os.path.basename(words[0]), *words[1:3]])[:50] if words else f"pid {pid}"


def cpu_times(sids: Iterable[int], whole_command: bool = False) -> dict[int, tuple[str, float]]:
    """User+system CPU seconds of every process of the sessions, by pid, with a short name (or its whole
    command line)."""
    out = {}
    for sid in set(sids):
        for pid in session_members(sid):
            with contextlib.suppress(psutil.Error):
                proc = psutil.Process(pid)
                times = proc.cpu_times()
                cmdline = proc.cmdline()
                name = (
                    (" ".join(w for w in cmdline if w) or proc.name()) if whole_command else _short_name(cmdline, pid)
                )
                out[pid] = (name, times.user + times.system)
    return out


def cpu_top(before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]], seconds: float) -> list[str]:
    """The busiest processes between two `cpu_times` snapshots, as 'name 97%' (100% = one core)."""
    used = [(after[p][1] - before.get(p, ("", 0.0))[1], after[p][0]) for p in after]
    used.sort(reverse=True)
    return [f"{name} {100 * cpu_s / seconds:.0f}%" for cpu_s, name in used[:4] if cpu_s > 0]
