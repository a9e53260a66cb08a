"""Drive a server with `wrk` (POST a JSON body) and parse its summary from a Lua `done` hook."""

from __future__ import annotations

import json
import resource
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MARK = "BENCH_RESULT "
LUA = """wrk.method = "POST"
wrk.body = [==[%s]==]
wrk.headers["Content-Type"] = "application/json"

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '%s{"requests":%%d,"duration_us":%%d,"non2xx":%%d,"socket_errors":%%d,"p50_us":%%d,"p99_us":%%d,"max_us":%%d}\\n',
    summary.requests, summary.duration, e.status, e.connect + e.read + e.write + e.timeout,
    latency:percentile(50), latency:percentile(99), latency.max))
end
"""


@dataclass
class Load:
    rps: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    errors: int
    requests: int
    wrk_cpu: float  # cores wrk itself used on average (it shares the machine with the server)


def wrk_path() -> str:
    found = shutil.which("wrk")
    if not found:
        raise SystemExit("error: `wrk` is not installed; install it: apt-get install wrk")
    return found


def run_wrk(url: str, body: dict[str, Any], conns: int, seconds: float) -> Load:
    threads = 1 if conns == 1 else 2
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(LUA % (json.dumps(body), MARK))
    cmd = [wrk_path(), f"-t{threads}", f"-c{conns}", f"-d{seconds:g}s", "--timeout", "5s", "-s", script.name, url]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60)
    finally:
        Path(script.name).unlink(missing_ok=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    lines = [line for line in proc.stdout.splitlines() if line.startswith(MARK)]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"wrk failed ({proc.returncode}): {proc.stderr.strip() or proc.stdout.strip()}")
    r = json.loads(lines[-1][len(MARK) :])
    cpu = (after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime) / (r["duration_us"] / 1e6)
    return Load(
        rps=r["requests"] / (r["duration_us"] / 1e6),
        p50_ms=r["p50_us"] / 1000,
        p99_ms=r["p99_us"] / 1000,
        max_ms=r["max_us"] / 1000,
        errors=r["non2xx"] + r["socket_errors"],
        requests=r["requests"],
        wrk_cpu=round(cpu, 2),
    )
