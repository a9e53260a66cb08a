#!/usr/bin/env python
"""CPU per request of every process on the no-compute path, at a fixed rate, against FastAPI's: `bench/accounting.py`.

One local cluster (started by `controller.py` of --checkout, with that checkout's .venv) serves two no-compute
sections (bench/noop: an original-template package and one with `infer_batch`); each is loaded by wrk at the
same fixed rate, and each process's CPU (psutil) is divided by the requests answered. Meanwhile py-spy samples
the replica and bench/stages.py puts each sample in a stage of the request path. FastAPI's `async def` no-compute
endpoint (2 workers) then gets the same load. Part of `make bench`; alone it writes accounting.md/.json in --out.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import requests
from fixedrate import FixedLoad, run_fixed
from procs import ROOT, cpu_times, free_port, late_port
from servers import ServerError, applied, fastapi_async
from stages import NATIVE, STAGES, by_thread, pyspy, thread_names, us_per_request
from workload import sample

RATE = 500.0  # requests/s: well within what every server here sustains on 2 cores
SECONDS = 10.0
IDLE_SECONDS = 8.0
WARMUP_REQUESTS = 200
SPY_HZ = 250  # py-spy's samples/s: at 500 requests/s, one sample is 1 µs per request over 8 s
#: (package in bench/noop, its backend class, its route, what the row shows)
PATHS = (
    ("NoopLegacy", "algo_backend", "legacy", "modelserve, original-template package (no infer_batch)"),
    ("NoopBatched", "NoopBatched", "batched", "modelserve, package with infer_batch"),
)
FASTAPI_LABEL = "FastAPI + uvicorn[standard], 2 workers, async def, access log off"
WHOLE = "whole path (without wrk)"
TARGET_X = 1.5
Snapshot = dict[int, tuple[str, float]]  # pid -> (command line, CPU seconds)


@dataclass
class Settings:
    rate: float = RATE  # requests/s
    seconds: float = SECONDS  # of load per path
    profile: bool = True  # py-spy the replica (the stage table)
    out: Path = Path(__file__).parent / "results"  # py-spy's raw stacks (and, alone, accounting.md)


def progress(message: str) -> None:
    print(f"[accounting {time.strftime('%H:%M:%S')}] {message}", flush=True)


def snapshot(sids: Iterable[int]) -> Snapshot:
    """User+system CPU seconds of every process of the sessions, with its whole command line."""
    return cpu_times(sids, whole_command=True)


Threads = dict[int, tuple[str, float, float]]  # native thread id -> (name, CPU seconds, of which in the kernel)


def thread_times(pid: int) -> Threads:
    """CPU seconds of each thread of `pid`, and its kernel (system) share, with its name (`/proc/.../comm`)."""
    out = {}
    with contextlib.suppress(psutil.Error):
        for thread in psutil.Process(pid).threads():
            with contextlib.suppress(OSError):
                name = Path(f"/proc/{pid}/task/{thread.id}/comm").read_text().strip()
                out[thread.id] = (name, thread.user_time + thread.system_time, thread.system_time)
    return out


def thread_cpu(before: Threads, after: Threads) -> dict[int, tuple[float, float]]:
    """(CPU seconds, of which in the kernel) each thread used between two `thread_times`."""
    zero = ("", 0.0, 0.0)
    return {
        tid: (cpu - before.get(tid, zero)[1], kernel - before.get(tid, zero)[2])
        for tid, (_, cpu, kernel) in after.items()
    }


def thread_rows(after: Threads, used: dict[int, tuple[float, float]], spy: Path | None) -> list[Any]:
    """(thread, CPU seconds, kernel seconds) of the threads that used any, busiest first; py-spy's names
    where it saw them."""
    names = thread_names(spy) if spy is not None and spy.exists() else {}
    rows = [(names.get(tid, after[tid][0]), cpu, kernel) for tid, (cpu, kernel) in used.items() if cpu > 0]
    return sorted(rows, key=lambda row: -row[1])


def short_name(cmdline: str) -> str:
    """A process's program (a Python program's script or module), e.g. `gcs_server`, `ray::ServeController`."""
    words = cmdline.split() or ["?"]
    name = os.path.basename(words[0])
    if name.startswith("python"):
        args = iter(words[1:])
        for word in args:
            if word == "-c":
                return "python -c"
            if word == "-m":
                return f"python -m {next(args, '')}"[:48]
            if not word.startswith("-"):
                return os.path.basename(word)[:48]
    return name[:48]


def modelserve_group(package: str) -> Callable[[str], str]:
    """Which part of the path a cluster process is, with `package`'s replica as `the replica`."""
    replica = re.compile(rf"ServeReplica:\S*:{re.escape(package)}(\.\w+)?(\s|$)")  # `.method` while in a call

    def group(cmdline: str) -> str:
        first = os.path.basename(cmdline.split(" ", 1)[0])
        if first == "haproxy":
            return "HAProxy"
        if "HAProxyManager" in first:
            return "HAProxyManager"
        if replica.search(cmdline):
            return "the replica"
        return "Ray's background processes"

    return group


