"""Many models of one kind in one section (conf.ini `models`, `models_per_replica`), on Ray Serve's model
multiplexing (`serve.multiplexed`).

A request names its model: the protocol's path (`/<route>/v2/models/<name>/infer`), or on the route itself
the header `serve_multiplexed_model_id` (Ray Serve's). A replica loads a model on first use into a pipeline of
its own (its own model thread, batch queue and warm-up), and holds at most `models_per_replica`: Ray's
multiplexer unloads the least recently used first (calling the backend's `unload`, where it has one).

HAProxy hands a request to any replica of the route: Ray Serve routes by model only in its deployment handles
(and its Python proxy), not in HAProxy's direct ingress. So a replica that does not hold the model passes the
request on through the section's own handle, with the model's id, and Ray's router picks a replica that holds
it (or one to load it). That one hop is the price of locality: a model stays on few replicas, and the
replicas hold `models_per_replica` different models each instead of the same hot ones.
"""

from __future__ import annotations

import asyncio
import logging
import re
from typing import Any, cast

from ray import serve
from starlette.requests import Request
from starlette.responses import Response

from modelserve import envelope, protocol, raycompat
from modelserve.backend import create_backend, load_backend_class
from modelserve.errors import BadRequest, ModelLoadError, ModelServeError, ModelStoreError, NotFound
from modelserve.hooks import Observer
from modelserve.metrics import ModelMetrics
from modelserve.modelstore import Store, open_store
from modelserve.pipeline import Pipeline, warmup_file, where
from modelserve.replica_spec import ReplicaArgs, ReplicaConfig
from modelserve.router import payload_of

logger = logging.getLogger("ray.serve")

#: The header that names a request's model on the route itself (Ray Serve's name; `-` for `_` works too).
MODEL_HEADER = "serve_multiplexed_model_id"
#: On every answer of a multiplexed section: `hit` (the replica held the model) or `loaded` (it loaded it).
HELD_HEADER = "x-modelserve-model"
#: On an answer another replica gave (it held the model): the replica that passed the request on.
FORWARDED_HEADER = "x-modelserve-passed-by"
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,127}")


class ModelUnavailable(ModelServeError):
    """A model that cannot be loaded fails only the requests for it."""

    status_code = 503
    error_type = "ModelUnavailable"


class _Held:
    """One loaded model as Ray's multiplexer keeps it; Ray calls `__del__` when it unloads it (LRU)."""

    def __init__(self, models: Models, model_id: str, pipeline: Pipeline) -> None:
        self.models, self.model_id, self.pipeline = models, model_id, pipeline

    def __del__(self) -> None:
        self.models.unloaded(self.model_id, self.pipeline)


