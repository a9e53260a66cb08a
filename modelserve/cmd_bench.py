"""`bench`: load one route and print RPS and latency percentiles."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from modelserve.cmd_common import EXIT_UNHEALTHY, Subparsers, UsageError, add_command, staged_config
from modelserve.settings import Config
from modelserve.warmup import read_warmup


def register(sub: Subparsers) -> None:
    bench_cmd = add_command(sub, "bench", cmd_bench, "load one route and print RPS and latency percentiles")
    bench_cmd.add_argument("route", nargs="?", help="a route of conf.ini, e.g. extract")
    bench_cmd.add_argument("--url", help="load this URL instead of the route's local one")
    body = bench_cmd.add_mutually_exclusive_group()
    body.add_argument("--body", help="JSON file of params (default: the section's warm-up sample)")
    body.add_argument("--form", action="append", metavar="NAME=VALUE|NAME=@FILE", help="a multipart form field")
    body.add_argument("--body-file", help="send this file's bytes as the body, with --content-type")
    bench_cmd.add_argument("--content-type", default="application/octet-stream", help="of --body-file")
    bench_cmd.add_argument(
        "--protocol", action="store_true", help="load the Open Inference Protocol's infer path, params as tensors"
    )
    bench_cmd.add_argument("-H", "--header", action="append", default=[], help="'Name: value', e.g. an API key")
    bench_cmd.add_argument("-C", "--concurrency", type=int, default=8, help="connections (default 8)")
    bench_cmd.add_argument("-d", "--duration", type=float, default=10.0, help="seconds, at most (default 10)")
    bench_cmd.add_argument("-n", "--requests", type=int, help="stop after this many requests")


def _bench_params(config: Config, args: argparse.Namespace) -> tuple[str, str, dict[str, Any]]:
    """URL, method and body for `bench`: from the ROUTE's section unless given."""
    route = (args.route or "").strip("/")
    spec = next((s for s in config.sections if s.route == route), None)
    if spec is None and not args.url:
        known = ", ".join(s.route for s in config.sections) or "none"
        raise UsageError(f"bench: no section serves route {route!r} (routes: {known}); name one, or give --url")
    host = "127.0.0.1" if config.serve.host in ("0.0.0.0", "::") else config.serve.host
    url = args.url or f"http://{host}:{config.serve.port}/{route}"
    if args.protocol and not args.url:
        url += f"/v2/models/{route}/infer"
    method = "POST" if spec is None or "POST" in spec.methods or args.protocol else "GET"
    if args.form or args.body_file:
        params: dict[str, Any] = {}  # the body is the form or the file: see cmd_bench
    elif args.body:
        try:
            params = json.loads(Path(args.body).read_text())
        except (OSError, ValueError) as exc:
            raise UsageError(f"bench: --body {args.body}: cannot read it as JSON ({exc})") from None
    elif spec is not None and spec.warmup:
        params = read_warmup(config.algopkg_dir / spec.package / spec.warmup)[0]
    else:
        raise UsageError(f"bench: [{spec.section if spec else route}] has no warmup sample; give --body FILE")
    return url, method, params


def cmd_bench(args: argparse.Namespace) -> int:
    config = staged_config(args)
    url, method, params = _bench_params(config, args)
    from modelserve import bench  # here: the other commands do without its imports

    try:
        headers = bench.parse_headers(args.header)
        payload = bench.form_payload(args.form) if args.form else None
        if args.body_file:
            payload = bench.raw_payload(args.body_file, args.content_type)
        elif args.protocol:
            payload = bench.protocol_payload(params, bench.declared_datatypes(url, headers))
    except bench.BenchError as exc:
        raise UsageError(str(exc)) from None
    print(
        f"{method} {url}: {args.concurrency} connection(s), up to {args.duration}s"
        + (f" or {args.requests} requests" if args.requests else "")
    )
    summary = bench.run(
        url, payload or params, args.concurrency, args.duration, args.requests, method=method, headers=headers
    )
    print(summary.render())
    return 0 if summary.non_2xx == summary.errors == 0 and summary.requests else EXIT_UNHEALTHY
