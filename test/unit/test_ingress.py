"""The replica's request path, driven in-process with ASGI requests (no Ray)."""

import asyncio
import gc
import json
import logging
import sys
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from helpers import make_project
from ray import serve
from starlette.requests import Request

from modelserve import auth
from modelserve.backend import use_uploaded_package
from modelserve.ingress import ModelReplica
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


class _Loop:
    """One event loop for the module, as a replica has one: Serve's batch queues live on it."""

    loop: asyncio.AbstractEventLoop | None = None

    def run(self, coro: Any) -> Any:
        assert self.loop is not None
        return self.loop.run_until_complete(coro)


LOOP = _Loop()


@pytest.fixture(autouse=True, scope="module")
def _one_loop() -> Iterator[None]:
    LOOP.loop = asyncio.new_event_loop()
    asyncio.set_event_loop(LOOP.loop)
    yield
    pending = asyncio.all_tasks(LOOP.loop)
    for task in pending:
        task.cancel()
    LOOP.loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
    gc.collect()  # Serve's batch queues look for the current loop when collected: let them find this one
    asyncio.set_event_loop(None)
    LOOP.loop.close()


@pytest.fixture(autouse=True)
def _replica_context(monkeypatch: pytest.MonkeyPatch) -> None:
    """Outside a replica, Serve's batch queue asks for the replica's context (to compare limits)."""
    context = SimpleNamespace(_deployment_config=SimpleNamespace(max_ongoing_requests=32), replica_tag="r1")
    monkeypatch.setattr(serve, "get_replica_context", lambda: context)


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
    response = LOOP.run(replica(req))
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
    assert headers["x-modelserve-replica"] == "r1"  # the replica's id in Serve
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
    replica = ModelReplica(ReplicaArgs("algopkg.Batcher", "Batcher", "Batcher", str(project / "Model_ZOO")))

    async def many() -> list[Any]:
        replica.reconfigure(ReplicaConfig({}, 4, 20).to_json())
        return list(
            await asyncio.gather(
                *(replica(request("GET", "/batch", f'{{"i": {i}}}'.encode(), "/batch")) for i in range(8))
            )
        )

    answers = [json.loads(bytes(r.body)) for r in LOOP.run(many())]
    assert [a["result"]["i"] for a in answers] == list(range(8))
    assert max(a["result"]["batch_size"] for a in answers) > 1


def test_an_unbatched_backend_gets_concurrent_requests_in_one_hand_off_each_answered_alone(
    replica: ModelReplica, monkeypatch: pytest.MonkeyPatch
) -> None:
    hand_offs: list[int] = []
    run_each = replica._pipeline.calls.run_each

    def counted(fn: Any, batch: list[Any]) -> Any:
        hand_offs.append(len(batch))
        return run_each(fn, batch)

    monkeypatch.setattr(replica._pipeline.calls, "run_each", counted)

    async def many() -> list[Any]:
        replica.reconfigure(ReplicaConfig({}, 8, 20).to_json())
        bodies = [b'{"fail": 1}' if i == 3 else f'{{"i": {i}}}'.encode() for i in range(8)]
        return list(await asyncio.gather(*(replica(request("POST", "/echo", body)) for body in bodies)))

    answers = [(r.status_code, json.loads(bytes(r.body))) for r in LOOP.run(many())]
    assert answers[3][0] == 500 and answers[3][1]["error"]["message"].startswith("the model failed on this request")
    assert [a[1]["result"]["params"]["i"] for i, a in enumerate(answers) if i != 3] == [0, 1, 2, 4, 5, 6, 7]
    assert hand_offs[0] == 1 and sum(hand_offs) == 8 and len(hand_offs) <= 3  # the first went alone, at once


