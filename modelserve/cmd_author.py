"""The package author's loop, with no cluster: `controller.py try SECTION` and `controller.py dev`.

Both run the replica's own request pipeline in this process (inprocess.py), so an answer here is
the answer the route gives on a cluster, byte for byte but for `request_id` and the replica header.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import mimetypes
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from modelserve import inprocess
from modelserve.cmd_common import EXIT_CONFIG, EXIT_UNHEALTHY, Subparsers, add_command
from modelserve.config import load_config


def register(sub: Subparsers) -> None:
    run = add_command(sub, "try", cmd_try, "load one section in this process (no Ray) and send it one request")
    run.add_argument("section", help="a section of conf.ini (algopkg.AlgoExample, AlgoExample) or its route")
    body = run.add_mutually_exclusive_group()
    body.add_argument("--params", metavar="JSON", help="JSON params, e.g. '{\"x\": [0, 1]}' (default: the warm-up)")
    body.add_argument("--body", metavar="FILE", help="send this file's bytes as the body (type from its name)")
    body.add_argument("--form", action="append", metavar="NAME=VALUE|NAME=@FILE", help="a multipart form field")
    run.add_argument("--content-type", help="of --body (default: guessed from the file name)")
    run.add_argument("-H", "--header", action="append", default=[], help="'Name: value', e.g. an API key")
    run.add_argument("-n", "--calls", type=int, default=1, metavar="N", help="send it N times; print p50 (default 1)")
    dev = add_command(sub, "dev", cmd_dev, "serve every section from this process (no Ray), reloading what you edit")
    dev.add_argument("--port", type=int, help="HTTP port (default: conf.ini's port)")
    dev.add_argument("--host", help="bind address (default: 127.0.0.1)")


_PHASES = {"warmup": "warm-up"}


class TryError(Exception):
    """A `try` command line that cannot be carried out (exit 2)."""


def _request(args: argparse.Namespace, config_dir: Path, warmup: Path | None) -> tuple[bytes, dict[str, str], str]:
    """The body, headers, and a few words saying where the request came from."""
    from modelserve import bench

    try:
        headers = bench.parse_headers(args.header)
        if args.form:
            payload = bench.form_payload(args.form)
            return payload.body, bench.request_headers(payload, headers), "the form"
        if args.body:
            kind = args.content_type or mimetypes.guess_type(args.body)[0] or "application/octet-stream"
            payload = bench.raw_payload(args.body, kind)
            return payload.body, bench.request_headers(payload, headers), args.body
    except bench.BenchError as exc:
        raise TryError(str(exc).replace("bench:", "try:", 1)) from None
    if args.params is not None:
        try:
            params = json.loads(args.params)
        except ValueError as exc:
            raise TryError(f"try: --params {args.params!r} is not JSON ({exc}); e.g. --params '{{\"x\": 1}}'") from None
        source = "--params"
    elif warmup is not None:
        from modelserve.warmup import read_warmup

        params, source = read_warmup(warmup)[0], f"the warm-up sample ({warmup.name})"
    else:
        raise TryError("try: the section has no warmup file to take a sample from; give --params, --body or --form")
    payload = bench.json_payload(params)
    return payload.body, bench.request_headers(payload, headers), source


def cmd_try(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    try:
        spec = inprocess.find_section(config, args.section)
        inprocess.require_environment(spec, config, "try")
        warmup = config.algopkg_dir / spec.package / spec.warmup if spec.warmup else None
        body, headers, source = _request(args, config.algopkg_dir.parent, warmup)
    except (inprocess.LocalError, TryError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    started = time.perf_counter()
    try:
        pipeline = inprocess.load_section(config, spec)
    except Exception as exc:  # the package's own error: its traceback, not ours
        print(f"[{spec.section}] did not load:\n{inprocess.package_traceback(exc)}", file=sys.stderr)
        return EXIT_UNHEALTHY
    loaded_s = time.perf_counter() - started
    phases = ", ".join(f"{_PHASES.get(p, p)} {s:.2f} s" for p, s in pipeline.load_seconds.items())
    print(f"[{spec.section}] loaded in {loaded_s:.2f} s ({phases}), in this process", file=sys.stderr)
    method = "POST" if "POST" in spec.methods else spec.methods[0]
    route = f"/{spec.route}"
    answers, seconds = asyncio.run(_calls(pipeline, method, route, body, headers, max(args.calls, 1)))
    last = answers[-1]
    print(f"{method} {route} with {source} -> {last.status}", file=sys.stderr)
    sys.stdout.write(last.body.decode("utf-8", "replace") + ("" if last.body.endswith(b"\n") else "\n"))
    sys.stdout.flush()
    ms = sorted(s * 1000 for s in seconds)
    print(
        f"{len(ms)} call(s): p50 {statistics.median(ms):.2f} ms, min {ms[0]:.2f} ms, max {ms[-1]:.2f} ms",
        file=sys.stderr,
    )
    failed = [a.status for a in answers if not 200 <= a.status < 300]
    if failed and len(answers) > 1:
        print(f"{len(failed)} of {len(answers)} call(s) were not answered 2xx: {sorted(set(failed))}", file=sys.stderr)
    return EXIT_UNHEALTHY if failed else 0


async def _calls(
    pipeline: Any, method: str, route: str, body: bytes, headers: dict[str, str], n: int
) -> tuple[list[inprocess.Answer], list[float]]:
    answers, seconds = [], []
    for _ in range(n):
        started = time.perf_counter()
        answers.append(await inprocess.call(pipeline, method, route, body, headers))
        seconds.append(time.perf_counter() - started)
    return answers, seconds


def cmd_dev(args: argparse.Namespace) -> int:
    from modelserve import devserver

    return devserver.serve(Path(args.config), host=args.host, port=args.port)
