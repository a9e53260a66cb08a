"""A request's params, from any body a client sends: JSON, a query string, a multipart form
with files, or raw bytes such as an image.

- JSON object (or an empty body with a query string): the params, as before.
- `multipart/form-data`: each file part is a `File` under its field name, each plain field a
  string; a field named `meta`, or any part whose content type is JSON, is parsed as JSON and,
  when it is an object, merged into the params.
- Any other content type (`image/png`, `application/octet-stream`, ...): one `File` under
  `RAW_KEY`, beside the query string's params.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from modelserve.errors import BadRequest, PayloadTooLarge

if TYPE_CHECKING:
    from starlette.requests import Request

#: Where a raw (non-JSON, non-form) body arrives in params.
RAW_KEY = "file"
#: The multipart field whose JSON is merged into params.
META_FIELD = "meta"
#: Bodies parsed as JSON whatever they claim (curl -d sends form-urlencoded; a missing type is JSON).
_JSON_TYPES = ("", "application/json", "application/x-www-form-urlencoded", "text/plain")


@dataclass(frozen=True)
class File:
    """An uploaded file: a multipart file part, or a raw request body.

    Example:
        ```python
        image = Image.open(io.BytesIO(params["file_0"].data))
        ```
    """

    data: bytes = field(repr=False)
    filename: str = ""
    content_type: str = "application/octet-stream"

    @property
    def size(self) -> int:
        return len(self.data)

    def read(self) -> bytes:
        return self.data

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: Any) -> Any:
        """A `Params` model may declare `image: File`: a multipart file part."""
        from pydantic_core import core_schema

        return core_schema.is_instance_schema(cls)

    @classmethod
    def __get_pydantic_json_schema__(cls, schema: Any, handler: Any) -> dict[str, Any]:
        return {"type": "string", "format": "binary", "contentMediaType": "application/octet-stream"}


def media_type(content_type: str) -> str:
    return content_type.split(";", 1)[0].strip().lower()


def is_json_type(content_type: str) -> bool:
    kind = media_type(content_type)
    return kind in _JSON_TYPES or kind.endswith("+json")


def parse_params(body: bytes, query: Mapping[str, str], content_type: str = "") -> dict[str, Any]:
    """A request's params from its body, content type and query string.

    Raises:
        BadRequest: the body is not what its content type says (not a JSON object, a malformed form).
    """
    kind = media_type(content_type)
    if kind == "multipart/form-data":
        return {**query, **parse_multipart(body, content_type)}
    if not is_json_type(content_type):
        return {**query, RAW_KEY: File(body, content_type=kind)}
    if not body.strip():
        return dict(query)
    params = _json(body, "request body")
    if not isinstance(params, dict):
        raise BadRequest(f"request body must be a JSON object of params, got {type(params).__name__}")
    return params


def _json(data: bytes, what: str) -> Any:
    try:
        return json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadRequest(f"{what} is not valid JSON: {exc}") from None
    except RecursionError:
        raise BadRequest(f"{what} is JSON nested too deeply") from None


class _Part:
    def __init__(self) -> None:
        self.headers: dict[str, str] = {}
        self.data = bytearray()
        self._field = bytearray()
        self._value = bytearray()

    def header_field(self, data: bytes, start: int, end: int) -> None:
        self._field += data[start:end]

    def header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def header_end(self) -> None:
        self.headers[self._field.decode("latin-1").lower()] = self._value.decode("latin-1")
        self._field.clear()
        self._value.clear()


def parse_multipart(body: bytes, content_type: str) -> dict[str, Any]:
    """The params of a `multipart/form-data` body (see the module's docstring)."""
    _, options = parse_options_header(content_type)
    boundary = options.get(b"boundary")
    if not boundary:
        raise BadRequest("multipart/form-data without a boundary in its Content-Type")
    parts: list[_Part] = []

    def part_begin() -> None:
        parts.append(_Part())

    def part_data(data: bytes, start: int, end: int) -> None:
        parts[-1].data += data[start:end]

    callbacks: Any = {
        "on_part_begin": part_begin,
        "on_part_data": part_data,
        "on_header_field": lambda d, s, e: parts[-1].header_field(d, s, e),
        "on_header_value": lambda d, s, e: parts[-1].header_value(d, s, e),
        "on_header_end": lambda: parts[-1].header_end(),
    }
    parser = MultipartParser(boundary, callbacks)
    try:
        parser.write(body)
        parser.finalize()
    except MultipartParseError as exc:
        raise BadRequest(f"malformed multipart/form-data body: {exc}") from None
    if not parts or not body.rstrip().endswith(b"--"):
        raise BadRequest("malformed multipart/form-data body: no closing boundary")
    params: dict[str, Any] = {}
    merged: dict[str, Any] = {}
    for part in parts:
        _, disposition = parse_options_header(part.headers.get("content-disposition", ""))
        name = disposition.get(b"name", b"").decode("utf-8", errors="replace")
        if not name:
            raise BadRequest("malformed multipart/form-data body: a part has no name")
        part_type = part.headers.get("content-type", "")
        data = bytes(part.data)
        if name == META_FIELD or (part_type and media_type(part_type) != "text/plain" and is_json_type(part_type)):
            value = _json(data, f"form field {name!r}")
            if isinstance(value, dict):
                merged.update(value)
            else:
                params[name] = value
        elif b"filename" in disposition:
            filename = disposition[b"filename"].decode("utf-8", errors="replace")
            params[name] = File(data, filename=filename, content_type=media_type(part_type) or File.content_type)
        else:
            params[name] = data.decode("utf-8", errors="replace")
    return {**params, **merged}


def validate(model: Any, params: dict[str, Any]) -> Any:
    """`params` as an instance of the backend's `Params` model.

    Raises:
        BadRequest: naming every invalid field and its problem at once.
    """
    from pydantic import ValidationError

    try:
        return model.model_validate(params)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in error['loc']) or 'params'}: {error['msg']}" for error in exc.errors()
        )
        raise BadRequest(f"invalid params ({exc.error_count()}): {problems}") from None


async def read_body(request: Request, max_body: int) -> bytes:
    """The request body, refused (413) beyond `max_body` bytes (`max_body_kb`) before the model sees it."""
    declared = request.headers.get("content-length", "")
    too_large = PayloadTooLarge(f"the request body is over this route's limit of {max_body // 1024} KiB")
    if declared.isdigit():
        if int(declared) > max_body:
            raise too_large
        return await request.body()
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_body:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)
