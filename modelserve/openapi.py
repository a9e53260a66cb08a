"""OpenAPI 3.1 documents of the routes: one per conf.ini section, and their merge.

A section's backend may declare `Params` and `Result` (pydantic models); their JSON schemas,
`$defs` included, go under `components/schemas` with names prefixed by the section, so the
documents of several sections merge without clashes. Field names are aliases, as requests are
validated and results answered by alias. A route that needs an API key says so
(`components/securitySchemes`: a bearer token or the `x-api-key` header) and lists its 401.
"""

from __future__ import annotations

import copy
import re
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode

OPENAPI_VERSION = "3.1.0"
_COMPONENTS = "#/components/schemas/"
_FREE_OBJECT: dict[str, Any] = {"type": "object", "additionalProperties": True}
_ERRORS = {
    "400": "BadRequest: the body is not valid JSON or a valid form, or the params fail validation",
    "404": "NotFound: no such path under this route",
    "405": "MethodNotAllowed: the section does not accept this method (see the Allow header)",
    "413": "PayloadTooLarge: the body is over the section's max_body_kb",
    "500": "ModelError: the backend failed on this request",
    "504": "Timeout: the model ran past the section's timeout_s",
}
_UNAUTHORIZED = "Unauthorized: no API key, or a wrong one (see the WWW-Authenticate header)"
_OVERLOADED = (
    "the section's queue is full (max_queued): Ray's plain-text `Request dropped due to backpressure`, with "
    "Retry-After; on a shared route, also the error envelope when the section it chose could not answer"
)
#: How a keyed route takes its key: `Authorization: Bearer <key>` or `x-api-key: <key>`, either one.
SECURITY_SCHEMES: dict[str, Any] = {
    "bearer": {"type": "http", "scheme": "bearer", "description": "Authorization: Bearer <API key>"},
    "apiKey": {"type": "apiKey", "in": "header", "name": "x-api-key", "description": "x-api-key: <API key>"},
}


def _object(**properties: Any) -> dict[str, Any]:
    return {"type": "object", "required": list(properties), "properties": properties}


_STRING = {"type": "string"}
_SHARED = {
    "Envelope": _object(status={"const": 1}, result={}, info={}, request_id=_STRING),
    "Error": _object(status={"const": 0}, error=_object(type=_STRING, message=_STRING), request_id=_STRING),
}


def route_document(
    *,
    section: str,
    route: str,
    methods: tuple[str, ...],
    params: type[BaseModel] | None,
    result: type[BaseModel] | None,
    streaming: bool = False,
    version: str = "",
    keyed: bool = False,
) -> dict[str, Any]:
    """The OpenAPI 3.1 document of one section served at `/<route>`.

    Paths: `/<route>` (one operation per method), `/<route>/ping` and `/<route>/openapi.json`
    (these two stay open). `keyed`: the route needs an API key.

    Raises:
        ValueError: a method OpenAPI has no operation for.

    Example:
        ```python
        doc = route_document(section="algopkg.AlgoExample", route="extract", methods=("POST",), params=P, result=None)
        ```
    """
    prefix = _name(section)
    schemas: dict[str, Any] = copy.deepcopy(_SHARED)
    params_schema = _add_model(schemas, f"{prefix}.Params", params) if params else dict(_FREE_OBJECT)
    result_schema = _add_model(schemas, f"{prefix}.Result", result, "serialization") if result else {}
    operations: dict[str, Any] = {}
    for method in methods:
        verb = method.lower()
        if verb not in ("get", "put", "post", "delete", "options", "head", "patch", "trace"):
            raise ValueError(f"[{section}] method {method!r} has no OpenAPI operation; use GET or POST")
        responses = {"200": _success(result_schema, streaming), **_error_responses(keyed)}
        operation = _operation(f"{prefix}.{verb}", f"Run {section}", section, responses)
        if keyed:
            operation["security"] = [{name: []} for name in SECURITY_SCHEMES]
        if verb in ("get", "head"):
            operation["parameters"] = _query_parameters(params_schema, schemas)
        else:
            operation["requestBody"] = _request_body(params_schema)
        operations[verb] = operation
    base = "/" + route.strip("/")
    paths = {base: operations, f"{base}/ping": _ping(prefix, section), f"{base}/openapi.json": _self(prefix, section)}
    components: dict[str, Any] = {"schemas": schemas}
    if keyed:
        components["securitySchemes"] = copy.deepcopy(SECURITY_SCHEMES)
    return {
        "openapi": OPENAPI_VERSION,
        "info": {"title": f"modelserve [{section}]", "version": version or "0"},
        "paths": paths,
        "components": components,
    }


