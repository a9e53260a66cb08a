"""wrk at a fixed request rate (wrk has no rate option): a Lua `delay()` hands each request the next slot
of a schedule, one slot every 1000/rate ms, so the rate holds whatever the latency, while the server keeps up.
Slots missed in a stall (every connection waiting on an answer) are sent as soon as connections free up,
up to CATCH_UP_MS behind the schedule."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loadgen import wrk_path

MARK = "BENCH_FIXED "
CATCH_UP_MS = 200.0
#: wrk runs one Lua state per thread; each thread keeps its own schedule (LuaJIT's ffi reads the clock).
#: wrk takes whole milliseconds from `delay()`: a request may leave up to 1 ms before its slot, never after
#: the schedule's pace, so the long-run rate is the one asked for.
LUA = """local ffi = require("ffi")
ffi.cdef[[
typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
int clock_gettime(int clk_id, bench_timespec *tp);
]]
local ts = ffi.new("bench_timespec")
local function now_ms()
  ffi.C.clock_gettime(1, ts)
  return tonumber(ts.tv_sec) * 1000 + tonumber(ts.tv_nsec) / 1e6
end
local interval_ms, catch_up_ms, next_ms = %r, %r, nil

wrk.method = "POST"
wrk.body = [==[%s]==]
wrk.headers["Content-Type"] = "application/json"

delay = function()
  local now = now_ms()
  if next_ms == nil then next_ms = now end
  if next_ms < now - catch_up_ms then next_ms = now - catch_up_ms end
  local wait = math.max(0, next_ms - now)
  next_ms = next_ms + interval_ms
  return wait
end

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '%s{"requests":%%d,"duration_us":%%d,"non2xx":%%d,"socket_errors":%%d,"p50_us":%%d,"p99_us":%%d}\\n',
    summary.requests, summary.duration, e.status, e.connect + e.read + e.write + e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
"""


@dataclass
class FixedLoad:
    rate: float  # requests/s reached
    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    errors: int
    wrk_cpu_s: float  # CPU seconds wrk itself used


def lua_script(body: dict[str, Any], rate: float, threads: int) -> str:
    return LUA % (1000.0 * threads / rate, CATCH_UP_MS, json.dumps(body), MARK)


def run_fixed(url: str, body: dict[str, Any], rate: float, seconds: float, conns: int = 16) -> FixedLoad:
    """`rate` requests/s for `seconds` over `conns` keep-alive connections (one wrk thread)."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(lua_script(body, rate, threads=1))
    cmd = [wrk_path(), "-t1", f"-c{conns}", f"-d{seconds:g}s", "--timeout", "5s", "-s", script.name, url]
    with tempfile.TemporaryFile("w+") as out:
        try:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, text=True)
            code, usage = _wait(proc, seconds + 60)
        finally:
            Path(script.name).unlink(missing_ok=True)
        out.seek(0)
        text = out.read()
    lines = [line for line in text.splitlines() if line.startswith(MARK)]
    if code != 0 or not lines:
        raise RuntimeError(f"wrk failed ({code}): {text.strip()[-1000:]}")
    r = json.loads(lines[-1][len(MARK) :])
    wall = r["duration_us"] / 1e6
    return FixedLoad(
        rate=r["requests"] / wall,
        requests=r["requests"],
        seconds=wall,
        p50_ms=r["p50_us"] / 1000,
        p99_ms=r["p99_us"] / 1000,
        errors=r["non2xx"] + r["socket_errors"],
        wrk_cpu_s=usage.ru_utime + usage.ru_stime,
    )


def _wait(proc: subprocess.Popen[str], timeout_s: float) -> tuple[int, resource.struct_rusage]:
    """wrk's exit code and its own CPU (wait4: not the other children's, such as a py-spy running meanwhile)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            return proc.returncode, usage
        time.sleep(0.05)
    proc.kill()
    _, status, _ = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    raise RuntimeError(f"wrk ran past {timeout_s:g} s; killed")
