"""apply.py without Ray: waiting until the ingress routes what was deployed."""

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from modelserve.apply import wait_routed
from modelserve.node import free_port


@pytest.fixture
def ingress() -> Iterator[tuple[str, list[int]]]:
    """An HTTP port that answers 404 to the first three pings (an ingress still reloading), then pong."""
    answered: list[int] = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:  # noqa: N802
            routed = len(answered) >= 3
            body = json.dumps({"status": 1, "result": "pong"} if routed else {"detail": "not found"}).encode()
            answered.append(200 if routed else 404)
            self.send_response(answered[-1])
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", answered
    server.shutdown()
    server.server_close()


def test_waits_through_404s_until_the_route_answers_for_a_while(ingress: tuple[str, list[int]]) -> None:
    url, answered = ingress
    assert wait_routed(url, ["echo"], settle_s=0.3)
    assert answered[:3] == [404] * 3 and answered[-1] == 200 and len(answered) > 4


def test_an_unreachable_port_is_given_up_quickly() -> None:
    began = time.monotonic()
    assert not wait_routed(f"http://127.0.0.1:{free_port()}", ["echo"])
    assert time.monotonic() - began < 5
