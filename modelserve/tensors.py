"""Open Inference Protocol tensors: datatypes, and tensor data as JSON or binary, both ways.

JSON data is a row-major array, flat or nested as the shape; binary data is little-endian, row-major,
with each BYTES element a 4-byte little-endian length and then its bytes (Triton's binary tensor data
extension, which KServe and MLServer speak too). `modelserve.oip` builds the protocol's messages on these.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping
from typing import Any

import numpy as np

#: The protocol's datatypes and the numpy dtype each one is (little-endian, as the binary data is).
DATATYPES: Mapping[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
    "BYTES": np.dtype(object),
}

_LENGTH = struct.Struct("<I")


class ProtocolError(Exception):
    """Answered as the protocol's {"error": "..."} with `status` (400 bad request, 404 unknown model/version, ...)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


_ALIASES = {
    "FLOAT": "FP32",
    "FLOAT32": "FP32",
    "FLOAT16": "FP16",
    "FLOAT64": "FP64",
    "DOUBLE": "FP64",
    "STRING": "BYTES",
}


def known_datatype(name: str, datatype: Any) -> str:
    """An input's `datatype`, when it is one of DATATYPES; else ProtocolError(400) with a hint."""
    if datatype in DATATYPES:
        return str(datatype)
    hint = ""
    if isinstance(datatype, str) and datatype.upper() == "BF16":
        hint = " (BF16 is not supported: send FP32 or FP16)"
    elif isinstance(datatype, str) and _ALIASES.get(datatype.upper(), datatype.upper()) in DATATYPES:
        hint = f" (did you mean {_ALIASES.get(datatype.upper(), datatype.upper())}?)"
    raise ProtocolError(f"input {name!r}: datatype {datatype!r} is not one of {', '.join(DATATYPES)}{hint}")


def datatype_of(array: np.ndarray[Any, Any]) -> str:
    """The protocol's datatype of an array whose dtype is one of DATATYPES (by kind and size, any byte order)."""
    for name, dtype in DATATYPES.items():
        if array.dtype.kind == dtype.kind and array.dtype.itemsize == dtype.itemsize:
            return name
    raise ProtocolError(f"numpy dtype {array.dtype} has no Open Inference Protocol datatype", 500)


def element_count(shape: tuple[int, ...]) -> int:
    return math.prod(shape)


def from_json(name: str, datatype: str, shape: tuple[int, ...], data: Any) -> np.ndarray[Any, Any]:
    """An input's `data` (flat, or nested as `shape`) as an array of `shape` and the datatype's dtype."""
    where = f"input {name!r}"
    if not isinstance(data, list):
        raise ProtocolError(f"{where}: data must be a JSON array (flat, or nested as the shape), not {_kind(data)}")
    flat = _flatten(where, shape, data) if any(isinstance(item, list) for item in data) else data
    if len(flat) != element_count(shape):
        raise ProtocolError(f"{where}: shape {list(shape)} holds {element_count(shape)} elements, data has {len(flat)}")
    _check_elements(where, datatype, flat)
    dtype = DATATYPES[datatype]
    if datatype == "BYTES":
        array = np.empty(len(flat), dtype=object)
        array[:] = [item.encode("utf-8") for item in flat]
        return array.reshape(shape)
    try:
        return np.array(flat, dtype=dtype).reshape(shape)
    except OverflowError as error:
        raise ProtocolError(
            f"{where}: {error} ({datatype} holds {np.iinfo(dtype).min}..{np.iinfo(dtype).max})"
        ) from None


def _flatten(where: str, shape: tuple[int, ...], data: list[Any]) -> list[Any]:
    flat: list[Any] = []

    def walk(node: Any, depth: int, path: str) -> None:
        if not isinstance(node, list) or len(node) != shape[depth]:
            held = f"{len(node)} entries" if isinstance(node, list) else _kind(node)
            raise ProtocolError(
                f"{where}: data is nested, so data{path} must hold {shape[depth]} entries "
                f"(shape {list(shape)}), it holds {held}; nest it as the shape or send it flat"
            )
        if depth < len(shape) - 1:
            for index, item in enumerate(node):
                walk(item, depth + 1, f"{path}[{index}]")
        elif any(type(item) is list for item in node):  # the innermost level is extended whole: 1M calls fewer
            index = next(index for index, item in enumerate(node) if type(item) is list)
            raise ProtocolError(f"{where}: data{path}[{index}] is nested deeper than shape {list(shape)}")
        else:
            flat.extend(node)

    if not shape:
        raise ProtocolError(f"{where}: data is nested, shape [] holds one element: send [value]")
    walk(data, 0, "")
    return flat