def fastapi_group(cmdline: str) -> str:
    return "uvicorn's supervisor" if " -m uvicorn " in f" {cmdline} " else "uvicorn workers (2)"


def cpu_groups(before: Snapshot, after: Snapshot, group_of: Callable[[str], str]) -> dict[str, dict[str, Any]]:
    """CPU seconds by group between two snapshots, with the group's processes and its busiest ones."""
    groups: dict[str, dict[str, Any]] = {}
    for pid, (cmdline, cpu) in after.items():
        used = cpu - before.get(pid, ("", 0.0))[1]
        g = groups.setdefault(group_of(cmdline), {"cpu_s": 0.0, "idle_cpu_s": 0.0, "pids": [], "procs": {}})
        g["cpu_s"] += used
        g["pids"].append(pid)
        name = short_name(cmdline)
        g["procs"][name] = g["procs"].get(name, 0.0) + used
    for g in groups.values():
        g["top"] = sorted(g.pop("procs").items(), key=lambda kv: -kv[1])[:3]
    return groups


def charge_idle(result: dict[str, Any], idle: dict[int, float]) -> None:
    """Each group's `idle_cpu_s`: what its processes use in the same time while nothing is sent."""
    for group in result["groups"].values():
        group["idle_cpu_s"] = result["wall_s"] * sum(idle.get(pid, 0.0) for pid in group["pids"])


def idle_rates(sids: list[int], seconds: float) -> dict[int, float]:
    """Each process's CPU (cores) while nothing is sent."""
    progress(f"idle for {seconds:g} s")
    before, t0 = snapshot(sids), time.monotonic()
    time.sleep(seconds)
    after, wall = snapshot(sids), time.monotonic() - t0
    return {pid: (cpu - before.get(pid, ("", 0.0))[1]) / wall for pid, (_, cpu) in after.items()}


def warm_up(url: str, body: dict[str, Any]) -> None:
    with requests.Session() as session:
        for _ in range(WARMUP_REQUESTS):
            reply = session.post(url, json=body, timeout=30)
            if reply.status_code != 200:
                raise ServerError(f"{url} answered {reply.status_code} while warming up: {reply.text[:300]}")


def _profile(pid: int, seconds: float, out: Path, loaded: threading.Event, into: dict[str, Any]) -> None:
    """py-spy on `pid` while the load runs (it starts a second in): busy samples by stage, or why not."""
    loaded.wait(timeout=30)
    time.sleep(1.0)
    try:
        spy = pyspy(pid, seconds, out, rate_hz=SPY_HZ)
    except OSError as exc:
        into["error"] = f"py-spy did not start ({exc}); it comes with the bench extras: pip install -e '.[bench]'"
        return
    _, err = spy.communicate(timeout=seconds + 60)
    if spy.returncode != 0:
        into["error"] = f"py-spy failed ({spy.returncode}): {err.decode(errors='replace')[-800:]}"
    else:
        into["counts"] = by_thread(out)


