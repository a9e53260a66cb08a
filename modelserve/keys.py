"""Every conf.ini key, declared once: parser, default, help, an example and what a change does.

A key is declared as a field of `ServeSettings` or `SectionSpec` (config.py) with `conf_key`;
the parser, the README check and the planner's roll-out/in-place decision all read it from
there. A parser raises `Invalid` with what a valid value looks like.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import Field, dataclass, field, fields
from typing import Any, TypeVar

T = TypeVar("T", int, float)

#: What changing a key does to running sections (the apply table prints the first two).
IN_PLACE = "update in place"
ROLL_OUT = "roll out"
SERVE_RESTART = "when Serve restarts"
LOCAL_START = "when the local cluster starts"
NEXT_RUN = "next run"
NEW_CLUSTER = "new cluster (KubeRay)"

ROUTE_RE = re.compile(r"^[A-Za-z0-9_.~-]+(/[A-Za-z0-9_.~-]+)*$")
METHODS = ("GET", "POST")
_HOST_PORT = re.compile(r"^[A-Za-z0-9_.-]+:\d{1,5}$")


class Invalid(ValueError):
    """Raised by a parser; the message says what a valid value looks like."""


@dataclass(frozen=True)
class Key:
    """One conf.ini key."""

    name: str
    parse: Callable[[str], Any]
    default: str | None  # as written in conf.ini; None: required
    help: str
    example: str
    change: str

    @property
    def required(self) -> bool:
        return self.default is None

    @property
    def shown_default(self) -> str:
        """The default as the README's key tables show it."""
        return "(required)" if self.default is None else self.default or "empty"


def conf_key(
    name: str, parse: Callable[[str], Any], *, default: str | None, change: str, example: str, help: str
) -> Any:
    """A dataclass field that is also the declaration of conf.ini key `name`."""
    key = Key(name, parse, default, help, example, change)
    if default is None:
        return field(metadata={"conf": key})
    return field(default_factory=lambda: parse(default), metadata={"conf": key})


def declared_keys(cls: type) -> dict[str, tuple[str, Key]]:
    """`{conf.ini name: (field name, Key)}` of a settings dataclass, in declaration order."""
    found: dict[str, tuple[str, Key]] = {}
    for f in fields(cls):
        key = _key_of(f)
        if key is not None:
            found[key.name] = (f.name, key)
    return found


def _key_of(f: Field[Any]) -> Key | None:
    key = f.metadata.get("conf")
    return key if isinstance(key, Key) else None


# ---------------------------------------------------------------- parsers


def _in_range(convert: Callable[[str], T], low: T, high: T, what: str) -> Callable[[str], T]:
    def parse(raw: str) -> T:
        try:
            value = convert(raw)
        except ValueError:
            value = None
        if value is None or not low <= value <= high:
            raise Invalid(f"must be {what} from {_plain(low)} to {_plain(high)}")
        return value

    return parse


def _plain(number: float) -> str:
    """`1048576`, `0.5`, `0.001`: never the exponent `:g` writes beyond six digits (`1.04858e+06`)."""
    return str(int(number)) if float(number).is_integer() else repr(float(number))


def whole(low: int, high: int) -> Callable[[str], int]:
    return _in_range(int, low, high, "a whole number")


def number(low: float, high: float) -> Callable[[str], float]:
    return _in_range(float, low, high, "a number")


@dataclass(frozen=True)
class Replicas:
    """`replicas = 4` (fixed), `replicas = 1-4` (Ray Serve's autoscaling; `0-4` scales to zero), or `auto`:
    one per free CPU, counted at each apply (fit.resolve_auto); 1 until then."""

    min: int
    max: int
    auto: bool = False

    @property
    def autoscaling(self) -> bool:
        return self.min != self.max

    def __str__(self) -> str:
        if self.auto:
            return "auto"
        return f"{self.min}-{self.max}" if self.autoscaling else str(self.max)


def replicas(raw: str) -> Replicas:
    if raw == "auto":
        return Replicas(1, 1, auto=True)
    low, dash, high = raw.partition("-")
    try:
        bounds = (int(low), int(high)) if dash else (int(raw), int(raw))
    except ValueError:
        bounds = (-1, -1)
    if not (0 <= bounds[0] <= bounds[1] <= 1024 and bounds[1] >= 1 and (dash or bounds[0] >= 1)):
        raise Invalid(
            "must be a whole number from 1 to 1024, a range MIN-MAX such as 1-4 (autoscaling; 0-4 scales to zero), "
            "or auto (one per free CPU)"
        )
    return Replicas(*bounds)


def optional_whole(low: int, high: int) -> Callable[[str], int | None]:
    inner = whole(low, high)

    def parse(raw: str) -> int | None:
        return None if raw in ("", "auto") else inner(raw)

    return parse


