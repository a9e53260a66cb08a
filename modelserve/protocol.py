"""The Open Inference Protocol (KServe v2 REST, what Triton, KServe and MLServer speak) on a section's route.

Every section is a protocol server at its route: `tritonclient.http.InferenceServerClient("host:8000/extract")`
calls `/extract/v2/health/live`, `/extract/v2/models/extract/infer`, ... (KServe gives each model its own host
the same way). The model's name is the section's route (`face/detect` as written in conf.ini); a multiplexed
section (`models`) serves each of its models under its own name. Its version is the section's pinned model
version (`digits@3` -> "3"), where it serves one. The codec is `oip.py`; this module answers the paths with the
pipeline's own steps, so keys, limits, batching, timeouts, metrics and the access log hold as on the route.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from starlette.requests import Request
from starlette.responses import Response

from modelserve import envelope, inputs, oip
from modelserve.errors import ModelServeError
from modelserve.oip import ProtocolError, TensorSpec

if TYPE_CHECKING:
    from modelserve.pipeline import Pipeline

_MODEL_PATH = re.compile(r"^/v2/models/(?P<name>.+?)(?:/versions/(?P<version>[^/]+))?(?P<op>/ready|/infer)?$")
#: Where the protocol's paths start under a route.
PREFIX = "/v2"


@dataclass(frozen=True)
class Call:
    """A protocol path: what it asks (live, ready, server, metadata, model_ready, infer), of which model."""

    kind: str
    model: str = ""
    version: str | None = None

    @property
    def counted(self) -> bool:
        """Whether it is a request (metrics, access log) rather than a probe."""
        return self.kind == "infer"


def is_protocol(sub: str) -> bool:
    return sub == PREFIX or sub.startswith(PREFIX + "/")


def parse(sub: str) -> Call:
    """The call a path under the route names; ProtocolError(404) for a path the protocol has not."""
    if sub == PREFIX:
        return Call("server")
    if sub in ("/v2/health/live", "/v2/health/ready"):
        return Call(sub.rsplit("/", 1)[1])
    match = _MODEL_PATH.match(sub)
    if match is None:
        raise ProtocolError(f"no such path {sub!r} in the Open Inference Protocol", 404)
    op = {None: "metadata", "/ready": "model_ready", "/infer": "infer"}[match.group("op")]
    return Call(op, match.group("name"), match.group("version"))


def model_of(sub: str) -> str | None:
    """The model a protocol path names, if any (a multiplexed section loads it first)."""
    if not is_protocol(sub):
        return None
    try:
        return parse(sub).model or None
    except ProtocolError:
        return None


def version_of(pinned: Sequence[str]) -> str | None:
    """The version a section serves (`digits@3` -> "3"), where it serves exactly one versioned model."""
    versions = [entry.rsplit("@", 1)[1] for entry in pinned if "@" in entry]
    return versions[0] if len(versions) == 1 else None


class Tensors:
    """A model's inputs and outputs for the metadata: declared by the backend (`inputs`, `outputs` lists of
    `modelserve.Tensor`), else seen in its first warm-up request and answer (not enforced), else none."""

    def __init__(self, backend: Any, sample: tuple[Any, Any] | None) -> None:
        self.declared_inputs: tuple[TensorSpec, ...] = tuple(getattr(backend, "inputs", None) or ())
        self.declared_outputs: tuple[TensorSpec, ...] = tuple(getattr(backend, "outputs", None) or ())
        self.inputs = self.declared_inputs
        self.outputs = self.declared_outputs
        if sample is not None and sample[0] is not None:
            params, result = sample
            if not self.inputs and isinstance(params, dict):
                self.inputs = tuple(oip.specs_from_sample(params))
            if not self.outputs:
                with contextlib.suppress(ProtocolError):  # an answer that is no tensor: no outputs listed
                    self.outputs = tuple(oip.specs_from_sample(oip.outputs_of(result, ())))


async def answer(pipeline: Pipeline, request: Request, sub: str, request_id: str) -> tuple[Response, bool]:
    """The protocol's answer to a path under the route, and whether it counts as a request (an inference,
    not a probe); every error as the protocol's `{"error": ...}`."""
    counted = False
    try:
        call = parse(sub)
        counted = call.counted
        return await _answer(pipeline, request, call, request_id), counted
    except ProtocolError as exc:
        return error_response(exc.message, exc.status, pipeline.headers), counted
    except ModelServeError as exc:
        return error_response(str(exc), exc.status_code, {**pipeline.headers, **exc.headers}), counted