def measure(
    label: str,
    url: str,
    sids: list[int],
    group_of: Callable[[str], str],
    args: Settings,
    spy_out: Path | None = None,
) -> dict[str, Any]:
    """`args.rate` requests/s for `args.seconds`: CPU per request by group (and by stage, with `spy_out`)."""
    progress(f"{label}: {args.rate:g} requests/s for {args.seconds:g} s")
    body, spied, loaded = sample(), dict[str, Any](), threading.Event()
    replica = next((pid for pid, (cmd, _) in snapshot(sids).items() if group_of(cmd) == "the replica"), None)
    spy_seconds = max(1, int(args.seconds) - 2)
    spy = None
    if spy_out is not None and replica is not None:
        spy = threading.Thread(target=_profile, args=(replica, spy_seconds, spy_out, loaded, spied))
        spy.start()
    threads_before = thread_times(replica) if replica else {}
    before, t0 = snapshot(sids), time.monotonic()
    loaded.set()
    load: FixedLoad = run_fixed(url, body, args.rate, args.seconds)
    after, wall = snapshot(sids), time.monotonic() - t0
    threads_after = thread_times(replica) if replica else {}
    if spy is not None:
        spy.join()
    groups = cpu_groups(before, after, group_of)
    groups["wrk (the client)"] = {"cpu_s": load.wrk_cpu_s, "idle_cpu_s": 0.0, "pids": [], "top": []}
    result = {"label": label, "wall_s": wall, **load.__dict__, "groups": groups}
    per_thread = thread_cpu(threads_before, threads_after)
    result["threads"] = thread_rows(threads_after, per_thread, spy_out)
    if "counts" in spied:
        cpu_s = {tid: cpu for tid, (cpu, _) in per_thread.items()}
        result["stages"] = us_per_request(spied["counts"], cpu_s, load.requests)
    elif spy_out is not None:
        result["stages_error"] = spied.get("error", f"no replica process of {label} found to profile")
    progress(f"{label}: {load.rate:,.0f} requests/s, p50 {load.p50_ms:.2f} ms, {load.errors} errors")
    return result


def write_project(work: Path, port: int, dashboard_port: int) -> Path:
    """A project of the no-compute sections (bench/noop), every key not set here the runtime's default."""
    project = work / "accounting"
    shutil.copytree(ROOT / "bench" / "noop", project / "algopkg", ignore=shutil.ignore_patterns("__pycache__"))
    (project / "algopkg" / "__init__.py").write_text("")
    (project / "Model_ZOO").mkdir()
    conf = f"[MODEL SERVE]\nport = {port}\ndashboard_port = {dashboard_port}\naddress = local\n"
    for package, cls, route, _ in PATHS:
        conf += f"\n[algopkg.{package}]\nbackend = {cls}\nroute = {route}\nmethod = POST\n"
    (project / "conf.ini").write_text(conf)
    return project


def measure_modelserve(checkout: Path, work: Path, args: Settings) -> list[dict[str, Any]]:
    port, dashboard_port = late_port(), free_port()
    project = write_project(work, port, dashboard_port)
    progress(f"starting a local cluster with {checkout / 'controller.py'}")
    results = []
    with applied(project, dashboard_port, checkout) as sids:
        for _, _, route, _ in PATHS:
            warm_up(f"http://127.0.0.1:{port}/{route}", sample())
        idle = idle_rates(sids, IDLE_SECONDS)
        for package, _, route, label in PATHS:
            spy_out = args.out / f"pyspy-accounting-{package}.txt" if args.profile else None
            url = f"http://127.0.0.1:{port}/{route}"
            results.append(measure(label, url, sids, modelserve_group(package), args, spy_out))
            if "the replica" not in results[-1]["groups"]:
                found = sorted({short_name(cmd) for cmd, _ in snapshot(sids).values()})
                raise ServerError(f"no process titled ServeReplica:...:{package} in the cluster; found {found}")
        # Ray's background processes are busier for a while after a deploy: the lower of two idle rates counts.
        after = idle_rates(sids, IDLE_SECONDS)
    idle = {pid: min(rate, after.get(pid, rate)) for pid, rate in idle.items()}
    for result in results:
        charge_idle(result, idle)
    return results


