#!/usr/bin/env python
"""Where a modelserve replica's CPU goes under 32 connections: `python bench/profile_replica.py legacy|modelserve`.

Starts the row as `bench/run.py` does, loads it with wrk, and meanwhile samples the replica
process (`ServeReplica:<package>`) with py-spy twice at once: every non-idle sample, and only
samples holding the GIL. Prints each Python thread's busy share and the busy samples by bucket
(leaf-most frame that names one), and keeps py-spy's raw stacks in --out.
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import psutil
from loadgen import run_wrk
from run import check
from servers import SERVERS
from stages import RATE_HZ, pyspy
from workload import reference, sample

PACKAGES = {"legacy": "ServeReplica:BenchMLPLegacy", "modelserve": "ServeReplica:BenchMLP:"}
#: (bucket, substrings of a frame's file) in the order a sample's frames are tried, leaf first.
BUCKETS = (
    ("model forward (mlp.py)", ("mlp.py",)),
    ("JSON + envelope (json, modelserve/)", ("json/", "modelserve/", "_modelserve")),
    ("HTTP server (uvicorn, h11, httptools, starlette)", ("uvicorn/", "h11/", "httptools/", "starlette/")),
    ("Ray Serve request path (ray/serve/, its metrics)", ("ray/serve/", "ray/util/metrics")),
    ("model thread waiting for work (pool queue)", ("concurrent/futures/thread.py:81",)),
    ("event loop (asyncio, uvloop's native loop)", ("asyncio/", "selectors.py", "uvloop/", "Thread.run (threading.py")),
    ("logging", ("logging/",)),
    ("threading / queue", ("threading.py", "queue.py", "concurrent/")),
)


def bucket(stack: str) -> str:
    frames = stack.split(";")[1:]  # the first is the thread
    for frame in reversed(frames):
        for name, marks in BUCKETS:
            if any(mark in frame for mark in marks):
                return name
    return "other (Ray core worker, imports, ...)"


def parse(raw: Path) -> tuple[Counter[str], Counter[str]]:
    """Samples by thread and by bucket, from py-spy's raw (collapsed) output."""
    threads: Counter[str] = Counter()
    buckets: Counter[str] = Counter()
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        threads[stack.split(";", 1)[0]] += int(count)
        buckets[bucket(stack)] += int(count)
    return threads, buckets


def replica_pid(marker: str) -> int:
    for proc in psutil.process_iter(["cmdline"]):
        if marker in " ".join(proc.info["cmdline"] or []):
            return proc.pid
    raise SystemExit(f"no process with {marker!r} in its command line")


def report(active: Path, gil: Path, seconds: float) -> None:
    threads, buckets = parse(active)
    _, gil_buckets = parse(gil)
    total, expected = sum(buckets.values()), RATE_HZ * seconds
    print(f"\nbusy samples {total} (of {expected:.0f} per thread); holding the GIL {sum(gil_buckets.values())}")
    for thread, n in threads.most_common(6):
        print(f"  {thread}: busy {100 * n / expected:.0f}% of the time")
    print("| bucket | % of busy samples | % holding the GIL |\n|---|---|---|")
    for name, n in buckets.most_common():
        print(f"| {name} | {100 * n / total:.0f}% | {100 * gil_buckets[name] / total:.0f}% |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("row", choices=sorted(PACKAGES))
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    body = sample()
    start = SERVERS[args.row][1]
    with tempfile.TemporaryDirectory(prefix="modelserve-profile-") as work, start(Path(work), body) as up:
        check(up, body, reference(body))
        pid = replica_pid(PACKAGES[args.row])
        load = threading.Thread(target=lambda: print(run_wrk(up.url, body, 32, args.seconds + 4), flush=True))
        load.start()
        time.sleep(2)  # let wrk reach its steady state
        active, gil = args.out / f"pyspy-{args.row}.txt", args.out / f"pyspy-{args.row}-gil.txt"
        spies = [pyspy(pid, args.seconds, active), pyspy(pid, args.seconds, gil, "--gil")]
        for spy in spies:
            _, err = spy.communicate()
            if spy.returncode != 0:
                raise SystemExit(f"py-spy failed ({spy.returncode}): {err.decode(errors='replace')[-800:]}")
        load.join()
    report(active, gil, args.seconds)


if __name__ == "__main__":
    main()