def server_response(sub: str, headers: Mapping[str, str]) -> Response:
    """The answer to a path that asks the server, not a model: `/v2`, `/v2/health/live`, `/v2/health/ready`."""
    try:
        call = parse(sub)
    except ProtocolError as exc:
        return error_response(exc.message, exc.status, headers)
    if call.kind == "live":
        return json_response({"live": True}, headers)
    if call.kind == "ready":
        return json_response({"ready": True}, headers)
    if call.kind == "server":
        return json_response(oip.server_metadata(_version()), headers)
    return error_response(f"{sub!r} names a model; this path answers only the server's calls", 404, headers)


async def _answer(pipeline: Pipeline, request: Request, call: Call, request_id: str) -> Response:
    if not call.model:
        return server_response(f"{PREFIX}/health/{call.kind}" if call.kind != "server" else PREFIX, pipeline.headers)
    pipeline.require_key(request.headers)
    name, version = pipeline.model_name or pipeline.route.strip("/"), pipeline.model_version
    if call.model != name:
        raise ProtocolError(f"no model {call.model!r} here; this route serves {name!r}", 404)
    if call.version is not None and call.version != version:
        serving = f"version {version!r}" if version else "no numbered version"
        raise ProtocolError(f"model {name!r} has no version {call.version!r}; it serves {serving}", 404)
    tensors = pipeline.tensors
    if call.kind == "model_ready":
        return json_response({"name": name, "ready": True}, pipeline.headers)
    if call.kind == "metadata":
        versions = [version] if version else []
        metadata = oip.model_metadata(name, versions, "modelserve", tensors.inputs, tensors.outputs)
        return json_response(metadata, pipeline.headers)
    if request.method != "POST":
        raise ProtocolError(f"{request.method} is not allowed here; POST the inference request", 405)
    if pipeline.streams:
        raise ProtocolError(f"model {name!r} streams its answers; call its route instead of the protocol", 400)
    body = await pipeline.read_body(request)
    infer = oip.parse_infer(body, request.headers.get("inference-header-content-length"))
    if tensors.declared_inputs:
        oip.check_inputs(infer.inputs, tensors.declared_inputs)
    params: Any = dict(infer.inputs)
    if pipeline.params_model is not None:  # typed params: the tensors as plain values, validated
        params = inputs.validate(pipeline.params_model, {name: _plain(value) for name, value in params.items()})
    result = await pipeline.call_model(request, params, request_id)
    if hasattr(result, "model_dump"):  # a typed Result
        result = result.model_dump(mode="json", by_alias=True)
    outputs = oip.outputs_of(result, tensors.declared_outputs)
    content, headers = oip.encode_infer(name, version, infer, outputs)
    return Response(content, headers={**pipeline.headers, **headers})


def _plain(array: Any) -> Any:
    """A tensor as nested lists (a scalar as itself), BYTES as text: what a `Params` model validates."""
    if array.dtype == object:
        return np.vectorize(lambda item: item.decode("utf-8", "replace"), otypes=[object])(array).tolist()
    return array.tolist()


def json_response(document: dict[str, Any], headers: Mapping[str, str]) -> Response:
    return Response(envelope.dumps(document), media_type="application/json", headers=dict(headers))


def error_response(message: str, status: int, headers: Mapping[str, str]) -> Response:
    return Response(oip.error_body(message), status, media_type="application/json", headers=dict(headers))


def _version() -> str:
    from modelserve import __version__

    return __version__