def measure_fastapi(work: Path, args: Settings) -> dict[str, Any]:
    progress("starting FastAPI's no-compute peer")
    with fastapi_async(work, sample(), path="/noop") as running:
        warm_up(running.url, sample())
        idle = idle_rates(running.sids, IDLE_SECONDS)
        result = measure(FASTAPI_LABEL, running.url, running.sids, fastapi_group, args)
    charge_idle(result, idle)
    return result


def git_commit(checkout: Path) -> str:
    done = subprocess.run(
        ["git", "-C", str(checkout), "log", "-1", "--format=%h (%cs)"], capture_output=True, text=True
    )
    return done.stdout.strip() or "(not a git checkout)"


def run(checkout: Path, work: Path, args: Settings) -> dict[str, Any]:
    """The whole accounting: modelserve's two no-compute paths, then FastAPI's, at the same rate."""
    args.out.mkdir(parents=True, exist_ok=True)
    began = time.monotonic()
    data: dict[str, Any] = {"checkout": str(checkout), "commit": git_commit(checkout), "rate": args.rate}
    data["seconds"] = args.seconds
    data["paths"] = measure_modelserve(checkout, work, args)
    data["fastapi"] = measure_fastapi(work, args)
    data["wall_s"] = round(time.monotonic() - began, 1)
    return data


def _whole(result: dict[str, Any], key: str = "cpu_s") -> float:
    """CPU seconds of every server-side group (all but wrk)."""
    return sum(g[key] for name, g in result["groups"].items() if not name.startswith("wrk"))


def _group_rows(result: dict[str, Any]) -> list[tuple[str, ...]]:
    n, wall = result["requests"], result["wall_s"]
    groups = sorted(result["groups"].items(), key=lambda kv: (kv[0].startswith("wrk"), -kv[1]["cpu_s"]))
    whole = {"cpu_s": _whole(result), "idle_cpu_s": _whole(result, "idle_cpu_s"), "top": []}
    groups.insert(len(groups) - 1, (f"**{WHOLE}**", whole))
    rows = []
    for name, g in groups:
        top = ", ".join(f"{proc} {1e6 * cpu / n:.0f}" for proc, cpu in g["top"] if cpu > 0)
        cells = (f"{100 * g['cpu_s'] / wall:.1f}", f"{1e6 * g['cpu_s'] / n:.0f}")
        rows.append((name, *cells, f"{1e6 * (g['cpu_s'] - g['idle_cpu_s']) / n:.0f}", top))
    return rows


