"""The replica's request path, driven in-process with ASGI requests (no Ray)."""

import asyncio
import json
import os
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from helpers import make_project
from ray import serve
from starlette.requests import Request

from modelserve.ingress import ModelReplica, use_uploaded_package
from modelserve.replica_spec import ReplicaArgs, ReplicaConfig


def request(method: str, path: str, body: bytes = b"", root: str = "/echo", query: bytes = b"") -> Request:
    scope = {
        "type": "http", "method": method, "path": path, "root_path": root, "query_string": query,
        "headers": [(b"content-type", b"application/json")],
    }  # fmt: skip
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return Request(scope, receive)


@pytest.fixture
def replica(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ModelReplica:
    project = make_project(tmp_path)
    monkeypatch.setenv("PYTHONPATH", str(project))
    monkeypatch.setattr(sys, "path", list(sys.path))
    for name in [m for m in sys.modules if m == "algopkg" or m.startswith("algopkg.")]:
        monkeypatch.delitem(sys.modules, name)
    args = ReplicaArgs("algopkg.Echo", "Echo", "Echo", str(project / "Model_ZOO"), ("echo_model.txt",), ("POST",))
    replica = ModelReplica(args)
    replica.reconfigure(ReplicaConfig({"threshold": 0.5}, 1, 0).to_json())
    return replica


def answer(replica: ModelReplica, req: Request) -> tuple[int, dict[str, Any], dict[str, str]]:
    response = asyncio.run(replica(req))
    return response.status_code, json.loads(bytes(response.body)), dict(response.headers)


def test_the_uploaded_package_goes_first_on_sys_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    stray, upload = make_project(tmp_path / "stray"), make_project(tmp_path / "upload")
    monkeypatch.setattr(sys, "path", [str(stray), *sys.path])
    search = f"{tmp_path / 'elsewhere'}:{upload}:{stray}"
    assert use_uploaded_package("Echo", search) == str(upload)
    assert sys.path[0] == str(upload) and sys.path.count(str(upload)) == 1
    assert use_uploaded_package("Nope", search) is None


def test_success_envelope_and_the_request_id_header(replica: ModelReplica) -> None:
    req = request("POST", "/echo", b'{"a": 1}')
    status, body, headers = answer(replica, req)
    assert status == 200 and body["status"] == 1
    assert headers["x-modelserve-replica"] == f"pid-{os.getpid()}"  # in Serve: the replica's id
    assert body["result"]["params"] == {"a": 1} and body["result"]["config"] == {"threshold": 0.5}
    assert body["result"]["model"] == ["echo-model-v1"] and len(body["request_id"]) == 32


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "error_type", "text"),
    [
        ("POST", "/echo", b"{oops", 400, "BadRequest", "request body is not valid JSON"),
        ("POST", "/echo", b"[1]", 400, "BadRequest", "must be a JSON object"),
        ("POST", "/echo", b'{"bad": 1}', 400, "BadRequest", "bad params"),
        (
            "POST",
            "/echo/nope",
            b"{}",
            404,
            "NotFound",
            "no such path '/echo/nope'; POST params to /echo, or GET /echo/ping",
        ),
        ("GET", "/echo", b"", 405, "MethodNotAllowed", "GET is not accepted here; use POST"),
        ("POST", "/echo", b'{"fail": 1}', 500, "ModelError", "the model failed on this request: ValueError"),
    ],
)
def test_errors_are_envelopes_with_their_status_and_headers(
    replica: ModelReplica, method: str, path: str, body: bytes, status: int, error_type: str, text: str
) -> None:
    code, answer_body, headers = answer(replica, request(method, path, body))
    assert code == status and answer_body["status"] == 0 and answer_body["request_id"]
    assert answer_body["error"]["type"] == error_type and text in answer_body["error"]["message"], answer_body
    assert "Traceback" not in json.dumps(answer_body)
    assert headers.get("allow") == ("POST" if status == 405 else None) and headers["x-modelserve-replica"]


def test_ping_answers_once_loaded(replica: ModelReplica) -> None:
    assert answer(replica, request("GET", "/echo/ping"))[1]["result"] == "pong"


def test_a_client_request_id_is_kept(replica: ModelReplica) -> None:
    req = request("POST", "/echo", b"{}")
    req.scope["headers"].append((b"x-request-id", b"abc"))
    assert answer(replica, req)[1]["request_id"] == "abc"


def test_concurrent_requests_are_batched_and_each_gets_its_own_result(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = make_project(tmp_path)
    monkeypatch.setenv("PYTHONPATH", str(project))
    monkeypatch.setattr(sys, "path", list(sys.path))
    for name in [m for m in sys.modules if m == "algopkg" or m.startswith("algopkg.")]:
        monkeypatch.delitem(sys.modules, name)
    # Outside a replica, Serve's batch queue asks for the replica's context once (to compare limits).
    context = SimpleNamespace(_deployment_config=SimpleNamespace(max_ongoing_requests=32), replica_tag="r1")
    monkeypatch.setattr(serve, "get_replica_context", lambda: context)
    replica = ModelReplica(ReplicaArgs("algopkg.Batcher", "Batcher", "Batcher", str(project / "Model_ZOO")))

    async def many() -> list[Any]:
        replica.reconfigure(ReplicaConfig({}, 4, 20).to_json())
        return list(
            await asyncio.gather(
                *(replica(request("GET", "/batch", f'{{"i": {i}}}'.encode(), "/batch")) for i in range(8))
            )
        )

    answers = [json.loads(bytes(r.body)) for r in asyncio.run(many())]
    assert [a["result"]["i"] for a in answers] == list(range(8))
    assert max(a["result"]["batch_size"] for a in answers) > 1