_ELEMENT_TYPES: Mapping[str, tuple[set[type], str]] = {
    "BOOL": ({bool}, "true or false"),
    "BYTES": ({str}, "strings"),
    "FP": ({int, float}, "numbers"),
    "INT": ({int}, "integers"),
}


def _check_elements(where: str, datatype: str, flat: list[Any]) -> None:
    key = "FP" if datatype.startswith("FP") else "INT" if "INT" in datatype else datatype
    allowed, described = _ELEMENT_TYPES[key]
    if set(map(type, flat)) <= allowed:
        return
    index, item = next((index, item) for index, item in enumerate(flat) if type(item) not in allowed)
    raise ProtocolError(f"{where}: {datatype} data must be {described}, element {index} is {_kind(item)}")


def _kind(value: Any) -> str:
    names = {
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        str: "a string",
        list: "an array",
        dict: "an object",
    }
    return f"{names.get(type(value), type(value).__name__)} ({str(value)[:40]})"


def from_binary(name: str, datatype: str, shape: tuple[int, ...], chunk: bytes) -> np.ndarray[Any, Any]:
    """An input's binary tensor data (exactly its `binary_data_size` bytes) as an array of `shape`."""
    where = f"input {name!r}"
    if datatype == "BYTES":
        return _bytes_from_binary(where, shape, chunk)
    dtype = DATATYPES[datatype]
    expected = element_count(shape) * dtype.itemsize
    if len(chunk) != expected:
        raise ProtocolError(
            f"{where}: shape {list(shape)} of {datatype} takes {expected} bytes, binary_data_size is {len(chunk)}"
        )
    return np.frombuffer(chunk, dtype=dtype).reshape(shape).copy()


def _bytes_from_binary(where: str, shape: tuple[int, ...], chunk: bytes) -> np.ndarray[Any, Any]:
    elements: list[bytes] = []
    offset = 0
    while offset < len(chunk):
        if offset + _LENGTH.size > len(chunk):
            raise ProtocolError(f"{where}: BYTES element {len(elements)} is cut short in its 4-byte length")
        (length,) = _LENGTH.unpack_from(chunk, offset)
        offset += _LENGTH.size
        if offset + length > len(chunk):
            raise ProtocolError(
                f"{where}: BYTES element {len(elements)} says {length} bytes, {len(chunk) - offset} remain "
                "in its binary_data_size (each element is a 4-byte little-endian length, then the bytes)"
            )
        elements.append(chunk[offset : offset + length])
        offset += length
    if len(elements) != element_count(shape):
        raise ProtocolError(
            f"{where}: shape {list(shape)} holds {element_count(shape)} elements, binary data has {len(elements)}"
        )
    array = np.empty(len(elements), dtype=object)
    array[:] = elements
    return array.reshape(shape)


def to_json(name: str, array: np.ndarray[Any, Any]) -> list[Any]:
    """An output's data as a flat row-major JSON array (BYTES as UTF-8 strings)."""
    if array.dtype != object:
        return array.ravel().tolist()
    try:
        return [item.decode("utf-8") for item in array.ravel()]
    except UnicodeDecodeError:
        raise ProtocolError(
            f"output {name!r} holds bytes that are not UTF-8, which JSON can't carry; "
            'ask for it as binary data (the output\'s parameters {"binary_data": true})'
        ) from None


def to_binary(array: np.ndarray[Any, Any]) -> bytes:
    """An output's binary tensor data."""
    if array.dtype != object:
        return np.ascontiguousarray(array).tobytes()
    return b"".join(_LENGTH.pack(len(item)) + item for item in array.ravel())


def as_tensor(value: Any) -> np.ndarray[Any, Any]:
    """A value as a tensor of one of DATATYPES: strings and bytes (and arrays of them) become BYTES.

    Raises ValueError saying what the value is when it can't be one (a dict, None, ragged lists).
    """
    if isinstance(value, Mapping) or value is None:
        raise ValueError(f"{type(value).__name__} is not a tensor")
    try:
        array = np.asarray(value)
    except (ValueError, TypeError) as error:
        raise ValueError(f"not a tensor ({str(error).split('.')[0]})") from None
    if array.dtype.kind in "US":
        return _as_bytes(array)
    if array.dtype == object:
        if not all(isinstance(item, (str, bytes)) for item in array.ravel()):
            raise ValueError("holds objects that are neither numbers nor strings")
        return array if all(type(item) is bytes for item in array.ravel()) else _as_bytes(array)
    try:
        return array.astype(DATATYPES[datatype_of(array)], copy=False)
    except ProtocolError as error:
        raise ValueError(error.message) from None


def _as_bytes(array: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    encoded = np.empty(array.size, dtype=object)
    encoded[:] = [item if isinstance(item, bytes) else str(item).encode("utf-8") for item in array.ravel().tolist()]
    return encoded.reshape(array.shape)
