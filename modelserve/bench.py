"""`controller.py bench ROUTE`: load a route at a concurrency, bounded in time or count.

The original runtime's `pressure()`: keep-alive connections (aiohttp), one coroutine each,
progress every second, then RPS and latency percentiles, non-2xx answers by status code and
errors by kind. Each request carries the same headers (`-H`) and body: JSON params, a
multipart form (`--form`) or a raw file (`--body-file`). For comparing runtimes use a native
load generator (`bench/` uses wrk); this one is for checking a deployment.
"""

from __future__ import annotations

import asyncio
import json
import math
import mimetypes
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: How a request that got no HTTP answer failed: `connect`, `timeout`, or `read` (cut short).
ERROR_KINDS = ("connect", "timeout", "read")


class BenchError(ValueError):
    """A `bench` option that cannot be used as given; the message says how to write it."""


@dataclass(frozen=True)
class Payload:
    """The body every request of a run sends, and its content type."""

    body: bytes
    content_type: str


def json_payload(params: Any) -> Payload:
    return Payload(json.dumps(params).encode(), "application/json")


def protocol_payload(params: Mapping[str, Any], datatypes: Mapping[str, str] | None = None) -> Payload:
    """Params (a warm-up sample) as an Open Inference Protocol infer request, each value a JSON tensor
    of the datatype the model's metadata gives it (`datatypes`), else of its own."""
    from modelserve import tensors

    inputs = []
    for name, value in params.items():
        array = tensors.as_tensor(value)
        if (datatypes or {}).get(name) in tensors.DATATYPES:
            array = array.astype(tensors.DATATYPES[(datatypes or {})[name]])
        inputs.append(
            {
                "name": name,
                "datatype": tensors.datatype_of(array),
                "shape": list(array.shape),
                "data": tensors.to_json(name, array),
            }
        )
    return json_payload({"inputs": inputs})


def declared_datatypes(infer_url: str, headers: Mapping[str, str]) -> dict[str, str]:
    """`{input: datatype}` from the model's metadata (the infer URL without `/infer`); {} where it has none."""
    import requests

    try:
        metadata = requests.get(infer_url.removesuffix("/infer"), headers=dict(headers), timeout=10).json()
        return {t["name"]: t["datatype"] for t in metadata.get("inputs", [])}
    except (requests.RequestException, ValueError, KeyError, TypeError, AttributeError):
        return {}


def _read(path: str, option: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise BenchError(f"bench: {option} {path}: cannot read it ({exc.strerror or exc})") from None


def raw_payload(path: str, content_type: str) -> Payload:
    """`--body-file FILE --content-type TYPE`: the file's bytes as they are."""
    return Payload(_read(path, "--body-file"), content_type)


def form_payload(fields: Sequence[str]) -> Payload:
    """`--form name=value` and `--form name=@file` (as curl's `-F`): one multipart/form-data body."""
    from urllib3 import encode_multipart_formdata

    parts: list[tuple[str, Any]] = []
    for item in fields:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise BenchError(f"bench: --form {item!r}: write it as name=value or name=@file, e.g. --form image=@a.png")
        if value.startswith("@"):
            path = value[1:]
            kind = mimetypes.guess_type(path)[0] or "application/octet-stream"
            parts.append((name, (Path(path).name, _read(path, "--form"), kind)))
        else:
            parts.append((name, value))
    body, content_type = encode_multipart_formdata(parts)
    return Payload(body, content_type)


def parse_headers(lines: Sequence[str]) -> dict[str, str]:
    """`-H 'Name: value'` options as headers; a later one of the same name replaces an earlier one."""
    headers: dict[str, str] = {}
    for line in lines:
        name, sep, value = line.partition(":")
        if not sep or not name.strip() or any(c.isspace() for c in name.strip()):
            raise BenchError(f"bench: -H {line!r}: write it as 'Name: value', e.g. -H 'Authorization: Bearer KEY'")
        headers[name.strip()] = value.strip()
    return headers


def request_headers(payload: Payload, headers: Mapping[str, str]) -> dict[str, str]:
    """The payload's content type, unless a `-H Content-Type` replaces it, then the given headers."""
    if any(name.lower() == "content-type" for name in headers):
        return dict(headers)
    return {"Content-Type": payload.content_type, **headers}


def error_kind(exc: BaseException) -> str:
    import aiohttp

    if isinstance(exc, asyncio.TimeoutError):  # aiohttp's ServerTimeoutError is one too
        return "timeout"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return "connect"
    return "read"


@dataclass
class Tally:
    latencies_s: list[float] = field(default_factory=list)
    codes: Counter[int] = field(default_factory=Counter)  # non-2xx answers by status code
    error_kinds: Counter[str] = field(default_factory=Counter)  # no answer, by ERROR_KINDS
    first_error: str = ""
    started: int = 0  # requests sent or being sent: `-n N` sends exactly N

    @property
    def non_2xx(self) -> int:
        return sum(self.codes.values())

    @property
    def errors(self) -> int:
        return sum(self.error_kinds.values())

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
    codes: dict[int, int] = field(default_factory=dict)  # non-2xx answers by status code
    error_kinds: dict[str, int] = field(default_factory=dict)  # connect, timeout, read

    def render(self) -> str:
        return (
            f"requests {self.requests}  in {self.elapsed_s:.1f}s  ->  {self.rps:.1f} req/s\n"
            f"latency ms  p50 {self.p50_ms:.2f}  p95 {self.p95_ms:.2f}  p99 {self.p99_ms:.2f}  max {self.max_ms:.2f}\n"
            f"non-2xx {self.non_2xx}{_breakdown(self.codes)}  errors {self.errors}{_breakdown(self.error_kinds)}"
        )


def _breakdown(counts: Mapping[Any, int]) -> str:
    """` (401: 3, 503: 1)`, or nothing when there is nothing to break down."""
    return f" ({', '.join(f'{key}: {n}' for key, n in sorted(counts.items()))})" if counts else ""


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
        codes=dict(tally.codes),
        error_kinds=dict(tally.error_kinds),
    )


async def _worker(
    session: Any, method: str, url: str, body: bytes, headers: dict[str, str], tally: Tally, stop: Callable[[], bool]
) -> None:
    import aiohttp

    while not stop():
        tally.started += 1
        start = time.perf_counter()
        try:
            async with session.request(method, url, data=body, headers=headers) as response:
                await response.read()
                status = response.status
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            tally.error_kinds[error_kind(exc)] += 1
            tally.first_error = tally.first_error or f"{type(exc).__name__}: {exc}"
            continue
        tally.latencies_s.append(time.perf_counter() - start)
        if not 200 <= status < 300:
            tally.codes[status] += 1


async def _run(
    method: str,
    url: str,
    body: bytes,
    headers: dict[str, str],
    concurrency: int,
    duration_s: float,
    max_requests: int | None,
    progress: bool,
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
        workers = [
            asyncio.create_task(_worker(session, method, url, body, headers, tally, stop)) for _ in range(concurrency)
        ]
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
    params: dict[str, Any] | Payload,
    concurrency: int = 8,
    duration_s: float = 10.0,
    max_requests: int | None = None,
    progress: bool = True,
    method: str = "POST",
    headers: Mapping[str, str] | None = None,
) -> Summary:
    """Send `params` (as JSON, or a ready payload) with `headers` to `url` from `concurrency`
    connections until time or count runs out."""
    payload = params if isinstance(params, Payload) else json_payload(params)
    sent = request_headers(payload, headers or {})
    return asyncio.run(_run(method, url, payload.body, sent, concurrency, duration_s, max_requests, progress))
