"""One section's request path, top to bottom, with no Ray in it.

A request to the section's route goes: probe paths (`/ping`, `/openapi.json`) -> API key ->
method -> body limit -> input parsing (`inputs`) -> `Params` validation -> the model, within
`timeout_s` (streamed, batched or one at a time, on the model thread: `modelcalls`) -> the
answer: an `envelope`, the backend's `RawResponse`, or a stream. Errors are answered as
envelopes without their traceback, which is logged under the request id.

The replica (`ingress.ModelReplica`) runs it on Ray Serve, adding what only Ray has: Serve's
batch queue (`batcher`), metrics and the access log (an `Observer`), a route's split. `controller.py
try`, `controller.py dev` and `modelserve.testing` run the same pipeline in one local process.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import time
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from modelserve import auth, envelope, inputs, openapi, protocol, streaming
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
    Timeout,
)
from modelserve.hooks import Batcher, Observer
from modelserve.modelcalls import ModelCalls
from modelserve.replica_spec import ReplicaArgs, ReplicaConfig
from modelserve.warmup import run_warmup

logger = logging.getLogger("ray.serve")


class Pipeline:
    """One loaded backend and the settings of its section (`configure`), answering requests (`handle`)."""

    def __init__(
        self, backend: Backend, section: str, methods: tuple[str, ...], replica_id: str, warmup: Path | None = None
    ) -> None:
        self.backend = backend
        self.section = section
        self.methods = methods
        #: Where concurrent requests wait to be batched; without one each request is a batch of one.
        self.batcher: Batcher | None = None
        self.observer: Observer | None = None
        self.active = 0  # requests in the pipeline now
        #: Seconds the model took to load and to warm up.
        self.load_seconds: dict[str, float] = {}
        self.calls = ModelCalls()
        #: Headers of every answer (which replica answered).
        self.headers = {REPLICA_HEADER: replica_id}
        #: The model's name over the Open Inference Protocol (protocol.py): the route, or a multiplexed model's.
        self.model_name = ""  # "": the route's (a multiplexed section names each of its models)
        self.model_version: str | None = None
        self.tensors = protocol.Tensors(backend, None)
        self._own_batch = has_batch_method(backend)
        self._has_infer = has_infer_method(backend)
        self.streams = has_stream_method(backend)
        self.params_model = getattr(backend, "Params", None)
        self._warmup = warmup
        self._timeout_s = 60.0
        self._api_keys: tuple[str, ...] = ()
        self._max_body = 10240 * 1024
        self._max_batch_size = 1
        self._batch_wait_s = 0.0
        self._in_flight = 0  # requests in the batching path now
        self.route = ""  # the route clients call (`/extract`)
        self._user_config: dict[str, Any] | None = None
        self._openapi: dict[tuple[str, bool], bytes] = {}  # by root path, and whether the route needs a key

    @classmethod
    def load(cls, args: ReplicaArgs, replica_id: str) -> Pipeline:
        """Import the section's backend class and load its model (`load` or the original `__init__`).

        Raises:
            ModelLoadError: the model did not load; TypeError: the class is not a backend.
        """
        started = time.monotonic()
        from modelserve.modelcache import model_dir  # boto3 only where a store is read

        backend_cls = load_backend_class(args.package, args.backend)
        backend = create_backend(backend_cls, model_dir(args), list(args.model_files))
        pipeline = cls(backend, args.section, args.methods, replica_id, warmup_file(args))
        pipeline.model_version = protocol.version_of(args.rollout_keys.get("model@", ()))
        pipeline.load_seconds["load"] = time.monotonic() - started
        return pipeline

    def configure(self, config: ReplicaConfig) -> None:
        """Take the section's in-place settings. The first call also runs the warm-up, after the
        backend's own `reconfigure` (which may set state its inference needs)."""
        self._max_batch_size = config.max_batch_size
        self._batch_wait_s = config.batch_wait_ms / 1000
        self._max_body = config.max_body_kb * 1024
        self._timeout_s = config.timeout_s
        self.calls.allow_inline(config.model_calls == "inline" and not self.streams)  # a stream: on the thread
        self._api_keys = config.api_keys
        self.route = config.route
        if self.batcher is not None:
            self.batcher.set_max_batch_size(self._max_batch_size)
        if dict(config.user) != self._user_config:  # not again for a new weight or API key
            self._user_config = dict(config.user)
            self.backend.reconfigure(dict(config.user))
            self.calls.relearn()
        if self._warmup is not None:
            warmup, self._warmup = self._warmup, None
            started = time.monotonic()
            self.tensors = protocol.Tensors(self.backend, run_warmup(self.backend, warmup))
            self.load_seconds["warmup"] = time.monotonic() - started

    def check_health(self) -> None:
        """Raise once one model call has run far past `timeout_s` (its requests have all been
        answered 504, and a stuck model thread would hold every later one), or the backend says so."""
        stuck_after = 3 * self._timeout_s + 10
        if self.calls.busy_for() > stuck_after:
            raise RuntimeError(f"one model call has run for over {stuck_after:g} s (3 x timeout_s + 10); restarting")
        self.backend.check_health()

    async def handle(self, request: Request) -> Response:
        """The answer to one request to the section's route."""
        request_id = request.headers.get("x-request-id") or uuid.uuid4().hex
        started = time.perf_counter()
        self.active += 1
        try:
            response, counted = await self._answer(request, request_id)
        finally:
            self.active -= 1
            if not self.active and self.observer is not None:
                self.observer.idle()
        if self.observer is not None:
            latency_ms = (time.perf_counter() - started) * 1000
            self.observer.answered(request, request_id, response.status_code, latency_ms, counted)
        return response

    def where(self, request: Request) -> tuple[str, str]:
        """The route's root path, and the path under it (`""` for the model, `/ping`, ...)."""
        return where(request, self.route)

    def within_limit(self, request: Request) -> bool:
        declared = request.headers.get("content-length", "")
        return not declared.isdigit() or int(declared) <= self._max_body

    async def _answer(self, request: Request, request_id: str) -> tuple[Response, bool]:
        root, sub = self.where(request)
        try:
            if sub == "/ping":
                return self._success("pong", request_id), False
            if protocol.is_protocol(sub):
                return await protocol.answer(self, request, sub, request_id)
            if sub == "/openapi.json":
                document = self.openapi_document(root)
                return Response(document, media_type="application/json", headers=self.headers), False
            if sub:
                verbs, path = " or ".join(self.methods), request.scope["path"]
                raise NotFound(f"no such path {path!r}; {verbs} params to {root or '/'}, or GET {root}/ping")
            self.require_key(request.headers)
            if request.method not in self.methods:
                raise MethodNotAllowed(request.method, self.methods)
            answer = await self._route(request, request_id)
            if isinstance(answer, Response):
                return answer, True
            if isinstance(answer, RawResponse):
                headers = {**self.headers, **answer.headers}  # x-request-id: the proxy's (devserver's)
                return Response(answer.body, media_type=answer.content_type, headers=headers), True
            return self._success(answer, request_id), True
        except ModelServeError as exc:
            return self._error(exc, request_id), True
        except Exception:
            logger.exception("request %s: unexpected error", request_id)
            error = ModelError(f"internal error; see the replica log for request {request_id}")
            return self._error(error, request_id), True

    def require_key(self, headers: Mapping[str, str]) -> None:
        auth.require_key(headers, self._api_keys)

    async def read_body(self, request: Request) -> bytes:
        return await inputs.read_body(request, self._max_body)

    async def _route(self, request: Request, request_id: str) -> Any:
        content_type = request.headers.get("content-type", "")
        params: Any = inputs.parse_params(await self.read_body(request), request.query_params, content_type)
        if self.params_model is not None:
            params = inputs.validate(self.params_model, params)
        return await self.call_model(request, params, request_id)

    async def call_model(self, request: Request, params: Any, request_id: str) -> Any:
        """The model's answer to `params`, within `timeout_s` (streamed, batched or one at a time)."""
        try:
            return await asyncio.wait_for(self._infer(request, params, request_id), self._timeout_s)
        except asyncio.TimeoutError:
            # Logged whatever access_log says, as a 500 is: the model call goes on, and may be stuck.
            logger.warning("request %s: the model ran past timeout_s = %g s; answered 504", request_id, self._timeout_s)
            raise Timeout(f"the model did not answer within {self._timeout_s:g} s (the section's timeout_s)") from None

    async def _infer(self, request: Request, params: Any, request_id: str) -> Any:
        if self.streams:  # the timeout covers the first item
            produced = await self._run(getattr(self.backend, "infer_stream"), params, request_id)  # noqa: B009
            stream = streaming.ItemStream(produced, self.calls.pool)
            return await streaming.respond(stream, request.headers.get("accept", ""), request_id, self.headers)
        if self._max_batch_size > 1:
            return await self._infer_in_batch(params, request_id)
        return await self._run(self.backend.infer, params, request_id)

    async def _infer_in_batch(self, params: Any, request_id: str) -> Any:
        """A lone request goes straight to the model; others join the batch queue. Ray's batch
        window is fixed; ours holds a batch open only while other requests are in flight on this
        replica, so a lone request never waits for company nor pays for the queue."""
        self._in_flight += 1
        try:
            if self._in_flight == 1 or self.batcher is None:
                (result,) = await self.infer_batch([params], [request_id])
            else:
                self.batcher.set_batch_wait_timeout_s(self._batch_wait_s)
                result = await self.batcher(params, request_id)
        finally:
            self._in_flight -= 1
        if isinstance(result, ModelServeError):
            raise result
        if isinstance(result, Exception):
            logger.error("request %s: the backend failed this item", request_id, exc_info=result)
            raise ModelError(f"the model failed on this request: {type(result).__name__}: {result}")
        return result

    async def infer_batch(self, batch: list[Any], request_ids: list[str]) -> list[Any]:
        """One result per request, in order; an exception instance fails only its own request.
        The batch queue (`batcher`) calls it with the requests it gathered."""
        if len(batch) > 1 and self.observer is not None:
            self.observer.batched(request_ids, len(batch))
        if not self._own_batch:  # each answered on its own, in one hand-off where the model thread runs them
            return await self.calls.run_each(self._one, batch)
        try:
            results = await self.calls.run(self.backend.infer_batch, batch)
        except Exception as exc:
            if len(batch) == 1 and not self._has_infer:
                return [exc]
            # One bad item must not fail its neighbours: each request is answered on its own.
            log = logger.debug if isinstance(exc, BadRequest) else logger.warning  # a client's mistake is no alarm
            log("requests %s: infer_batch raised %r; answering them one by one", request_ids, exc)
            return await self.calls.run_each(self._one, batch)
        if not isinstance(results, list) or len(results) != len(batch):
            size = len(results) if isinstance(results, list) else type(results).__name__
            raise ModelError(f"infer_batch returned {size} results for a batch of {len(batch)}; return one per request")
        return results

    def _one(self, params: Any) -> Any:
        """A request's result, or the exception that fails it (through `infer` where defined)."""
        try:
            return self.backend.infer(params) if self._has_infer else self.backend.infer_batch([params])[0]
        except Exception as exc:
            return exc

    async def _run(self, fn: Callable[[Any], Any], arg: Any, request_id: str) -> Any:
        """Run model code (inline or on the model thread: `modelcalls`), its failure a 500."""
        try:
            return await self.calls.run(fn, arg)
        except ModelServeError:
            raise
        except Exception as exc:
            logger.error("request %s: the backend raised", request_id, exc_info=exc)
            raise ModelError(f"the model failed on this request: {type(exc).__name__}: {exc}") from exc

    def openapi_document(self, root: str) -> bytes:
        """The route's OpenAPI document (`GET <route>/openapi.json`), as bytes."""
        cached = (root, bool(self._api_keys))
        if cached not in self._openapi:
            document = openapi.route_document(
                section=self.section,
                route=root.strip("/"),
                methods=self.methods,
                params=self.params_model,
                result=getattr(self.backend, "Result", None),
                streaming=self.streams,
                keyed=bool(self._api_keys),
            )
            self._openapi[cached] = envelope.dumps(document)
        return self._openapi[cached]

    def _success(self, result: Any, request_id: str) -> Response:
        return envelope.success_response(result, self.backend.info, request_id, self.headers)

    def _error(self, exc: ModelServeError, request_id: str) -> Response:
        return envelope.error_response(exc, request_id, self.headers)


def where(request: Request, route: str) -> tuple[str, str]:
    """The root path of the route a request reached, and the path under it (`""` for the model, `/ping`, ...)."""
    path = request.scope["path"]
    root = request.scope.get("root_path", "")
    if not root and route and (path == route or path.startswith(route + "/")):
        root = route  # reached directly for a moment while Ray moves the route from one section to another
    sub = path[len(root) :] if root and path.startswith(root) else path
    return root, sub.rstrip("/")


def warmup_file(args: ReplicaArgs) -> Path | None:
    """The section's warm-up file in its uploaded package, if it has one."""
    if not args.warmup:
        return None
    return Path(importlib.import_module(f"algopkg.{args.package}").__path__[0]) / args.warmup
