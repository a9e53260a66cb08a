"""bench/'s accounting pieces without Ray: the fixed-rate wrk script, the stage of a py-spy stack, which part
of the path a process is, the accounting table's sums and target, and the targets against the faster FastAPI row."""

from __future__ import annotations

import http.server
import json
import shutil
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))

import accounting  # noqa: E402
import report  # noqa: E402
import stages  # noqa: E402
from fixedrate import run_fixed  # noqa: E402

REPLICA = "thread (1): AsyncIO Thread: default;Thread.run (threading.py:982);_run_once (asyncio/base_events.py:1922)"


@pytest.mark.parametrize(
    ("leaf", "stage"),
    [
        ("success_response (modelserve/envelope.py:108);dumps (json/__init__.py:231)", "envelope"),
        (
            "_route (modelserve/pipeline.py:200);parse_params (modelserve/inputs.py:80);loads (json/__init__.py:346)",
            "parsing",
        ),
        (
            "_route (modelserve/pipeline.py:202);validate (modelserve/inputs.py:180);validate_python (pydantic/x.py:1)",
            "Params",
        ),
        (
            "_record_errors_and_metrics (ray/serve/_private/replica.py:1499);info (logging/__init__.py:1477)",
            "access log",
        ),
        ("_record_errors_and_metrics (ray/serve/_private/replica.py:1510);inc (ray/util/metrics.py:200)", "Serve's"),
        ("answered (modelserve/ingress.py:158);answered (modelserve/metrics.py:82)", "metrics (ours)"),
        ("run_each (modelserve/modelcalls.py:140);call (modelserve/modelcalls.py:70)", "hand-off"),
        ("_timed (modelserve/modelcalls.py:166);_model_inference (/tmp/pkg/algopkg/NoopLegacy/backend.py:16)", "model"),
        ("handle (modelserve/pipeline.py:140);uuid4 (uuid.py:723)", "the rest of modelserve"),
        ("__call__ (ray/serve/_private/replica.py:3000);__call__ (starlette/routing.py:70)", "Serve's ingress"),
    ],
)
def test_a_sample_counts_in_the_stage_of_its_leaf_most_named_frame(leaf: str, stage: str) -> None:
    assert stage in stages.stage_of(f"{REPLICA};{leaf}")


def test_uvloop_running_natively_is_the_event_loop_and_an_unknown_stack_is_other() -> None:
    assert stages.stage_of("thread (1): AsyncIO Thread: default;Thread.run (threading.py:982)").startswith("event loop")
    assert stages.stage_of("thread (2): x;<module> (something.py:1)") == stages.OTHER


def test_each_thread_s_cpu_is_shared_out_over_its_stages_by_its_samples(tmp_path: Path) -> None:
    raw = tmp_path / "raw.txt"
    envelope = f"{REPLICA};success_response (modelserve/envelope.py:108)"
    model = "thread (7): model;_work (modelserve/modelcalls.py:87)"
    raw.write_text(f"{envelope} 30\n{REPLICA};parse_params (modelserve/inputs.py:80) 10\n{envelope} 10\n{model} 90\n")
    counts = stages.by_thread(raw)
    assert sum(counts[1].values()) == 50 and sum(counts[7].values()) == 90
    assert stages.thread_names(raw) == {1: "AsyncIO Thread: default", 7: "model"}
    # 0.5 s on the loop thread, 0.05 s on the model thread (90 "busy" samples waiting for the GIL), 0.1 s native
    us = stages.us_per_request(counts, {1: 0.5, 7: 0.05, 9: 0.1}, requests=1000)
    assert us == {
        "envelope (answer JSON, Response)": pytest.approx(400),
        "parsing (JSON params)": pytest.approx(100),
        "model call hand-off (model thread, futures)": pytest.approx(50),
        stages.NATIVE: pytest.approx(100),
    }


def test_each_cluster_process_is_put_in_its_part_of_the_path() -> None:
    group = accounting.modelserve_group("NoopLegacy")
    assert group("/usr/sbin/haproxy -db -f /tmp/ray/haproxy.cfg") == "HAProxy"
    assert group("ray::HAProxyManager") == "HAProxyManager"
    assert group("ray::ServeReplica:NoopLegacy:NoopLegacy") == "the replica"
    assert group("ray::ServeReplica:NoopLegacy:NoopLegacy.check_health") == "the replica"
    for other in ("ray::ServeReplica:NoopBatched:NoopBatched", "ray::ServeReplica:NoopLegacyX:NoopLegacyX"):
        assert group(other) == "Ray's background processes"
    assert group("/venv/lib/ray/core/src/ray/gcs/gcs_server --log_dir=/tmp") == "Ray's background processes"
    assert accounting.fastapi_group("/venv/bin/python -m uvicorn bench.peers.fastapi_async_app:app") == (
        "uvicorn's supervisor"
    )
    assert accounting.fastapi_group("/venv/bin/python -B -c from multiprocessing.spawn import spawn_main") == (
        "uvicorn workers (2)"
    )
    assert accounting.short_name("/venv/bin/python -m ray.dashboard.agent --x") == "python -m ray.dashboard.agent"
    assert accounting.short_name("/x/gcs_server --log_dir=/tmp") == "gcs_server"