class Models:
    """A multiplexed section's models on one replica."""

    def __init__(self, args: ReplicaArgs, replica_id: str, observer: Observer, new_batcher: Any) -> None:
        self._args = args
        self._replica_id = replica_id
        self._observer = observer
        self._new_batcher = new_batcher
        self._backend_cls = load_backend_class(args.package, args.backend)
        self._config: ReplicaConfig | None = None
        self._store: Store | None = None
        self._handle: Any = None
        self._headers = {envelope.REPLICA_HEADER: replica_id}
        self._warmup = warmup_file(args)
        self.held: dict[str, Pipeline] = {}
        self.metrics = ModelMetrics(args.section)

        #: Ray's multiplexer around our loader (`serve.multiplexed` is untyped).
        async def load(model_id: str) -> _Held:  # a function: Ray keeps its multiplexer on it
            return await self._load(model_id)

        self.load = cast(Any, serve.multiplexed)(max_num_models_per_replica=args.models_per_replica)(load)

    def configure(self, config: ReplicaConfig) -> None:
        self._config = config
        for pipeline in self.held.values():
            pipeline.configure(config)

    def check_health(self) -> None:
        for pipeline in list(self.held.values()):
            pipeline.check_health()

    async def handle(self, request: Request, forwarded: bool = False) -> Response:
        """The answer to a request for one of the section's models (named by its path or header)."""
        route = self._config.route if self._config else ""
        _, sub = where(request, route)
        named = protocol.model_of(sub)
        model_id = named or request.headers.get(MODEL_HEADER) or request.headers.get(MODEL_HEADER.replace("_", "-"))
        if not model_id:
            return await self._without_model(request, sub)
        try:
            if not _ID.fullmatch(model_id) or ".." in model_id:
                raise BadRequest(f"{model_id!r} is not a model name (letters, digits, _ . @ -)")
            if model_id not in self.held and not forwarded:
                answer = await self._forward(model_id, request)
                if answer is not None:
                    return answer
            was_held = model_id in self.held
            held = await self.load(model_id)
        except ModelServeError as exc:
            if named is not None:
                return protocol.error_response(str(exc), exc.status_code, self._headers)
            return envelope.error_response(exc, request.headers.get("x-request-id", ""), self._headers)
        self.metrics.count("hit" if was_held else "loaded")
        response: Response = await held.pipeline.handle(request)
        response.headers[HELD_HEADER] = "hit" if was_held else "loaded"
        return response

    async def _load(self, model_id: str) -> _Held:
        """Ray's multiplexer calls this on a miss: the model's files, its backend loaded and warmed up."""
        config = self._config or ReplicaConfig()
        try:
            pipeline = await asyncio.to_thread(self._new_pipeline, model_id, config)
        except ModelServeError:
            self.metrics.count("failed")
            raise
        except Exception as exc:
            self.metrics.count("failed")
            logger.exception("model %r did not load", model_id)
            raise ModelUnavailable(f"model {model_id!r} did not load: {type(exc).__name__}: {exc}") from None
        self.held[model_id] = pipeline
        self.metrics.holds(model_id, True)
        return _Held(self, model_id, pipeline)

    def _new_pipeline(self, model_id: str, config: ReplicaConfig) -> Pipeline:
        from modelserve.modelcache import cache_dir, fetch

        store = self._store = self._store or open_store(self._args.models)
        try:
            files = store.entry(model_id)
        except ModelStoreError as exc:
            raise NotFound(f"no model {model_id!r} in this section's models: {exc}") from None
        paths = fetch(self._args.models, files, cache_dir(), int(self._args.model_cache_gb * 2**30))
        folder = str(paths[0])[: -len(files[0].name) - 1]
        names = [f.name for f in files]
        try:
            backend = create_backend(self._backend_cls, folder, names)
        except ModelLoadError as exc:
            raise ModelUnavailable(f"model {model_id!r} did not load: {exc}") from None
        pipeline = Pipeline(backend, self._args.section, self._args.methods, self._replica_id, self._warmup)
        pipeline.model_name = model_id
        pipeline.observer = self._observer
        pipeline.batcher = self._new_batcher(pipeline)
        pipeline.configure(config)
        return pipeline

    def unloaded(self, model_id: str, pipeline: Pipeline) -> None:
        if self.held.get(model_id) is pipeline:
            del self.held[model_id]
            self.metrics.count("unloaded")
            self.metrics.holds(model_id, False)
            if not pipeline.active:  # else a request in it still calls the model: the thread ends with the pipeline
                pipeline.calls.pool.shutdown(wait=False)
            unload = getattr(pipeline.backend, "unload", None)
            if callable(unload):
                try:
                    unload()
                except Exception:
                    logger.exception("model %r: unload raised", model_id)

    async def _forward(self, model_id: str, request: Request) -> Response | None:
        """The answer of the replica Ray's router picks for this model (one that holds it, if any does);
        None where the hand-off itself failed (that replica stopped): this replica answers then."""
        self.metrics.count("forwarded")
        if self._handle is None:
            context = serve.get_replica_context()
            handle = serve.get_deployment_handle(context.deployment, context.app_name)
            self._handle = raycompat.direct_handle(handle)
        payload = payload_of(request, await request.body())
        try:
            call = self._handle.options(multiplexed_model_id=model_id).handle_http.remote(payload)
            status, headers, content = await call
        except Exception as exc:
            logger.warning("model %r: passing the request on failed (%r); answering it here", model_id, exc)
            return None
        response = Response(content, status, headers=dict(headers))
        response.headers[FORWARDED_HEADER] = self._replica_id
        return response

    async def _without_model(self, request: Request, sub: str) -> Response:
        """What needs no model: `/ping` and the protocol's server paths; anything else must name one."""
        request_id = request.headers.get("x-request-id", "")
        if sub == "/ping":
            return envelope.success_response("pong", "", request_id, self._headers)
        if protocol.is_protocol(sub):
            return protocol.server_response(sub, self._headers)
        names = await asyncio.to_thread(self._some_names)
        error = BadRequest(f"name the model: header {MODEL_HEADER}: <name> (models here: {names})")
        return envelope.error_response(error, request_id, self._headers)

    def _some_names(self) -> str:
        store = self._store = self._store or open_store(self._args.models)
        try:
            entries = store.entries()
        except ModelStoreError as exc:
            return f"cannot list them: {exc}"
        return ", ".join(entries[:10]) + (f" and {len(entries) - 10} more" if len(entries) > 10 else "")
