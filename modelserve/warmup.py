"""Warm-up requests: each replica runs them after loading its model and before taking traffic."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modelserve import inputs
from modelserve.errors import BadRequest, ModelLoadError

if TYPE_CHECKING:
    from modelserve.backend import Backend


#: `"repeat"` beyond this is a typo, not a warm-up: the list it makes would not fit in memory.
MAX_REPEAT = 10_000


class WarmupError(ValueError):
    """The warm-up file cannot be used; the message says what it should hold."""


def read_warmup(path: Path) -> list[dict[str, Any]]:
    """A JSON object (one request's params), a list of them, or `{"params": {...}, "repeat": N}`."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as exc:
        raise WarmupError(f"cannot read {path.name} as JSON ({exc})") from None
    if isinstance(data, dict) and "params" in data:
        repeat = data.get("repeat", 1)
        if not isinstance(repeat, int) or not 1 <= repeat <= MAX_REPEAT:
            raise WarmupError(f'{path.name}: "repeat" must be a whole number from 1 to {MAX_REPEAT}')
        data = [data["params"]] * repeat
    requests = data if isinstance(data, list) else [data]
    if not requests or not all(isinstance(r, dict) for r in requests):
        raise WarmupError(
            f'{path.name} must hold params objects: {{...}}, [{{...}}, ...] or {{"params": {{...}}, "repeat": N}}'
        )
    return requests


def run_warmup(backend: Backend, path: Path) -> tuple[Any, Any]:
    """Run each request one by one (through `Params` where the backend declares it), then all
    of them as one batch where the backend batches. Returns the first request's params and result
    (a sample of the model's inputs and outputs: the protocol's metadata, protocol.py).

    Raises:
        ModelLoadError: the file is unusable or a request failed; the replica must not take traffic.
    """
    from modelserve.backend import has_batch_method, has_infer_method, has_stream_method

    try:
        requests: list[Any] = read_warmup(path)
    except WarmupError as exc:
        raise ModelLoadError(str(exc)) from None
    params_model = getattr(backend, "Params", None)
    if params_model is not None:
        try:
            requests = [inputs.validate(params_model, params) for params in requests]
        except BadRequest as exc:
            raise ModelLoadError(f"{path.name}: a warm-up request does not fit Params: {exc}") from None
    streams_only = has_stream_method(backend) and not has_infer_method(backend)
    results = []
    for params in requests:
        try:
            if streams_only:
                results.append(list(getattr(backend, "infer_stream")(params)))  # noqa: B009 (not declared on Backend)
            else:
                results.append(backend.infer(params))
        except Exception as exc:
            raise ModelLoadError(f"warm-up request {params!r} failed: {exc!r}") from exc
    if has_batch_method(backend):
        backend.infer_batch(requests)
    return (requests[0], results[0]) if requests else (None, None)
