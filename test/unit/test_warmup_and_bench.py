import json
from pathlib import Path

import pytest

from modelserve import bench
from modelserve.warmup import WarmupError, read_warmup


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ({"x": 1}, [{"x": 1}]),
        ([{"x": 1}, {"x": 2}], [{"x": 1}, {"x": 2}]),
        ({"params": {"x": 1}, "repeat": 3}, [{"x": 1}] * 3),
    ],
)
def test_warmup_shapes(tmp_path: Path, content: object, expected: list) -> None:
    (tmp_path / "w.json").write_text(json.dumps(content))
    assert read_warmup(tmp_path / "w.json") == expected


@pytest.mark.parametrize("content", ["[1, 2]", "[]", '{"params": {}, "repeat": 0}', "not json"])
def test_bad_warmup_files(tmp_path: Path, content: str) -> None:
    (tmp_path / "w.json").write_text(content)
    with pytest.raises(WarmupError):
        read_warmup(tmp_path / "w.json")


def test_percentiles_and_summary() -> None:
    values = [float(v) for v in range(1, 101)]
    assert bench.percentile(values, 50) == 50 and bench.percentile(values, 99) == 99
    assert bench.percentile(values, 100) == 100 and bench.percentile([], 50) == 0
    tally = bench.Tally(latencies_s=[0.001, 0.002, 0.003, 0.004], non_2xx=1, errors=1)
    summary = bench.summarize(tally, 2.0)
    assert (summary.requests, summary.rps, summary.p50_ms, summary.max_ms) == (5, 2.5, 2.0, 4.0)
    assert "non-2xx 1  errors 1" in summary.render()


def test_bench_sends_exactly_the_requests_asked_for() -> None:
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    seen = []

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def do_POST(self) -> None:  # noqa: N802
            self.rfile.read(int(self.headers["Content-Length"]))
            seen.append(1)
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/"
        summary = bench.run(url, {"x": 1}, concurrency=8, duration_s=30, max_requests=200, progress=False)
    finally:
        server.shutdown()
        server.server_close()
    assert summary.requests == 200 and len(seen) == 200 and summary.non_2xx == summary.errors == 0


def test_the_original_template_bench_package_computes_what_the_batched_one_does() -> None:
    import sys

    from modelserve.backend import create_backend

    root = Path(__file__).resolve().parents[2]
    sys.path.insert(0, str(root))
    try:
        from algopkg.BenchMLP.backend import BenchMLP
        from algopkg.BenchMLPLegacy.backend import algo_backend
    finally:
        sys.path.remove(str(root))
    params = json.loads((root / "algopkg" / "BenchMLP" / "warmup.json").read_text())["params"]
    legacy, batched = create_backend(algo_backend, "", []), create_backend(BenchMLP, "", [])
    assert legacy.infer(params) == batched.infer(params)
