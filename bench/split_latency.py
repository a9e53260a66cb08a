#!/usr/bin/env python
"""What a split or mirrored route costs a lone client: `python bench/split_latency.py` (about 2 minutes).

One original-template package (test/fixtures `Legacy`) as seven sections on a local cluster of
2 CPUs: a plain route `/plain`; a canary route `/split` (90/10: the owner's share answered where
it lands, the canary's forwarded); `/forwarded`, applied at 50/50 and then set to 0/100, so its
owner keeps the route and forwards every request; and a mirrored route `/mirrored` (every
request copied to a mirror). Each round runs `controller.py bench ROUTE -C 1` on every route in
turn (interleaved, so a slow moment of the machine hits all of them). Prints one table of p50s.
"""

from __future__ import annotations

import argparse
import re
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

import requests
from apply_latency import FIXTURES, ROOT, controller

SECTIONS = """
[algopkg.Legacy:plain]
route = plain
{common}
[algopkg.Legacy:a]
route = split
traffic = 90
{common}
[algopkg.Legacy:b]
route = split
traffic = 10
{common}
[algopkg.Legacy:c]
route = forwarded
traffic = {c}
{common}
[algopkg.Legacy:d]
route = forwarded
traffic = {d}
{common}
[algopkg.Legacy:p]
route = mirrored
{common}
[algopkg.Legacy:m]
route = mirror-direct
mirror_of = algopkg.Legacy:p
{common}
"""
COMMON = "backend = algo_backend\nmodel = legacy_model.txt\nmethod = POST\ncpu_cost = 0.1\nwarmup = warmup.json\n"
HEADER = "x-modelserve-section"
ROUTES = ("plain", "split", "forwarded", "mirrored")


def main() -> int:
    sys.path.insert(0, str(ROOT))
    from modelserve.node import free_port, late_port

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=5.0, help="seconds of `bench` per route and round")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="modelserve-split-"))
    project = work / "project"
    (project / "Model_ZOO").mkdir(parents=True)
    shutil.copytree(FIXTURES / "algopkg", project / "algopkg")
    shutil.copy(FIXTURES / "Model_ZOO" / "legacy_model.txt", project / "Model_ZOO")
    port, dashboard_port = late_port(), free_port()
    serve = f"[MODEL SERVE]\nport = {port}\naddress = local\ndashboard_port = {dashboard_port}\nlocal_cpus = 2\n"
    p50s: dict[str, list[float]] = {route: [] for route in ROUTES}
    try:
        for c, d in ((50, 50), (0, 100)):  # the second keeps /forwarded with Legacy:c, at 0%
            (project / "conf.ini").write_text(serve + SECTIONS.format(common=COMMON, c=c, d=d))
            took, code, out = controller(project)
            print(f"apply /forwarded {c}/{d}: {took:.1f} s (exit {code})", flush=True)
            if code != 0:
                print(out[-3000:], file=sys.stderr)
                return 1
        answers = {requests.post(f"http://127.0.0.1:{port}/forwarded", json={}).headers.get(HEADER) for _ in range(20)}
        assert answers == {"algopkg.Legacy:d"}, answers
        for i in range(args.rounds):
            for route in ROUTES:
                _, code, out = controller(project, "bench", route, "-C", "1", "-d", str(args.duration))
                found = re.search(r"p50 ([\d.]+)", out)
                if code != 0 or not found:
                    print(out[-2000:], file=sys.stderr)
                    return 1
                p50s[route].append(float(found.group(1)))
                print(f"round {i + 1} /{route}: p50 {found.group(1)} ms", flush=True)
    finally:
        controller(project, "down", "--stop-cluster")
        shutil.rmtree(work, ignore_errors=True)
    plain = statistics.median(p50s["plain"])
    print("\n| route (1 connection, `controller.py bench`) | p50 ms, each round | median | over /plain |")
    print("| --- | --- | --- | --- |")
    for route in ROUTES:
        median = statistics.median(p50s[route])
        rounds = " / ".join(f"{v:.2f}" for v in p50s[route])
        print(f"| /{route} | {rounds} | {median:.2f} | {median - plain:+.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
