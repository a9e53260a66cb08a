"""`wrk` as the tests' load generator: "0 failed requests" measured at the highest rate this
machine reaches, every outcome counted by kind (status codes; connect, read, write, timeout).

    with WrkLoad(f"{base}/echo", body={"x": 1}) as load:
        apply_the_change()
    assert_no_failure(load.result, "90/10 -> 50/50")

wrk runs until the block ends (SIGINT makes it stop and print its summary); `duration_s` is only
an upper bound. A Lua script counts the answers by status in each wrk thread and, optionally,
checks each 2xx answer for a body marker or a header, and counts the values of one header
(`x-modelserve-section`: who answered).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ERROR_KINDS = ("connect", "read", "write", "timeout")
#: Every summary `assert_no_failure` printed in this run (test/conftest.py repeats them at the end).
REPORTS: list[str] = []
_MARK = "wrk-result"

_LUA = r"""
wrk.method = %(method)s
wrk.body = %(body)s
%(headers)s
local marker = %(marker)s
local header_name = %(header_name)s
local header_value = %(header_value)s
local count_header = %(count_header)s
local threads = {}

function setup(thread)
  table.insert(threads, thread)
  thread:set("id", #threads)
end

function init(args)
  counts, unmarked, seen, samples = {}, 0, {}, {}
  sent = id == 1 and -1 or 0  -- wrk 4.1 calls the first thread's request() once to check it
end

function request()  -- wrk calls it for each request it writes: what was sent is counted
  sent = sent + 1
  return wrk.format()
end

local function header(headers, name)
  for k, v in pairs(headers) do
    if string.lower(k) == name then return v end
  end
  return nil
end

function response(status, headers, body)
  counts[status] = (counts[status] or 0) + 1
  if count_header then
    local value = header(headers, count_header) or "-"
    seen[value] = (seen[value] or 0) + 1
  end
  if (status < 200 or status >= 300) and not samples[status] then  -- the first answer of each failing status
    samples[status] = string.gsub(string.sub(body or "", 1, 300), "%%s+", " ")
  end
  if status >= 200 and status < 300 then
    local ok = true
    if marker and not (body and string.find(body, marker, 1, true)) then ok = false end
    if ok and header_name then
      local value = header(headers, header_name)
      ok = value ~= nil and (header_value == nil or string.find(value, header_value, 1, true) ~= nil)
    end
    if not ok then unmarked = unmarked + 1 end
  end
end

function done(summary, latency, requests)
  local mark = "%(mark)s"
  for _, t in ipairs(threads) do
    for code, n in pairs(t:get("counts")) do io.write(string.format("%%s status %%d %%d\n", mark, code, n)) end
    for value, n in pairs(t:get("seen")) do io.write(string.format("%%s header %%d %%s\n", mark, n, value)) end
    for code, text in pairs(t:get("samples")) do io.write(string.format("%%s sample %%d %%s\n", mark, code, text)) end
    io.write(string.format("%%s unmarked %%d %%d\n", mark, t:get("unmarked"), t:get("sent")))
  end
  local e = summary.errors
  io.write(string.format("%%s summary %%d %%d %%d %%d %%d %%d\n", mark, summary.requests, summary.duration,
    e.connect, e.read, e.write, e.timeout))
  io.write(string.format("%%s latency %%d %%d %%d\n", mark, latency:percentile(50), latency:percentile(99),
    latency.max))
end
"""


def lua_string(value: str | bytes | None) -> str:
    """A Lua string literal for any bytes (every byte that is not plain ASCII as a `\\ddd` escape)."""
    if value is None:
        return "nil"
    data = value.encode() if isinstance(value, str) else value
    safe = b" !#$%&'()*+,-./:;<=>?@[]^_`{|}~"
    return '"' + "".join(chr(b) if chr(b).isalnum() and b < 128 or b in safe else f"\\{b:03d}" for b in data) + '"'


@dataclass(frozen=True)
class WrkResult:
    """What one wrk run saw. `failed`: non-2xx answers, socket errors of every kind, requests never
    answered (`lost`), and 2xx answers without the expected marker or header."""

    requests: int
    by_status: dict[int, int]
    errors: dict[str, int]
    unmarked: int = 0
    duration_s: float = 0.0
    latency_ms: dict[str, float] = field(default_factory=dict)  # p50, p99, max
    by_header: dict[str, int] = field(default_factory=dict)
    unanswered: int = 0  # sent and never answered: in flight when wrk stopped, or lost
    connections: int = 0
    samples: dict[int, str] = field(default_factory=dict)  # a failing status: the start of one such body

    @property
    def lost(self) -> int:
        """Requests that never got an answer beyond the one each connection had in flight at the stop.

        wrk 4.1 counts no timeout for an answer that never comes, so the Lua script counts what it sent.
        """
        return max(0, self.unanswered - self.connections)

    @property
    def non_2xx(self) -> int:
        return sum(n for code, n in self.by_status.items() if not 200 <= code < 300)

    @property
    def failed(self) -> int:
        return self.non_2xx + sum(self.errors.values()) + self.unmarked + self.lost

    @property
    def rate(self) -> float:
        return self.requests / self.duration_s if self.duration_s else 0.0

    def summary(self, what: str = "") -> str:
        statuses = ", ".join(f"{code}: {n}" for code, n in sorted(self.by_status.items())) or "none"
        errors = ", ".join(f"{kind} {self.errors.get(kind, 0)}" for kind in ERROR_KINDS) + f", lost {self.lost}"
        marker = f", 2xx without the marker {self.unmarked}" if self.unmarked else ""
        split = f"; answered by {dict(sorted(self.by_header.items()))}" if self.by_header else ""
        split += "".join(f"; a {code}: {body[:160]!r}" for code, body in sorted(self.samples.items()))
        latency = "/".join(f"{self.latency_ms.get(k, 0):.0f}" for k in ("p50", "p99", "max"))
        return (
            f"{what + ': ' if what else ''}{self.failed} failed of {self.requests:,} requests "
            f"in {self.duration_s:.1f} s ({self.rate:,.0f}/s, p50/p99/max {latency} ms); "
            f"status {{{statuses}}}; errors {errors}{marker}{split}"
        )


def parse_output(text: str, connections: int) -> WrkResult:
    """The counts the Lua `done` hook printed (one line each, summed over wrk's threads)."""
    by_status: dict[int, int] = {}
    by_header: dict[str, int] = {}
    samples: dict[int, str] = {}
    unmarked, sent, summary, latency = 0, 0, None, [0, 0, 0]
    for line in text.splitlines():
        if not line.startswith(_MARK + " "):
            continue
        kind, _, rest = line[len(_MARK) + 1 :].partition(" ")
        if kind == "status":
            code, n = rest.split()
            by_status[int(code)] = by_status.get(int(code), 0) + int(n)
        elif kind == "header":
            n, _, value = rest.partition(" ")
            by_header[value] = by_header.get(value, 0) + int(n)
        elif kind == "sample":
            code, _, body = rest.partition(" ")
            samples.setdefault(int(code), body)
        elif kind == "unmarked":
            unmarked += int(rest.split()[0])
            sent += int(rest.split()[1])
        elif kind == "summary":
            summary = [int(x) for x in rest.split()]
        elif kind == "latency":
            latency = [int(x) for x in rest.split()]
    if summary is None:
        raise AssertionError(f"wrk printed no summary (did it start?):\n{text[-2000:]}")
    requests, duration_us, *errors = summary
    if sum(by_status.values()) != requests:
        raise AssertionError(f"wrk counted {requests} requests, its Lua script {by_status}:\n{text[-2000:]}")
    return WrkResult(
        requests=requests,
        by_status=by_status,
        errors=dict(zip(ERROR_KINDS, errors, strict=True)),
        unmarked=unmarked,
        duration_s=duration_us / 1e6,
        latency_ms={k: v / 1000 for k, v in zip(("p50", "p99", "max"), latency, strict=True)},
        by_header=by_header,
        unanswered=max(0, sent - requests - errors[1] - errors[2]),  # sent, neither answered nor cut (read, write)
        connections=connections,
        samples=samples,
    )


def wrk_path() -> str:
    found = shutil.which("wrk")
    if not found:
        raise AssertionError("`wrk` is not installed and the load tests need it: apt-get install -y wrk")
    return found


class WrkLoad:
    """`wrk` posting to `url` on `connections` connections from the block's start to its end.

    `body`: bytes, text, or a mapping sent as JSON. `marker`: text every 2xx body must contain;
    `expect_header`: (name, text or None) every 2xx answer must carry; `count_header`: a header
    whose values are counted. `timeout_s` (whole seconds, as wrk takes it): an answer slower is a timeout error.
    `duration_s` bounds the run: a block that outlasts it fails ("raise duration_s").
    After the block, `result` holds the counts.
    """

    def __init__(
        self,
        url: str,
        connections: int = 8,
        threads: int = 2,
        method: str = "POST",
        body: bytes | str | Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        duration_s: float = 300,
        timeout_s: int = 10,
        marker: str | None = None,
        expect_header: tuple[str, str | None] | None = None,
        count_header: str | None = None,
        warmup_s: float = 0.5,
    ) -> None:
        if isinstance(body, Mapping):
            body = json.dumps(body)
        headers = dict(headers or {})
        if body is not None and not any(k.lower() == "content-type" for k in headers):
            headers["Content-Type"] = "application/json"
        self.url, self.duration_s, self.timeout_s, self.warmup_s = url, duration_s, timeout_s, warmup_s
        self.threads, self.connections = min(threads, connections), connections
        name, value = expect_header or (None, None)
        self.script = _LUA % {
            "method": lua_string(method),
            "body": lua_string(body),
            "headers": "\n".join(f"wrk.headers[{lua_string(k)}] = {lua_string(v)}" for k, v in headers.items()),
            "marker": lua_string(marker),
            "header_name": lua_string(name.lower() if name else None),
            "header_value": lua_string(value),
            "count_header": lua_string(count_header.lower() if count_header else None),
            "mark": _MARK,
        }
        self.result: WrkResult | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._dir: str | None = None

    def __enter__(self) -> WrkLoad:
        wrk = wrk_path()
        self._dir = tempfile.mkdtemp(prefix="wrk-")
        script = Path(self._dir) / "count.lua"
        script.write_text(self.script)
        cmd = [wrk, f"-t{self.threads}", f"-c{self.connections}", f"-d{int(self.duration_s)}s", "--latency"]
        cmd += ["--timeout", f"{max(1, int(self.timeout_s))}s", "-s", str(script), self.url]
        with (Path(self._dir) / "out.txt").open("wb") as out:
            self._proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        time.sleep(self.warmup_s)
        if self._proc.poll() is not None:
            raise AssertionError(f"wrk exited at once ({self._proc.returncode}):\n{self.output()}")
        return self

    def output(self) -> str:
        return (Path(self._dir) / "out.txt").read_text(errors="replace") if self._dir else ""

    def __exit__(self, exc_type: object, *exc: object) -> None:
        assert self._proc is not None
        ran_out = self._proc.poll() is not None
        if not ran_out:
            self._proc.send_signal(signal.SIGINT)  # wrk stops its threads and prints its summary
        try:
            self._proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
            if exc_type is None:
                raise AssertionError(f"wrk did not stop on SIGINT:\n{self.output()}") from None
        text = self.output()
        shutil.rmtree(self._dir or "", ignore_errors=True)
        if exc_type is not None:
            return  # the block's own exception says more
        assert not ran_out, f"the load ended before the change did: raise duration_s ({self.duration_s:g} s)"
        assert self._proc.returncode == 0, f"wrk failed ({self._proc.returncode}):\n{text}"
        self.result = parse_output(text, self.connections)


def record(result: WrkResult | None, what: str) -> WrkResult:
    """Print the counts (`pytest -s` shows them; the end of the run repeats them)."""
    assert result is not None, f"{what}: no wrk result (was the load's block left early?)"
    test = os.environ.get("PYTEST_CURRENT_TEST", "").split(" ")[0].rpartition("::")[2]
    REPORTS.append(f"{test}: {result.summary(what)}" if test else result.summary(what))
    print(f"\n[wrk] {result.summary(what)}", flush=True)
    return result


def assert_no_failure(result: WrkResult | None, what: str, min_requests: int = 1) -> WrkResult:
    """Print the counts and assert that nothing failed."""
    result = record(result, what)
    assert result.failed == 0, result.summary(what)
    assert result.requests >= min_requests, f"too few answers (fewer than {min_requests}): {result.summary(what)}"
    return result
