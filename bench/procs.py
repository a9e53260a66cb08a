"""Processes the benchmark starts: free ports, sessions, waiting for HTTP, CPU accounting (Linux /proc)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import requests

from modelserve.cluster import session_members, stop_session  # noqa: F401 - used by run.py too
from modelserve.node import free_port, late_port  # noqa: F401

ROOT = Path(__file__).resolve().parents[1]
#: Never leak into a server's environment: each server picks its own cluster, auth and ingress.
RAY_ENV_KEYS = ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_SERVE_ENABLE_HA_PROXY", "RAY_SERVE_THROUGHPUT_OPTIMIZED")
TICKS = os.sysconf("SC_CLK_TCK")


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in RAY_ENV_KEYS}
    env.update(extra)
    return env


def spawn(cmd: list[str], log: Path, env: Mapping[str, str], cwd: Path = ROOT) -> subprocess.Popen[bytes]:
    """Start `cmd` as the leader of a new session, so `stop_session` finds all its descendants."""
    with log.open("ab") as out:
        return subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=out, env=dict(env), cwd=cwd, start_new_session=True
        )


def _stat(pid: str) -> list[str] | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def pids_with_arg(arg: str) -> list[int]:
    """Processes whose command line contains exactly `arg` (used to find a Ray head by its unique port)."""
    found = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError):
            if arg.encode() in Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0"):
                found.append(int(entry))
    return found


def session_of(pid: int) -> int | None:
    fields = _stat(str(pid))
    return int(fields[3]) if fields else None


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


def cpu_ticks(sids: Iterable[int]) -> dict[int, tuple[str, int]]:
    """utime+stime of every process of the sessions, by pid, with a short name (Ray's process titles)."""
    wanted, out = set(sids), {}
    for entry in filter(str.isdigit, os.listdir("/proc")):
        fields = _stat(entry)
        if not fields or int(fields[3]) not in wanted:
            continue
        try:
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        words = [a.decode(errors="replace") for a in argv if a]
        name = " ".join([os.path.basename(words[0]), *words[1:3]]) if words else f"pid {entry}"
        out[int(entry)] = (name[:50], int(fields[11]) + int(fields[12]))
    return out


def cpu_top(before: dict[int, tuple[str, int]], after: dict[int, tuple[str, int]], seconds: float) -> list[str]:
    """The busiest processes between two `cpu_ticks` snapshots, as 'name 97%' (100% = one core)."""
    used = [(after[p][1] - before.get(p, ("", 0))[1], after[p][0]) for p in after]
    used.sort(reverse=True)
    return [f"{name} {100 * ticks / TICKS / seconds:.0f}%" for ticks, name in used[:4] if ticks > 0]
