"""conf.ini -> typed, validated specs.

Every key of the file is declared once, in `SERVE_KEYS` or `SECTION_KEYS`, with
its default, its parser and one line of help. `load_config` reads the whole
file, collects every problem it finds and raises one `ConfigError` listing them
all, so nothing reaches the cluster from a file that is wrong anywhere.
"""

from __future__ import annotations

import ast
import configparser
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modelserve.warmup import WarmupError, read_warmup

SERVE_SECTION = "MODEL SERVE"
PACKAGE_PREFIX = "algopkg."
ROUTE_RE = re.compile(r"^[A-Za-z0-9_.~-]+(/[A-Za-z0-9_.~-]+)*$")
SECTION_RE = re.compile(r"^algopkg\.([A-Za-z_][A-Za-z0-9_]*)(?::([A-Za-z0-9_-]+))?$")
METHODS = ("GET", "POST")
RAY_WORKER_PORTS = (10002, 19999)  # `ray start --min/max-worker-port` defaults


class ConfigError(ValueError):
    """A conf.ini that cannot be applied; `problems` lists every finding."""

    def __init__(self, path: Path | str, problems: list[str]) -> None:
        self.path = str(path)
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"{self.path}: {len(problems)} problem(s), nothing was changed:\n{lines}")


class _Invalid(ValueError):
    """Raised by a parser; the message says what a valid value looks like."""


@dataclass(frozen=True)
class ServeSettings:
    """The `[MODEL SERVE]` section: where and how the whole service runs."""

    root: Path
    port: int = 8000
    host: str = "127.0.0.1"
    address: str = "auto"
    model_zoo: Path = Path("Model_ZOO")
    dashboard_port: int = 8265
    local_cpus: int | None = None
    local_gpus: int | None = None
    deploy_timeout_s: float = 300.0
    ingress: str = "fast"
    access_log: bool = False


@dataclass(frozen=True)
class SectionSpec:
    """One `[algopkg.<Package>[:variant]]` section: one Serve application."""

    section: str
    package: str
    backend: str
    model_files: tuple[str, ...] = ()
    replicas: int = 1
    gpu_cost: float = 0.0
    cpu_cost: float = 1.0
    route: str = ""
    methods: tuple[str, ...] = ("GET",)
    max_ongoing_requests: int = 32
    max_replicas_per_node: int | None = None
    user_config: Mapping[str, Any] = field(default_factory=dict)
    max_batch_size: int = 32
    batch_wait_ms: float = 5.0
    warmup: str = ""
    env: str = ""

    @property
    def app_name(self) -> str:
        """The Serve application name: the section name without `algopkg.`."""
        return self.section[len(PACKAGE_PREFIX) :]


@dataclass(frozen=True)
class Config:
    """A whole conf.ini, validated."""

    path: Path
    serve: ServeSettings
    sections: tuple[SectionSpec, ...]

    @property
    def algopkg_dir(self) -> Path:
        return self.serve.root / "algopkg"

    @property
    def model_zoo(self) -> Path:
        return self.serve.model_zoo


# ---------------------------------------------------------------- parsers


def _int(low: int, high: int) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        try:
            value = int(raw)
        except ValueError:
            raise _Invalid(f"must be a whole number from {low} to {high}") from None
        if not low <= value <= high:
            raise _Invalid(f"must be a whole number from {low} to {high}")
        return value

    return parse


def _float(low: float, high: float) -> Callable[[str], float]:
    def parse(raw: str) -> float:
        try:
            value = float(raw)
        except ValueError:
            raise _Invalid(f"must be a number from {low:g} to {high:g}") from None
        if not low <= value <= high:
            raise _Invalid(f"must be a number from {low:g} to {high:g}")
        return value

    return parse


def _optional_int(low: int, high: int) -> Callable[[str], int | None]:
    inner = _int(low, high)
    return lambda raw: None if raw in ("", "auto") else inner(raw)


def _text(raw: str) -> str:
    return raw


def _host(raw: str) -> str:
    if not raw or any(c.isspace() for c in raw):
        raise _Invalid("must be an interface address such as 127.0.0.1 (or 0.0.0.0 for all)")
    return raw


