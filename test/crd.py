"""KubeRay's RayService CRD schema (test/fixtures/kuberay: tag v1.7.0) as a test's check of a manifest."""

from __future__ import annotations

import json
from typing import Any

import jsonschema
from helpers import FIXTURES

SCHEMA = json.loads((FIXTURES / "kuberay" / "rayservice_v1_schema.json").read_text())


def unknown_fields(value: Any, schema: dict[str, Any], where: str = "") -> list[str]:
    """Keys the CRD's schema does not declare: the API server would drop them without a word."""
    if isinstance(value, list) and "items" in schema:
        return [p for i, item in enumerate(value) for p in unknown_fields(item, schema["items"], f"{where}[{i}]")]
    if not isinstance(value, dict) or schema.get("x-kubernetes-preserve-unknown-fields") or where == ".metadata":
        return []  # the object's own metadata: the API server checks it, not the CRD
    if "properties" not in schema:
        return [] if "additionalProperties" in schema else [f"{where}: no fields declared"]
    found = []
    for key, item in value.items():
        if key in schema["properties"]:
            found += unknown_fields(item, schema["properties"][key], f"{where}.{key}")
        else:
            found.append(f"{where}.{key}")
    return found


def crd_problems(document: dict[str, Any]) -> list[str]:
    errors = jsonschema.Draft7Validator(SCHEMA).iter_errors(document)
    return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in errors] + unknown_fields(document, SCHEMA)
