import re
from typing import Any

import pytest
from openapi_spec_validator import validate
from pydantic import BaseModel, Field

from modelserve.inputs import File
from modelserve.openapi import merge, route_document

ERROR_STATUSES = {"400", "404", "405", "413", "500", "504"}
COMPONENT_NAME = re.compile(r"^[a-zA-Z0-9._-]+$")


class Box(BaseModel):
    x: int = Field(ge=0)
    y: int = Field(ge=0)
    label: str = Field(min_length=2)


class Params(BaseModel):
    image: File
    boxes: list[Box] = Field(min_length=1)
    threshold: float = Field(gt=0.25, le=1)
    mode: str = "fast"
    region: Box | None = None


class Result(BaseModel):
    boxes: list[Box]
    score: float


def document(**overrides: Any) -> dict[str, Any]:
    args: dict[str, Any] = {
        "section": "algopkg.AlgoExample",
        "route": "extract",
        "methods": ("GET", "POST"),
        "params": Params,
        "result": Result,
    }
    return route_document(**{**args, **overrides})


def resolve(doc: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        schema = doc["components"]["schemas"][schema["$ref"].removeprefix("#/components/schemas/")]
    return schema


def example(doc: dict[str, Any], schema: dict[str, Any]) -> Any:
    """A value for `schema` with its required fields only, chosen by type and within its constraints."""
    schema = resolve(doc, schema)
    if "anyOf" in schema:
        return example(doc, next(s for s in schema["anyOf"] if s.get("type") != "null"))
    kind = schema.get("type")
    if kind == "object":
        return {name: example(doc, schema["properties"][name]) for name in schema.get("required", [])}
    if kind == "array":
        return [example(doc, schema["items"]) for _ in range(schema.get("minItems", 0))]
    if kind == "string" and schema.get("format") == "binary":
        return File(b"\x89PNG", filename="a.png", content_type="image/png")
    if kind == "string":
        return "s" * max(schema.get("minLength", 0), 1)
    if kind in ("integer", "number"):
        step = 1 if kind == "integer" else 0.5
        low = schema["minimum"] if "minimum" in schema else schema.get("exclusiveMinimum", -step) + step
        return int(low) if kind == "integer" else float(low)
    if kind == "boolean":
        return True
    raise AssertionError(f"no example for {schema}")


def json_schema(doc: dict[str, Any], path: str, method: str) -> dict[str, Any]:
    schema: dict[str, Any] = doc["paths"][path][method]["requestBody"]["content"]["application/json"]["schema"]
    return schema


def test_a_free_route_accepts_any_object_and_answers_a_free_result() -> None:
    doc = route_document(section="free", route="free", methods=("GET", "POST"), params=None, result=None)
    validate(doc)
    assert json_schema(doc, "/free", "post") == {"type": "object", "additionalProperties": True}
    (query,) = doc["paths"]["/free"]["get"]["parameters"]
    assert query["in"] == "query" and query["schema"]["additionalProperties"] is True
    ok = doc["paths"]["/free"]["post"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert resolve(doc, ok)["properties"]["result"] == {}


def test_params_and_result_become_prefixed_components() -> None:
    doc = document()
    validate(doc)
    schemas = doc["components"]["schemas"]
    assert {"Envelope", "Error", "algopkg.AlgoExample.Params", "algopkg.AlgoExample.Result"} <= set(schemas)
    assert "algopkg.AlgoExample.Params.Box" in schemas and "algopkg.AlgoExample.Result.Box" in schemas
    assert all(COMPONENT_NAME.match(name) for name in schemas)
    assert not any("$defs" in schema for schema in schemas.values())
    params = schemas["algopkg.AlgoExample.Params"]
    assert params["properties"]["image"]["format"] == "binary"
    assert params["properties"]["threshold"]["exclusiveMinimum"] == 0.25
    assert schemas["algopkg.AlgoExample.Params.Box"]["properties"]["label"]["minLength"] == 2
    ok = doc["paths"]["/extract"]["post"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert ok["allOf"][1]["properties"]["result"] == {"$ref": "#/components/schemas/algopkg.AlgoExample.Result"}


def test_get_lists_the_params_fields_as_query_parameters() -> None:
    parameters = document()["paths"]["/extract"]["get"]["parameters"]
    assert {p["name"]: p["required"] for p in parameters} == {
        "image": True,
        "boxes": True,
        "threshold": True,
        "mode": False,
        "region": False,
    }
    assert all(p["in"] == "query" for p in parameters)


def test_a_body_built_from_the_params_schema_validates_against_params() -> None:
    doc = document()
    body = example(doc, json_schema(doc, "/extract", "post"))
    assert set(body) == {"image", "boxes", "threshold"}
    assert Params.model_validate(body).boxes[0].label == "ss"
    with pytest.raises(ValueError, match="threshold"):
        Params.model_validate({**body, "threshold": 0.25})  # the schema's exclusiveMinimum is the model's


def test_body_methods_take_json_forms_and_raw_bodies() -> None:
    body = document(methods=("POST",))["paths"]["/extract"]["post"]["requestBody"]["content"]
    assert set(body) == {"application/json", "multipart/form-data", "application/octet-stream"}
    assert body["multipart/form-data"]["schema"]["$ref"] == body["application/json"]["schema"]["$ref"]
    assert body["application/octet-stream"]["schema"]["format"] == "binary"


@pytest.mark.parametrize("methods", [("GET",), ("POST",)])
def test_only_the_sections_methods_are_operations(methods: tuple[str, ...]) -> None:
    doc = document(methods=methods)
    validate(doc)
    operations = doc["paths"]["/extract"]
    assert set(operations) == {m.lower() for m in methods}
    assert ("requestBody" in operations.get("post", {})) == ("POST" in methods)
    assert "requestBody" not in operations.get("get", {})


def test_every_operation_answers_the_error_envelope() -> None:
    responses = document()["paths"]["/extract"]["post"]["responses"]
    assert set(responses) == {"200", "503"} | ERROR_STATUSES
    for status in ERROR_STATUSES:
        assert responses[status]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Error"}
    overloaded = responses["503"]  # Ray's backpressure answer is plain text; a shared route's, the envelope
    assert overloaded["content"]["text/plain"]["schema"] == {"type": "string"}
    assert "Retry-After" in overloaded["headers"] and "max_queued" in overloaded["description"]


def test_a_keyed_route_names_its_key_schemes_and_its_401() -> None:
    doc = document(keyed=True)
    validate(doc)
    assert doc["components"]["securitySchemes"] == {
        "bearer": {"type": "http", "scheme": "bearer", "description": "Authorization: Bearer <API key>"},
        "apiKey": {"type": "apiKey", "in": "header", "name": "x-api-key", "description": "x-api-key: <API key>"},
    }
    for verb, operation in doc["paths"]["/extract"].items():
        assert operation["security"] == [{"bearer": []}, {"apiKey": []}], verb  # either one
        assert set(operation["responses"]) == {"200", "401", "503"} | ERROR_STATUSES
        assert "WWW-Authenticate" in operation["responses"]["401"]["description"]
    for probe in ("/extract/ping", "/extract/openapi.json"):  # the probes stay open
        assert "security" not in doc["paths"][probe]["get"]
    open_doc = document()
    assert "securitySchemes" not in open_doc["components"]
    assert "401" not in open_doc["paths"]["/extract"]["post"]["responses"]
    assert "security" not in open_doc["paths"]["/extract"]["post"]
    merged = merge([doc, route_document(section="free", route="free", methods=("POST",), params=None, result=None)])
    validate(merged)
    assert merged["components"]["securitySchemes"] == doc["components"]["securitySchemes"]


def test_aliases_name_the_fields_of_params_and_result() -> None:
    class Scored(BaseModel):
        label: int = Field(alias="class")
        probability: float = Field(serialization_alias="p")

    class Query(BaseModel):
        kind: str = Field(alias="type")

    doc = document(params=Query, result=Scored)
    validate(doc)
    schemas = doc["components"]["schemas"]
    assert set(schemas["algopkg.AlgoExample.Result"]["properties"]) == {"class", "p"}  # as the answer has them
    assert set(schemas["algopkg.AlgoExample.Params"]["properties"]) == {"type"}  # as requests send them
    assert [p["name"] for p in doc["paths"]["/extract"]["get"]["parameters"]] == ["type"]


def test_a_streaming_route_answers_ndjson_or_server_sent_events() -> None:
    doc = document(streaming=True)
    validate(doc)
    ok = doc["paths"]["/extract"]["post"]["responses"]["200"]["content"]
    assert set(ok) == {"application/x-ndjson", "text/event-stream"}
    assert ok["application/x-ndjson"]["x-item-schema"] == {"$ref": "#/components/schemas/algopkg.AlgoExample.Result"}


def test_a_nested_route_has_its_ping_and_document_paths() -> None:
    doc = document(route="a/b")
    validate(doc)
    assert set(doc["paths"]) == {"/a/b", "/a/b/ping", "/a/b/openapi.json"}
    pong = doc["paths"]["/a/b/ping"]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert pong["allOf"][1]["properties"]["result"] == {"const": "pong"}


def test_an_odd_section_name_still_makes_valid_names() -> None:
    doc = document(section="my model [v2]")
    validate(doc)
    assert all(COMPONENT_NAME.match(name) for name in doc["components"]["schemas"])
    assert doc["info"]["title"] == "modelserve [my model [v2]]"


def test_the_validator_catches_a_missing_component() -> None:
    doc = document()
    del doc["components"]["schemas"]["algopkg.AlgoExample.Params.Box"]
    with pytest.raises(Exception, match="Params.Box"):
        validate(doc)


def test_an_unknown_method_is_refused() -> None:
    with pytest.raises(ValueError, match="FETCH"):
        document(methods=("FETCH",))


def test_three_documents_merge_into_one_valid_document() -> None:
    docs = [
        document(),
        route_document(section="free", route="free", methods=("POST",), params=None, result=None),
        document(section="algopkg.Stream", route="a/b", streaming=True, version="2"),
    ]
    merged = merge(docs, title="all")
    validate(merged)
    assert len(merged["paths"]) == 9
    assert merged["info"]["title"] == "all"
    assert {"algopkg.AlgoExample.Params", "algopkg.Stream.Params"} <= set(merged["components"]["schemas"])
    assert merge([docs[0], docs[0]]) == merge([docs[0]])


def test_two_sections_on_one_route_clash() -> None:
    with pytest.raises(ValueError, match="'/extract'"):
        merge([document(), document(section="other", params=None)])
