"""Request params from every body a client sends: JSON, query strings, multipart forms, raw bytes."""

import pydantic
import pytest

from modelserve.errors import BadRequest
from modelserve.inputs import RAW_KEY, File, parse_multipart, parse_params, validate

BOUNDARY = "b0undary"
FORM = f"multipart/form-data; boundary={BOUNDARY}"


def multipart(*parts: tuple[str, bytes, dict[str, str]]) -> bytes:
    """A form body: (disposition params, data, extra headers) per part."""
    out = b""
    for disposition, data, headers in parts:
        out += f"--{BOUNDARY}\r\nContent-Disposition: form-data; {disposition}\r\n".encode()
        out += "".join(f"{k}: {v}\r\n" for k, v in headers.items()).encode() + b"\r\n" + data + b"\r\n"
    return out + f"--{BOUNDARY}--\r\n".encode()


def test_json_bodies_and_query_strings() -> None:
    assert parse_params(b'{"x": [1, 2]}', {}) == {"x": [1, 2]}
    assert parse_params(b'{"x": 1}', {}, "application/json; charset=utf-8") == {"x": 1}
    assert parse_params(b'{"x": 1}', {}, "application/x-www-form-urlencoded") == {"x": 1}  # what `curl -d` sends
    assert parse_params(b'{"x": 1}', {}, "application/vnd.api+json") == {"x": 1}
    assert parse_params(b"", {"x": "1"}) == {"x": "1"}
    assert parse_params(b"  ", {}) == {}
    with pytest.raises(BadRequest, match="not valid JSON"):
        parse_params(b"{bad", {})
    with pytest.raises(BadRequest, match="must be a JSON object"):
        parse_params(b"[1, 2]", {})
    with pytest.raises(BadRequest, match="not valid JSON"):
        parse_params(b"\xff\xfe", {})
    with pytest.raises(BadRequest, match="nested too deeply"):
        parse_params(b'{"a":' + b"[" * 100_000 + b"]" * 100_000 + b"}", {})


def test_a_raw_body_is_one_file_beside_the_query() -> None:
    params = parse_params(b"\x89PNG...", {"threshold": "0.5"}, "image/png")
    assert params == {"threshold": "0.5", RAW_KEY: File(b"\x89PNG...", "", "image/png")}
    assert parse_params(b"", {}, "application/octet-stream")[RAW_KEY].size == 0


def test_multipart_files_fields_and_meta() -> None:
    body = multipart(
        ('name="file_0"; filename="a.jpg"', b"\xff\xd8jpeg\r\n--not-a-boundary", {"Content-Type": "image/jpeg"}),
        ('name="file_1"; filename="b.bin"', b"", {}),
        ('name="note"', "héllo".encode(), {}),
        ('name="meta"', b'{"threshold": 0.5, "note": "from meta"}', {}),
        ('name="boxes"', b"[[1, 2, 3, 4]]", {"Content-Type": "application/json"}),
    )
    params = parse_params(body, {"q": "1"}, FORM)
    assert params["file_0"] == File(b"\xff\xd8jpeg\r\n--not-a-boundary", "a.jpg", "image/jpeg")
    assert params["file_1"] == File(b"", "b.bin", "application/octet-stream")
    assert params["boxes"] == [[1, 2, 3, 4]]  # JSON that is no object stays under its name
    assert params["threshold"] == 0.5 and params["note"] == "from meta"  # meta is merged over the fields
    assert params["q"] == "1"


@pytest.mark.parametrize(
    ("body", "content_type", "message"),
    [
        (b'--b0undary\r\nContent-Disposition: form-data; name="a"\r\n\r\nx', FORM, "malformed"),
        (b"garbage", FORM, "malformed"),
        (b"", FORM, "malformed"),
        (b"--b0undary\r\n", "multipart/form-data", "without a boundary"),
        (multipart(('filename="x"', b"1", {})), FORM, "has no name"),
        (multipart(('name="meta"', b"{oops", {})), FORM, "form field 'meta' is not valid JSON"),
    ],
)
def test_a_malformed_form_is_a_bad_request(body: bytes, content_type: str, message: str) -> None:
    with pytest.raises(BadRequest, match=message):
        parse_multipart(body, content_type)


class Box(pydantic.BaseModel):
    width: int = pydantic.Field(gt=0)


class Params(pydantic.BaseModel):
    text: str
    times: int = pydantic.Field(1, le=5)
    box: Box | None = None
    image: File | None = None


def test_typed_params_name_every_bad_field_at_once() -> None:
    ok = validate(Params, {"text": "a", "times": "3", "image": File(b"x")})
    assert ok.times == 3 and ok.image == File(b"x")
    with pytest.raises(BadRequest) as caught:
        validate(Params, {"times": 9, "box": {"width": 0}, "image": "not a file"})
    message = str(caught.value)
    assert message.startswith("invalid params (4): ")
    for field in ("text: Field required", "times: Input should be less than or equal to 5", "box.width:", "image:"):
        assert field in message, message