def text(raw: str) -> str:
    return raw


def host(raw: str) -> str:
    if not raw or any(c.isspace() for c in raw):
        raise Invalid("must be an interface address such as 127.0.0.1 (or 0.0.0.0 for all)")
    return raw


def address(raw: str) -> str:
    if raw in ("auto", "local") or raw.startswith(("http://", "https://")) or _HOST_PORT.match(raw):
        return raw
    raise Invalid("must be auto, local, a dashboard URL such as http://head:8265 or a GCS address such as head:6379")


def gpu_cost(raw: str) -> float:
    value = number(0.0, 64.0)(raw)
    if value > 1 and not value.is_integer():
        raise Invalid("above 1 must be a whole number of GPUs (fractions are for sharing one GPU)")
    return value


def route(raw: str) -> str:
    path = raw.strip().strip("/")
    if not path or not ROUTE_RE.match(path):
        raise Invalid("must be a URL path such as `extract` or `face/detect` (letters, digits, _ . ~ -)")
    if path.split("/")[0] == "-":
        raise Invalid("must not start with `-/`, which Ray Serve reserves for its own endpoints")
    return path


def methods(raw: str) -> tuple[str, ...]:
    names = tuple(dict.fromkeys(m.strip().upper() for m in raw.split(",") if m.strip()))
    if not names or any(m not in METHODS for m in names):
        raise Invalid("must be GET, POST or GET,POST")
    return names


def files(raw: str) -> tuple[str, ...]:
    return tuple(f.strip() for f in raw.split(",") if f.strip())


def model_refs(raw: str) -> tuple[str, ...]:
    """`model`: file names and versions (`w.npz, digits@3, digits@latest`), each checked (modelstore.parse_ref)."""
    from modelserve.modelstore import parse_ref

    refs = files(raw)
    for ref in refs:
        try:
            parse_ref(ref)
        except ValueError as exc:
            raise Invalid(str(exc)) from None
    return refs


def model_zoo(raw: str) -> str:
    """A directory (relative to conf.ini or absolute) or `s3://bucket/prefix`."""
    if raw.startswith("s3://") and not raw[len("s3://") :].split("/", 1)[0]:
        raise Invalid("names no bucket: write s3://bucket/prefix")
    if "://" in raw and not raw.startswith("s3://"):
        raise Invalid("is not a directory or s3://bucket/prefix (the only object store spoken)")
    return raw


def json_object(raw: str) -> dict[str, Any]:
    if not raw:
        return {}
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError) as exc:  # also a number of 4300+ digits, or nesting 1000+ deep
        why = exc.msg if isinstance(exc, json.JSONDecodeError) else "a number too long or nesting too deep"
        raise Invalid(f'must be a JSON object such as {{"threshold": 0.5}} ({why})') from None
    if not isinstance(value, dict):
        raise Invalid('must be a JSON object such as {"threshold": 0.5}')
    return value


def env(raw: str) -> str:
    if raw in ("", "pip") or (raw.startswith("conda:") and len(raw) > len("conda:")):
        return raw
    raise Invalid("must be empty (the nodes' environment), `pip` (from the package's requirements.txt) or conda:NAME")


_BOOLS = {"on": True, "true": True, "yes": True, "1": True, "off": False, "false": False, "no": False, "0": False}


def on_off(raw: str) -> bool:
    if raw.lower() not in _BOOLS:
        raise Invalid("must be on or off")
    return _BOOLS[raw.lower()]


def sticky(raw: str) -> str:
    """`header:<name>` -> the lower-case header name ("" = no stickiness)."""
    if not raw:
        return ""
    kind, _, name = raw.partition(":")
    if kind != "header" or not re.fullmatch(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+", name):
        raise Invalid("must be header:<name>, e.g. header:x-user-id")
    return name.lower()


def access_log(raw: str) -> str:
    if raw.lower() == "json":
        return "json"
    if raw.lower() not in _BOOLS:
        raise Invalid("must be off, on (Ray Serve's line per request) or json (one JSON line per request)")
    return "on" if _BOOLS[raw.lower()] else "off"


def model_calls(raw: str) -> str:
    if raw not in ("thread", "inline"):
        raise Invalid("must be `thread` (timeout_s holds) or `inline` (quick models run on the event loop: no timeout)")
    return raw


def ingress(raw: str) -> str:
    if raw not in ("fast", "proxy"):
        raise Invalid("must be `fast` (HAProxy ingress) or `proxy` (Ray Serve's Python proxy)")
    return raw


def rollout(raw: str) -> str:
    if raw not in ("surge", "replace"):
        raise Invalid(
            "must be `surge` (start a new replica before stopping an old one: needs room for one more) "
            "or `replace` (stop an old replica first: no room needed, one replica fewer meanwhile)"
        )
    return raw
