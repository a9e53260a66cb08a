"""A conf.ini section loaded in this process, with no Ray: what `controller.py try`, `controller.py
dev` and `modelserve.testing` run.

The section becomes the replica's own `Pipeline` (pipeline.py), built from the same `ReplicaArgs`
and `ReplicaConfig` the planner sends a cluster (plan.py), and requests reach it as ASGI
messages: the status, headers and body bytes are those a replica's route gives.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import os
import sys
import traceback
import uuid
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from starlette.requests import Request

from modelserve import plan
from modelserve.pipeline import Pipeline
from modelserve.settings import Config, SectionSpec

_RUNTIME_DIR = str(Path(__file__).resolve().parent)
#: Frames of these files are ours (or the import machinery's), trimmed from a package's traceback.
_OURS = (_RUNTIME_DIR, "<frozen importlib", str(Path(importlib.__file__).parent))


class LocalError(Exception):
    """The section cannot run in this process; the message says why and what to do."""


def find_section(config: Config, name: str) -> SectionSpec:
    """A section by its name (`algopkg.Echo`), its package (`Echo`) or its route (`echo`, `/echo`)."""
    for spec in config.sections:
        if name in (spec.section, spec.section.removeprefix("algopkg."), spec.route, f"/{spec.route}"):
            return spec
    known = ", ".join(s.section for s in config.sections) or "none"
    raise LocalError(f"{config.path}: no section {name!r}; the sections are: {known}")


def missing_requirements(spec: SectionSpec, config: Config) -> list[str]:
    """What the section's own environment (`env`) needs that this Python lacks; [] when it runs here."""
    if spec.env.startswith("conda:"):
        name = spec.env.split(":", 1)[1]
        return [] if os.environ.get("CONDA_DEFAULT_ENV") == name else [f"the conda environment {name!r}"]
    if spec.env != "pip":
        return []
    from packaging.requirements import InvalidRequirement, Requirement

    missing = []
    lines = (config.algopkg_dir / spec.package / "requirements.txt").read_text(encoding="utf-8").splitlines()
    for line in (raw.split("#", 1)[0].strip() for raw in lines):
        if not line or line.startswith("-"):
            continue
        try:
            requirement = Requirement(line)
            installed = importlib.metadata.version(requirement.name)
        except (InvalidRequirement, importlib.metadata.PackageNotFoundError):
            missing.append(line)
            continue
        if requirement.specifier and not requirement.specifier.contains(installed, prereleases=True):
            missing.append(f"{line} (this Python has {installed})")
    return missing


def require_environment(spec: SectionSpec, config: Config, command: str) -> None:
    """Refuse a section whose own environment this Python does not have, saying what to run instead."""
    if spec.models:
        raise LocalError(
            f"[{spec.section}] models = {spec.models}: {command} loads one model in this process, and this section "
            f"serves many (on the cluster: python controller.py). To try one of them here, copy the section with "
            f"`model_zoo = {spec.models}` and `model = <one of its models>`"
        )
    missing = missing_requirements(spec, config)
    if not missing:
        return
    where = f"[{spec.section}] env = {spec.env}"
    if spec.env.startswith("conda:"):
        name = spec.env.split(":", 1)[1]
        raise LocalError(
            f"{where}: {command} runs the package in this process, and this is not that conda environment; "
            f"run it there: conda run -n {name} python controller.py {command} {spec.section} "
            "(with modelserve installed in it: pip install -e <this checkout>)"
        )
    requirements = config.algopkg_dir / spec.package / "requirements.txt"
    venv = f".venv-{spec.package}"
    raise LocalError(
        f"{where}: {command} runs the package in this process, which lacks: {', '.join(missing)}. "
        f"Make its environment once: python -m venv {venv} && {venv}/bin/pip install -e . -r {requirements}, "
        f"then run: {venv}/bin/python controller.py {command} {spec.section}"
    )


def forget_package(package: str) -> None:
    """Drop `algopkg.<package>` and its modules from the import cache: the next load reads the files again."""
    prefix = f"algopkg.{package}"
    for name in [m for m in sys.modules if m == prefix or m.startswith(prefix + ".")]:
        del sys.modules[name]