def _gpu_cost(raw: str) -> float:
    value = _float(0.0, 64.0)(raw)
    if value > 1 and not value.is_integer():
        raise _Invalid("above 1 must be a whole number of GPUs (fractions are for sharing one GPU)")
    return value


def _route(raw: str) -> str:
    route = raw.strip().strip("/")
    if not route or not ROUTE_RE.match(route):
        raise _Invalid("must be a URL path such as `extract` or `face/detect` (letters, digits, _ . ~ -)")
    if route.split("/")[0] == "-":
        raise _Invalid("must not start with `-/`, which Ray Serve reserves for its own endpoints")
    return route


def _methods(raw: str) -> tuple[str, ...]:
    names = tuple(dict.fromkeys(m.strip().upper() for m in raw.split(",") if m.strip()))
    if not names or any(m not in METHODS for m in names):
        raise _Invalid("must be GET, POST or GET,POST")
    return names


def _files(raw: str) -> tuple[str, ...]:
    return tuple(f.strip() for f in raw.split(",") if f.strip())


def _json_object(raw: str) -> dict[str, Any]:
    if not raw:
        return {}
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise _Invalid(f'must be a JSON object such as {{"threshold": 0.5}} ({exc.msg})') from None
    if not isinstance(value, dict):
        raise _Invalid('must be a JSON object such as {"threshold": 0.5}')
    return value


def _env(raw: str) -> str:
    if raw in ("", "pip") or (raw.startswith("conda:") and len(raw) > len("conda:")):
        return raw
    raise _Invalid("must be empty (the nodes' environment), `pip` (from the package's requirements.txt) or conda:NAME")


def _bool(raw: str) -> bool:
    value = {"on": True, "true": True, "yes": True, "1": True, "off": False, "false": False, "no": False, "0": False}
    if raw.lower() not in value:
        raise _Invalid("must be on or off")
    return value[raw.lower()]


def _ingress(raw: str) -> str:
    if raw not in ("fast", "proxy"):
        raise _Invalid("must be `fast` (HAProxy ingress) or `proxy` (Ray Serve's Python proxy)")
    return raw


@dataclass(frozen=True)
class _Key:
    parse: Callable[[str], Any]
    default: str
    help: str


SERVE_KEYS: dict[str, _Key] = {
    "port": _Key(_int(1, 65535), "8000", "HTTP port of the service"),
    "host": _Key(_host, "127.0.0.1", "bind address; 0.0.0.0 only when clients on other hosts must reach it"),
    "address": _Key(_text, "auto", "Ray cluster: auto | local | http://head:8265 (dashboard) | head:6379 (GCS)"),
    "model_zoo": _Key(_text, "Model_ZOO", "directory of model files, the same path on every node"),
    "dashboard_port": _Key(_int(1, 65535), "8265", "dashboard port of the local cluster the controller starts"),
    "local_cpus": _Key(_optional_int(1, 4096), "auto", "CPUs of the local cluster the controller starts"),
    "local_gpus": _Key(_optional_int(0, 1024), "auto", "GPUs of the local cluster the controller starts"),
    "deploy_timeout_s": _Key(_float(1, 86400), "300", "how long `controller.py` waits for sections to be healthy"),
    "ingress": _Key(_ingress, "fast", "fast = HAProxy ingress; proxy = Ray Serve's Python proxy"),
    "access_log": _Key(_bool, "off", "on = a line per request in each replica's log (costs ~15% throughput)"),
}

SECTION_KEYS: dict[str, _Key] = {
    "backend": _Key(_text, "", "class name in algopkg/<Package>/backend.py"),
    "model": _Key(_files, "", "model files in model_zoo, comma-separated, may be empty"),
    "replicas": _Key(_int(1, 1024), "1", "number of replicas"),
    "gpu_cost": _Key(_gpu_cost, "0", "GPUs per replica; 0.25 packs four replicas on one GPU"),
    "cpu_cost": _Key(_float(0, 1024), "1", "CPUs per replica"),
    "route": _Key(_route, "", "HTTP path the section is served at"),
    "method": _Key(_methods, "GET", "GET, POST or GET,POST"),
    "max_ongoing_requests": _Key(_int(1, 100000), "32", "requests one replica works on at once"),
    "max_replicas_per_node": _Key(_optional_int(1, 1024), "", "at most this many replicas on one node (spread)"),
    "user_config": _Key(_json_object, "", "JSON object passed to the backend's reconfigure(); updates in place"),
    "max_batch_size": _Key(_int(1, 4096), "32", "largest batch handed to infer_batch, when the backend has one"),
    "batch_wait_ms": _Key(
        _float(0, 60000), "5", "how long a batch may wait to fill, only while other requests are in flight"
    ),
    "warmup": _Key(_text, "", "JSON file in the package with requests each replica runs before traffic"),
    "env": _Key(_env, "", "the package's Python environment: empty, pip, or conda:NAME"),
}

