"""Our Open Inference Protocol answers checked against the protocol's own OpenAPI description.

`validate(kind, document)` raises `jsonschema.ValidationError` when `document` is not what the published
document (test/fixtures/oip/open_inference_rest.yaml) says the answer of that kind is. Its objects are held
closed: a key the protocol does not name (a typo such as "model_versoin") fails too. A JSON infer answer
only: binary outputs carry no "data", which the protocol's JSON schema requires.
"""

from __future__ import annotations

import copy
from functools import cache
from pathlib import Path
from typing import Any

import yaml
from openapi_schema_validator import OAS30Validator

DOCUMENT = Path(__file__).parent / "fixtures" / "oip" / "open_inference_rest.yaml"

_MODEL = "/v2/models/${MODEL_NAME}/versions/${MODEL_VERSION}"

#: Each kind of answer, and the (path, method, status) whose response schema it must meet.
ANSWERS: dict[str, list[tuple[str, str, str]]] = {
    "server_metadata": [("/v2/", "get", "200")],
    "model_metadata": [(_MODEL, "get", "200")],
    "infer_response": [(f"{_MODEL}/infer", "post", "200")],
    "error": [("/v2/", "get", "400"), (f"{_MODEL}/infer", "post", "400")],
}


@cache
def document() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(DOCUMENT.read_text(encoding="utf-8"))
    return loaded


@cache
def _closed_components() -> dict[str, Any]:
    components = copy.deepcopy(document()["components"])
    for schema in components["schemas"].values():
        if schema.get("type") == "object" and "properties" in schema:
            schema.setdefault("additionalProperties", False)
    return components  # type: ignore[no-any-return]


def schema_of(path: str, method: str, status: str) -> dict[str, Any]:
    """The response schema of one operation's answer, its $refs resolvable (they point into `components`)."""
    response = document()["paths"][path][method]["responses"][status]
    return {**response["content"]["application/json"]["schema"], "components": _closed_components()}


def validate(kind: str, answer: dict[str, Any]) -> None:
    """Raises jsonschema.ValidationError when `answer` is not a valid answer of `kind` (a key of ANSWERS)."""
    if kind not in ANSWERS:
        raise KeyError(f"kind {kind!r} is not one of {', '.join(ANSWERS)}")
    for operation in ANSWERS[kind]:
        OAS30Validator(schema_of(*operation)).validate(answer)
