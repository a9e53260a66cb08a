"""The Open Inference Protocol codec, against the other side's own code: tritonclient's encoder and decoder.

Requests are built by tritonclient.http (InferInput, InferRequestedOutput, generate_request_body) and our
answers are read by its InferResult; the answers' JSON is held to the protocol's published OpenAPI document.
"""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import numpy as np
import pytest
import tritonclient.http as triton
from oip_schema import DOCUMENT, document, validate
from openapi_spec_validator import validate as validate_openapi

from modelserve.oip import (
    DATATYPES,
    HEADER_LENGTH,
    InferRequest,
    ProtocolError,
    TensorSpec,
    check_inputs,
    encode_infer,
    error_body,
    model_metadata,
    outputs_of,
    parse_infer,
    server_metadata,
    specs_from_sample,
)


def sample(datatype: str) -> np.ndarray[Any, Any]:
    """A [2, 3] tensor of `datatype` that reaches its type's ends (min, max, negative zero, non-ASCII bytes)."""
    dtype = DATATYPES[datatype]
    if datatype == "BYTES":
        values: list[Any] = [b"caf\xc3\xa9", b"", b"x" * 300, b"a b", b"\xe2\x82\xac", b"0"]
        array = np.empty(6, dtype=object)
        array[:] = values
        return array.reshape(2, 3)
    if datatype == "BOOL":
        return np.array([[True, False, True], [False, False, True]])
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return np.array([[info.min, info.max, 0], [1, info.max - 1, info.min + 1]], dtype=dtype)
    info_f = np.finfo(dtype)
    return np.array([[info_f.min, info_f.max, -0.0], [0.5, info_f.tiny, -3.25]], dtype=dtype)


def request_body(
    inputs: dict[str, tuple[np.ndarray[Any, Any], bool]],
    outputs: list[tuple[str, bool]] | None = None,
    **options: Any,
) -> tuple[bytes, str | None]:
    """tritonclient's request body (and Inference-Header-Content-Length) for (array, binary) inputs."""
    built = []
    for name, (array, binary) in inputs.items():
        tensor = triton.InferInput(name, list(array.shape), datatype_of_array(array))
        built.append(tensor.set_data_from_numpy(array, binary_data=binary))
    requested = [triton.InferRequestedOutput(name, binary_data=binary) for name, binary in outputs or []]
    body, length = triton.InferenceServerClient.generate_request_body(built, outputs=requested or None, **options)
    return body, None if length is None else str(length)


def datatype_of_array(array: np.ndarray[Any, Any]) -> str:
    return next(name for name, dtype in DATATYPES.items() if dtype == array.dtype)


def answer(body: bytes, headers: dict[str, str]) -> triton.InferResult:
    length = headers.get(HEADER_LENGTH)
    return triton.InferenceServerClient.parse_response_body(body, header_length=None if length is None else int(length))


def as_sent(array: np.ndarray[Any, Any], binary: bool) -> np.ndarray[Any, Any]:
    """What tritonclient hands back: BYTES from JSON are `str`, from binary `bytes`."""
    if array.dtype == object and not binary:
        return np.vectorize(lambda item: item.decode("utf-8"), otypes=[object])(array)
    return array


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
@pytest.mark.parametrize("datatype", list(DATATYPES))
def test_tritonclient_requests_are_read_as_sent(datatype: str, binary: bool) -> None:
    sent = sample(datatype)
    body, length = request_body({"x": (sent, binary)})
    request = parse_infer(body, length)
    (received,) = request.inputs.values()
    assert received.dtype == DATATYPES[datatype] and received.shape == (2, 3)
    np.testing.assert_array_equal(received, sent)
    assert list(request.inputs) == ["x"]


@pytest.mark.parametrize("datatype", list(DATATYPES))
def test_nested_json_data_is_read_as_its_shape(datatype: str) -> None:
    sent = sample(datatype)
    body, _ = request_body({"x": (sent, False)})
    document = json.loads(body)
    flat = document["inputs"][0]["data"]
    document["inputs"][0]["data"] = np.array(flat, dtype=object).reshape(2, 3).tolist()
    received = parse_infer(json.dumps(document).encode(), None).inputs["x"]
    np.testing.assert_array_equal(received, sent)
    assert received.dtype == DATATYPES[datatype]


