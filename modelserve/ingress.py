"""The replica: what Ray Serve needs around one section's request pipeline (pipeline.py).

Ray builds it (`__init__`: load the model), hands it the section's in-place settings
(`reconfigure`), asks it for its health (`check_health`) and gives it each HTTP request
(`__call__`). Here too is what only a cluster has: Serve's batch queue, Ray metrics, the access
log in the replica's log file, and the split of a route shared by several sections (router.py).
"""

from __future__ import annotations

import asyncio
import os
from typing import Any, cast

from ray import serve
from ray.serve.exceptions import RayServeException
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from modelserve import accesslog, protocol, raycompat
from modelserve.metrics import SectionMetrics
from modelserve.multiplex import Models
from modelserve.pipeline import Pipeline
from modelserve.replica_spec import ReplicaArgs, ReplicaConfig
from modelserve.router import SECTION_HEADER, Router, payload_of


def _batcher(pipeline: Pipeline) -> Any:
    """A batch queue of its own for one pipeline (a decorated method would share one queue per class).
    Ray's `serve.batch` is untyped; its wrapper adds set_max_batch_size and set_batch_wait_timeout_s.

    Two batches in flight: while the model computes batch N on the model thread, the loop gathers
    batch N+1 and queues it behind N, so the model thread goes from one batch to the next without
    waiting for the loop (the model thread still runs one call at a time). Measured, `bench/run.py
    --only modelserve`, two interleaved pairs: 2,216-2,726 requests/s at 32 connections against
    1,754-1,866 with one batch in flight, p99 18.5-22 ms against 26-28 (bench/RESULTS.md)."""
    batch = cast(Any, serve.batch)(max_batch_size=1, batch_wait_timeout_s=0.0, max_concurrent_batches=2)
    return batch(pipeline.infer_batch)


def _replica_id() -> str:
    try:
        return str(serve.get_replica_context().replica_tag)
    except RayServeException:  # outside Serve: tests, a backend run by hand
        return f"pid-{os.getpid()}"