def load_section(config: Config, spec: SectionSpec, replica_id: str = "") -> Pipeline:
    """The section's pipeline, its model loaded, configured and warmed up as a replica's is.

    Raises:
        ModelLoadError, or whatever the package raised while imported or loaded.
    """
    root = str(config.algopkg_dir.parent)
    if root not in sys.path[:1]:
        sys.path[:] = [root, *(p for p in sys.path if p != root)]
    loaded = sys.modules.get("algopkg")
    if loaded is not None and not any(str(p).startswith(root) for p in getattr(loaded, "__path__", [])):
        for name in [m for m in sys.modules if m == "algopkg" or m.startswith("algopkg.")]:
            del sys.modules[name]  # another project's algopkg/ was imported first
    forget_package(spec.package)
    args = plan.replica_args(spec, config, model_digest="")
    # Compiled from the files as they are now: a cached .pyc is trusted by its source's mtime in whole
    # seconds and its size, so an edit within the second that keeps the size would go unseen.
    for cached in (config.algopkg_dir / spec.package).rglob("__pycache__/*.pyc"):
        cached.unlink(missing_ok=True)
    writes_bytecode, sys.dont_write_bytecode = sys.dont_write_bytecode, True
    try:
        pipeline = Pipeline.load(args, replica_id or f"local-{os.getpid()}")
    finally:
        sys.dont_write_bytecode = writes_bytecode
    pipeline.configure(plan.replica_config(spec, config))
    return pipeline


def package_traceback(exc: BaseException) -> str:
    """The traceback of a failed load, its frames in the runtime and the import machinery left out:
    what remains points at the package's own lines."""
    chain: list[BaseException] = []
    seen: BaseException | None = exc
    while seen is not None and seen not in chain:
        chain.append(seen)
        seen = seen.__cause__ or seen.__context__
    lines: list[str] = []
    for error in reversed(chain):
        frames = [f for f in traceback.extract_tb(error.__traceback__) if not f.filename.startswith(_OURS)]
        if frames:
            lines.append("Traceback (most recent call last):\n")
            lines.extend(traceback.format_list(frames))
        lines.extend(traceback.format_exception_only(type(error), error))
        if error is not exc:
            lines.append("\nThe above exception was the direct cause of the following exception:\n\n")
    return "".join(lines).rstrip("\n")


def with_request_id(scope: Mapping[str, Any], send: Any) -> tuple[dict[str, Any], Any]:
    """As Ray Serve's proxy does: the client's `x-request-id` (else a new one) goes to the route and
    comes back as a response header."""
    headers = list(scope["headers"])
    request_id = next((v for k, v in headers if k == b"x-request-id"), b"")
    if not request_id:
        request_id = uuid.uuid4().hex.encode()
        headers.append((b"x-request-id", request_id))

    async def sending(message: MutableMapping[str, Any]) -> None:
        if message["type"] == "http.response.start":
            answer = list(message.get("headers", []))
            if not any(k.lower() == b"x-request-id" for k, _ in answer):
                message = {**message, "headers": [*answer, (b"x-request-id", request_id)]}
        await send(message)

    return {**scope, "headers": headers}, sending


@dataclass(frozen=True)
class Answer:
    """What the route answered: the status, the headers (lower-case names) and the body bytes."""

    status: int
    headers: Mapping[str, str]
    body: bytes

    def json(self) -> Any:
        import json

        return json.loads(self.body)


def request_scope(method: str, path: str, root: str, headers: Mapping[str, str], query: bytes = b"") -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": root,
        "query_string": query,
        "headers": [(k.lower().encode("latin-1"), str(v).encode("latin-1")) for k, v in headers.items()],
        "client": ("127.0.0.1", 0),
        "server": ("127.0.0.1", 0),
    }


async def call(
    pipeline: Pipeline,
    method: str,
    root: str,
    body: bytes = b"",
    headers: Mapping[str, str] | None = None,
    sub: str = "",
    query: bytes = b"",
) -> Answer:
    """One request to the section's route `root` (`/extract`), or to a path under it (`/ping`)."""
    sent_headers = {"content-length": str(len(body)), **(headers or {})}
    status, answer_headers, chunks = 500, {}, []
    given, done = False, asyncio.Event()

    async def receive() -> dict[str, Any]:
        nonlocal given
        if given:  # the client stays until the answer is whole (a stream stops on a disconnect)
            await done.wait()
            return {"type": "http.disconnect"}
        given = True
        return {"type": "http.request", "body": body, "more_body": False}

    async def collect(message: MutableMapping[str, Any]) -> None:
        nonlocal status, answer_headers
        if message["type"] == "http.response.start":
            status = message["status"]
            answer_headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in message.get("headers", [])}
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))

    scope, send = with_request_id(request_scope(method, root + sub, root, sent_headers, query), collect)
    response = await pipeline.handle(Request(scope, receive))
    try:
        await response(scope, receive, send)
    finally:
        done.set()
    return Answer(status, answer_headers, b"".join(chunks))