_SECTION_FIELDS = {
    "backend": "backend",
    "model": "model_files",
    "replicas": "replicas",
    "gpu_cost": "gpu_cost",
    "cpu_cost": "cpu_cost",
    "route": "route",
    "method": "methods",
    "max_ongoing_requests": "max_ongoing_requests",
    "max_replicas_per_node": "max_replicas_per_node",
    "user_config": "user_config",
    "max_batch_size": "max_batch_size",
    "batch_wait_ms": "batch_wait_ms",
    "warmup": "warmup",
    "env": "env",
}


# ---------------------------------------------------------------- reading


def _read_ini(path: Path) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(
        inline_comment_prefixes=(";", "#"),
        default_section="\x00no default section\x00",
        interpolation=None,
        strict=True,
    )
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(path, [f"cannot read the file ({exc.strerror}); pass another one with -c FILE"]) from None
    try:
        parser.read_string(text, source=str(path))
    except configparser.DuplicateSectionError as exc:
        raise ConfigError(
            path, [f"[{exc.section}] appears twice (line {exc.lineno}); merge the two sections"]
        ) from None
    except configparser.DuplicateOptionError as exc:
        raise ConfigError(path, [f"[{exc.section}] {exc.option} is set twice (line {exc.lineno}); keep one"]) from None
    except configparser.Error as exc:
        raise ConfigError(path, [f"not a valid INI file: {exc.message}"]) from None
    return parser


