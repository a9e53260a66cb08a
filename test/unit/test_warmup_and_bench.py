import json
from collections import Counter
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
    tally = bench.Tally(
        latencies_s=[0.001, 0.002, 0.003, 0.004], codes=Counter({503: 1}), error_kinds=Counter({"timeout": 1})
    )
    summary = bench.summarize(tally, 2.0)
    assert (summary.requests, summary.rps, summary.p50_ms, summary.max_ms) == (5, 2.5, 2.0, 4.0)
    assert "non-2xx 1 (503: 1)  errors 1 (timeout: 1)" in summary.render()
    assert "non-2xx 0  errors 0" in bench.summarize(bench.Tally(latencies_s=[0.001]), 1.0).render()


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


class _Recorder:
    """A local aiohttp server (no Ray) that records what each request carried and answers
    200, 401, 200, 503 in turn; a request to /cut has its connection closed unanswered."""

    def __init__(self) -> None:
        import asyncio
        import threading

        self.requests: list[dict[str, object]] = []
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()
        assert self.ready.wait(10), "the aiohttp test server did not start"

    async def _handle(self, request: object) -> object:
        from aiohttp import web

        assert isinstance(request, web.Request)
        if request.path == "/cut":
            assert request.transport is not None
            request.transport.close()
            return web.Response()
        seen: dict[str, object] = {"headers": dict(request.headers), "content_type": request.content_type}
        if request.content_type == "multipart/form-data":
            form = await request.post()
            seen["form"] = {k: (v.filename, v.file.read()) if hasattr(v, "file") else v for k, v in form.items()}
        else:
            seen["body"] = await request.read()
        self.requests.append(seen)
        return web.Response(status=(200, 401, 200, 503)[(len(self.requests) - 1) % 4], text="{}")

    def _serve(self) -> None:
        from aiohttp import web

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)  # type: ignore[arg-type]
        self.runner = web.AppRunner(app)
        self.loop.run_until_complete(self.runner.setup())
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        self.loop.run_until_complete(site.start())
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.ready.set()
        self.loop.run_forever()

    def close(self) -> None:
        import asyncio

        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture
def recorder() -> object:
    server = _Recorder()
    yield server
    server.close()


def _bench(conf: Path, *args: str) -> int:
    from modelserve.cli import main

    return main(["bench", "-c", str(conf), "-C", "4", "-d", "30", *args])


@pytest.fixture
def conf(tmp_path: Path) -> Path:
    from helpers import ECHO_SECTION, make_project, write_conf

    return write_conf(make_project(tmp_path), {}, ECHO_SECTION)


def test_bench_sends_headers_and_a_form_and_counts_answers_by_code(
    recorder: _Recorder, conf: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image = tmp_path / "digit.png"
    image.write_bytes(b"\x89PNG not really")
    url = f"http://127.0.0.1:{recorder.port}/extract"
    args = ("--url", url, "-n", "20", "-H", "Authorization: Bearer KEY-123", "-H", "x-team:  blue ")
    assert _bench(conf, *args, "--form", f"image=@{image}", "--form", "invert=1") == 1  # some were not 2xx
    out = capsys.readouterr().out
    assert len(recorder.requests) == 20
    for seen in recorder.requests:
        assert seen["headers"]["Authorization"] == "Bearer KEY-123" and seen["headers"]["x-team"] == "blue"  # type: ignore[index]
        assert seen["form"] == {"image": ("digit.png", b"\x89PNG not really"), "invert": "1"}, seen
    assert "requests 20 " in out and "non-2xx 10 (401: 5, 503: 5)  errors 0" in out, out


def test_bench_sends_a_raw_body_with_its_content_type(
    recorder: _Recorder, conf: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    raw = tmp_path / "body.bin"
    raw.write_bytes(bytes(range(256)))
    url = f"http://127.0.0.1:{recorder.port}/extract"
    assert _bench(conf, "--url", url, "-n", "3", "--body-file", str(raw), "--content-type", "image/png") == 1
    assert [(s["content_type"], s["body"]) for s in recorder.requests] == [("image/png", bytes(range(256)))] * 3
    assert "non-2xx 1 (401: 1)  errors 0" in capsys.readouterr().out
    # A -H Content-Type replaces the payload's own.
    recorder.requests.clear()
    assert _bench(conf, "--url", url, "-n", "1", "--body-file", str(raw), "-H", "content-type: text/plain") == 0
    assert [s["content_type"] for s in recorder.requests] == ["text/plain"]


def test_bench_counts_errors_by_kind(recorder: _Recorder, conf: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import asyncio
    import socket

    with socket.socket() as sock:  # a port that nothing listens on
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]
    body = conf.parent / "params.json"
    body.write_text('{"x": 1}')
    assert _bench(conf, "--url", f"http://127.0.0.1:{closed}/x", "--body", str(body), "-n", "3") == 1
    assert "non-2xx 0  errors 3 (connect: 3)" in capsys.readouterr().out
    assert _bench(conf, "--url", f"http://127.0.0.1:{recorder.port}/cut", "--body", str(body), "-n", "3") == 1
    assert "non-2xx 0  errors 3 (read: 3)" in capsys.readouterr().out
    assert bench.error_kind(asyncio.TimeoutError()) == "timeout"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("-H", "Authorization Bearer KEY"), "-H 'Authorization Bearer KEY': write it as 'Name: value'"),
        (("--form", "image"), "--form 'image': write it as name=value or name=@file"),
        (("--form", "image=@/absent.png"), "bench: --form /absent.png: cannot read it"),
        (("--body-file", "/absent.bin"), "bench: --body-file /absent.bin: cannot read it"),
    ],
)
def test_bench_options_that_cannot_be_used_say_how_to_write_them(
    conf: Path, args: tuple[str, ...], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    body = () if {"--form", "--body-file"} & set(args) else ("--body", str(conf.parent / "params.json"))
    (conf.parent / "params.json").write_text('{"x": 1}')
    assert _bench(conf, "--url", "http://127.0.0.1:9/x", "-n", "1", *body, *args) == 2
    assert message in capsys.readouterr().err
