"""The wrk harness (test/wrk.py) against a tiny local HTTP server: what it counts is what happened."""

from __future__ import annotations

import http.server
import itertools
import json
import socket
import threading
import time
from collections.abc import Iterator

import pytest
from wrk import WrkLoad, WrkResult, assert_no_failure, lua_string, parse_output

from modelserve.node import free_port


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as wrk expects
    counter = itertools.count()

    def log_message(self, *args: object) -> None:
        pass

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        n = next(self.counter)
        if self.path == "/slow":
            time.sleep(1.2)
        if self.path == "/cut" and n % 4 == 3:  # a connection closed mid-answer: a read error
            self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nshort")
            self.close_connection = True
            return
        status = 503 if self.path == "/some-fail" and n % 5 == 4 else 200
        marker = "" if self.path == "/no-marker" and n % 2 else "MARK"
        echo = {"method": self.command, "body": body.decode(), "token": self.headers.get("x-token"), "m": marker}
        data = json.dumps(echo).encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("X-Section", "a" if n % 2 else "b c")
        self.end_headers()
        self.wfile.write(data)


class _Closing(_Handler):
    protocol_version = "HTTP/1.0"


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # a client that goes away mid-answer is what these tests do


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    httpd = _Server(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def run(url: str, seconds: float = 0.6, **options: object) -> WrkResult:
    with WrkLoad(url, connections=4, warmup_s=0.1, **options) as load:  # type: ignore[arg-type]
        time.sleep(seconds)
    assert load.result is not None
    return load.result


def test_a_clean_run_counts_every_answer_and_sends_the_body_and_headers(server: str) -> None:
    result = run(f"{server}/ok", body={"x": 'a "quoted" \\ text é'}, headers={"x-token": "t1"}, marker='"x-token"')
    assert result.requests > 0 and result.by_status.keys() == {200}, result.summary()
    assert result.unmarked == result.requests  # the marker is checked: the echo has no "x-token" key
    result = run(
        f"{server}/ok",
        body={"x": 'a "quoted" \\ text é'},
        headers={"x-token": "t1"},
        marker='"body": "{\\"x\\": \\"a \\\\\\"quoted\\\\\\" \\\\\\\\ text \\\\u00e9\\"}", "token": "t1"',
    )
    assert result.failed == 0 and result.unmarked == 0, result.summary()
    assert_no_failure(result, "a clean run")
    assert f"0 failed of {result.requests:,} requests" in result.summary()


def test_non_2xx_answers_are_counted_by_status(server: str) -> None:
    result = run(f"{server}/some-fail")
    assert result.by_status.keys() == {200, 503}, result.summary()
    assert result.failed == result.non_2xx == result.by_status[503] > 0
    assert "503: " in result.summary() and result.samples.keys() == {503}
    assert '"method": "POST"' in result.samples[503] and "a 503: " in result.summary(), result.samples
    with pytest.raises(AssertionError, match="503"):
        assert_no_failure(result, "some fail")


def test_a_missing_body_marker_or_header_is_a_failure(server: str) -> None:
    result = run(f"{server}/no-marker", marker="MARK")
    assert 0 < result.unmarked < result.requests and result.failed == result.unmarked, result.summary()
    result = run(f"{server}/ok", expect_header=("x-section", "b c"))
    assert 0 < result.unmarked < result.requests, result.summary()
    assert run(f"{server}/ok", expect_header=("X-SECTION", None)).failed == 0


def test_a_header_is_counted_by_value(server: str) -> None:
    result = run(f"{server}/ok", count_header="X-Section")
    assert result.by_header.keys() == {"a", "b c"} and sum(result.by_header.values()) == result.requests
    assert "answered by" in result.summary()


def test_socket_errors_are_counted_by_kind(server: str) -> None:
    cut = run(f"{server}/cut")
    assert cut.errors["read"] > 0 and cut.failed >= cut.errors["read"], cut.summary()
    closing = _Server(("127.0.0.1", 0), _Closing)  # one answer per connection
    threading.Thread(target=closing.serve_forever, daemon=True).start()
    with WrkLoad(f"http://127.0.0.1:{closing.server_address[1]}/", connections=4, warmup_s=0.3) as load:
        closing.shutdown()
        closing.server_close()  # from now on every reconnect is refused
        time.sleep(0.3)
    refused = load.result
    # wrk's connect is non-blocking: a refused reconnect shows as a failed write (or a connect error)
    assert refused is not None and refused.errors["connect"] + refused.errors["write"] > 0, refused
    with pytest.raises(AssertionError, match="errors .*[1-9]"):
        assert_no_failure(refused, "refused")


def test_a_slow_answer_is_a_timeout_and_one_never_given_is_lost(server: str) -> None:
    slow = run(f"{server}/slow", seconds=2.5, timeout_s=1)
    assert slow.requests > 0 and slow.errors["timeout"] > 0, slow.summary()
    listener = socket.create_server(("127.0.0.1", free_port()))  # accepts, never answers
    url = f"http://127.0.0.1:{listener.getsockname()[1]}/"
    try:
        silent = run(url, seconds=0.3)
    finally:
        listener.close()
    assert silent.requests == 0 and silent.unanswered == 4 and silent.lost == 0, silent  # in flight at the stop
    with pytest.raises(AssertionError, match="too few answers"):
        assert_no_failure(silent, "silent")
    lost = parse_output(_output(requests=10, sent=30, read=3, write=2), connections=4)
    assert lost.unanswered == 15 and lost.lost == 11 and lost.failed == 3 + 2 + 11, lost
    assert "lost 11" in lost.summary()


def _output(requests: int, sent: int, read: int = 0, write: int = 0) -> str:
    return (
        f"wrk-result status 200 {requests}\nwrk-result unmarked 0 {sent}\n"
        f"wrk-result summary {requests} 1000000 0 {read} {write} 0\nwrk-result latency 1000 2000 3000\n"
    )


def test_a_block_that_outlasts_the_run_fails(server: str) -> None:
    with pytest.raises(AssertionError, match="raise duration_s"), WrkLoad(f"{server}/ok", duration_s=1, warmup_s=0):
        time.sleep(1.5)


def test_lua_strings_and_a_missing_summary() -> None:
    assert lua_string(None) == "nil"
    assert lua_string('a"b\\c\n') == '"a\\034b\\092c\\010"'
    with pytest.raises(AssertionError, match="no summary"):
        parse_output("Running 1m test @ http://x\n", connections=8)
