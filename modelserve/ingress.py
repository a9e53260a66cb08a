"""The replica: loads one section's backend and answers its HTTP requests.

Path under the section's route: `/` runs the model, `/ping` answers once the
model is loaded (and warmed up), `/openapi.json` describes the route. Every answer
is an `envelope` (or the backend's `RawResponse`, or a stream); errors are logged
with their traceback under the request id and answered without it.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import os
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

from ray import serve
from ray.serve.exceptions import RayServeException
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from modelserve import accesslog, auth, envelope, inputs, openapi, raycompat, streaming
from modelserve.backend import (
    Backend,
    create_backend,
    has_batch_method,
    has_infer_method,
    has_stream_method,
    load_backend_class,
)
from modelserve.envelope import REPLICA_HEADER, RawResponse
from modelserve.errors import (
    BadRequest,
    MethodNotAllowed,
    ModelError,
    ModelServeError,
    NotFound,
    PayloadTooLarge,
    Timeout,
)
from modelserve.metrics import SectionMetrics
from modelserve.modelcalls import ModelCalls
from modelserve.replica_spec import ReplicaArgs, ReplicaConfig
from modelserve.router import SECTION_HEADER, Router, payload_of
from modelserve.warmup import run_warmup

logger = logging.getLogger("ray.serve")


def _replica_id() -> str:
    try:
        return str(serve.get_replica_context().replica_tag)
    except RayServeException:  # outside Serve: tests, a backend run by hand
        return f"pid-{os.getpid()}"


class ModelReplica:
    """One replica of one conf.ini section (a Ray Serve deployment class)."""

    def __init__(self, spec: ReplicaArgs) -> None:
        started = time.monotonic()
        raycompat.mend_redirected_print()
        self._metrics = SectionMetrics(spec.section)
        self._timeout_s = 60.0
        self._api_keys: tuple[str, ...] = ()
        self._access_json = False
        self._batch_sizes: dict[str, int] = {}
        self._public_route = ""
        self._router: Router | None = None  # set while this section owns a split route (router.py)
        self._user_config: dict[str, Any] | None = None
        self._active = 0  # requests in this replica now (the in-flight gauge, set on each health check)
        self._active_shown = 0  # what the gauge says: set again as soon as the replica is idle
        self._headers = {REPLICA_HEADER: _replica_id()}
        self._methods = spec.methods
        cls = load_backend_class(spec.package, spec.backend)
        self._backend: Backend = create_backend(cls, spec.model_zoo, list(spec.model_files))
        self._own_batch = has_batch_method(self._backend)
        self._has_infer = has_infer_method(self._backend)
        self._streams = has_stream_method(self._backend)
        self._calls = ModelCalls()
        self._params_model = getattr(self._backend, "Params", None)
        self._section = spec.section
        self._max_body = 10240 * 1024
        self._openapi: dict[tuple[str, bool], bytes] = {}  # by root path, and whether the route needs a key
        self._max_batch_size = 1
        self._batch_wait_s = 0.0
        self._in_flight = 0
        # One batch queue per replica (a decorated method would share one queue per class). Ray's
        # `serve.batch` is untyped; its wrapper adds set_max_batch_size and set_batch_wait_timeout_s.
        self._infer_batched: Any = cast(Any, serve.batch)(max_batch_size=1, batch_wait_timeout_s=0.0)(self._infer_batch)
        #: Seconds the model took to load and warm up: set again on every health check, as Ray's
        #: exporter may drop a gauge that is set once (seen in the tests: the series went missing).
        self._load_seconds = {"load": time.monotonic() - started}
        self._metrics.load_seconds.set(self._load_seconds["load"], {"phase": "load"})
        self._warmup: Path | None = None
        if spec.warmup:
            package_dir = Path(importlib.import_module(f"algopkg.{spec.package}").__path__[0])
            self._warmup = package_dir / spec.warmup

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Ray Serve calls this with `user_config` while the replica starts (before it is ready)
        and on every in-place update. Warm-up runs after the first call, as the backend's
        own `reconfigure` may set state its inference needs (the original template's does)."""
        config = ReplicaConfig.from_json(user_config)
        self._max_batch_size = config.max_batch_size
        self._batch_wait_s = config.batch_wait_ms / 1000
        self._max_body = config.max_body_kb * 1024
        self._timeout_s = config.timeout_s
        self._calls.allow_inline(config.model_calls == "inline" and not self._streams)  # a stream: on the thread
        self._api_keys = config.api_keys
        self._public_route = config.route
        if config.access_log_json and not self._access_json:
            accesslog.open_in_replica_log()
        self._access_json = config.access_log_json
        self._infer_batched.set_max_batch_size(self._max_batch_size)
        if config.traffic:
            self._router = self._router or Router(config.route.strip("/"))
            self._router.reconfigure(config.traffic)
        else:
            self._router = None
        if dict(config.user) != self._user_config:  # not again for a new weight or API key
            self._user_config = dict(config.user)
            self._backend.reconfigure(dict(config.user))
            self._calls.relearn()
        if self._warmup is not None:
            warmup, self._warmup = self._warmup, None
            started = time.monotonic()
            run_warmup(self._backend, warmup)
            self._load_seconds["warmup"] = time.monotonic() - started
            self._metrics.load_seconds.set(self._load_seconds["warmup"], {"phase": "warmup"})

    def check_health(self) -> None:
        """Unhealthy (Ray replaces the replica) once one model call has run far past `timeout_s`:
        its requests have all been answered 504, and a stuck model thread would hold every later one."""
        self._show_in_flight()
        for phase, seconds in self._load_seconds.items():
            self._metrics.load_seconds.set(seconds, {"phase": phase})
        stuck_after = 3 * self._timeout_s + 10
        if self._calls.busy_for() > stuck_after:
            raise RuntimeError(f"one model call has run for over {stuck_after:g} s (3 x timeout_s + 10); restarting")
        self._backend.check_health()

    def _show_in_flight(self) -> None:
        """Sampled at each health check (not per request: a metric call costs), and set to 0 when the
        replica goes idle after a sample that counted requests, so an idle replica reads 0."""
        self._metrics.in_flight.set(self._active)
        self._active_shown = self._active

    async def __call__(self, request: Request) -> Response:
        """A request to the route; a section that owns a split route (router.py) first picks who
        answers it: itself, or another section, forwarded."""
        router = self._router
        if router is None or self._where(request)[1]:  # not split, or a probe
            return await self._serve(request)
        target = router.pick(request)
        if target.section != self._section:
            return await router.forward(target, request)
        mirrored = router.mirrored(self._section) and self._within_limit(request)
        body = await request.body() if mirrored else b""  # read once: the answer reads the cached body
        response = await self._serve(request)
        response.headers[SECTION_HEADER] = self._section
        if mirrored:
            router.copy(self._section, payload_of(request, body))
        return response

    async def _serve(self, request: Request) -> Response:
        request_id = request.headers.get("x-request-id") or uuid.uuid4().hex
        started = time.perf_counter()
        self._active += 1
        try:
            response, counted = await self._answer(request, request_id)
        finally:
            self._active -= 1
            if not self._active and self._active_shown:  # a sample taken mid-request must not outlive it
                self._show_in_flight()
        if counted:  # probes (`/ping`, `/openapi.json`) are not requests
            latency_ms = (time.perf_counter() - started) * 1000
            self._metrics.answered(response.status_code, latency_ms)
            if self._access_json:
                batch_size = self._batch_sizes.pop(request_id, 1)
                accesslog.write(request, request_id, self._section, response.status_code, latency_ms, batch_size)
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

        response = await self._serve(Request(scope, receive))
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

    def _where(self, request: Request) -> tuple[str, str]:
        """The route's root path, and the path under it (`""` for the model, `/ping`, ...)."""
        path = request.scope["path"]
        root = request.scope.get("root_path", "")
        public = self._public_route
        if not root and public and (path == public or path.startswith(public + "/")):
            root = public  # reached directly for a moment while Ray moves the route from one section to another
        sub = path[len(root) :] if root and path.startswith(root) else path
        return root, sub.rstrip("/")

    def _within_limit(self, request: Request) -> bool:
        declared = request.headers.get("content-length", "")
        return not declared.isdigit() or int(declared) <= self._max_body

    async def _answer(self, request: Request, request_id: str) -> tuple[Response, bool]:
        root, sub = self._where(request)
        try:
            if sub == "/ping":
                return self._success("pong", request_id), False
            if sub == "/openapi.json":
                document = self._openapi_document(root)
                return Response(document, media_type="application/json", headers=self._headers), False
            if sub:
                verbs, path = " or ".join(self._methods), request.scope["path"]
                raise NotFound(f"no such path {path!r}; {verbs} params to {root or '/'}, or GET {root}/ping")
            auth.require_key(request.headers, self._api_keys)
            if request.method not in self._methods:
                raise MethodNotAllowed(request.method, self._methods)
            answer = await self._route(request, request_id)
            if isinstance(answer, Response):
                return answer, True
            if isinstance(answer, RawResponse):
                headers = {**self._headers, "x-request-id": request_id, **answer.headers}
                return Response(answer.body, media_type=answer.content_type, headers=headers), True
            return self._success(answer, request_id), True
        except ModelServeError as exc:
            return self._error(exc, request_id), True
        except Exception:
            logger.exception("request %s: unexpected error", request_id)
            error = ModelError(f"internal error; see the replica log for request {request_id}")
            return self._error(error, request_id), True

    def _success(self, result: Any, request_id: str) -> Response:
        body = envelope.dumps(envelope.success(result, self._backend.info, request_id))
        return Response(body, media_type="application/json", headers=self._headers)

    async def _route(self, request: Request, request_id: str) -> Any:
        params: Any = inputs.parse_params(
            await self._body(request), request.query_params, request.headers.get("content-type", "")
        )
        if self._params_model is not None:
            params = inputs.validate(self._params_model, params)
        try:
            return await asyncio.wait_for(self._infer(request, params, request_id), self._timeout_s)
        except asyncio.TimeoutError:
            # Logged whatever access_log says, as a 500 is: the model call goes on, and may be stuck.
            logger.warning("request %s: the model ran past timeout_s = %g s; answered 504", request_id, self._timeout_s)
            raise Timeout(f"the model did not answer within {self._timeout_s:g} s (the section's timeout_s)") from None

    async def _infer(self, request: Request, params: Any, request_id: str) -> Any:
        if self._streams:  # the timeout covers the first item
            produced = await self._run(getattr(self._backend, "infer_stream"), params, request_id)  # noqa: B009
            stream = streaming.ItemStream(produced, self._calls.pool)
            return await streaming.respond(stream, request.headers.get("accept", ""), request_id, self._headers)
        if self._max_batch_size > 1:
            return await self._infer_in_batch(params, request_id)
        return await self._run(self._backend.infer, params, request_id)

    async def _body(self, request: Request) -> bytes:
        """The request body, refused (413) beyond `max_body_kb` before the model sees it."""
        declared = request.headers.get("content-length", "")
        too_large = PayloadTooLarge(f"the request body is over this route's limit of {self._max_body // 1024} KiB")
        if declared.isdigit():
            if int(declared) > self._max_body:
                raise too_large
            return await request.body()
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > self._max_body:
                raise too_large
            chunks.append(chunk)
        return b"".join(chunks)

    def _openapi_document(self, root: str) -> bytes:
        cached = (root, bool(self._api_keys))
        if cached not in self._openapi:
            document = openapi.route_document(
                section=self._section,
                route=root.strip("/"),
                methods=self._methods,
                params=self._params_model,
                result=getattr(self._backend, "Result", None),
                streaming=self._streams,
                keyed=bool(self._api_keys),
            )
            self._openapi[cached] = envelope.dumps(document)
        return self._openapi[cached]

    async def _infer_in_batch(self, params: dict[str, Any], request_id: str) -> Any:
        """A lone request goes straight to the model; others join Serve's batch queue. Ray's batch
        window is fixed; ours holds a batch open only while other requests are in flight on this
        replica, so a lone request never waits for company nor pays for the queue."""
        self._in_flight += 1
        try:
            if self._in_flight == 1:
                (result,) = await self._infer_batch([params], [request_id])
            else:
                self._infer_batched.set_batch_wait_timeout_s(self._batch_wait_s)
                result = await self._infer_batched(params, request_id)
        finally:
            self._in_flight -= 1
        if isinstance(result, ModelServeError):
            raise result
        if isinstance(result, Exception):
            logger.error("request %s: the backend failed this item", request_id, exc_info=result)
            raise ModelError(f"the model failed on this request: {type(result).__name__}: {result}")
        return result

    async def _run(self, fn: Callable[[Any], Any], arg: Any, request_id: str) -> Any:
        """Run model code (inline or on the model thread: `modelcalls`), its failure a 500."""
        try:
            return await self._calls.run(fn, arg)
        except ModelServeError:
            raise
        except Exception as exc:
            logger.error("request %s: the backend raised", request_id, exc_info=exc)
            raise ModelError(f"the model failed on this request: {type(exc).__name__}: {exc}") from exc

    async def _infer_batch(self, batch: list[dict[str, Any]], request_ids: list[str]) -> list[Any]:
        """One result per request, in order; an exception instance fails only its own request.

        Serve's batch queue (`_infer_batched`, made per replica in `__init__`) calls it."""
        if len(batch) > 1:
            self._metrics.batch_size.observe(len(batch))
            if self._access_json:
                self._batch_sizes.update((request_id, len(batch)) for request_id in request_ids)
        if not self._own_batch:  # each answered on its own, in one hand-off where the model thread runs them
            return await self._calls.run_each(self._one, batch)
        try:
            results = await self._calls.run(self._backend.infer_batch, batch)
        except Exception as exc:
            if len(batch) == 1 and not self._has_infer:
                return [exc]
            # One bad item must not fail its neighbours: each request is answered on its own.
            log = logger.debug if isinstance(exc, BadRequest) else logger.warning  # a client's mistake is no alarm
            log("requests %s: infer_batch raised %r; answering them one by one", request_ids, exc)
            return await self._calls.run_each(self._one, batch)
        if not isinstance(results, list) or len(results) != len(batch):
            size = len(results) if isinstance(results, list) else type(results).__name__
            raise ModelError(f"infer_batch returned {size} results for a batch of {len(batch)}; return one per request")
        return results

    def _one(self, params: dict[str, Any]) -> Any:
        """A request's result, or the exception that fails it (through `infer` where defined)."""
        try:
            return self._backend.infer(params) if self._has_infer else self._backend.infer_batch([params])[0]
        except Exception as exc:
            return exc

    def _error(self, exc: ModelServeError, request_id: str) -> Response:
        body = envelope.dumps(envelope.failure(exc, request_id))
        headers = {**self._headers, **exc.headers}
        return Response(body, status_code=exc.status_code, media_type="application/json", headers=headers)