def _parse_keys(name: str, items: Mapping[str, str], keys: Mapping[str, _Key], problems: list[str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for key in items:
        if key not in keys:
            known = ", ".join(keys)
            problems.append(f"[{name}] {key}: unknown key; valid keys here are: {known}")
    for key, spec in keys.items():
        raw = items.get(key, spec.default).strip()
        try:
            values[key] = spec.parse(raw)
        except _Invalid as exc:
            problems.append(f"[{name}] {key} = {raw!r}: {exc} (fix: {spec.help})")
    return values


def _serve_settings(root: Path, values: dict[str, Any]) -> ServeSettings:
    zoo = Path(values.pop("model_zoo"))
    return ServeSettings(root=root, model_zoo=(root / zoo).resolve(), **values)


def _section_spec(name: str, values: dict[str, Any]) -> SectionSpec:
    match = SECTION_RE.match(name)
    assert match is not None
    fields = {_SECTION_FIELDS[key]: value for key, value in values.items()}
    return SectionSpec(section=name, package=match.group(1), **fields)


def _defines_class(backend_py: Path, name: str) -> bool:
    """Whether backend.py defines `name` at top level, found without importing it."""
    tree = ast.parse(backend_py.read_text(encoding="utf-8"), filename=str(backend_py))
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == name:
            return True
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
            return True
        if isinstance(node, ast.ImportFrom) and any((a.asname or a.name) == name for a in node.names):
            return True
    return False


def _check_package(spec: SectionSpec, algopkg: Path, problems: list[str]) -> None:
    where = f"[{spec.section}]"
    package_dir = algopkg / spec.package
    backend_py = package_dir / "backend.py"
    if not backend_py.is_file():
        problems.append(
            f"{where}: package {spec.package!r} not found: {backend_py} does not exist; "
            f"create algopkg/{spec.package}/backend.py or fix the section name"
        )
        return
    if not spec.backend:
        problems.append(f"{where} backend: missing; name the backend class defined in {backend_py}")
        return
    try:
        found = _defines_class(backend_py, spec.backend)
    except SyntaxError as exc:
        problems.append(f"{where}: {backend_py} has a syntax error at line {exc.lineno}: {exc.msg}")
        return
    if not found:
        problems.append(
            f"{where} backend = {spec.backend!r}: no class of that name in {backend_py}; "
            "set backend to the class name defined there"
        )
    _check_warmup(spec, package_dir, problems)
    _check_env(spec, package_dir, problems)


def _check_warmup(spec: SectionSpec, package_dir: Path, problems: list[str]) -> None:
    if not spec.warmup:
        return
    path = package_dir / spec.warmup
    if not path.is_file():
        problems.append(
            f"[{spec.section}] warmup = {spec.warmup!r}: file not found in {package_dir}; "
            "put a JSON file of requests there or remove the key"
        )
        return
    try:
        read_warmup(path)
    except WarmupError as exc:
        problems.append(f"[{spec.section}] warmup = {spec.warmup!r}: {exc}")


def _check_env(spec: SectionSpec, package_dir: Path, problems: list[str]) -> None:
    if spec.env == "pip" and not (package_dir / "requirements.txt").is_file():
        problems.append(
            f"[{spec.section}] env = 'pip': {package_dir / 'requirements.txt'} does not exist; "
            "list the package's dependencies there, or remove the key to use the nodes' environment"
        )


def _check_models(spec: SectionSpec, zoo: Path, problems: list[str]) -> None:
    for name in spec.model_files:
        path = zoo / name
        if not path.is_file():
            problems.append(
                f"[{spec.section}] model = {name!r}: file not found in model_zoo ({path}); "
                "put the file in Model_ZOO or fix the name"
            )


def _check_routes(specs: list[SectionSpec], problems: list[str]) -> None:
    """Each section owns its route and `<route>/ping`; no two sections may share a path."""
    owner: dict[str, tuple[str, str]] = {}
    for spec in specs:
        paths = ((spec.route, "route"), (f"{spec.route}/ping", "health check"))
        clash = next(((p, owner[p]) for p, _ in paths if p in owner), None)
        if clash is not None:
            path, (other, what) = clash
            problems.append(
                f"[{spec.section}] route = {spec.route!r}: /{path} is already the {what} of "
                f"[{other}]; give each section its own route"
            )
        for path, what in paths:
            owner.setdefault(path, (spec.section, what))


def load_config(path: Path | str) -> Config:
    """Read and validate a conf.ini.

    Raises:
        ConfigError: listing every problem, each naming `[section] key`, the value and the fix.
    """
    path = Path(path).resolve()
    parser = _read_ini(path)
    problems: list[str] = []
    if not parser.has_section(SERVE_SECTION):
        problems.append(f"[{SERVE_SECTION}] is missing; add it with at least `port = 8000`")
    serve_items = dict(parser.items(SERVE_SECTION)) if parser.has_section(SERVE_SECTION) else {}
    serve = _serve_settings(path.parent, _parse_keys(SERVE_SECTION, serve_items, SERVE_KEYS, problems))
    if RAY_WORKER_PORTS[0] <= serve.dashboard_port <= RAY_WORKER_PORTS[1]:
        problems.append(
            f"[{SERVE_SECTION}] dashboard_port = {serve.dashboard_port}: Ray keeps {RAY_WORKER_PORTS[0]}-"
            f"{RAY_WORKER_PORTS[1]} for its workers; choose a port outside that range, e.g. 8265"
        )
    specs: list[SectionSpec] = []
    for name in parser.sections():
        if name == SERVE_SECTION:
            continue
        if not SECTION_RE.match(name):
            problems.append(
                f"[{name}]: unknown section; use [{SERVE_SECTION}] or [algopkg.<Package>] "
                "(optionally [algopkg.<Package>:<variant>])"
            )
            continue
        before = len(problems)
        values = _parse_keys(name, dict(parser.items(name)), SECTION_KEYS, problems)
        if len(problems) == before:
            spec = _section_spec(name, values)
            _check_package(spec, path.parent / "algopkg", problems)
            _check_models(spec, serve.model_zoo, problems)
            specs.append(spec)
    _check_routes(specs, problems)
    if problems:
        raise ConfigError(path, problems)
    return Config(path=path, serve=serve, sections=tuple(specs))
