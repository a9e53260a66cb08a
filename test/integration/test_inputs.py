"""Inputs beyond JSON and outputs beyond it, through the default (fast) ingress and real HTTP:
multipart uploads, raw bodies, body limits, numpy and raw answers, typed params with OpenAPI,
and streamed answers."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests
from helpers import (
    Reply,
    TestCluster,
    assert_error_envelope,
    call,
    controller_in_process,
    dev_server,
    make_project,
    write_conf,
)
from openapi_spec_validator import validate

pytestmark = pytest.mark.integration

SECTIONS = (
    """
    [algopkg.Inputs]
    backend = Inputs
    route = inputs
    method = POST
    cpu_cost = 0.25
    max_body_kb = 64
    """,
    """
    [algopkg.Inputs:batch]
    backend = InputsBatch
    route = inputs/batch
    method = POST
    cpu_cost = 0.25
    max_batch_size = 8
    batch_wait_ms = 50
    """,
    """
    [algopkg.Inputs:legacy]
    backend = InputsLegacy
    route = inputs/legacy
    method = POST
    cpu_cost = 0.25
    """,
    """
    [algopkg.Inputs:typed]
    backend = Typed
    route = typed
    method = GET,POST
    cpu_cost = 0.25
    warmup = typed_warmup.json
    """,
    """
    [algopkg.Inputs:stream]
    backend = Streamer
    route = stream
    method = POST
    cpu_cost = 0.25
    """,
)
JPEG = bytes(range(256)) * 40  # any bytes: the runtime never decodes them
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(200))


@pytest.fixture(scope="module")
def conf(tmp_path_factory: pytest.TempPathFactory, cluster: TestCluster) -> Path:
    project = make_project(tmp_path_factory.mktemp("inputs"))
    path = write_conf(project, cluster.serve(), *SECTIONS)
    code, out = controller_in_process("-c", str(path))
    assert code == 0, out
    return path


def reply(response: requests.Response) -> Reply:
    try:
        body: Any = response.json()
    except ValueError:
        body = response.content
    return Reply(response.status_code, body, {k.lower(): v for k, v in response.headers.items()})


def upload(url: str, **fields: Any) -> Reply:
    files = {
        "file_0": ("cat.jpg", JPEG, "image/jpeg"),
        "file_1": ("mask.png", PNG, "image/png"),
        "meta": (None, json.dumps({"threshold": 0.25, "tags": ["a", "b"]})),
        "note": (None, "héllo"),
        **fields,
    }
    return reply(requests.post(url, files=files, timeout=30))


def file_summary(name: str, data: bytes, content_type: str) -> dict[str, Any]:
    return {
        "filename": name,
        "content_type": content_type,
        "size": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
    }


EXPECTED = {
    "file_0": file_summary("cat.jpg", JPEG, "image/jpeg"),
    "file_1": file_summary("mask.png", PNG, "image/png"),
    "threshold": 0.25,
    "tags": ["a", "b"],
    "note": "héllo",
}


@pytest.mark.parametrize("route", ["inputs", "inputs/legacy"])
def test_a_multipart_upload_arrives_as_files_fields_and_meta(conf: Path, cluster: TestCluster, route: str) -> None:
    answer = upload(f"{cluster.base_url}/{route}")
    assert answer.status == 200, answer.body
    assert answer.body["result"] == EXPECTED


def test_uploads_batch_and_each_keeps_its_own_files(conf: Path, cluster: TestCluster) -> None:
    url = f"{cluster.base_url}/inputs/batch"
    with ThreadPoolExecutor(12) as pool:
        answers = list(
            pool.map(lambda i: upload(url, note=(None, f"n{i}"), file_0=("f.bin", bytes([i]) * i)), range(12))
        )
    print(f"batch sizes of 12 concurrent uploads: {sorted(a.body['result']['batch_size'] for a in answers)}")
    for i, answer in enumerate(answers):
        assert answer.status == 200, answer.body
        result = answer.body["result"]
        assert result["note"] == f"n{i}"
        assert result["file_0"] == file_summary("f.bin", bytes([i]) * i, "application/octet-stream")
    assert max(a.body["result"]["batch_size"] for a in answers) > 1


def test_a_raw_body_is_a_file_and_a_raw_response_goes_back_as_is(conf: Path, cluster: TestCluster) -> None:
    headers = {"Content-Type": "image/png"}
    described = reply(requests.post(f"{cluster.base_url}/inputs?k=v", data=PNG, headers=headers, timeout=30))
    assert described.status == 200
    assert described.body["result"] == {"k": "v", "file": file_summary("", PNG, "image/png")}
    echoed = requests.post(f"{cluster.base_url}/inputs?answer=raw", data=PNG, headers=headers, timeout=30)
    assert echoed.status_code == 200 and echoed.content == PNG
    assert echoed.headers["content-type"] == "image/png" and echoed.headers["x-file-name"] == "raw"
    assert echoed.headers["x-modelserve-replica"] and echoed.headers["x-request-id"]


def test_malformed_forms_are_400s_and_fail_only_themselves(conf: Path, cluster: TestCluster) -> None:
    for route in ("inputs", "inputs/batch", "inputs/legacy"):
        url = f"{cluster.base_url}/{route}"
        for content_type, body in [
            ("multipart/form-data; boundary=xyz", b"--xyz\r\nContent-Disposition: form-data; name=a\r\n\r\nno end"),
            ("multipart/form-data", b"--xyz--\r\n"),
            ("multipart/form-data; boundary=xyz", b"\x00" * 100),
        ]:
            answer = reply(requests.post(url, data=body, headers={"Content-Type": content_type}, timeout=30))
            assert_error_envelope(answer, 400, "BadRequest", "multipart/form-data")
        bad_meta = upload(url, meta=(None, "{oops"))
        assert_error_envelope(bad_meta, 400, "BadRequest", "form field 'meta' is not valid JSON")
        assert upload(url).status == 200


def test_bodies_over_max_body_kb_get_413_before_the_model(conf: Path, cluster: TestCluster) -> None:
    url = f"{cluster.base_url}/inputs"
    big = b"x" * (65 * 1024)
    too_large = reply(requests.post(url, data=big, headers={"Content-Type": "image/png"}, timeout=30))
    assert_error_envelope(too_large, 413, "PayloadTooLarge", "limit of 64 KiB")
    chunked = reply(requests.post(url, data=iter([big[:40000], big[40000:]]), timeout=30))  # no Content-Length
    assert_error_envelope(chunked, 413, "PayloadTooLarge", "limit of 64 KiB")
    form = upload(url, file_0=("big.jpg", big, "image/jpeg"))
    assert_error_envelope(form, 413, "PayloadTooLarge")
    assert upload(url).status == 200
    # Another section keeps the default limit (10 MiB).
    assert reply(requests.post(f"{cluster.base_url}/inputs/legacy", data=big, timeout=30)).status == 400


def test_numpy_bytes_and_datetimes_encode_and_an_unknown_type_is_named(conf: Path, cluster: TestCluster) -> None:
    answer = call(f"{cluster.base_url}/inputs", {"answer": "types"})
    assert answer.status == 200
    assert answer.body["result"] == {
        "array": [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]],
        "scalar": 7,
        "float": 0.5,
        "bytes": {"$bytes": "AP9tb2RlbA=="},
        "when": "2026-11-22T05:30:00+00:00",
        "path": "/tmp/x",
    }
    failed = call(f"{cluster.base_url}/inputs", {"answer": "unencodable"})
    assert_error_envelope(failed, 500, "ModelError", "returned a object, which cannot be encoded as JSON")


def example_from(schema: dict[str, Any], components: dict[str, Any]) -> Any:
    """A value a schema accepts, built from its types and bounds alone (required properties only)."""
    if "$ref" in schema:
        return example_from(components[schema["$ref"].rsplit("/", 1)[1]], components)
    if "anyOf" in schema:
        return example_from(schema["anyOf"][0], components)
    kind = schema.get("type")
    if kind == "object":
        return {k: example_from(schema["properties"][k], components) for k in schema.get("required", [])}
    if kind == "string":
        return "a" * max(1, schema.get("minLength", 1))
    if kind == "integer":
        return max(schema.get("minimum", 1), schema.get("exclusiveMinimum", 0) + 1)
    if kind == "number":
        return 1.0
    if kind == "boolean":
        return True
    if kind == "array":
        return []
    raise AssertionError(f"no example for {schema}")


def test_typed_params_are_validated_and_described_by_openapi(conf: Path, cluster: TestCluster) -> None:
    """Warm-up ran through `Params` too: `Typed.infer` refuses a dict, so the section would not load."""
    url = f"{cluster.base_url}/typed"
    ok = call(url, {"text": "ab", "times": 2, "box": {"width": 2, "height": 3}})
    assert ok.status == 200 and ok.body["result"] == {"text": "abab", "area": 6}
    assert call(f"{url}?text=ab&times=3", method="GET").body["result"] == {"text": "ababab", "area": 0}
    bad = call(url, {"times": 9, "box": {"width": 0, "height": 1}})
    assert_error_envelope(bad, 400, "BadRequest", "invalid params (3): ")
    for field in ("text: Field required", "times: Input should be less than or equal to 5", "box.width: Input"):
        assert field in bad.body["error"]["message"], bad.body

    document = requests.get(f"{url}/openapi.json", timeout=30).json()
    validate(document)
    post = document["paths"]["/typed"]["post"]
    schema = post["requestBody"]["content"]["application/json"]["schema"]
    components = document["components"]["schemas"]
    body = example_from(schema, components)
    assert set(body) == {"text"}, body
    built = call(url, body)
    assert built.status == 200, built.body
    result_ref = post["responses"]["200"]["content"]["application/json"]["schema"]["allOf"][1]["properties"]["result"]
    assert set(components[result_ref["$ref"].rsplit("/", 1)[1]]["properties"]) == {"text", "area"}
    assert {"400", "413", "500"} <= set(post["responses"])

    free = requests.get(f"{cluster.base_url}/inputs/openapi.json", timeout=30).json()
    validate(free)
    free_schema = free["paths"]["/inputs"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    if "$ref" in free_schema:
        free_schema = free["components"]["schemas"][free_schema["$ref"].rsplit("/", 1)[1]]
    assert free_schema == {"type": "object", "additionalProperties": True}, free_schema


def test_controller_openapi_merges_every_section(conf: Path, tmp_path: Path) -> None:
    out = tmp_path / "openapi.json"
    code, printed = controller_in_process("openapi", "-o", str(out), "-c", str(conf))
    assert code == 0, printed
    document = json.loads(out.read_text())
    validate(document)
    assert {"/inputs", "/inputs/batch", "/inputs/legacy", "/typed", "/stream"} <= set(document["paths"])


def stream(url: str, params: dict[str, Any], accept: str = "") -> requests.Response:
    headers = {"Accept": accept} if accept else {}
    return requests.post(url, json=params, headers=headers, stream=True, timeout=30)


def test_a_stream_sends_each_item_as_it_is_produced(conf: Path, cluster: TestCluster, tmp_path: Path) -> None:
    """Through the default (fast) ingress: the first item arrives before the last one is produced."""
    log = tmp_path / "produced.log"
    n, delay = 4, 0.6
    with stream(f"{cluster.base_url}/stream", {"n": n, "delay_s": delay, "log": str(log)}) as response:
        assert response.status_code == 200 and response.headers["content-type"].startswith("application/x-ndjson")
        arrivals, items = [], []
        for line in response.iter_lines():
            arrivals.append(time.time())
            items.append(json.loads(line))
    produced = [float(line.split()[1]) for line in log.read_text().splitlines() if line != "closed"]
    print(f"first item arrived {produced[-1] - arrivals[0]:.2f} s before the last was produced")
    assert [item["i"] for item in items] == list(range(n)) and items[1]["vector"] == [1, 1]
    assert arrivals[0] < produced[-1] - delay, (arrivals, produced)


def test_server_sent_events_by_accept(conf: Path, cluster: TestCluster) -> None:
    with stream(f"{cluster.base_url}/stream", {"n": 3}, accept="text/event-stream") as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        frames = response.text.strip().split("\n\n")
    assert [json.loads(frame.removeprefix("data: "))["i"] for frame in frames] == [0, 1, 2]


def test_stream_errors_before_and_after_the_first_item(conf: Path, cluster: TestCluster) -> None:
    url = f"{cluster.base_url}/stream"
    assert_error_envelope(call(url, {"n": -1}), 400, "BadRequest", "n must be >= 0")
    assert_error_envelope(call(url, {"n": 3, "fail_at": 0}), 500, "ModelError", "ValueError: failed at item 0")
    with stream(url, {"n": 3, "fail_at": 2}) as response:
        lines = [json.loads(line) for line in response.iter_lines()]
    assert [line.get("i") for line in lines[:2]] == [0, 1]
    assert lines[2]["status"] == 0 and lines[2]["error"] == {
        "type": "ModelError",
        "message": "ValueError: failed at item 2",
    }


def test_a_client_that_leaves_stops_the_generator(conf: Path, cluster: TestCluster, tmp_path: Path) -> None:
    log = tmp_path / "produced.log"
    response = stream(f"{cluster.base_url}/stream", {"n": 50, "delay_s": 0.2, "log": str(log)})
    first = next(response.iter_lines())
    assert json.loads(first)["i"] == 0
    response.close()
    deadline = time.time() + 20
    while time.time() < deadline and "closed" not in log.read_text():
        time.sleep(0.2)
    produced = log.read_text().splitlines()
    print(f"items produced before the generator stopped: {len(produced) - 1} of 50")
    assert produced[-1] == "closed" and len(produced) - 1 < 25
    threading.Event().wait(0.5)
    assert call(f"{cluster.base_url}/stream", {"n": 1}).status == 200


#: Requests sent alike to the cluster and to `controller.py dev` on the same conf.ini: `(what, method,
#: path, requests' keyword arguments)`. Every answer must be the same bytes, the same status and headers.
SAME_REQUESTS: list[tuple[str, str, str, dict[str, Any]]] = [
    ("JSON params", "POST", "/inputs", {"json": {"a": 1, "b": [1.5, "x"], "c": None}}),
    ("query params", "POST", "/inputs?k=v&n=2", {"json": {}}),
    ("a form upload", "POST", "/inputs", {"files": {"f": ("cat.jpg", JPEG, "image/jpeg"), "m": (None, '{"t": 1}')}}),
    ("a raw body", "POST", "/inputs", {"data": PNG, "headers": {"Content-Type": "image/png"}}),
    ("a raw answer", "POST", "/inputs?answer=raw", {"data": PNG, "headers": {"Content-Type": "image/png"}}),
    ("numpy, bytes and dates", "POST", "/inputs", {"json": {"answer": "types"}}),
    ("bad JSON", "POST", "/inputs", {"data": b"{oops", "headers": {"Content-Type": "application/json"}}),
    ("a broken form", "POST", "/inputs", {"data": b"--x--", "headers": {"Content-Type": "multipart/form-data"}}),
    ("a body over max_body_kb", "POST", "/inputs", {"data": b"x" * 66000}),
    ("an unencodable result", "POST", "/inputs", {"json": {"answer": "unencodable"}}),
    ("a wrong method", "GET", "/inputs", {}),
    ("a wrong path", "GET", "/inputs/nope", {}),
    ("no such route", "GET", "/nowhere", {}),
    ("a ping", "GET", "/inputs/ping", {}),
    ("the batched route", "POST", "/inputs/batch", {"json": {"a": 1}}),
    ("the original template", "POST", "/inputs/legacy", {"json": {"a": 1}}),
    ("typed params", "POST", "/typed", {"json": {"text": "ab", "times": 2, "box": {"width": 2, "height": 3}}}),
    ("a Params error", "POST", "/typed", {"json": {"text": "", "times": 9, "box": {"width": 0}}}),
    ("typed params in the query", "GET", "/typed?text=hi&times=3", {}),
    ("an OpenAPI document", "GET", "/typed/openapi.json", {}),
    ("a stream", "POST", "/stream", {"json": {"n": 3, "clock": False}}),
    (
        "server-sent events",
        "POST",
        "/stream",
        {"json": {"n": 2, "clock": False}, "headers": {"Accept": "text/event-stream"}},
    ),
    ("a stream that fails", "POST", "/stream", {"json": {"n": 3, "fail_at": 1, "clock": False}}),
    ("a stream refused", "POST", "/stream", {"json": {"n": -1}}),
]
#: Headers that differ by nature: who answered, when, and how the bytes were framed.
NOT_COMPARED = {"x-modelserve-replica", "date", "server", "content-length", "transfer-encoding", "connection"}


@pytest.fixture(scope="module")
def dev_url(conf: Path) -> Iterator[str]:
    """`controller.py dev` on the module's conf.ini, beside the cluster that serves it."""
    with dev_server(conf, "/stream/ping") as (url, _):
        yield url


def _answer(
    base: str, method: str, path: str, kwargs: dict[str, Any], request_id: str
) -> tuple[int, dict[str, str], bytes]:
    headers = {**kwargs.get("headers", {}), "x-request-id": request_id}
    response = requests.request(method, base + path, **{**kwargs, "headers": headers}, timeout=30)
    kept = {k.lower(): v for k, v in response.headers.items() if k.lower() not in NOT_COMPARED}
    return response.status_code, kept, response.content


@pytest.mark.parametrize(("what", "method", "path", "kwargs"), SAME_REQUESTS, ids=[r[0] for r in SAME_REQUESTS])
def test_dev_answers_byte_for_byte_as_the_cluster(
    cluster: TestCluster, dev_url: str, what: str, method: str, path: str, kwargs: dict[str, Any]
) -> None:
    on_cluster = _answer(cluster.base_url, method, path, kwargs, f"same-{len(what)}")
    in_dev = _answer(dev_url, method, path, kwargs, f"same-{len(what)}")
    assert in_dev == on_cluster, f"{what}: dev {in_dev!r}\ncluster {on_cluster!r}"
