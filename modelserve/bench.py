"""`controller.py bench ROUTE`: load a route at a concurrency, bounded in time or count.

The original runtime's `pressure()`: keep-alive connections (aiohttp), one coroutine each,
progress every second, then RPS and latency percentiles. For comparing runtimes use a
native load generator (`bench/` uses wrk); this one is for checking a deployment.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Tally:
    latencies_s: list[float] = field(default_factory=list)
    non_2xx: int = 0
    errors: int = 0
    first_error: str = ""
    started: int = 0  # requests sent or being sent: `-n N` sends exactly N

    @property
    def count(self) -> int:
        return len(self.latencies_s) + self.errors


@dataclass(frozen=True)
class Summary:
    requests: int
    elapsed_s: float
    rps: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    non_2xx: int
    errors: int

    def render(self) -> str:
        return (
            f"requests {self.requests}  in {self.elapsed_s:.1f}s  ->  {self.rps:.1f} req/s\n"
            f"latency ms  p50 {self.p50_ms:.2f}  p95 {self.p95_ms:.2f}  p99 {self.p99_ms:.2f}  max {self.max_ms:.2f}\n"
            f"non-2xx {self.non_2xx}  errors {self.errors}"
        )


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of already sorted values (0 when empty)."""
    if not sorted_values:
        return 0.0
    rank = max(0, min(len(sorted_values) - 1, math.ceil(q / 100 * len(sorted_values)) - 1))
    return sorted_values[rank]


def summarize(tally: Tally, elapsed_s: float) -> Summary:
    ms = sorted(v * 1000 for v in tally.latencies_s)
    return Summary(
        requests=tally.count,
        elapsed_s=elapsed_s,
        rps=tally.count / elapsed_s if elapsed_s > 0 else 0.0,
        p50_ms=percentile(ms, 50),
        p95_ms=percentile(ms, 95),
        p99_ms=percentile(ms, 99),
        max_ms=ms[-1] if ms else 0.0,
        non_2xx=tally.non_2xx,
        errors=tally.errors,
    )


async def _worker(session: Any, method: str, url: str, body: bytes, tally: Tally, stop: Callable[[], bool]) -> None:
    import aiohttp

    headers = {"Content-Type": "application/json"}
    while not stop():
        tally.started += 1
        start = time.perf_counter()
        try:
            async with session.request(method, url, data=body, headers=headers) as response:
                await response.read()
                status = response.status
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            tally.errors += 1
            tally.first_error = tally.first_error or f"{type(exc).__name__}: {exc}"
            continue
        tally.latencies_s.append(time.perf_counter() - start)
        if not 200 <= status < 300:
            tally.non_2xx += 1


async def _run(
    method: str, url: str, body: bytes, concurrency: int, duration_s: float, max_requests: int | None, progress: bool
) -> Summary:
    import aiohttp

    tally = Tally()
    start = time.perf_counter()
    deadline = start + duration_s

    def stop() -> bool:
        return time.perf_counter() >= deadline or (max_requests is not None and tally.started >= max_requests)

    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        workers = [asyncio.create_task(_worker(session, method, url, body, tally, stop)) for _ in range(concurrency)]
        while not all(w.done() for w in workers):
            await asyncio.wait(workers, timeout=1.0)
            if progress and not all(w.done() for w in workers):
                elapsed = time.perf_counter() - start
                print(
                    f"  {elapsed:5.1f}s  {tally.count:7d} requests  {tally.count / elapsed:8.1f} req/s  "
                    f"non-2xx {tally.non_2xx}  errors {tally.errors}",
                    flush=True,
                )
    summary = summarize(tally, time.perf_counter() - start)
    if tally.first_error and progress:
        print(f"first error: {tally.first_error}")
    return summary


def run(
    url: str,
    params: dict[str, Any],
    concurrency: int = 8,
    duration_s: float = 10.0,
    max_requests: int | None = None,
    progress: bool = True,
    method: str = "POST",
) -> Summary:
    """Send `params` as JSON to `url` from `concurrency` connections until time or count runs out."""
    body = json.dumps(params).encode()
    return asyncio.run(_run(method, url, body, concurrency, duration_s, max_requests, progress))
