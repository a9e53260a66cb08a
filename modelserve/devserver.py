"""`controller.py dev`: every section of conf.ini served from this one process, with no Ray, and
reloaded as its files change.

Each section runs the replica's own request pipeline (pipeline.py, loaded by inprocess.py) on its
conf.ini route: same answers, errors, OpenAPI documents and streams as on a cluster. A change to a
package's files, its model files or conf.ini (watched with `watchfiles`) reloads the sections it
touches, each in a worker thread while the others keep answering; the new version takes the route
once it has loaded and warmed up. One that fails keeps the last good version serving and prints why.
Replicas, traffic splits, stages, autoscaling and batching across requests do not apply here.
"""

from __future__ import annotations

import asyncio
import sys
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from modelserve import envelope, inprocess, plan
from modelserve.config import ConfigError, load_config
from modelserve.errors import ModelServeError
from modelserve.fallback import RouteNotFound
from modelserve.localhead import port_taken
from modelserve.pipeline import Pipeline
from modelserve.settings import Config, SectionSpec

#: What `dev` leaves out, said at start.
NOT_HERE = (
    "one process, no Ray: replicas, traffic splits and mirrors, stages, autoscaling and batching across "
    "requests do not apply (each request is a batch of one); apply to a cluster for those"
)


class NotLoaded(ModelServeError):
    """The section has no version that loaded (503); the dev server's output says why."""

    status_code = 503


@dataclass
class Slot:
    """One section in the dev server: its serving version, if any, and why the last load failed."""

    spec: SectionSpec
    pipeline: Pipeline | None = None
    problem: str = ""
    loads: int = field(default=0)


