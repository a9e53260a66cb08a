"""The Open Inference Protocol (KServe v2 REST, what Triton, KServe and MLServer speak): its messages, Ray-free.

`parse_infer` reads an infer request (JSON data, or Triton's binary tensor data extension after the JSON
header), `check_inputs` holds it to a model's declared inputs, `outputs_of` turns what a backend returns into
output tensors, and `encode_infer` writes the answer; `model_metadata`, `server_metadata` and `error_body`
write the other answers. Tensors are numpy arrays; BYTES tensors are object arrays of `bytes`.

Example:
    ```python
    request = parse_infer(body, headers.get("inference-header-content-length"))
    check_inputs(request.inputs, specs)
    body, headers = encode_infer("digits", None, request, outputs_of(backend(request.inputs), []))
    ```
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from modelserve import tensors
from modelserve.tensors import DATATYPES as DATATYPES  # the public names live here; tensors.py does the work
from modelserve.tensors import ProtocolError as ProtocolError
from modelserve.tensors import datatype_of

#: The request header that gives the JSON header's length in bytes when binary tensor data follows it.
HEADER_LENGTH = "Inference-Header-Content-Length"

#: Names for the protocol's extensions that we support, as Triton reports them in its server metadata.
EXTENSIONS = ("binary_tensor_data",)

_UNSUPPORTED = ("shared_memory_region", "classification")


@dataclass(frozen=True)
class TensorSpec:
    """A model's input or output, for the metadata and for checking requests; -1 in `shape` is any size."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


@dataclass(frozen=True)
class InferRequest:
    """An infer request, read: its inputs as arrays, its `parameters`, and which outputs it asks for, and how."""

    id: str | None
    inputs: dict[str, np.ndarray[Any, Any]]
    parameters: dict[str, Any]
    outputs: tuple[dict[str, Any], ...]  # {"name", "parameters"} each; () = all outputs
    binary_output: bool  # parameters.binary_data_output: outputs as binary data unless they say otherwise


def parse_infer(body: bytes, header_length: str | None) -> InferRequest:
    """An infer request's body as an `InferRequest`; `header_length` is its Inference-Header-Content-Length.

    Raises ProtocolError(400) naming the input and what is wrong with it.
    """
    header, binary = _split(body, header_length)
    document = _load(header)
    parameters = _parameters(document.get("parameters"), "the request's parameters")
    entries = document.get("inputs")
    if not isinstance(entries, list):
        raise ProtocolError(
            'no "inputs" array in the request; send {"inputs": [{"name", "shape", "datatype", "data"}]}'
        )
    inputs: dict[str, np.ndarray[Any, Any]] = {}
    offset = 0
    for index, entry in enumerate(entries):
        name, datatype, shape, input_parameters = _input_header(index, entry)
        if name in inputs:
            raise ProtocolError(f"input {name!r} appears twice in inputs; input names must be unique")
        if "binary_data_size" in input_parameters:
            size = _binary_size(name, input_parameters["binary_data_size"], len(binary) - offset)
            inputs[name] = tensors.from_binary(name, datatype, shape, binary[offset : offset + size])
            offset += size
        elif "data" in entry:
            inputs[name] = tensors.from_json(name, datatype, shape, entry["data"])
        else:
            raise ProtocolError(f'input {name!r} has no data: give it "data" or parameters.binary_data_size')
    if offset != len(binary):
        raise ProtocolError(
            f"{len(binary)} bytes follow the JSON header, the inputs' parameters.binary_data_size add up to {offset}"
        )
    binary_output = parameters.get("binary_data_output", False)
    if not isinstance(binary_output, bool):
        raise ProtocolError(f"parameters.binary_data_output must be true or false, not {binary_output!r}")
    request_id = document.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise ProtocolError(f'the request\'s "id" must be a string, not {request_id!r}')
    return InferRequest(request_id, inputs, parameters, _requested_outputs(document.get("outputs")), binary_output)


def _split(body: bytes, header_length: str | None) -> tuple[bytes, bytes]:
    if header_length is None:
        return body, b""
    try:
        length = int(header_length)
    except ValueError:
        raise ProtocolError(f"{HEADER_LENGTH} {header_length!r} is not a number of bytes") from None
    if not 0 <= length <= len(body):
        raise ProtocolError(
            f"{HEADER_LENGTH} is {length}, the body has {len(body)} bytes; it must be the JSON header's length in bytes"
        )
    return body[:length], body[length:]


