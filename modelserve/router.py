"""The split of a shared or mirrored route, run inside the replicas of the section that owns the
route (traffic.py picks it). Each request picks a section by weight (or by a sticky header): the
owner's own share is answered right there, with no extra hop; another section's share is
forwarded over HTTP, through the node's ingress, to that section's side route. (Measured on 2
cores: +0.5 ms at p50 over a direct route, where Ray's deployment handle costs +5 ms.) Until the
ingress knows the side route (a new canary's first moment) or when it cannot be reached, the
share goes through the deployment handle instead. After the answer, a copy goes to the serving
section's mirrors without waiting for them.

Answers carry `x-modelserve-section`. A mirror's answer is discarded; a mirror that is slow,
fails or is down costs the client nothing: copies wait in a queue and go out together every
`COPY_WINDOW_S` in one call (a handle call costs the replica's loop about as much CPU as an
answer, and one per request would double the route's latency), at most `MIRROR_LIMIT` copies
or `MIRROR_BYTES` of bodies queued or unanswered per mirror and replica, beyond that dropped. Counts go to the metric in
the same rhythm (one `inc` costs about a quarter of a millisecond).
"""

from __future__ import annotations

import asyncio
import bisect
import hashlib
import logging
import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
from ray import serve
from ray.serve import metrics
from starlette.requests import Request
from starlette.responses import Response

from modelserve import envelope, raycompat
from modelserve.envelope import REPLICA_HEADER
from modelserve.errors import ModelServeError
from modelserve.metrics import tag_keys

logger = logging.getLogger("ray.serve")

SECTION_HEADER = "x-modelserve-section"
MIRROR_LIMIT = 256  # copies queued or unanswered, per mirror and replica: 5 windows at 1,000 requests/s
MIRROR_BYTES = 64 * 1024 * 1024  # and their bodies
COPY_WINDOW_S = 0.05
COPY_BATCH = 8  # copies per call at most: a slow mirror's outcomes come back (and are counted) sooner
#: Mirrored copies, by mirror `section` and `outcome`: sent, failed (an error or a 5xx), dropped.
MIRRORED = "modelserve_mirrored"
_HOP_HEADERS = {"content-length", "transfer-encoding", "connection", "keep-alive", "host", "date", "server"}
#: A forwarded request, as `ModelReplica.handle_http` takes it.
Payload = dict[str, Any]


@dataclass(frozen=True)
class Target:
    app: str
    deployment: str
    section: str
    weight: int = 100
    percent: int = 100
    path: str = ""  # its side route, where the owner forwards its share


