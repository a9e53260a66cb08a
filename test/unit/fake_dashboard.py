"""A stand-in for the Ray dashboard's Serve REST API: answers what the controller asks, records
what it sends. No Ray: for the CLI's exit codes, waiting and warnings."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class FakeDashboard:
    def __init__(self) -> None:
        self.details: dict[str, Any] = {"applications": {}, "http_options": {}}
        self.deployed: list[dict[str, Any]] = []
        self.url = ""
        self.nodes: list[dict[str, float]] = [{"CPU": 4.0, "GPU": 0.0}]
        self.used: dict[str, float] = {"CPU": 0.0}
        #: The head node's (n0's) Ray labels.
        self.head_labels: dict[str, str] = {}
        #: `{node id: {resource: used}}`, Ray's `usageByNode` (node ids are n0, n1, ...); None: not reported.
        self.used_by_node: dict[str, dict[str, float]] | None = None
        #: Called with each deployed config; may change `details` as the cluster would.
        self.on_deploy: Callable[[dict[str, Any]], None] = lambda config: None

    def handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _json(self, body: Any, status: int = 200) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:  # noqa: N802
                if self.path in ("/api/version", "/api/ray/version"):
                    self._json({"ray_version": "2.60.0", "version": "4"})
                elif self.path.startswith("/api/v0/nodes"):
                    nodes = [
                        {"node_id": f"n{i}", "state": "ALIVE", "resources_total": n, "is_head_node": i == 0}
                        for i, n in enumerate(fake.nodes)
                    ]
                    nodes[0]["labels"] = fake.head_labels
                    self._json({"data": {"result": {"result": nodes}}})
                elif self.path.startswith("/api/cluster_status"):
                    report: dict[str, Any] = {"usage": {kind: [used, 0.0] for kind, used in fake.used.items()}}
                    if fake.used_by_node is not None:
                        by_node = fake.used_by_node.items()
                        report["usageByNode"] = {n: {k: [u, 0.0] for k, u in used.items()} for n, used in by_node}
                    self._json({"data": {"clusterStatus": {"loadMetricsReport": report}}})
                elif self.path.startswith("/api/packages/"):
                    self._json({})  # every upload is there already
                elif self.path.startswith("/api/serve/applications"):
                    self._json(fake.details)
                else:
                    self._json({}, 404)

            def do_PUT(self) -> None:  # noqa: N802
                length = int(self.headers.get("Content-Length", 0))
                fake.deployed.append(json.loads(self.rfile.read(length)))
                fake.on_deploy(fake.deployed[-1])
                self._json({})

        return Handler


@contextmanager
def fake_dashboard() -> Iterator[FakeDashboard]:
    fake = FakeDashboard()
    server = ThreadingHTTPServer(("127.0.0.1", 0), fake.handler())
    fake.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield fake
    finally:
        server.shutdown()
        server.server_close()