def merge(documents: list[dict[str, Any]], title: str = "modelserve") -> dict[str, Any]:
    """One document from several `route_document`s: the union of their paths and components.

    Raises:
        ValueError: two documents define the same path, or the same component, differently.
    """
    paths: dict[str, Any] = {}
    components: dict[str, dict[str, Any]] = {"schemas": {}}
    for document in documents:
        _union(paths, document["paths"], "path")
        for kind, items in document.get("components", {}).items():
            _union(components.setdefault(kind, {}), items, "component")
    versions = sorted({document["info"]["version"] for document in documents})
    return {
        "openapi": OPENAPI_VERSION,
        "info": {"title": title, "version": ", ".join(versions) or "0"},
        "paths": paths,
        "components": components,
    }


def _union(into: dict[str, Any], items: dict[str, Any], what: str) -> None:
    for key, value in items.items():
        if key in into and into[key] != value:
            raise ValueError(f"two documents define the {what} {key!r} differently; give each section its own route")
        into[key] = value


def _name(section: str) -> str:
    """OpenAPI component names and operation ids must match `^[a-zA-Z0-9._-]+$`."""
    return re.sub(r"[^a-zA-Z0-9._-]", "_", section) or "_"


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": _COMPONENTS + name}


def _add_model(
    schemas: dict[str, Any], name: str, model: type[BaseModel], mode: JsonSchemaMode = "validation"
) -> dict[str, Any]:
    """Put `model`'s schema under `name` and its `$defs` under `name.<def>`; return a $ref to it.
    `mode`: "validation" for what requests send, "serialization" for what results answer."""
    schema = model.model_json_schema(by_alias=True, ref_template=_COMPONENTS + name + ".{model}", mode=mode)
    for def_name, definition in schema.pop("$defs", {}).items():
        schemas[f"{name}.{_name(def_name)}"] = definition
    schemas[name] = schema
    return _ref(name)


def _resolve(schema: dict[str, Any], schemas: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema and schema["$ref"].startswith(_COMPONENTS):
        schema = schemas[schema["$ref"][len(_COMPONENTS) :]]
    return schema


def _query_parameters(params_schema: dict[str, Any], schemas: dict[str, Any]) -> list[dict[str, Any]]:
    model = _resolve(params_schema, schemas)
    if "properties" not in model:  # free-form: any key=value pairs
        free = "any params, as key=value pairs of the query string"
        return [{"name": "params", "in": "query", "explode": True, "schema": model, "description": free}]
    required = set(model.get("required", []))
    return [
        {"name": name, "in": "query", "required": name in required, "schema": schema}
        for name, schema in model["properties"].items()
    ]


def _request_body(params_schema: dict[str, Any]) -> dict[str, Any]:
    form = "fields of the params (files as file parts); a `meta` field holding JSON is merged into them"
    raw = {"type": "string", "format": "binary", "description": "a raw body, which arrives as params['file']"}
    return {
        "required": False,
        "content": {
            "application/json": {"schema": params_schema},
            "multipart/form-data": {"schema": {**params_schema, "description": form}},
            "application/octet-stream": {"schema": raw},
        },
    }


def _success(result_schema: dict[str, Any], streaming: bool) -> dict[str, Any]:
    if streaming:
        lines = {"type": "string", "description": "one JSON item per line"}
        events = {"type": "string", "description": "one `data: <JSON item>` event per item (Accept: text/event-stream)"}
        content = {
            "application/x-ndjson": {"schema": lines, "x-item-schema": result_schema},
            "text/event-stream": {"schema": events, "x-item-schema": result_schema},
        }
        return {"description": "the items, streamed as they are produced", "content": content}
    schema = {"allOf": [_ref("Envelope"), {"properties": {"result": result_schema}}]} if result_schema else None
    return {"description": "the result in the envelope", "content": _json(schema or _ref("Envelope"))}


def _error_responses(keyed: bool) -> dict[str, Any]:
    errors = {**_ERRORS, "401": _UNAUTHORIZED} if keyed else _ERRORS
    responses = {status: {"description": text, "content": _json(_ref("Error"))} for status, text in errors.items()}
    retry = {"Retry-After": {"description": "seconds to wait before retrying", "schema": {"type": "integer"}}}
    overloaded = {"text/plain": {"schema": _STRING}, **_json(_ref("Error"))}
    responses["503"] = {"description": _OVERLOADED, "headers": retry, "content": overloaded}
    return dict(sorted(responses.items()))


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def _operation(operation_id: str, summary: str, section: str, responses: dict[str, Any]) -> dict[str, Any]:
    return {"operationId": operation_id, "summary": summary, "tags": [section], "responses": responses}


def _ping(prefix: str, section: str) -> dict[str, Any]:
    pong = {"allOf": [_ref("Envelope"), {"properties": {"result": {"const": "pong"}}}]}
    loaded = {"description": "the model is loaded", "content": _json(pong)}
    responses = {"200": loaded, "500": {"description": "the model is not loaded yet", "content": _json(_ref("Error"))}}
    return {"get": _operation(f"{prefix}.ping", f"Is {section} loaded?", section, responses)}


def _self(prefix: str, section: str) -> dict[str, Any]:
    document = {"200": {"description": "this document", "content": _json({"type": "object"})}}
    return {"get": _operation(f"{prefix}.openapi", f"The OpenAPI document of {section}", section, document)}
