#!/usr/bin/env python
"""How long a user waits on `controller.py`: `python bench/apply_latency.py` (about 2 minutes).

A project of 16 small original-template sections (`cpu_cost = 0.1` each) on a local cluster of
2 CPUs: the first apply (the cluster's start included), an unchanged re-apply, `status`, a
model-file change in one section while 8 clients call that section (every failed request
counted), and `down --stop-cluster`. Each command is timed as the user sees it, and its own
`--timings` lines (where the time went) are printed under it.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests
from procs import clean_env, spawn, stop_session

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "test" / "fixtures"
SECTION = """
[algopkg.Legacy:s{i}]
backend = algo_backend
model = {model}
route = s{i}
method = POST
cpu_cost = 0.1
user_config = {{"threshold": 1.5}}
"""


def write_conf(project: Path, port: int, dashboard_port: int, sections: int, changed: bool) -> None:
    serve = f"[MODEL SERVE]\nport = {port}\naddress = local\ndashboard_port = {dashboard_port}\nlocal_cpus = 2\n"
    body = "".join(
        SECTION.format(i=i, model="legacy_model_v2.txt" if changed and i == 0 else "legacy_model.txt")
        for i in range(sections)
    )
    (project / "conf.ini").write_text(serve + body)


def controller(project: Path, *args: str) -> tuple[float, int, str]:
    log = project / "controller.log"
    start = log.stat().st_size if log.exists() else 0
    cmd = [
        sys.executable,
        str(ROOT / "controller.py"),
        *(args or ("apply", "--timings")),
        "-c",
        str(project / "conf.ini"),
    ]
    began = time.monotonic()
    proc = spawn(cmd, log, clean_env(), project)
    try:
        code = proc.wait(timeout=600)
    finally:
        stop_session(proc.pid)
    return time.monotonic() - began, code, log.read_text(errors="replace")[start:]


class Clients:
    """`n` clients posting to `url` until stopped; counts answers and failures (no answer or not 200)."""

    def __init__(self, url: str, n: int) -> None:
        self.url, self.ok, self.failed = url, 0, 0
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(n)]

    def _run(self) -> None:
        with requests.Session() as session:
            while not self._stop.is_set():
                try:
                    good = session.post(self.url, json={"values": [1, 2, 3]}, timeout=30).status_code == 200
                except requests.RequestException:
                    good = False
                self.ok, self.failed = (self.ok + 1, self.failed) if good else (self.ok, self.failed + 1)

    def __enter__(self) -> Clients:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=40)


def main() -> int:
    sys.path.insert(0, str(ROOT))
    from modelserve.node import free_port, late_port

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sections", type=int, default=16)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="modelserve-apply-"))
    project = work / "project"
    (project / "Model_ZOO").mkdir(parents=True)
    shutil.copytree(FIXTURES / "algopkg", project / "algopkg")
    for name in ("legacy_model.txt", "legacy_model_v2.txt"):
        shutil.copy(FIXTURES / "Model_ZOO" / "legacy_model.txt", project / "Model_ZOO" / name)
    with (project / "Model_ZOO" / "legacy_model_v2.txt").open("a") as f:
        f.write("\n# v2\n")
    port, dashboard_port = late_port(), free_port()
    write_conf(project, port, dashboard_port, args.sections, changed=False)
    rows: list[tuple[str, float, str]] = []

    def step(what: str, *cmd: str) -> str:
        took, code, out = controller(project, *cmd)
        timings = [line for line in out.splitlines() if line.startswith("timing:")]
        print(f"\n== {what}: {took:.1f} s (exit {code})", *timings, sep="\n  ", flush=True)
        if code != 0:
            print(out[-3000:], file=sys.stderr)
        rows.append((what, took, "" if code == 0 else f"exit {code}"))
        return out

    try:
        step(f"first apply, {args.sections} sections (local cluster start included)")
        for i in range(3):
            step(f"unchanged re-apply ({i + 1})")
        step("status", "status")
        write_conf(project, port, dashboard_port, args.sections, changed=True)
        with Clients(f"http://127.0.0.1:{port}/s0", 8) as load:
            time.sleep(2)
            step("model file changed in one section, 8 clients calling it")
            time.sleep(1)
        rows.append(("  requests during that apply: answered / failed", float(load.ok), f"{load.failed} failed"))
    finally:
        step("down --stop-cluster", "down", "--stop-cluster")
        shutil.rmtree(work, ignore_errors=True)
    print("\n| step | seconds | note |\n| --- | --- | --- |")
    for what, took, note in rows:
        print(f"| {what} | {took:.1f} | {note} |" if "requests" not in what else f"| {what} | {took:.0f} | {note} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