def test_binary_and_json_inputs_mixed_with_an_id_and_parameters() -> None:
    first, second, third = sample("FP32"), sample("BYTES"), np.arange(24, dtype=np.int16).reshape(2, 3, 4)
    body, length = request_body(
        {"a": (first, True), "b": (second, False), "c": (third, True)},
        request_id="req-7",
        parameters={"threshold": 0.5},
    )
    assert length is not None and int(length) < len(body)
    request = parse_infer(body, length)
    assert list(request.inputs) == ["a", "b", "c"]
    for name, sent in {"a": first, "b": second, "c": third}.items():
        np.testing.assert_array_equal(request.inputs[name], sent)
    assert request.id == "req-7"
    assert request.parameters["threshold"] == 0.5
    assert request.outputs == ()
    assert request.binary_output  # tritonclient asks for binary outputs when it names none
    assert all(array.flags.writeable for array in request.inputs.values())  # a backend may scale in place


def test_requested_outputs_and_their_binary_flags() -> None:
    body, length = request_body({"x": (sample("INT32"), False)}, outputs=[("p", True), ("q", False)])
    request = parse_infer(body, length)
    assert request.outputs == (
        {"name": "p", "parameters": {"binary_data": True}},
        {"name": "q", "parameters": {"binary_data": False}},
    )
    assert not request.binary_output
    assert request.id is None
    assert request.inputs["x"].flags.writeable


def test_empty_and_scalar_tensors() -> None:
    body = json.dumps(
        {
            "inputs": [
                {"name": "e", "shape": [0, 3], "datatype": "FP32", "data": []},
                {"name": "s", "shape": [], "datatype": "INT64", "data": [7]},
                {"name": "b", "shape": [0], "datatype": "BYTES", "parameters": {"binary_data_size": 0}},
            ]
        }
    ).encode()
    inputs = parse_infer(body, str(len(body))).inputs
    assert inputs["e"].shape == (0, 3) and inputs["e"].dtype == np.float32
    assert inputs["s"].shape == () and inputs["s"] == 7
    assert inputs["b"].shape == (0,) and inputs["b"].dtype == object


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
@pytest.mark.parametrize("datatype", list(DATATYPES))
def test_answers_read_by_tritonclient(datatype: str, binary: bool) -> None:
    out = sample(datatype)
    request = InferRequest("id-1", {}, {}, (), binary_output=binary)
    body, headers = encode_infer("digits", "3", request, {"y": out})
    result = answer(body, headers)
    np.testing.assert_array_equal(result.as_numpy("y"), as_sent(out, binary))
    assert result.get_response()["model_name"] == "digits"
    assert result.get_response()["model_version"] == "3"
    assert result.get_response()["id"] == "id-1"
    assert result.get_output("y")["datatype"] == datatype
    if binary:
        assert headers["content-type"] == "application/octet-stream"
        assert int(headers[HEADER_LENGTH]) < len(body)
    else:
        assert headers == {"content-type": "application/json"}
        validate("infer_response", json.loads(body))


def test_only_the_requested_outputs_each_as_it_asks() -> None:
    outputs = {"a": sample("FP64"), "b": sample("BYTES"), "c": sample("UINT8")}
    body, length = request_body({"x": (sample("FP32"), True)}, outputs=[("c", False), ("b", True)])
    body, headers = encode_infer("m", None, parse_infer(body, length), outputs)
    result = answer(body, headers)
    response = result.get_response()
    assert [output["name"] for output in response["outputs"]] == ["c", "b"]
    assert "model_version" not in response and "id" not in response
    assert "data" in result.get_output("c") and "data" not in result.get_output("b")
    np.testing.assert_array_equal(result.as_numpy("c"), outputs["c"])
    np.testing.assert_array_equal(result.as_numpy("b"), outputs["b"])
    assert result.as_numpy("a") is None