def cpu_table(data: dict[str, Any]) -> list[str]:
    lines = [
        "| server | rate req/s | p50 ms | errors | process | % of a core | µs/request | net of idle µs/request "
        "| busiest processes (µs/request) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for result in [*data["paths"], data["fastapi"]]:
        head = (result["label"], f"{result['rate']:,.0f}", f"{result['p50_ms']:.2f}", str(result["errors"]))
        for i, row in enumerate(_group_rows(result)):
            lines.append("| " + " | ".join((*(head if i == 0 else ("", "", "", "")), *row)) + " |")
    return lines


def target_lines(data: dict[str, Any]) -> list[str]:
    fast = data["fastapi"]
    theirs, theirs_net = _per_request(fast)
    out = []
    for result in data["paths"]:
        ours, ours_net = _per_request(result)
        mark = "MET" if ours <= TARGET_X * theirs else "NOT MET"
        out.append(
            f"{mark:>7}  CPU per request of our whole no-compute path <= {TARGET_X}x FastAPI's: {result['label']} "
            f"{ours:.0f} µs against {theirs:.0f} ({ours / theirs:.2f}x); net of idle {ours_net:.0f} against "
            f"{theirs_net:.0f} ({ours_net / theirs_net:.2f}x)"
        )
    held = [r["label"] for r in [*data["paths"], fast] if abs(r["rate"] - data["rate"]) > 0.05 * data["rate"]]
    if held:
        out.append(f"   note  the rate was not held (more than 5% off {data['rate']:g}/s) for: {'; '.join(held)}")
    return out


def _per_request(result: dict[str, Any]) -> tuple[float, float]:
    n = result["requests"]
    return 1e6 * _whole(result) / n, 1e6 * (_whole(result) - _whole(result, "idle_cpu_s")) / n


def stage_table(data: dict[str, Any]) -> list[str]:
    paths = [r for r in data["paths"] if "stages" in r]
    if not paths:
        return []
    lines = ["| stage | " + " | ".join(r["label"] for r in paths) + " |", "|---" * (len(paths) + 1) + "|"]
    for stage in (*STAGES, NATIVE):
        if any(r["stages"].get(stage) for r in paths):
            lines.append(f"| {stage} | " + " | ".join(f"{r['stages'].get(stage, 0):.1f}" for r in paths) + " |")
    summed = " | ".join(f"{sum(r['stages'].values()):.0f}" for r in paths)
    replica = " | ".join(f"{1e6 * r['groups']['the replica']['cpu_s'] / r['requests']:.0f}" for r in paths)
    lines.append(f"| **all stages** | {summed} |")
    lines.append(f"| the replica's CPU (psutil, its process) | {replica} |")
    for result in paths:
        n = result["requests"]
        threads = ", ".join(
            f"{name} {1e6 * cpu / n:.0f} ({1e6 * kernel / n:.0f} in the kernel)"
            for name, cpu, kernel in result["threads"][:6]
        )
        lines.append(f"\nThe replica's threads (psutil, µs/request), {result['label']}: {threads}")
    return lines


def render(data: dict[str, Any]) -> str:
    parts = [
        f"CPU accounting of the no-compute path ({data['checkout']} at {data['commit']}): {data['rate']:g} "
        f"requests/s by wrk for {data['seconds']:g} s each, {data['wall_s']:.0f} s in all. µs/request = the group's "
        "CPU (psutil) / requests answered; net of idle subtracts what its processes use while nothing is sent "
        f"({IDLE_SECONDS:g} s before the load; for the cluster, the lower of that and {IDLE_SECONDS:g} s after).",
        "",
        *cpu_table(data),
        "",
        "Target (issue 24):",
        "```",
        *target_lines(data),
        "```",
    ]
    parts += [f"No stage table for {r['label']}: {r['stages_error']}" for r in data["paths"] if "stages_error" in r]
    if stages := stage_table(data):
        parts += [
            "",
            f"The replica's request path by stage, µs of CPU per request: py-spy samples it at {SPY_HZ} Hz during "
            "the load, each sample counts in the stage of its leaf-most frame that names one (bench/stages.py), "
            "and each thread's CPU (psutil) is shared out over its stages in proportion to its samples (py-spy "
            "counts a thread waiting for the GIL as busy). Threads it cannot see (C++) are a row of their own. "
            '"event loop" is an upper bound, the rows above it lower bounds: it holds the samples that show '
            "no Python frame under uvloop's loop, and sampling without pausing the replica reads part of a "
            "stack now and then (a native, pausing py-spy of a replica found about 15% of the loop thread's busy "
            "samples with no Python frame under the loop, against about 45% here):",
            "",
            *stages,
        ]
    return "\n".join(parts) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkout", type=Path, default=ROOT, help="a modelserve checkout with its own .venv")
    parser.add_argument("--rate", type=float, default=RATE, help=f"requests/s (default {RATE:g})")
    parser.add_argument("--seconds", type=float, default=SECONDS, help=f"seconds of load per path ({SECONDS:g})")
    parser.add_argument("--no-profile", action="store_true", help="skip py-spy (no stage table)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results", help="where results go")
    args = parser.parse_args(argv)
    args.checkout = args.checkout.resolve()
    if not (args.checkout / ".venv" / "bin" / "python").exists() or not (args.checkout / "controller.py").exists():
        parser.error(f"--checkout {args.checkout}: needs controller.py and .venv/bin/python (run `make setup` there)")
    settings = Settings(args.rate, args.seconds, not args.no_profile, args.out)
    with tempfile.TemporaryDirectory(prefix="modelserve-accounting-") as work:
        data = run(args.checkout, Path(work), settings)
    text = render(data)
    print("\n" + text)
    (args.out / "accounting.md").write_text(text)
    (args.out / "accounting.json").write_text(json.dumps(data, indent=2) + "\n")
    progress(f"written to {args.out / 'accounting.md'} and accounting.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
