"""A real S3 API for tests: moto's server (werkzeug, the app `moto_server` runs) on a free port,
behind a small WSGI layer that counts requests and can slow or cut object downloads.

    with S3Server() as s3:            # s3.endpoint = "http://127.0.0.1:<port>"
        s3.client().create_bucket(Bucket="models")
        s3.gets("models/digits/3/w.npz")   # GET requests for that object so far
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from werkzeug.serving import BaseWSGIServer, make_server

StartResponse = Callable[..., Any]


class S3Server:
    """moto's S3 on 127.0.0.1; `requests` counts (method, path) pairs of every request it answered."""

    def __init__(self) -> None:
        from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app

        self.requests: Counter[tuple[str, str]] = Counter()
        self.get_delay_s = 0.0
        #: "cut": send half an object and close (Content-Length kept); "short": a consistent half answer.
        self.cut_gets = ""
        self._lock = threading.Lock()
        self._moto = DomainDispatcherApplication(create_backend_app)

        class QuietHandler(MotoRequestHandler):
            def log_request(self, *args: Any) -> None:
                pass

        self._server: BaseWSGIServer = make_server(
            "127.0.0.1", 0, self._app, threaded=True, request_handler=QuietHandler
        )
        self.endpoint = f"http://127.0.0.1:{self._server.server_port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def __enter__(self) -> S3Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def gets(self, path: str) -> int:
        """GET requests answered for `bucket/key`."""
        return self.requests[("GET", "/" + path.lstrip("/"))]

    def total(self) -> int:
        return sum(self.requests.values())

    def env(self, home: Path) -> dict[str, str]:
        """The standard AWS variables a user would set for this server; `home` holds the (absent) AWS
        config and credentials files, so no file of this machine's user counts."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_CONFIG_FILE": str(home / "config"),
            "AWS_SHARED_CREDENTIALS_FILE": str(home / "credentials"),
        }

    def client(self) -> Any:
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1")

    def _app(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        method, path = environ["REQUEST_METHOD"], environ.get("PATH_INFO", "")
        with self._lock:
            self.requests[(method, path)] += 1
        is_object_get = method == "GET" and path.count("/") >= 2 and not environ.get("QUERY_STRING")
        if not is_object_get:
            return self._moto(environ, start_response)
        time.sleep(self.get_delay_s)
        if not self.cut_gets:
            return self._moto(environ, start_response)
        return self._cut(environ, start_response)

    def _cut(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        answer: list[Any] = []
        body = b"".join(self._moto(environ, lambda status, headers, *_: answer.extend([status, headers])))
        half = body[: len(body) // 2]
        headers = answer[1]
        if self.cut_gets == "short":
            headers = [(k, str(len(half)) if k.lower() == "content-length" else v) for k, v in headers]
            headers = [(k, v) for k, v in headers if not k.lower().startswith("x-amz-checksum")]
        start_response(answer[0], headers)
        return [half]


@contextlib.contextmanager
def environment(variables: Mapping[str, str]) -> Iterator[None]:
    """`variables` in this process's environment (the controller's, and what subprocesses inherit) until the end."""
    saved = dict(os.environ)
    os.environ.update(variables)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)
