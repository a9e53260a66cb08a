"""The Open Inference Protocol on a section's route, in this process (protocol.py through the pipeline, no Ray):
its paths, the model's name and version, metadata declared or seen in the warm-up, and errors in its shape;
and how conf.ini's `models` (many models per section) is checked."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as triton
from helpers import make_project, write_conf
from oip_schema import validate

from modelserve import inprocess, protocol, status
from modelserve.config import ConfigError, load_config
from modelserve.oip import ProtocolError
from modelserve.testing import load_section

SECTIONS = (
    """
    [algopkg.Tensors]
    backend = Scale
    route = face/detect
    method = POST
    api_keys = keys.txt
    """,
    """
    [algopkg.Tensors:legacy]
    backend = LegacyScale
    route = legacy
    method = POST
    warmup = legacy_warmup.json
    """,
)
KEY = "unit-protocol-key-0123456789"


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = make_project(tmp_path)
    (root / "keys.txt").write_text(KEY + "\n")
    write_conf(root, {"port": 8000}, *SECTIONS)
    return root


@pytest.mark.parametrize(
    ("sub", "call"),
    [
        ("/v2", protocol.Call("server")),
        ("/v2/health/live", protocol.Call("live")),
        ("/v2/health/ready", protocol.Call("ready")),
        ("/v2/models/face/detect", protocol.Call("metadata", "face/detect")),
        ("/v2/models/face/detect/ready", protocol.Call("model_ready", "face/detect")),
        ("/v2/models/face/detect/infer", protocol.Call("infer", "face/detect")),
        ("/v2/models/digits/versions/3/infer", protocol.Call("infer", "digits", "3")),
        ("/v2/models/digits/versions/3", protocol.Call("metadata", "digits", "3")),
    ],
)
def test_every_path_of_the_protocol_names_its_call(sub: str, call: protocol.Call) -> None:
    assert protocol.is_protocol(sub)
    assert protocol.parse(sub) == call
    assert protocol.model_of(sub) == (call.model or None)


def test_other_paths_are_not_the_protocols_or_are_its_404() -> None:
    assert not protocol.is_protocol("/v2x") and not protocol.is_protocol("/ping") and protocol.model_of("") is None
    with pytest.raises(ProtocolError) as raised:
        protocol.parse("/v2/repository/index")
    assert raised.value.status == 404


def test_the_version_is_the_one_pinned_numbered_model() -> None:
    assert protocol.version_of(["digits@3"]) == "3"
    assert protocol.version_of(["w.npz"]) is None
    assert protocol.version_of(["a@1", "b@2"]) is None  # two versions: the model has no one version


def infer_body(label: str = "cat") -> dict:
    return {
        "id": "req-1",
        "inputs": [
            {"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]},
            {"name": "n", "datatype": "INT64", "shape": [1, 1], "data": [5]},
            {"name": "label", "datatype": "BYTES", "shape": [1], "data": [label]},
        ],
    }


def test_a_route_with_a_slash_is_the_models_name_and_keys_guard_all_but_health(project: Path) -> None:
    with load_section("face/detect", project / "conf.ini") as route:
        keyed = {"authorization": f"Bearer {KEY}"}
        assert route.get(path="/v2/health/live").json() == {"live": True}
        assert route.get(path="/v2/health/ready").status == 200
        validate("server_metadata", route.get(path="/v2").json())
        refused = route.post(path="/v2/models/face/detect/infer", json=infer_body())
        assert refused.status == 401 and "error" in refused.json()
        answer = route.post(path="/v2/models/face/detect/infer", json=infer_body(), headers=keyed)
        assert answer.status == 200, answer.body
        validate("infer_response", answer.json())
        assert answer.json()["id"] == "req-1" and answer.json()["model_name"] == "face/detect"
        by_name = {o["name"]: o["data"] for o in answer.json()["outputs"]}
        assert by_name == {"y": [2.0, 4.0, 6.0, 8.0], "count": [6], "text": ["CAT"]}
        metadata = route.get(path="/v2/models/face/detect", headers=keyed).json()
        validate("model_metadata", metadata)
        assert metadata["versions"] == [] and [t["name"] for t in metadata["outputs"]] == ["y", "count", "text"]
        for path, status in (("/v2/models/other/infer", 404), ("/v2/models/face/detect/versions/2", 404)):
            wrong = route.post(path=path, json=infer_body(), headers=keyed)
            assert wrong.status == status and "error" in wrong.json(), path
        assert route.get(path="/v2/models/face/detect/infer", headers=keyed).status == 405


def test_declared_inputs_are_checked_and_every_problem_is_named_in_one_error(project: Path) -> None:
    body = {"inputs": [{"name": "x", "datatype": "INT32", "shape": [1, 3], "data": [1, 2, 3]}]}
    with load_section("face/detect", project / "conf.ini") as route:
        answer = route.post(path="/v2/models/face/detect/infer", json=body, headers={"authorization": f"Bearer {KEY}"})
    assert answer.status == 400
    validate("error", answer.json())
    for named in ("x", "INT32", "n", "label"):
        assert named in answer.json()["error"]


def test_the_original_template_gets_arrays_and_the_warmup_gives_its_metadata(project: Path) -> None:
    values = triton.InferInput("values", [1, 3], "FP64")
    values.set_data_from_numpy(np.array([[1.0, 2.0, 4.0]]), binary_data=True)
    body, header_length = triton.InferenceServerClient.generate_request_body([values])
    with load_section("legacy", project / "conf.ini") as route:
        metadata = route.get(path="/v2/models/legacy").json()
        headers = {"inference-header-content-length": str(header_length), "content-type": "application/octet-stream"}
        answer = route.post(path="/v2/models/legacy/infer", data=body, headers=headers)
    assert {t["name"]: t["datatype"] for t in metadata["inputs"]} == {"values": "FP64"}
    assert {t["name"] for t in metadata["outputs"]} == {"total", "doubled"}
    assert answer.status == 200, answer.body
    length = answer.headers.get("inference-header-content-length")
    result = triton.InferResult.from_response_body(answer.body, header_length=int(length) if length else None)
    assert result.as_numpy("total").tolist() == [7.0] and result.as_numpy("doubled").tolist() == [[2.0, 4.0, 8.0]]


MANY = """
[algopkg.Adapters]
backend = Adapter
models = {models}
route = adapters
method = POST
{extra}
"""


def test_models_must_name_a_store_that_holds_a_model_and_not_also_model_files(tmp_path: Path) -> None:
    root = make_project(tmp_path)
    (root / "empty").mkdir()
    write_conf(root, {"port": 8000}, MANY.format(models="missing", extra=""))
    with pytest.raises(ConfigError, match=r"\[algopkg.Adapters\] models = 'missing': .*missing.*fix the path"):
        load_config(root / "conf.ini")
    write_conf(root, {"port": 8000}, MANY.format(models="empty", extra="model = echo_model.txt"))
    with pytest.raises(ConfigError) as raised:
        load_config(root / "conf.ini")
    assert len(raised.value.problems) == 2  # both, in one run
    assert "holds no model" in str(raised.value) and "remove one of the two keys" in str(raised.value)


def test_a_section_of_many_models_is_refused_in_this_process_saying_how_to_try_one(tmp_path: Path) -> None:
    root = make_project(tmp_path)
    (root / "adapters").mkdir()
    (root / "adapters" / "a1").write_text("2\n")
    config = load_config(write_conf(root, {"port": 8000}, MANY.format(models="adapters", extra="")))
    assert config.models_of(config.sections[0]) == str(root / "adapters")
    with pytest.raises(inprocess.LocalError, match="model_zoo = adapters"):
        inprocess.require_environment(config.sections[0], config, "try")


def test_status_lists_the_models_each_live_replica_holds() -> None:
    details = {"applications": {"Adapters": {"deployments": {"d": {"replicas": [{"replica_id": "abc"}]}}}}}
    held = [
        ({"section": "algopkg.Adapters", "replica": "abc", "model": "m2"}, 1.0),
        ({"section": "algopkg.Adapters", "replica": "abc", "model": "m1"}, 1.0),
        ({"section": "algopkg.Adapters", "replica": "abc", "model": "m0"}, 0.0),  # unloaded
        ({"section": "algopkg.Adapters", "replica": "gone", "model": "m9"}, 1.0),  # a replica that stopped
    ]
    lines = status.held_lines(details, held)
    assert lines[0] == "algopkg.Adapters replica abc: 2 model(s): m1, m2" and len(lines) == 2


def test_bench_sends_a_warmup_sample_as_protocol_tensors() -> None:
    from modelserve import bench, oip

    payload = bench.protocol_payload({"x": [[1.5, 2.0]], "name": "cat", "n": 3})
    request = oip.parse_infer(payload.body, None)
    assert request.inputs["x"].tolist() == [[1.5, 2.0]] and request.inputs["x"].dtype == np.float64
    assert request.inputs["name"].tolist() == [b"cat"] or request.inputs["name"].item() == b"cat"
    assert request.inputs["n"].item() == 3 and payload.content_type == "application/json"


def test_typed_params_and_results_travel_as_tensors(tmp_path: Path) -> None:
    root = make_project(tmp_path)
    typed = "[algopkg.Inputs:typed]\nbackend = Typed\nroute = typed\nmethod = POST\nwarmup = typed_warmup.json\n"
    write_conf(root, {"port": 8000}, typed)
    text = {"name": "text", "datatype": "BYTES", "shape": [], "data": ["ab"]}
    with load_section("typed", root / "conf.ini") as route:
        times = {"name": "times", "datatype": "INT64", "shape": [], "data": [3]}
        answer = route.post(path="/v2/models/typed/infer", json={"inputs": [text, times]})
        assert answer.status == 200, answer.body
        assert {o["name"]: o["data"] for o in answer.json()["outputs"]}["text"] == ["ababab"]
        wrong = {"name": "times", "datatype": "BYTES", "shape": [], "data": ["many"]}
        refused = route.post(path="/v2/models/typed/infer", json={"inputs": [text, wrong]})
    assert refused.status == 400 and "times" in refused.json()["error"]