def test_cpu_groups_sum_each_process_s_cpu_between_snapshots() -> None:
    before = {1: ("haproxy -db", 1.0), 2: ("ray::ServeReplica:A:Pkg", 5.0)}
    after = {1: ("haproxy -db", 1.5), 2: ("ray::ServeReplica:A:Pkg", 7.0), 3: ("gcs_server", 0.25)}  # 3: new
    groups = accounting.cpu_groups(before, after, accounting.modelserve_group("Pkg"))
    assert {name: g["cpu_s"] for name, g in groups.items()} == {
        "HAProxy": 0.5,
        "the replica": 2.0,
        "Ray's background processes": 0.25,
    }
    result = {"wall_s": 10.0, "groups": groups}
    accounting.charge_idle(result, {2: 0.01, 3: 0.02})
    assert groups["the replica"]["idle_cpu_s"] == pytest.approx(0.1)
    assert groups["HAProxy"]["idle_cpu_s"] == 0


def _result(label: str, groups: dict[str, tuple[float, float]], requests: int = 5000) -> dict[str, Any]:
    return {
        "label": label,
        "rate": 500.0,
        "requests": requests,
        "wall_s": 10.0,
        "p50_ms": 0.5,
        "errors": 0,
        "groups": {n: {"cpu_s": c, "idle_cpu_s": i, "pids": [], "top": [(n, c)]} for n, (c, i) in groups.items()},
    }


def test_the_accounting_target_compares_the_whole_server_side_without_wrk() -> None:
    ours = _result("ours", {"the replica": (2.0, 0.0), "HAProxy": (0.5, 0.0), "wrk (the client)": (9.0, 0.0)})
    cheap = _result("ours, cheap", {"the replica": (1.0, 0.0), "Ray's background processes": (0.6, 0.5)})
    fastapi = _result("fastapi", {"uvicorn workers (2)": (1.5, 0.0)})
    data = {"checkout": "/x", "commit": "abc", "rate": 500.0, "seconds": 10.0, "wall_s": 60.0}
    data |= {"paths": [ours, cheap], "fastapi": fastapi}
    lines = accounting.target_lines(data)
    assert lines[0].strip().startswith("NOT MET") and "500 µs against 300 (1.67x)" in lines[0]
    assert lines[1].strip().startswith("MET") and "320 µs against 300 (1.07x)" in lines[1]  # 1.6 s / 5,000
    assert "net of idle 220 against 300" in lines[1]
    text = accounting.render(data)
    assert "| **whole path (without wrk)** | 25.0 | 500 | 500 |" in text
    assert "| wrk (the client) | 90.0 | 1800 | 1800 |" in text


def _bench(rows: dict[str, dict[int, tuple[float, float, float]]]) -> dict[str, Any]:
    """run.py's data: name -> conns -> (RPS, p50 ms, p99 ms), one round each."""
    servers = {}
    for name, by_conns in rows.items():
        runs = {str(c): {"rps": r, "p50_ms": p50, "p99_ms": p99, "errors": 0} for c, (r, p50, p99) in by_conns.items()}
        servers[name] = {"label": name, "rounds": [{"runs": runs}]}
    return {"servers": servers, "inprocess": None}


def test_the_targets_are_against_the_faster_fastapi_row_at_each_connection_count() -> None:
    data = _bench(
        {
            "modelserve": {1: (900, 1.2, 2.0), 32: (3000, 10.0, 20.0)},
            "legacy": {1: (800, 1.3, 2.0), 32: (1500, 20.0, 30.0)},
            "fastapi": {1: (1000, 0.9, 1.5), 32: (2500, 12.0, 25.0)},  # the faster one at 32 connections
            "fastapiasync": {1: (1100, 0.6, 1.0), 32: (1800, 17.0, 40.0)},  # the faster one at 1 connection
        }
    )
    (batched32, ok32), (batched1, ok1), (legacy32, _), (legacy1, _), (auto32, unmeasured) = report.targets(data)[:5]
    assert "replicas = auto" in auto32 and unmeasured is None  # a row not run: no verdict
    assert "fastapi 2,500" in batched32 and "1.20x" in batched32 and ok32 is False  # 3,000 < 1.5 x 2,500
    assert "fastapiasync p50 0.60" in batched1 and ok1 is False  # 1.2 > 0.6 + 0.5
    assert "original-template RPS 1,500 >= 1.0x fastapi 2,500" in legacy32
    assert "fastapiasync" in legacy1
    table = report.markdown(data)
    assert "(2 workers, sync def) | 32 | 2,500 | 12.00 | 25.00 | 0 | 1.00x |" in table  # the best peer at 32
    assert "async def, access log off, 1 BLAS thread | 32 | 1,800 | 17.00 | 40.00 | 0 | 0.72x |" in table
    assert "| modelserve (defaults) | 1 | 900 | 1.20 | 2.00 | 0 | 0.82x |" in table  # 900 / fastapiasync's 1,100


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    wbufsize = -1  # the answer in one write: no Nagle stall between its head and its body
    disable_nagle_algorithm = True

    def log_message(self, *args: object) -> None:
        pass

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        data = json.dumps({"class": 0}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # wrk closes its connections at the end


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    httpd = _Server(("127.0.0.1", 0), _Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/noop"
    httpd.shutdown()
    httpd.server_close()


@pytest.mark.skipif(shutil.which("wrk") is None, reason="needs wrk (apt-get install wrk)")
@pytest.mark.parametrize("rate", [100.0, 250.0])
def test_wrk_holds_the_rate_asked_for_not_the_server_s_fastest(server: str, rate: float) -> None:
    load = run_fixed(server, {"x": [1.0, 2.0]}, rate, seconds=2.0, conns=4)
    assert load.errors == 0
    assert load.rate == pytest.approx(rate, rel=0.1), load