def test_all_outputs_when_none_is_named_as_json_by_default() -> None:
    outputs = {"a": np.float32(1.5).reshape(()), "b": np.array([[1, 2]], dtype=np.int64)}
    body, headers = encode_infer("m", None, parse_infer(b'{"inputs": []}', None), outputs)
    assert headers == {"content-type": "application/json"}
    response = json.loads(body)
    assert response == {
        "model_name": "m",
        "outputs": [
            {"name": "a", "datatype": "FP32", "shape": [], "data": [1.5]},
            {"name": "b", "datatype": "INT64", "shape": [1, 2], "data": [1, 2]},
        ],
    }
    validate("infer_response", response)


def test_a_whole_round_trip_from_tritonclient_to_tritonclient() -> None:
    images = np.random.default_rng(0).random((4, 8, 8), dtype=np.float32)
    body, length = request_body({"images": (images, True)}, outputs=[("labels", True), ("scores", False)])
    request = parse_infer(body, length)
    result = {"labels": ["cat"] * 4, "scores": request.inputs["images"].sum(axis=(1, 2)), "debug": {"a": 1}}
    with pytest.raises(ProtocolError):  # a dict can't be a tensor
        outputs_of(result, [])
    del result["debug"]
    body, headers = encode_infer("m", None, request, outputs_of(result, []))
    decoded = answer(body, headers)
    np.testing.assert_array_equal(decoded.as_numpy("labels"), np.array([b"cat"] * 4, dtype=object))
    np.testing.assert_allclose(decoded.as_numpy("scores"), images.sum(axis=(1, 2)), rtol=1e-6)


def bad(inputs: list[dict[str, Any]], **fields: Any) -> bytes:
    return json.dumps({"inputs": inputs, **fields}).encode()


def with_binary(inputs: list[dict[str, Any]], payload: bytes) -> tuple[bytes, str]:
    header = bad(inputs)
    return header + payload, str(len(header))


FP32_X = {"name": "x", "shape": [2], "datatype": "FP32"}