def test_the_owner_of_a_split_route_answers_its_share_forwards_the_rest_and_copies_to_mirrors(
    replica: ModelReplica, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """router.py inside the replica, with Ray's deployment handles replaced by direct calls."""

    class Other:  # another section's replica, as its handle answers (no second ModelReplica: its
        # batch queue, collected on a model thread, would leave an event loop behind)
        def __init__(self, name: str) -> None:
            self.name = name

        async def handle_http(self, payload: dict[str, Any]) -> Any:
            result = {"params": json.loads(payload["body"]), "config": {"who": self.name}}
            return 200, [("content-type", "application/json")], json.dumps({"status": 1, "result": result}).encode()

        async def handle_copies(self, payloads: list[dict[str, Any]]) -> list[int]:
            return [(await self.handle_http(p))[0] for p in payloads]

    others = {name: Other(name) for name in ("Echo:b", "Echo:copy")}
    copies: list[dict[str, Any]] = []

    def handle(target: Any) -> Any:
        async def remote(payload: dict[str, Any]) -> Any:
            if target.app == "Echo:down":
                raise RuntimeError("no replica")
            return await others[target.app].handle_http(payload)

        async def send_copies(payloads: list[dict[str, Any]]) -> list[int]:
            copies.extend(payloads)
            return await others[target.app].handle_copies(payloads)

        return SimpleNamespace(
            handle_http=SimpleNamespace(remote=remote), handle_copies=SimpleNamespace(remote=send_copies)
        )

    monkeypatch.setattr("modelserve.router.Router._handle", lambda self, target: handle(target))
    monkeypatch.setattr("modelserve.router.COPY_WINDOW_S", 0.0)  # the loop runs only while a request does
    reconfigured = []
    monkeypatch.setattr(replica._pipeline.backend, "reconfigure", reconfigured.append)

    def target(app: str, weight: int) -> dict[str, Any]:
        return {"app": app, "deployment": "Echo", "section": f"algopkg.{app}", "weight": weight}

    def split(a: int, b: int, down: bool = False) -> None:
        second = target("Echo:down" if down else "Echo:b", b)
        mirror = {"app": "Echo:copy", "deployment": "Echo", "section": "algopkg.Echo:copy", "percent": 100}
        traffic = {"targets": [target("Echo", a), second], "sticky": "", "mirrors": {"algopkg.Echo": [mirror]}}
        replica.reconfigure(ReplicaConfig({"threshold": 0.5}, route="/echo", traffic=traffic).to_json())

    split(70, 30)
    assert reconfigured == []  # a new split is no new user_config: the backend is not reconfigured
    served: dict[str, int] = {}
    for i in range(400):
        status, body, headers = answer(replica, request("POST", "/echo", json.dumps({"i": i}).encode()))
        assert status == 200 and body["result"]["params"] == {"i": i}, body
        served[headers["x-modelserve-section"]] = served.get(headers["x-modelserve-section"], 0) + 1
        expected = {"who": "Echo:b"} if headers["x-modelserve-section"] == "algopkg.Echo:b" else {"threshold": 0.5}
        assert body["result"]["config"] == expected
    LOOP.run(asyncio.sleep(0.3))  # the copies go out in the background, a batch every 50 ms
    assert abs(served["algopkg.Echo"] - 280) <= 40, served
    assert len(copies) == served["algopkg.Echo"]  # only the mirrored section's answers are copied
    assert {json.loads(c["body"])["i"] for c in copies} <= set(range(400))
    status, body, headers = answer(replica, request("GET", "/echo/ping"))
    assert body["result"] == "pong" and "x-modelserve-section" not in headers  # a probe is the owner's own
    split(0, 100, down=True)
    status, body, headers = answer(replica, request("POST", "/echo", b"{}"))
    assert status == 503 and headers["x-modelserve-section"] == "algopkg.Echo:down", body
    assert "could not answer" in body["error"]["message"] and "Traceback" not in json.dumps(body)


def test_an_idle_replica_reads_0_in_flight_though_a_health_check_sampled_a_request(
    replica: ModelReplica, monkeypatch: pytest.MonkeyPatch
) -> None:
    shown: list[int] = []
    monkeypatch.setattr(replica._metrics, "in_flight", SimpleNamespace(set=shown.append))

    async def sampled_mid_request() -> Any:
        slow = asyncio.ensure_future(replica(request("POST", "/echo", b'{"sleep_s": 0.3}')))
        await asyncio.sleep(0.1)
        replica.check_health()  # Ray's health check, while the request waits for the model
        return await slow

    assert LOOP.run(sampled_mid_request()).status_code == 200
    assert shown == [1, 0]  # the request is over: the gauge says so at once, not at the next check
    replica.check_health()
    assert answer(replica, request("POST", "/echo", b"{}"))[0] == 200
    assert shown == [1, 0, 0]  # a request on a replica shown idle costs no metric call


def test_a_timeout_is_logged_whatever_access_log_says(replica: ModelReplica) -> None:
    replica.reconfigure(ReplicaConfig({"threshold": 0.5}, 1, 0, timeout_s=0.05).to_json())
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    logging.getLogger("ray.serve").addHandler(handler)
    try:
        status, body, _ = answer(replica, request("POST", "/echo", b'{"sleep_s": 0.3}'))
    finally:
        logging.getLogger("ray.serve").removeHandler(handler)
    assert status == 504 and body["error"]["type"] == "Timeout"
    (line,) = [r.getMessage() for r in records if body["request_id"] in r.getMessage()]
    assert line.endswith("the model ran past timeout_s = 0.05 s; answered 504")


def test_a_keyed_route_describes_its_keys(replica: ModelReplica) -> None:
    def document() -> dict[str, Any]:
        return answer(replica, request("GET", "/echo/openapi.json"))[1]

    assert "securitySchemes" not in document()["components"]
    replica.reconfigure(ReplicaConfig({"threshold": 0.5}, 1, 0, api_keys=(auth.digest("k" * 20),)).to_json())
    keyed = document()  # open, like the probes
    assert set(keyed["components"]["securitySchemes"]) == {"bearer", "apiKey"}
    assert "401" in keyed["paths"]["/echo"]["post"]["responses"]
    replica.reconfigure(ReplicaConfig({"threshold": 0.5}, 1, 0).to_json())
    assert "securitySchemes" not in document()["components"]