def _load(header: bytes) -> dict[str, Any]:
    try:
        document = json.loads(header)
    except (ValueError, RecursionError) as error:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise ProtocolError(
            f"the request is not valid JSON ({error}); send an inference request object, and when binary "
            f"tensor data follows it, give the object's length in bytes in the {HEADER_LENGTH} header"
        ) from None
    if not isinstance(document, dict):
        raise ProtocolError(f'the request must be a JSON object with an "inputs" array, not {type(document).__name__}')
    return document


def _parameters(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ProtocolError(f"{where} must be a JSON object, not {value!r}")
    return value


def _input_header(index: int, entry: Any) -> tuple[str, str, tuple[int, ...], dict[str, Any]]:
    if not isinstance(entry, dict) or not isinstance(entry.get("name"), str) or not entry["name"]:
        raise ProtocolError(f'inputs[{index}] must be an object with a "name" string, "shape", "datatype" and "data"')
    name = entry["name"]
    datatype = tensors.known_datatype(name, entry.get("datatype"))
    shape = entry.get("shape")
    if not isinstance(shape, list) or not all(type(size) is int and size >= 0 for size in shape):
        raise ProtocolError(f"input {name!r}: shape must be an array of sizes (integers, 0 or more), not {shape!r}")
    parameters = _parameters(entry.get("parameters"), f"input {name!r}: parameters")
    if "shared_memory_region" in parameters:
        raise ProtocolError(f"input {name!r}: shared memory is not supported; send the data in the request")
    return name, datatype, tuple(shape), parameters


def _binary_size(name: str, size: Any, remaining: int) -> int:
    if type(size) is not int or size < 0:
        raise ProtocolError(f"input {name!r}: parameters.binary_data_size must be a number of bytes, not {size!r}")
    if size > remaining:
        raise ProtocolError(
            f"input {name!r}: parameters.binary_data_size is {size}, {remaining} bytes of binary data remain after "
            f"the JSON header and the inputs before it (is {HEADER_LENGTH} set to the JSON's length?)"
        )
    return size


def _requested_outputs(entries: Any) -> tuple[dict[str, Any], ...]:
    if entries is None:
        return ()
    if not isinstance(entries, list):
        raise ProtocolError(f'"outputs" must be an array of {{"name", "parameters"}} objects, not {entries!r}')
    requested: dict[str, dict[str, Any]] = {}
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise ProtocolError(f'outputs[{index}] must be an object with a "name" string')
        name = entry["name"]
        parameters = _parameters(entry.get("parameters"), f"output {name!r}: parameters")
        if name in requested:
            raise ProtocolError(f"output {name!r} is requested twice in outputs")
        if not isinstance(parameters.get("binary_data", False), bool):
            raise ProtocolError(f"output {name!r}: parameters.binary_data must be true or false")
        unsupported = [key for key in _UNSUPPORTED if key in parameters]
        if unsupported:
            raise ProtocolError(f"output {name!r}: parameters.{unsupported[0]} is not supported; leave it out")
        requested[name] = {"name": name, "parameters": parameters}
    return tuple(requested.values())


def check_inputs(inputs: Mapping[str, np.ndarray[Any, Any]], specs: Sequence[TensorSpec]) -> None:
    """Holds a request's inputs to the model's declared ones (none declared: nothing to check).

    Raises ProtocolError(400) naming every missing, unknown or mismatched input in one message.
    """
    if not specs:
        return
    declared = {spec.name: spec for spec in specs}
    problems = [
        f"input {spec.name!r} is missing (the model takes {spec.datatype} {list(spec.shape)})"
        for spec in specs
        if spec.name not in inputs
    ]
    for name, array in inputs.items():
        spec = declared.get(name)
        if spec is None:
            problems.append(f"input {name!r} is not one of the model's inputs ({', '.join(declared)})")
            continue
        datatype = datatype_of(array)
        if datatype != spec.datatype:
            problems.append(f"input {name!r} is {datatype}, the model takes {spec.datatype}")
        if not _fits(array.shape, spec.shape):
            problems.append(f"input {name!r} has shape {list(array.shape)}, the model takes {list(spec.shape)}")
    if problems:
        raise ProtocolError("; ".join(problems) + " (GET the model's metadata for its inputs)")


def _fits(shape: tuple[int, ...], declared: tuple[int, ...]) -> bool:
    return len(shape) == len(declared) and all(want in (-1, size) for size, want in zip(shape, declared, strict=True))


def outputs_of(result: Any, specs: Sequence[TensorSpec]) -> dict[str, np.ndarray[Any, Any]]:
    """A backend's return value as output tensors: a dict gives one per key, anything else one output.

    The one output is named as the model's first declared output, else "output0".
    Raises ProtocolError(500) naming the key whose value can't be a tensor.
    """
    if not isinstance(result, Mapping):
        result = {specs[0].name if specs else "output0": result}
    return {str(key): _output(key, value) for key, value in result.items()}


def _output(key: Any, value: Any) -> np.ndarray[Any, Any]:
    try:
        return tensors.as_tensor(value)
    except ValueError as error:
        raise ProtocolError(
            f"the model's output {key!r} can't be a tensor: {error}; return arrays, numbers, strings "
            "or lists of them, or a dict of those",
            500,
        ) from None


def encode_infer(
    model_name: str, model_version: str | None, request: InferRequest, outputs: Mapping[str, np.ndarray[Any, Any]]
) -> tuple[bytes, dict[str, str]]:
    """The infer answer: the outputs the request asks for (all when it names none), as JSON or binary data.

    `outputs` as `outputs_of` gives them (other values are converted the same way). Returns the body and its
    headers. Raises ProtocolError(400) for a requested output the model lacks.
    """
    requested = request.outputs or tuple({"name": name} for name in outputs)
    answer: dict[str, Any] = {"model_name": model_name}
    if model_version is not None:
        answer["model_version"] = model_version
    if request.id is not None:
        answer["id"] = request.id
    entries: list[dict[str, Any]] = []
    chunks: list[bytes] = []
    for entry in requested:
        name = entry["name"]
        if name not in outputs:
            raise ProtocolError(f"requested output {name!r} is not one of the model's outputs ({', '.join(outputs)})")
        array = _output(name, outputs[name])
        tensor: dict[str, Any] = {"name": name, "datatype": datatype_of(array), "shape": list(array.shape)}
        if (entry.get("parameters") or {}).get("binary_data", request.binary_output):
            chunks.append(tensors.to_binary(array))
            tensor["parameters"] = {"binary_data_size": len(chunks[-1])}
        else:
            tensor["data"] = tensors.to_json(name, array)
        entries.append(tensor)
    answer["outputs"] = entries
    header = json.dumps(answer, separators=(",", ":")).encode("utf-8")
    if not chunks:
        return header, {"content-type": "application/json"}
    headers = {HEADER_LENGTH: str(len(header)), "content-type": "application/octet-stream"}
    return b"".join([header, *chunks]), headers


def specs_from_sample(sample: Mapping[str, Any]) -> list[TensorSpec]:
    """Inputs (or outputs) as seen in one example: each tensor's datatype and shape, its first dimension -1.

    Values that can't be tensors (nested dicts, None) are left out.
    """
    specs = []
    for name, value in sample.items():
        try:
            array = tensors.as_tensor(value)
        except ValueError:
            continue
        shape = (-1, *array.shape[1:]) if array.ndim else ()
        specs.append(TensorSpec(str(name), datatype_of(array), shape))
    return specs


def model_metadata(
    name: str, versions: Sequence[str], platform: str, inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec]
) -> dict[str, Any]:
    """The model metadata answer (GET /v2/models/{name})."""
    return {
        "name": name,
        "versions": list(versions),
        "platform": platform,
        "inputs": [spec.to_json() for spec in inputs],
        "outputs": [spec.to_json() for spec in outputs],
    }


def server_metadata(version: str) -> dict[str, Any]:
    """The server metadata answer (GET /v2)."""
    return {"name": "modelserve", "version": version, "extensions": list(EXTENSIONS)}


def error_body(message: str) -> bytes:
    """The protocol's error answer: {"error": message}."""
    return json.dumps({"error": message}).encode("utf-8")
