"""The JSON envelope of every response, and the encoding of what backends return.

Success: `{"status": 1, "result": ..., "info": ..., "request_id": ...}`, the
original runtime's envelope plus a request id. Failure: `{"status": 0, "error":
{"type", "message"}, "request_id"}`, never a traceback.

Results may hold what `json` cannot encode: numpy arrays and scalars, pydantic models,
dataclasses, `datetime`/`date`/`time` (ISO 8601), `Decimal`, `UUID`, `Path`, `Enum`, sets
and tuples, uploaded `File`s (their name, type and size), and bytes, as `{"$bytes": "<base64>"}`.
A backend that answers something other than JSON returns a `RawResponse`.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime
import enum
import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import PurePath
from typing import Any

from starlette.responses import Response

from modelserve.errors import ModelError, ModelServeError
from modelserve.inputs import File

#: The key of the one-key object that carries bytes in a JSON answer.
BYTES_KEY = "$bytes"

#: Names the replica that answered (the id `status` details and `controller.py logs` show).
REPLICA_HEADER = "x-modelserve-replica"


@dataclass(frozen=True)
class RawResponse:
    """What a backend returns to answer bytes instead of the JSON envelope (a PNG mask, a CSV).

    Example:
        ```python
        return RawResponse(png_bytes, "image/png")
        ```
    """

    body: bytes = field(repr=False)
    content_type: str = "application/octet-stream"
    headers: Mapping[str, str] = field(default_factory=dict)


def _to_json(value: Any) -> Any:
    if hasattr(value, "tolist"):  # numpy arrays and scalars
        return value.tolist()
    if hasattr(value, "model_dump"):  # pydantic models, by alias (as FastAPI answers them)
        return value.model_dump(mode="json", by_alias=True)
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {BYTES_KEY: base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, (datetime.datetime, datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, File):
        return {"filename": value.filename, "content_type": value.content_type, "size": value.size}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, (uuid.UUID, PurePath)):
        return str(value)
    raise TypeError(type(value).__name__)


def dumps(body: Any) -> bytes:
    """JSON bytes of an answer.

    Raises:
        ModelError: the result holds a value of a type no encoder knows; the message names it.
    """
    try:
        return json.dumps(body, default=_to_json, ensure_ascii=False, separators=(",", ":")).encode()
    except TypeError as exc:
        raise ModelError(
            f"the backend returned a {exc}, which cannot be encoded as JSON; return JSON types, numpy, "
            "pydantic models, bytes or a RawResponse"
        ) from None
    except ValueError as exc:  # circular references
        raise ModelError(f"the backend's result cannot be encoded as JSON: {exc}") from None
    except RecursionError:
        raise ModelError("the backend's result is nested too deeply to encode as JSON") from None


def success(result: Any, info: Any, request_id: str) -> dict[str, Any]:
    return {"status": 1, "result": result, "info": info, "request_id": request_id}


def failure(error: ModelServeError, request_id: str) -> dict[str, Any]:
    message = str(error) or error.error_type
    return {"status": 0, "error": {"type": error.error_type, "message": message}, "request_id": request_id}


def success_response(result: Any, info: Any, request_id: str, headers: Mapping[str, str]) -> Response:
    body = dumps(success(result, info, request_id))
    return Response(body, media_type="application/json", headers=dict(headers))


def error_response(error: ModelServeError, request_id: str, headers: Mapping[str, str]) -> Response:
    body = dumps(failure(error, request_id))
    return Response(body, error.status_code, media_type="application/json", headers={**headers, **error.headers})