BAD_REQUESTS: dict[str, tuple[bytes, str | None, str]] = {
    "bad JSON": (b'{"inputs": [', None, "the request is not valid JSON"),
    "not UTF-8": (b'{"inputs": "\xff"}', None, "the request is not valid JSON"),
    "not an object": (b"[1, 2]", None, 'must be a JSON object with an "inputs" array, not list'),
    "missing inputs": (b'{"id": "1"}', None, 'no "inputs" array in the request'),
    "input without a name": (bad([{"shape": [1]}]), None, 'inputs[0] must be an object with a "name"'),
    "unknown datatype": (bad([{**FP32_X, "datatype": "FLOAT32", "data": [1, 2]}]), None, "did you mean FP32?"),
    "lower case datatype": (bad([{**FP32_X, "datatype": "int8", "data": [1, 2]}]), None, "did you mean INT8?"),
    "BF16": (bad([{**FP32_X, "datatype": "BF16", "data": [1, 2]}]), None, "BF16 is not supported"),
    "negative size": (bad([{**FP32_X, "shape": [-1], "data": [1]}]), None, "input 'x': shape must be an array of"),
    "count": (bad([{**FP32_X, "shape": [2, 3], "data": [1] * 5}]), None, "shape [2, 3] holds 6 elements, data has 5"),
    "nesting": (
        bad([{**FP32_X, "shape": [2, 3], "data": [[1, 2, 3], [4, 5]]}]),
        None,
        "data[1] must hold 3 entries (shape [2, 3]), it holds 2 entries",
    ),
    "nesting too deep": (bad([{**FP32_X, "data": [[1], [2]]}]), None, "data[0] is nested deeper than shape [2]"),
    "nested scalar": (bad([{**FP32_X, "shape": [], "data": [[1]]}]), None, "shape [] holds one element: send [value]"),
    "nested deeper at the end": (
        bad([{**FP32_X, "shape": [1, 2], "data": [[1, [2]]]}]),
        None,
        "data[0][1] is nested deeper than shape [1, 2]",
    ),
    "data not an array": (bad([{**FP32_X, "data": 1.5}]), None, "input 'x': data must be a JSON array"),
    "string for a number": (bad([{**FP32_X, "data": [1, "2"]}]), None, "FP32 data must be numbers, element 1"),
    "float for an integer": (bad([{**FP32_X, "datatype": "INT32", "data": [1, 2.5]}]), None, "must be integers"),
    "integer for a boolean": (bad([{**FP32_X, "datatype": "BOOL", "data": [1, 0]}]), None, "must be true or false"),
    "number for BYTES": (bad([{**FP32_X, "datatype": "BYTES", "data": ["a", 1]}]), None, "BYTES data must be strings"),
    "out of range": (bad([{**FP32_X, "datatype": "INT8", "data": [1, 300]}]), None, "INT8 holds -128..127"),
    "duplicate names": (bad([{**FP32_X, "data": [1, 2]}] * 2), None, "input 'x' appears twice"),
    "no data": (bad([FP32_X]), None, "input 'x' has no data"),
    "binary size": (
        *with_binary([{**FP32_X, "parameters": {"binary_data_size": 4}}], b"\0" * 4),
        "shape [2] of FP32 takes 8 bytes, binary_data_size is 4",
    ),
    "binary without the header": (
        bad([{**FP32_X, "parameters": {"binary_data_size": 8}}]),
        None,
        "parameters.binary_data_size is 8, 0 bytes of binary data remain",
    ),
    "binary size not a number": (
        bad([{**FP32_X, "parameters": {"binary_data_size": "8"}}]),
        None,
        "binary_data_size must be a number of bytes",
    ),
    "bytes left over": (
        *with_binary([{**FP32_X, "parameters": {"binary_data_size": 8}}], b"\0" * 12),
        "12 bytes follow the JSON header, the inputs' parameters.binary_data_size add up to 8",
    ),
    "BYTES element cut short": (
        *with_binary([{**FP32_X, "datatype": "BYTES", "parameters": {"binary_data_size": 7}}], b"\x05\0\0\0abc"),
        "BYTES element 0 says 5 bytes, 3 remain",
    ),
    "BYTES length cut short": (
        *with_binary([{**FP32_X, "datatype": "BYTES", "parameters": {"binary_data_size": 2}}], b"\x01\0"),
        "BYTES element 0 is cut short in its 4-byte length",
    ),
    "BYTES count": (
        *with_binary([{**FP32_X, "datatype": "BYTES", "parameters": {"binary_data_size": 5}}], b"\x01\0\0\0a"),
        "shape [2] holds 2 elements, binary data has 1",
    ),
    "header length not a number": (b"{}", "twelve", "Inference-Header-Content-Length 'twelve' is not a number"),
    "header length past the body": (b"{}", "3", "Inference-Header-Content-Length is 3, the body has 2 bytes"),
    "id not a string": (bad([], id=7), None, '"id" must be a string, not 7'),
    "binary_data_output not a boolean": (
        bad([], parameters={"binary_data_output": "yes"}),
        None,
        "parameters.binary_data_output must be true or false",
    ),
    "parameters not an object": (bad([], parameters=[1]), None, "the request's parameters must be a JSON object"),
    "outputs not an array": (bad([], outputs={"name": "y"}), None, '"outputs" must be an array'),
    "output requested twice": (bad([], outputs=[{"name": "y"}] * 2), None, "output 'y' is requested twice"),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_bad_requests_are_400s_that_say_what_is_wrong(case: str) -> None:
    body, length, message = BAD_REQUESTS[case]
    with pytest.raises(ProtocolError) as raised:
        parse_infer(body, length)
    assert message in raised.value.message
    assert raised.value.status == 400
    assert str(raised.value) == raised.value.message
    validate("error", json.loads(error_body(raised.value.message)))


def test_what_tritonclient_can_ask_for_and_we_do_not_do() -> None:
    shared = triton.InferInput("x", [2], "FP32")
    shared.set_shared_memory("region", 8)
    body, length = triton.InferenceServerClient.generate_request_body([shared])
    with pytest.raises(ProtocolError, match="input 'x': shared memory is not supported"):
        parse_infer(body, length)
    classify = triton.InferRequestedOutput("y", class_count=3)
    x = triton.InferInput("x", [2], "FP32").set_data_from_numpy(np.zeros(2, np.float32))
    body, length = triton.InferenceServerClient.generate_request_body([x], outputs=[classify])
    with pytest.raises(ProtocolError, match="output 'y': parameters.classification is not supported"):
        parse_infer(body, length)


def test_an_unknown_requested_output_is_a_400_naming_the_outputs() -> None:
    request = parse_infer(bad([], outputs=[{"name": "scores"}, {"name": "nope"}]), None)
    with pytest.raises(ProtocolError) as raised:
        encode_infer("m", None, request, {"scores": np.zeros(2), "labels": np.zeros(2)})
    assert raised.value.status == 400
    assert raised.value.message == "requested output 'nope' is not one of the model's outputs (scores, labels)"


def test_encode_infer_takes_raw_values_too() -> None:
    outputs = {"s": np.array(["a", "é"]), "big": np.arange(3, dtype=">f8")[::-1], "n": 5}
    for binary in (True, False):
        result = answer(*encode_infer("m", None, InferRequest(None, {}, {}, (), binary), outputs))
        np.testing.assert_array_equal(result.as_numpy("big"), [2.0, 1.0, 0.0])
        assert result.as_numpy("n") == 5
        assert result.as_numpy("s").tolist() == ([b"a", "é".encode()] if binary else ["a", "é"])


def test_bytes_that_are_not_utf8_go_as_binary_only() -> None:
    out = np.array([b"\xff\xfe"], dtype=object)
    with pytest.raises(ProtocolError, match='not UTF-8.*"binary_data": true'):
        encode_infer("m", None, InferRequest(None, {}, {}, (), False), {"y": out})
    body, headers = encode_infer("m", None, InferRequest(None, {}, {}, (), True), {"y": out})
    np.testing.assert_array_equal(answer(body, headers).as_numpy("y"), out)


SPECS = [TensorSpec("image", "FP32", (-1, 28, 28)), TensorSpec("k", "INT64", (1,))]


def test_check_inputs_accepts_what_the_model_declares() -> None:
    check_inputs({"image": np.zeros((5, 28, 28), np.float32), "k": np.array([3])}, SPECS)
    check_inputs({"anything": np.zeros(3, np.uint8)}, [])  # nothing declared: nothing to check


def test_check_inputs_names_every_problem_at_once() -> None:
    with pytest.raises(ProtocolError) as raised:
        check_inputs({"image": np.zeros((5, 28, 27), np.float64), "extra": np.zeros(1)}, SPECS)
    assert raised.value.status == 400
    assert raised.value.message == (
        "input 'k' is missing (the model takes INT64 [1]); "
        "input 'image' is FP64, the model takes FP32; "
        "input 'image' has shape [5, 28, 27], the model takes [-1, 28, 28]; "
        "input 'extra' is not one of the model's inputs (image, k) (GET the model's metadata for its inputs)"
    )
    with pytest.raises(ProtocolError, match=r"input 'k' has shape \[1, 1\], the model takes \[1\]"):
        check_inputs({"image": np.zeros((1, 28, 28), np.float32), "k": np.zeros((1, 1), np.int64)}, SPECS)


def test_outputs_of_one_value_or_a_dict() -> None:
    declared = [TensorSpec("probs", "FP32", (-1, 10))]
    assert list(outputs_of(np.zeros((2, 10), np.float32), declared)) == ["probs"]
    single = outputs_of([[1.0, 2.0]], [])
    assert list(single) == ["output0"] and single["output0"].dtype == np.float64
    assert outputs_of(np.int32(4), [])["output0"].shape == ()
    assert outputs_of(True, [])["output0"].dtype == np.bool_
    many = outputs_of({"label": "cat", "raw": b"\x00\x01", "names": ["a", "bc"], "n": 3}, [])
    assert many["label"].dtype == object and many["label"].item() == b"cat"
    assert many["raw"].item() == b"\x00\x01"
    assert many["names"].tolist() == [b"a", b"bc"]
    assert many["n"].dtype == np.int64
    subclassed = outputs_of(np.array([np.str_("a"), np.bytes_(b"b")], dtype=object), [])["output0"]
    assert subclassed.tolist() == [b"a", b"b"]
    big_endian = outputs_of(np.arange(3, dtype=">i4"), [])["output0"]
    assert big_endian.dtype == np.dtype("<i4") and big_endian.tolist() == [0, 1, 2]


@pytest.mark.parametrize(
    "value, reason",
    [
        ({"a": 1}, "dict is not a tensor"),
        (None, "NoneType is not a tensor"),
        ([[1, 2], [3]], "not a tensor (setting an array element with a sequence"),
        (np.array([1j]), "complex128 has no Open Inference Protocol datatype"),
        ([object()], "neither numbers nor strings"),
    ],
)
def test_outputs_of_what_cant_be_a_tensor_is_a_500_naming_the_key(value: Any, reason: str) -> None:
    with pytest.raises(ProtocolError) as raised:
        outputs_of({"ok": 1, "bad": value}, [])
    assert raised.value.status == 500
    assert raised.value.message.startswith("the model's output 'bad' can't be a tensor: ")
    assert reason in raised.value.message


def test_specs_from_sample() -> None:
    specs = specs_from_sample(
        {"x": [[0.5, 1.0, 2.0]], "n": [1, 2], "s": ["a"], "flag": [True], "t": 0.5, "cfg": {"a": 1}, "z": None}
    )
    assert specs == [
        TensorSpec("x", "FP64", (-1, 3)),
        TensorSpec("n", "INT64", (-1,)),
        TensorSpec("s", "BYTES", (-1,)),
        TensorSpec("flag", "BOOL", (-1,)),
        TensorSpec("t", "FP64", ()),
    ]
    assert specs_from_sample({"img": np.zeros((1, 28, 28), np.float32)}) == [TensorSpec("img", "FP32", (-1, 28, 28))]


def test_the_protocol_document_is_a_valid_openapi_document() -> None:
    assert DOCUMENT.is_file()
    validate_openapi(document())


def test_metadata_and_errors_meet_the_protocol_document() -> None:
    metadata = model_metadata("digits", ["1", "2"], "sklearn", SPECS, [TensorSpec("label", "INT64", (-1,))])
    validate("model_metadata", metadata)
    assert metadata["inputs"][0] == {"name": "image", "datatype": "FP32", "shape": [-1, 28, 28]}
    server = server_metadata("0.1.0")
    validate("server_metadata", server)
    assert server == {"name": "modelserve", "version": "0.1.0", "extensions": ["binary_tensor_data"]}
    assert json.loads(error_body('input "x" is "bad"')) == {"error": 'input "x" is "bad"'}
    validate("error", json.loads(error_body("no")))


@pytest.mark.parametrize(
    "kind, document",
    [
        ("infer_response", {"outputs": []}),  # no model_name
        ("infer_response", {"model_name": "m", "outputs": [{"name": "y", "datatype": "FP32", "shape": [1]}]}),
        ("infer_response", {"model_name": "m", "model_versoin": "1", "outputs": []}),
        ("model_metadata", {"name": "m", "platform": "p", "inputs": [{"name": "x", "shape": [1]}]}),
        ("server_metadata", {"name": "modelserve", "version": "1"}),
        ("error", {"error": 1}),
    ],
)
def test_the_schema_check_can_fail(kind: str, document: dict[str, Any]) -> None:
    with pytest.raises(jsonschema.ValidationError):
        validate(kind, document)
