"""The JSON envelope of every response, and request params decoding.

Success: `{"status": 1, "result": ..., "info": ..., "request_id": ...}`, the
original runtime's envelope plus a request id. Failure: `{"status": 0, "error":
{"type", "message"}, "request_id"}`, never a traceback.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from modelserve.errors import BadRequest, ModelServeError


def _to_json(value: Any) -> Any:
    """Encode what json cannot: numpy arrays and scalars, sets, bytes."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    raise TypeError(f"the backend returned a {type(value).__name__}, which is not JSON serializable")


def dumps(body: Mapping[str, Any]) -> bytes:
    return json.dumps(body, default=_to_json, ensure_ascii=False, separators=(",", ":")).encode()


def success(result: Any, info: Any, request_id: str) -> dict[str, Any]:
    return {"status": 1, "result": result, "info": info, "request_id": request_id}


def failure(error: ModelServeError, request_id: str) -> dict[str, Any]:
    message = str(error) or error.error_type
    return {"status": 0, "error": {"type": error.error_type, "message": message}, "request_id": request_id}


def parse_params(body: bytes, query: Mapping[str, str]) -> dict[str, Any]:
    """A request's params: the JSON object in the body, else the query string.

    Raises:
        BadRequest: the body is not JSON, or not a JSON object.
    """
    if not body.strip():
        return dict(query)
    try:
        params = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadRequest(f"request body is not valid JSON: {exc}") from None
    if not isinstance(params, dict):
        raise BadRequest(f"request body must be a JSON object of params, got {type(params).__name__}")
    return params
