import json

import numpy as np
import pytest

from modelserve import envelope
from modelserve.errors import BadRequest, MethodNotAllowed, ModelError


def test_success_keeps_the_original_envelope() -> None:
    body = envelope.success({"a": 1}, "Result from host", "rid")
    assert body == {"status": 1, "result": {"a": 1}, "info": "Result from host", "request_id": "rid"}


def test_failure_has_type_message_and_no_traceback() -> None:
    body = envelope.failure(ModelError("the model failed"), "rid")
    assert body == {"status": 0, "error": {"type": "ModelError", "message": "the model failed"}, "request_id": "rid"}
    assert MethodNotAllowed("PUT", ("GET",)).status_code == 405 and BadRequest().status_code == 400


def test_dumps_numpy_and_rejects_unknown_objects() -> None:
    data = json.loads(envelope.dumps({"r": np.arange(3, dtype=np.float32), "s": np.int64(4), "t": (1, 2)}))
    assert data == {"r": [0.0, 1.0, 2.0], "s": 4, "t": [1, 2]}
    with pytest.raises(TypeError, match="not JSON serializable"):
        envelope.dumps({"r": object()})


def test_parse_params() -> None:
    assert envelope.parse_params(b'{"x": [1, 2]}', {}) == {"x": [1, 2]}
    assert envelope.parse_params(b"", {"x": "1"}) == {"x": "1"}
    assert envelope.parse_params(b"  ", {}) == {}
    with pytest.raises(BadRequest, match="not valid JSON"):
        envelope.parse_params(b"{bad", {})
    with pytest.raises(BadRequest, match="must be a JSON object"):
        envelope.parse_params(b"[1, 2]", {})
    with pytest.raises(BadRequest, match="not valid JSON"):
        envelope.parse_params(b"\xff\xfe", {})