class Router:
    """One owner replica's view of its route's split: `reconfigure` with the `traffic` part of
    its user_config (`traffic.split_config`), then `pick` per request."""

    def __init__(self, route: str) -> None:
        self._route = route
        self._targets: list[Target] = []
        self._bounds: list[int] = []
        self._sticky = ""
        self._forward = ""  # the node's ingress (`http://127.0.0.1:8000`)
        self._session: aiohttp.ClientSession | None = None
        self._mirrors: dict[str, list[Target]] = {}
        self._handles: dict[tuple[str, str], Any] = {}
        self._queued: dict[str, tuple[Target, list[Payload]]] = {}  # copies to send, per mirror section
        self._pending: dict[str, tuple[int, int]] = {}  # copies and bytes queued or unanswered, per mirror
        self._counts: dict[tuple[str, str], int] = {}  # copies not yet counted in the metric
        self._background: set[asyncio.Task[None]] = set()
        self._sender: asyncio.Task[None] | None = None
        self._mirrored = metrics.Counter(MIRRORED, "mirrored copies, by outcome", tag_keys("section", "outcome"))

    def reconfigure(self, config: Mapping[str, Any]) -> None:
        targets = [Target(**t) for t in config["targets"]]
        self._targets = [t for t in targets if t.weight > 0] or targets
        self._bounds, total = [], 0
        for target in self._targets:
            total += target.weight
            self._bounds.append(total)
        self._sticky = config.get("sticky", "")
        self._forward = config.get("forward", "")
        self._mirrors = {k: [Target(**m) for m in v] for k, v in (config.get("mirrors") or {}).items()}

    def pick(self, request: Request) -> Target:
        total = self._bounds[-1] if self._bounds else 0
        if total <= 0:
            return self._targets[0]
        key = request.headers.get(self._sticky, "") if self._sticky else ""
        if key:  # the same client, the same section (while the weights stay)
            point = int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big") % total
        else:
            point = random.randrange(total)
        return self._targets[bisect.bisect_right(self._bounds, point)]

    def mirrored(self, section: str) -> bool:
        return bool(self._mirrors.get(section))

    async def forward(self, target: Target, request: Request) -> Response:
        """Another section's answer to `request`: over HTTP to its side route, else through its handle."""
        body = await request.body()
        if target.path and self._forward:
            forwarded = await self._over_http(target, request, body)
            if forwarded is not None:
                if self.mirrored(target.section):
                    self.copy(target.section, payload_of(request, body))
                return forwarded
        payload = payload_of(request, body)
        try:
            status, headers, content = await self._handle(target).handle_http.remote(payload)
        except Exception as exc:
            logger.error("route /%s: %s failed to answer", self._route, target.section, exc_info=exc)
            error = ModelServeError(f"{target.section} could not answer; see the log of the route's replicas")
            answer = envelope.dumps(envelope.failure(error, request.headers.get("x-request-id", "")))
            return Response(
                answer, status_code=503, media_type="application/json", headers={SECTION_HEADER: target.section}
            )
        self.copy(target.section, payload)
        kept = {k: v for k, v in headers if k.lower() not in _HOP_HEADERS}
        return Response(content, status_code=status, headers={**kept, SECTION_HEADER: target.section})

    async def _over_http(self, target: Target, request: Request, body: bytes) -> Response | None:
        """The answer of `target`'s replica, or None when the ingress does not reach one (yet)."""
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0),
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=5),
                auto_decompress=False,
                skip_auto_headers=("Content-Type", "Accept-Encoding", "User-Agent"),  # the client's, as sent
            )
        query = request.scope.get("query_string", b"").decode("latin-1")
        path, route = request.scope["path"], f"/{self._route}"
        under = path[len(route) :] if path.startswith(route + "/") else ""  # the protocol's paths (protocol.py)
        url = f"{self._forward}{target.path}{under}{'?' + query if query else ''}"
        headers = [(k, v) for k, v in request.headers.items() if k.lower() not in _HOP_HEADERS]
        try:
            async with self._session.request(request.method, url, data=body, headers=headers) as reply:
                if reply.status == 404 and REPLICA_HEADER not in reply.headers:
                    return None  # the ingress does not know the side route yet: the 404 app answered
                content = await reply.read()
                kept = [(k, v) for k, v in reply.headers.items() if k.lower() not in _HOP_HEADERS]
        except (aiohttp.ClientConnectionError, asyncio.TimeoutError):
            return None
        response = Response(content, status_code=reply.status)
        for key, value in kept:
            response.headers.append(key, value)
        response.headers[SECTION_HEADER] = target.section
        return response

    def copy(self, section: str, payload: Payload) -> None:
        """Queue copies of a request `section` answered for its mirrors (their share); never waits."""
        for mirror in self._mirrors.get(section, ()):
            if random.randrange(100) >= mirror.percent:
                continue
            copies, size = self._pending.get(mirror.section, (0, 0))
            if copies >= MIRROR_LIMIT or size + len(payload["body"]) > MIRROR_BYTES:
                self._count(mirror.section, "dropped", 1)
                continue
            self._pending[mirror.section] = (copies + 1, size + len(payload["body"]))
            self._queued.setdefault(mirror.section, (mirror, []))[1].append(payload)
        if self._sender is None and (self._queued or self._counts):
            self._sender = asyncio.get_running_loop().create_task(self._send_queued())

    async def _send_queued(self) -> None:
        """Every `COPY_WINDOW_S` while copies are queued, in flight or uncounted: send each mirror
        its queue in one call, and bring the metric up to date."""
        try:
            while self._queued or self._counts or any(n for n, _ in self._pending.values()):
                await asyncio.sleep(COPY_WINDOW_S)
                queued, self._queued = self._queued, {}
                for mirror, payloads in queued.values():
                    for start in range(0, len(payloads), COPY_BATCH):
                        chunk = payloads[start : start + COPY_BATCH]
                        task = asyncio.get_running_loop().create_task(self._send_copies(mirror, chunk))
                        self._background.add(task)
                        task.add_done_callback(self._background.discard)
                counts, self._counts = self._counts, {}
                for (section, outcome), n in counts.items():
                    self._mirrored.inc(n, {"section": section, "outcome": outcome})
        finally:
            self._sender = None

    async def _send_copies(self, mirror: Target, payloads: list[Payload]) -> None:
        try:
            statuses = await self._handle(mirror).handle_copies.remote(payloads)
            failed = sum(1 for status in statuses if status >= 500)
        except Exception:
            failed = len(payloads)
        finally:
            copies, size = self._pending[mirror.section]
            self._pending[mirror.section] = (copies - len(payloads), size - sum(len(p["body"]) for p in payloads))
        self._count(mirror.section, "failed", failed)
        self._count(mirror.section, "sent", len(payloads) - failed)

    def _count(self, section: str, outcome: str, n: int) -> None:
        if n:
            self._counts[(section, outcome)] = self._counts.get((section, outcome), 0) + n

    def _handle(self, target: Target) -> Any:
        key = (target.app, target.deployment)
        if key not in self._handles:
            self._handles[key] = raycompat.direct_handle(serve.get_deployment_handle(target.deployment, target.app))
        return self._handles[key]


def payload_of(request: Request, body: bytes) -> Payload:
    """`request` as another section's replica takes it (`ModelReplica.handle_http`)."""
    return {
        "method": request.method,
        "path": request.scope["path"],
        "root_path": request.scope.get("root_path", ""),
        "query_string": request.scope.get("query_string", b""),
        "headers": [(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.scope["headers"]],
        "body": body,
    }
