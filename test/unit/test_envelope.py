import base64
import dataclasses
import datetime
import enum
import json
from decimal import Decimal
from pathlib import Path

import numpy as np
import pydantic
import pytest

from modelserve import envelope
from modelserve.errors import BadRequest, MethodNotAllowed, ModelError
from modelserve.inputs import File


def test_success_keeps_the_original_envelope() -> None:
    body = envelope.success({"a": 1}, "Result from host", "rid")
    assert body == {"status": 1, "result": {"a": 1}, "info": "Result from host", "request_id": "rid"}


def test_failure_has_type_message_and_no_traceback() -> None:
    body = envelope.failure(ModelError("the model failed"), "rid")
    assert body == {"status": 0, "error": {"type": "ModelError", "message": "the model failed"}, "request_id": "rid"}
    assert MethodNotAllowed("PUT", ("GET",)).status_code == 405 and BadRequest().status_code == 400


def test_dumps_what_backends_return_without_converting_it() -> None:
    class Colour(enum.Enum):
        RED = "red"

    @dataclasses.dataclass
    class Box:
        w: int

    result = {
        "r": np.arange(3, dtype=np.float32),
        "s": np.int64(4),
        "t": (1, 2),
        "b": b"\x00\xff",
        "when": datetime.datetime(2026, 11, 22, 5, 30, tzinfo=datetime.timezone.utc),
        "day": datetime.date(2026, 11, 22),
        "box": Box(3),
        "colour": Colour.RED,
        "money": Decimal("1.5"),
        "path": Path("/tmp/x"),
        "file": File(b"abc", "a.png", "image/png"),
    }
    assert json.loads(envelope.dumps(result)) == {
        "r": [0.0, 1.0, 2.0],
        "s": 4,
        "t": [1, 2],
        "b": {"$bytes": base64.b64encode(b"\x00\xff").decode()},
        "when": "2026-11-22T05:30:00+00:00",
        "day": "2026-11-22",
        "box": {"w": 3},
        "colour": "red",
        "money": 1.5,
        "path": "/tmp/x",
        "file": {"filename": "a.png", "content_type": "image/png", "size": 3},
    }


def test_dumps_pydantic_models() -> None:
    class Result(pydantic.BaseModel):
        when: datetime.date
        scores: list[float]

    data = json.loads(envelope.dumps({"result": Result(when=datetime.date(2026, 1, 2), scores=[0.5])}))
    assert data == {"result": {"when": "2026-01-02", "scores": [0.5]}}


def test_pydantic_models_are_answered_by_alias() -> None:
    class Score(pydantic.BaseModel):
        label: int = pydantic.Field(alias="class")
        probability: float = pydantic.Field(serialization_alias="p")

    class Result(pydantic.BaseModel):
        best: Score
        scores: list[Score]

    score = Score.model_validate({"class": 4, "probability": 0.9})
    data = json.loads(envelope.dumps(envelope.success(Result(best=score, scores=[score]), "", "rid")))
    assert data["result"] == {"best": {"class": 4, "p": 0.9}, "scores": [{"class": 4, "p": 0.9}]}


def test_an_unencodable_result_is_a_model_error_naming_its_type() -> None:
    class Handle:
        pass

    with pytest.raises(ModelError, match="returned a Handle, which cannot be encoded as JSON"):
        envelope.dumps({"r": Handle()})
    circular: list[object] = []
    circular.append(circular)
    with pytest.raises(ModelError, match="cannot be encoded as JSON"):
        envelope.dumps({"r": circular})