class ModelReplica:
    """One replica of one conf.ini section (a Ray Serve deployment class)."""

    def __init__(self, spec: ReplicaArgs) -> None:
        raycompat.mend_redirected_print()
        self._metrics = SectionMetrics(spec.section)
        self._section = spec.section
        self._access_json = False
        self._batch_sizes: dict[str, int] = {}
        self._router: Router | None = None  # set while this section owns a split route (router.py)
        self._active_shown = 0  # what the in-flight gauge says: set again as soon as the replica is idle
        self._models: Models | None = None  # a multiplexed section's (multiplex.py): a pipeline per model
        self._pipelines: tuple[Pipeline, ...] = ()
        if spec.models:
            self._models = Models(spec, _replica_id(), self, _batcher)
            self._load_model = self._models.load  # where Ray Serve looks for `serve.multiplexed`
        else:
            self._pipeline = Pipeline.load(spec, _replica_id())
            self._pipeline.observer = self
            self._pipeline.batcher = _batcher(self._pipeline)
            self._pipelines = (self._pipeline,)
        self._show_load_seconds()

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Ray Serve calls this with `user_config` while the replica starts (before it is ready)
        and on every in-place update; the first call warms the model up (pipeline.py)."""
        config = ReplicaConfig.from_json(user_config)
        if config.access_log_json and not self._access_json:
            accesslog.open_in_replica_log()
        self._access_json = config.access_log_json
        if config.traffic:
            self._router = self._router or Router(config.route.strip("/"))
            self._router.reconfigure(config.traffic)
        else:
            self._router = None
        if self._models is not None:
            self._models.configure(config)
        else:
            self._pipeline.configure(config)
        self._show_load_seconds()

    def check_health(self) -> None:
        """Unhealthy (Ray replaces the replica) when the pipeline says so: a model call stuck far
        past `timeout_s`, or the backend's own `check_health`."""
        self._show_in_flight()
        # Set again on every check: Ray's exporter may drop a gauge that is set once (seen in the tests).
        self._show_load_seconds()
        if self._models is not None:
            self._models.check_health()
        else:
            self._pipeline.check_health()

    async def __call__(self, request: Request) -> Response:
        """A request to the route; a section that owns a split route (router.py) first picks who
        answers it: itself, or another section, forwarded."""
        if self._models is not None:
            return await self._models.handle(request)
        router, pipeline = self._router, self._pipeline
        sub = pipeline.where(request)[1]
        if router is None or (sub and not protocol.is_protocol(sub)):  # not split, or a probe
            return await pipeline.handle(request)
        target = router.pick(request)
        if target.section != self._section:
            return await router.forward(target, request)
        mirrored = router.mirrored(self._section) and pipeline.within_limit(request)
        body = await request.body() if mirrored else b""  # read once: the answer reads the cached body
        response = await pipeline.handle(request)
        response.headers[SECTION_HEADER] = self._section
        if mirrored:
            router.copy(self._section, payload_of(request, body))
        return response

    async def handle_http(self, payload: dict[str, Any]) -> tuple[int, list[tuple[str, str]], bytes]:
        """A request forwarded by the section that owns the route (router.py), or a mirrored copy,
        answered as over HTTP. A streamed answer is collected whole: a forwarded share does not stream."""
        scope = {
            "type": "http",
            "http_version": "1.1",
            "method": payload["method"],
            "scheme": "http",
            "path": payload["path"],
            "raw_path": payload["path"].encode(),
            "root_path": payload["root_path"],
            "query_string": payload["query_string"],
            "headers": [(k.encode("latin-1"), v.encode("latin-1")) for k, v in payload["headers"]],
            "client": None,
            "server": None,
        }
        body = payload["body"]

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": body, "more_body": False}

        if self._models is not None:
            response = await self._models.handle(Request(scope, receive), forwarded=True)
        else:
            response = await self._pipeline.handle(Request(scope, receive))
        if isinstance(response, StreamingResponse):
            chunks = [chunk async for chunk in response.body_iterator]
            content = b"".join(c.encode() if isinstance(c, str) else bytes(c) for c in chunks)
        else:
            content = bytes(response.body)
        headers = [(k, v) for k, v in response.headers.items() if k.lower() != "content-length"]
        return response.status_code, headers, content

    async def handle_copies(self, payloads: list[dict[str, Any]]) -> list[int]:
        """Mirrored copies (router.py), answered together; only their statuses go back."""
        answers = await asyncio.gather(*(self.handle_http(payload) for payload in payloads))
        return [status for status, _, _ in answers]

    # The pipeline's Observer: metrics and the access log.

    def answered(self, request: Request, request_id: str, status: int, latency_ms: float, counted: bool) -> None:
        if not counted:  # probes (`/ping`, `/openapi.json`) are not requests
            return
        self._metrics.answered(status, latency_ms)
        if self._access_json:
            batch_size = self._batch_sizes.pop(request_id, 1)
            accesslog.write(request, request_id, self._section, status, latency_ms, batch_size)

    def batched(self, request_ids: list[str], size: int) -> None:
        self._metrics.batch_size.observe(size)
        if self._access_json:
            self._batch_sizes.update((request_id, size) for request_id in request_ids)

    def idle(self) -> None:
        """A sample taken mid-request must not outlive it: an idle replica reads 0."""
        if self._active_shown:
            self._show_in_flight()

    def _show_in_flight(self) -> None:
        """Sampled at each health check (not per request: a metric call costs), and set to 0 when the
        replica goes idle after a sample that counted requests."""
        active = sum(p.active for p in self._pipelines or (self._models.held.values() if self._models else ()))
        self._metrics.in_flight.set(active)
        self._active_shown = active

    def _show_load_seconds(self) -> None:
        if self._models is not None:
            return
        for phase, seconds in self._pipeline.load_seconds.items():
            self._metrics.load_seconds.set(seconds, {"phase": phase})
