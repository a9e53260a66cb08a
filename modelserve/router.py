"""The router of a shared or mirrored route (see traffic.py): one of at least two replicas that
pick a section per request by weight (or by a sticky header), forward the request through Ray's
deployment handles, and copy it to the section's mirrors without waiting for them.

Answers carry `x-modelserve-section`. A mirror's answer is discarded; a mirror that is slow,
fails or is down costs the client nothing: copies run as background tasks, at most
`MIRROR_IN_FLIGHT` at once per mirror and router replica, beyond that dropped (counted).
"""

from __future__ import annotations

import asyncio
import bisect
import hashlib
import logging
import random
from dataclasses import dataclass
from typing import Any

from ray import serve
from ray.serve import metrics
from starlette.requests import Request
from starlette.responses import Response

from modelserve import envelope, raycompat
from modelserve.errors import ModelServeError
from modelserve.metrics import tag_keys

logger = logging.getLogger("ray.serve")

SECTION_HEADER = "x-modelserve-section"
MIRROR_IN_FLIGHT = 64  # per mirror, per router replica
#: Mirrored copies, by mirror `section` and `outcome`: sent, failed (an error or a 5xx), dropped.
MIRRORED = "modelserve_mirrored"
_HOP_HEADERS = {"content-length", "transfer-encoding", "connection"}


@dataclass(frozen=True)
class Target:
    app: str
    deployment: str
    section: str
    weight: int = 100
    percent: int = 100


class Router:
    def __init__(self, route: str) -> None:
        self._route = route
        self._targets: list[Target] = []
        self._bounds: list[int] = []
        self._sticky = ""
        self._mirrors: dict[str, list[Target]] = {}
        self._handles: dict[tuple[str, str], Any] = {}
        self._mirroring: dict[str, int] = {}  # copies in flight, per mirror section
        self._background: set[asyncio.Task[None]] = set()
        self._mirrored = metrics.Counter(MIRRORED, "mirrored copies, by outcome", tag_keys("section", "outcome"))

    def reconfigure(self, config: dict[str, Any]) -> None:
        targets = [Target(**t) for t in config["targets"]]
        self._targets = [t for t in targets if t.weight > 0] or targets
        self._bounds, total = [], 0
        for target in self._targets:
            total += target.weight
            self._bounds.append(total)
        self._sticky = config.get("sticky", "")
        self._mirrors = {k: [Target(**m) for m in v] for k, v in (config.get("mirrors") or {}).items()}

    def _pick(self, request: Request) -> Target:
        total = self._bounds[-1] if self._bounds else 0
        if total <= 0:
            return self._targets[0]
        key = request.headers.get(self._sticky, "") if self._sticky else ""
        if key:  # the same client, the same section (while the weights stay)
            point = int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big") % total
        else:
            point = random.randrange(total)
        return self._targets[bisect.bisect_right(self._bounds, point)]

    def _handle(self, target: Target) -> Any:
        key = (target.app, target.deployment)
        if key not in self._handles:
            self._handles[key] = raycompat.direct_handle(serve.get_deployment_handle(target.deployment, target.app))
        return self._handles[key]

    async def __call__(self, request: Request) -> Response:
        payload = {
            "method": request.method,
            "path": request.scope["path"],
            "root_path": request.scope.get("root_path", ""),
            "query_string": request.scope.get("query_string", b""),
            "headers": [(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.scope["headers"]],
            "body": await request.body(),
        }
        target = self._pick(request)
        try:
            status, headers, body = await self._handle(target).handle_http.remote(payload)
        except Exception as exc:
            logger.error("route /%s: %s failed to answer", self._route, target.section, exc_info=exc)
            request_id = request.headers.get("x-request-id", "")
            error = ModelServeError(f"{target.section} could not answer; see the router's log")
            answer = envelope.dumps(envelope.failure(error, request_id))
            return Response(
                answer, status_code=503, media_type="application/json", headers={SECTION_HEADER: target.section}
            )
        for mirror in self._mirrors.get(target.section, ()):
            if random.randrange(100) < mirror.percent:
                self._copy(mirror, payload)
        kept = {k: v for k, v in headers if k.lower() not in _HOP_HEADERS}
        return Response(body, status_code=status, headers={**kept, SECTION_HEADER: target.section})

    def _copy(self, mirror: Target, payload: dict[str, Any]) -> None:
        if self._mirroring.get(mirror.section, 0) >= MIRROR_IN_FLIGHT:
            self._mirrored.inc(1, {"section": mirror.section, "outcome": "dropped"})
            return
        self._mirroring[mirror.section] = self._mirroring.get(mirror.section, 0) + 1
        task = asyncio.get_running_loop().create_task(self._send_copy(mirror, payload))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _send_copy(self, mirror: Target, payload: dict[str, Any]) -> None:
        try:
            status, _, _ = await self._handle(mirror).handle_http.remote(payload)
            outcome = "failed" if status >= 500 else "sent"
        except Exception:
            outcome = "failed"
        finally:
            self._mirroring[mirror.section] -= 1
        self._mirrored.inc(1, {"section": mirror.section, "outcome": outcome})