def _log(message: str) -> None:
    print(f"[dev {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


class DevServer:
    """An ASGI application serving every section of one conf.ini."""

    def __init__(self, config_path: Path) -> None:
        self.config_path = config_path.resolve()
        self.config: Config = load_config(self.config_path)
        self.slots: dict[str, Slot] = {}
        self._stop = asyncio.Event()
        self._watcher: asyncio.Task[None] | None = None

    def load_all(self) -> None:
        for spec in self.config.sections:
            self.slots[spec.section] = Slot(spec)
            self._load(self.slots[spec.section])

    def routes(self) -> list[tuple[str, Slot]]:
        """`(/route, slot)`, longest route first (as Ray matches route prefixes)."""
        return sorted(((f"/{s.spec.route}", s) for s in self.slots.values()), key=lambda r: -len(r[0]))

    def _load(self, slot: Slot) -> bool:
        """Load (or reload) a section; on failure the version serving now stays. Runs in a worker thread
        on reloads: the event loop keeps answering the other sections meanwhile."""
        spec, started = slot.spec, time.perf_counter()
        try:
            inprocess.require_environment(spec, self.config, "dev")
            pipeline = inprocess.load_section(self.config, spec, replica_id=f"dev-{spec.package}")
        except inprocess.LocalError as exc:
            slot.problem = str(exc)
            _log(f"[{spec.section}] not served: {exc}")
            return False
        except Exception as exc:
            slot.problem = f"{type(exc).__name__}: {exc}"
            keeps = "the previous version keeps serving" if slot.pipeline else "its route answers 503 until it loads"
            _log(f"[{spec.section}] did not load ({keeps}):\n{inprocess.package_traceback(exc)}")
            return False
        old, slot.pipeline, slot.problem = slot.pipeline, pipeline, ""
        slot.loads += 1
        if old is not None:
            old.calls.pool.shutdown()  # after the calls it was given: requests in flight are answered
        verb = "reloaded" if slot.loads > 1 else "loaded"
        _log(f"[{spec.section}] {verb} in {time.perf_counter() - started:.2f} s: /{spec.route}")
        return True

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        scope, send = inprocess.with_request_id(scope, send)
        path = scope["path"]
        for route, slot in self.routes():
            if path == route or path.startswith(route.rstrip("/") + "/") or route == "/":
                response = await self._answer(slot, {**scope, "root_path": route if route != "/" else ""}, receive)
                await response(scope, receive, send)
                return
        fallback = RouteNotFound()
        fallback.reconfigure({"routes": sorted(s.spec.route for s in self.slots.values())})
        await (await fallback(Request(scope, receive)))(scope, receive, send)

    async def _answer(self, slot: Slot, scope: dict[str, Any], receive: Any) -> Response:
        request = Request(scope, receive)
        if slot.pipeline is not None:
            return await slot.pipeline.handle(request)
        request_id = request.headers.get("x-request-id") or uuid.uuid4().hex
        error = NotLoaded(f"[{slot.spec.section}] is not loaded in dev: {slot.problem}; see the dev server's output")
        body = envelope.dumps(envelope.failure(error, request_id))
        return Response(body, status_code=error.status_code, media_type="application/json")

    async def _lifespan(self, receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self._watcher = asyncio.create_task(self.watch())
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                self._stop.set()
                if self._watcher is not None:
                    await asyncio.wait([self._watcher], timeout=2)
                await send({"type": "lifespan.shutdown.complete"})
                return

    def watched(self) -> list[Path]:
        paths = [self.config_path, *(self.config.algopkg_dir / spec.package for spec in self.config.sections)]
        paths += [path for spec in self.config.sections for path in self._model_paths(spec)]
        return sorted({p for p in paths if p.exists()})

    async def watch(self) -> None:
        """Reload what each change touches, until shut down."""
        import watchfiles

        while not self._stop.is_set():
            watched = self.watched()
            async for changes in watchfiles.awatch(*watched, debounce=50, step=20, stop_event=self._stop):
                changed = {Path(path) for _, path in changes}
                await self._reload(changed)
                if self.watched() != watched:  # a section or model file came or went
                    break

    async def _reload(self, changed: set[Path]) -> None:
        done = await self._reread_config() if self.config_path in changed else set()
        for slot in list(self.slots.values()):
            if slot.spec.section not in done and self._touches(slot.spec, changed):
                _log(f"[{slot.spec.section}] changed: reloading")
                await asyncio.to_thread(self._load, slot)

    def _model_paths(self, spec: SectionSpec) -> list[Path]:
        """The section's model files where they are local (an object store's are not watched)."""
        found = plan.section_models(spec, self.config)
        return [] if found.remote else [Path(f.uri) for f in found.files]

    def _touches(self, spec: SectionSpec, changed: Iterable[Path]) -> bool:
        package = self.config.algopkg_dir / spec.package
        models = set(self._model_paths(spec))
        return any(path in models or path.is_relative_to(package) for path in changed)

    async def _reread_config(self) -> set[str]:
        """conf.ini changed: load new sections and those whose keys changed, drop removed ones; returns
        the sections loaded. A file that does not validate changes nothing, as does a failed load."""
        try:
            config = load_config(self.config_path)
        except ConfigError as exc:
            _log(f"conf.ini not taken, the sections keep serving as they are: {exc}")
            return set()
        self.config = config
        wanted = {spec.section: spec for spec in config.sections}
        for name in [n for n in self.slots if n not in wanted]:
            slot = self.slots.pop(name)
            if slot.pipeline is not None:
                slot.pipeline.calls.pool.shutdown()
            _log(f"[{name}] removed from conf.ini: no longer served")
        loaded = set()
        for name, spec in wanted.items():
            known = self.slots.get(name)
            if known is not None and known.spec == spec:
                continue
            _log(f"[{name}] {'added to' if known is None else 'changed in'} conf.ini: loading")
            slot = Slot(spec, known.pipeline if known else None, loads=known.loads if known else 0)
            if await asyncio.to_thread(self._load, slot) or known is None:
                self.slots[name] = slot  # a version that failed to load leaves the last good one serving
            loaded.add(name)
        return loaded


def serve(config_path: Path, host: str | None = None, port: int | None = None) -> int:
    """Run the dev server until Ctrl-C. Exit 2 when conf.ini is invalid or the port is taken."""
    import uvicorn

    server = DevServer(config_path)
    host = host or "127.0.0.1"
    port = server.config.serve.port if port is None else port
    if port_taken(port, host):
        print(
            f"error: dev: port {port} on {host} is taken (a cluster serving it?); give another: --port P",
            file=sys.stderr,
        )
        return 2
    _log(f"serving {server.config_path} from this process: {NOT_HERE}")
    server.load_all()
    for route, slot in server.routes():
        state = "ready" if slot.pipeline else "NOT LOADED"
        _log(f"  http://{host}:{port}{route}  [{slot.spec.section}] {state}")
    _log("watching the packages, their model files and conf.ini; Ctrl-C stops")
    uvicorn.Server(uvicorn.Config(server, host=host, port=port, log_level="warning", lifespan="on")).run()
    return 0
