#!/usr/bin/env python
"""Side-by-side benchmark of modelserve and its peers on the BenchMLP workload: `make bench`.

Prints one table and writes it to bench/results/latest.md (and latest.json). Exits 1 only when
a server could not start or answered wrongly; the targets are informational.
"""

from __future__ import annotations

import argparse
import datetime
import os
import signal
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import accounting
import requests
from loadgen import run_wrk, wrk_path
from procs import ROOT, cpu_times, cpu_top
from report import CONNS, render, write
from servers import SERVERS, Running, ServerError
from workload import in_process, reference, sample

NAMES = ("inprocess", *SERVERS, "accounting")
WARMUP_REQUESTS = 200


def progress(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of wrk per row (default 10)")
    parser.add_argument("--quick", action="store_true", help="3 s per row and 1 s in-process loops")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of every row, interleaved (default 2)")
    parser.add_argument("--only", default=",".join(NAMES), help=f"comma-separated subset of {','.join(NAMES)}")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results", help="where results go")
    args = parser.parse_args(argv)
    args.only = [n.strip() for n in args.only.split(",") if n.strip()]
    if unknown := sorted(set(args.only) - set(NAMES)):
        parser.error(f"--only: unknown {', '.join(unknown)}; choose from {', '.join(NAMES)}")
    if args.rounds < 1:
        parser.error("--rounds must be 1 or more")
    if args.quick:
        args.duration = 3.0
    return args


def check(running: Running, body: dict[str, Any], want: dict[str, Any]) -> None:
    """Warm the server up, then make sure it answers what the MLP computes in-process."""
    with requests.Session() as session:
        for _ in range(WARMUP_REQUESTS):
            reply = session.post(running.url, json=body, timeout=30)
            if reply.status_code != 200:
                raise ServerError(f"warm-up request answered {reply.status_code}: {reply.text[:300]}")
        got = running.unwrap(reply.json())
    if got != want:
        raise ServerError(f"wrong result: got {got!r}, the MLP computes {want!r}")


def bench_server(name: str, work: Path, body: dict[str, Any], want: dict[str, Any], seconds: float) -> dict[str, Any]:
    """One round of one row: start the server, check it, wrk at each connection count, stop it."""
    label, start = SERVERS[name]
    result: dict[str, Any] = {"runs": {}}
    work.mkdir(parents=True, exist_ok=True)
    progress(f"{label}: starting")
    try:
        with start(work, body) as running:
            progress(f"{label}: warming up ({WARMUP_REQUESTS} requests) and checking the result")
            check(running, body, want)
            for conns in CONNS:
                progress(f"{label}: wrk, {conns} connection(s), {seconds:g} s")
                before, t0 = cpu_times(running.sids), time.monotonic()
                load = run_wrk(running.url, body, conns, seconds)
                result["runs"][str(conns)] = asdict(load)
                if conns == CONNS[-1]:
                    result["cpu32"] = cpu_top(before, cpu_times(running.sids), time.monotonic() - t0)
                progress(f"{label}: {load.rps:,.0f} RPS, p50 {load.p50_ms:.2f} ms, p99 {load.p99_ms:.2f} ms")
            progress(f"{label}: stopping")
    except (ServerError, RuntimeError, KeyError, ValueError, requests.RequestException) as exc:
        result["error"] = f"{type(exc).__name__}: {exc}"
        progress(f"{label}: FAILED: {exc}")
    return result


def account(work: Path, args: argparse.Namespace) -> dict[str, Any]:
    """The no-compute path's CPU per request against FastAPI's (bench/accounting.py), on this checkout."""
    progress("CPU accounting of the no-compute path (bench/accounting.py)")
    settings = accounting.Settings(seconds=4.0 if args.quick else accounting.SECONDS, out=args.out)
    try:
        return accounting.run(ROOT, work, settings)
    except Exception as exc:  # the rows' results are kept whatever goes wrong here
        progress(f"accounting: FAILED: {type(exc).__name__}: {exc}")
        return {"error": f"{type(exc).__name__}: {exc}"}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    wrk_path()  # fail early, with the install hint
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwind, so every server is stopped
    began = time.monotonic()
    meta = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "cpus": os.cpu_count(),
        "load_before": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "duration_s": args.duration,
        "rounds": args.rounds,
    }
    body = sample()
    data: dict[str, Any] = {"meta": meta, "inprocess": None, "servers": {}}
    want = reference(body)
    if "inprocess" in args.only:
        progress("in-process: MLP.forward at batch 1, 8, 16, 32, 64")
        data["inprocess"] = in_process(1.0 if args.quick else 2.0)
    names = [n for n in SERVERS if n in args.only]
    with tempfile.TemporaryDirectory(prefix="modelserve-bench-") as work:
        for round_no in range(1, args.rounds + 1):  # interleaved: every row once, then every row again
            progress(f"round {round_no} of {args.rounds}")
            for name in names:
                server = data["servers"].setdefault(name, {"label": SERVERS[name][0], "rounds": []})
                server["rounds"].append(bench_server(name, Path(work) / f"round{round_no}", body, want, args.duration))
        if "accounting" in args.only:
            data["accounting"] = account(Path(work), args)
    data["meta"]["wall_s"] = round(time.monotonic() - began, 1)
    data["meta"]["load_after"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print("\n" + render(data))
    path = write(data, args.out)
    progress(f"done in {data['meta']['wall_s']:.0f} s; written to {path} and {path.with_suffix('.json')}")
    failed = [s["label"] for s in data["servers"].values() if any(r.get("error") for r in s["rounds"])]
    failed += ["the CPU accounting"] if data.get("accounting", {}).get("error") else []
    if failed:
        print(f"error: {', '.join(failed)} failed (see above)", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
