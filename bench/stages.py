"""A replica's request path by stage, from py-spy's raw stacks: each busy sample goes to the stage of the
leaf-most frame that names one, so json under the envelope counts as envelope and under the parser as parsing;
each thread's CPU (psutil) is then shared out over its stages in proportion to its samples."""

from __future__ import annotations

import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

RATE_HZ = 100  # py-spy's samples per second

#: (stage, substrings of a frame's file, function names or None for any), tried in order for each frame,
#: from the leaf up. A frame reads `function (path/to/file.py:line)`.
RULES: tuple[tuple[str, tuple[str, ...], tuple[str, ...] | None], ...] = (
    (
        "model call hand-off (model thread, futures)",
        ("modelserve/modelcalls.py", "concurrent/futures/", "queue.py"),
        None,
    ),
    ("model (package code, original-template adapter)", ("/algopkg/", "modelserve/backend.py"), None),
    ("our key check", ("modelserve/auth.py",), None),
    ("our key check", ("modelserve/pipeline.py",), ("require_key",)),
    ("Params (validation)", ("modelserve/inputs.py",), ("validate",)),
    ("Params (validation)", ("pydantic",), None),
    ("limits (body size, timeout_s)", ("modelserve/inputs.py",), ("read_body",)),
    ("limits (body size, timeout_s)", ("modelserve/pipeline.py",), ("within_limit", "read_body", "call_model")),
    ("limits (body size, timeout_s)", ("asyncio/tasks.py",), ("wait_for",)),
    ("parsing (JSON params)", ("modelserve/inputs.py",), None),
    ("batching (Serve's batch queue, ours)", ("ray/serve/batching.py",), None),
    ("batching (Serve's batch queue, ours)", ("modelserve/pipeline.py",), ("_infer_in_batch", "infer_batch", "_one")),
    ("envelope (answer JSON, Response)", ("modelserve/envelope.py", "starlette/responses.py"), None),
    ("metrics (ours)", ("modelserve/metrics.py",), None),
    ("metrics (ours)", ("modelserve/ingress.py",), ("answered", "batched", "idle", "_show_in_flight")),
    (
        "metrics (Serve's)",
        ("ray/serve/metrics.py", "ray/util/metrics.py", "metrics_utils.py", "request_ingress_metrics.py"),
        None,
    ),
    ("metrics (Serve's)", ("ray/serve/_private/replica.py",), ("record_request_metrics", "_report_cached_metrics")),
    (
        "access log (Serve's, ours)",
        ("modelserve/accesslog.py", "logging/", "ray/serve/_private/logging_utils.py"),
        None,
    ),
    ("our request path (the rest of modelserve/)", ("modelserve/",), None),
    (
        "Serve's ingress (HTTP server, replica request handling)",
        ("ray/serve/", "uvicorn/", "h11/", "httptools/", "starlette/", "http/"),
        None,
    ),
    ("event loop (asyncio, uvloop)", ("asyncio/", "uvloop/", "selectors.py"), None),
    # The replica's loop thread: uvloop runs natively under Thread.run (socket I/O, its own callbacks).
    ("event loop (asyncio, uvloop)", ("threading.py",), ("Thread.run",)),
    ("Ray's core worker (main thread, native)", ("ray/_private/worker.py",), ("Worker.main_loop",)),
)
OTHER = "other (GC, imports, unrecognised frames)"
STAGES = tuple(dict.fromkeys([name for name, _, _ in RULES] + [OTHER]))
NATIVE = "threads without Python frames (Ray's C++ core worker, gRPC)"


def _matches(frame: str, files: tuple[str, ...], functions: tuple[str, ...] | None) -> bool:
    if not any(f in frame for f in files):
        return False
    return functions is None or frame.split(" (", 1)[0] in functions


def stage_of(stack: str) -> str:
    """The stage of one sample: `thread;frame;...;leaf frame` (py-spy --threads, raw format)."""
    for frame in reversed(stack.split(";")[1:]):  # the first is the thread
        for name, files, functions in RULES:
            if _matches(frame, files, functions):
                return name
    return OTHER


def by_thread(raw: Path) -> dict[int, Counter[str]]:
    """Busy samples by native thread id and stage, from py-spy's raw output (`thread (tid): name;...;leaf count`)."""
    counts: dict[int, Counter[str]] = {}
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            tid = int(m.group(1)) if (m := re.match(r"thread \((\d+)\)", stack)) else 0
            counts.setdefault(tid, Counter())[stage_of(stack)] += int(count)
    return counts


def thread_names(raw: Path) -> dict[int, str]:
    """py-spy's name of each thread it sampled (Python's names: `model`, `AsyncIO Thread: default`, ...)."""
    names = {}
    for line in raw.read_text().splitlines():
        if m := re.match(r"thread \((\d+)\): ([^;]+)", line):
            names[int(m.group(1))] = m.group(2)
    return names


def us_per_request(counts: dict[int, Counter[str]], cpu_s: dict[int, float], requests: float) -> dict[str, float]:
    """Microseconds of CPU per request by stage: each thread's CPU (psutil, `cpu_s` by thread id) shared out
    in proportion to its busy samples, since py-spy counts a thread that waits for the GIL as busy. Threads
    py-spy did not sample (Ray's C++ threads) count under NATIVE."""
    us: Counter[str] = Counter()
    for tid, cpu in cpu_s.items():
        samples = counts.get(tid)
        if not samples:
            us[NATIVE] += cpu / requests * 1e6
            continue
        total = sum(samples.values())
        for stage, n in samples.items():
            us[stage] += cpu * n / total / requests * 1e6
    return {stage: us[stage] for stage in (*STAGES, NATIVE) if us[stage]}


def pyspy(pid: int, seconds: float, out: Path, *extra: str, rate_hz: int = RATE_HZ) -> subprocess.Popen[bytes]:
    """py-spy (this venv's) recording `pid`'s busy samples, every thread, for `seconds`, raw stacks into `out`."""
    cmd = [str(Path(sys.executable).parent / "py-spy"), "record", "-p", str(pid), "-d", str(int(seconds))]
    cmd += ["-r", str(rate_hz), "--threads", "--nonblocking", "--format", "raw", "-o", str(out), *extra]
    print("$", " ".join(cmd), flush=True)
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
