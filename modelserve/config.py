"""conf.ini -> typed, validated settings (settings.py).

Each key is declared once, as a field of `ServeSettings`, `SectionSpec` or `NodeGroup` (node_groups.py).
`load_config` reads the whole file, collects every problem and raises one `ConfigError`
listing them all, so nothing reaches the cluster from a file that is wrong anywhere.
"""

from __future__ import annotations

import configparser
import difflib
import re
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from modelserve import auth, keys, models, node_groups, traffic
from modelserve.keys import Key
from modelserve.models import SectionModels
from modelserve.modelstore import ModelStoreError, Store
from modelserve.project import check_section
from modelserve.serve_settings import ServeSettings
from modelserve.settings import SECTION_KEYS, SERVE_KEYS, Config, SectionSpec

SERVE_SECTION = "MODEL SERVE"
SECTION_RE = re.compile(r"^algopkg\.([A-Za-z_][A-Za-z0-9_]*)(?::([A-Za-z0-9_-]+))?$")
RAY_WORKER_PORTS = (10002, 19999)  # `ray start --min/max-worker-port` defaults


class ConfigError(ValueError):
    """A conf.ini that cannot be applied; `problems` lists every finding."""

    def __init__(self, path: Path | str, problems: list[str], outcome: str = "nothing was changed") -> None:
        self.path = str(path)
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"{self.path}: {len(problems)} problem(s), {outcome}:\n{lines}")


def _read_ini(path: Path) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(
        inline_comment_prefixes=(";", "#"),
        default_section="\x00no default section\x00",
        interpolation=None,
        strict=True,
    )
    try:
        text = path.read_text(encoding="utf-8-sig")  # Notepad starts a file with a BOM
    except (OSError, UnicodeDecodeError) as exc:
        why = getattr(exc, "strerror", None) or str(exc)
        raise ConfigError(path, [f"cannot read the file ({why}); pass another one with -c FILE"]) from None
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


def _unknown_key(name: str, key: str, known: Mapping[str, Any]) -> str:
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.7)
    hint = f"did you mean `{close[0]}`?" if close else f"valid keys here are: {', '.join(known)}"
    return f"[{name}] {key}: unknown key; {hint}"


def _parse_keys(
    name: str, items: Mapping[str, str], declared: Mapping[str, tuple[str, Key]], problems: list[str]
) -> dict[str, Any]:
    """`{field name: value}` of the keys present in `items`; problems for every bad one."""
    values: dict[str, Any] = {}
    problems.extend(_unknown_key(name, key, declared) for key in items if key not in declared)
    for key_name, (field_name, key) in declared.items():
        if key_name not in items:
            if key.required:
                problems.append(f"[{name}] {key_name}: missing; write e.g. `{key_name} = {key.example}` ({key.help})")
            continue
        raw = items[key_name].strip()
        if "\x00" in raw:  # no path, name or address holds one; Path and Ray raise on it
            problems.append(
                f"[{name}] {key_name} = {raw!r}: holds a NUL character (fix: e.g. `{key_name} = {key.example}`)"
            )
            continue
        try:
            values[field_name] = key.parse(raw)
        except keys.Invalid as exc:
            problems.append(f"[{name}] {key_name} = {raw!r}: {exc} (fix: e.g. `{key_name} = {key.example}`)")
    return values


def _serve_settings(parser: configparser.ConfigParser, root: Path, problems: list[str]) -> ServeSettings:
    if not parser.has_section(SERVE_SECTION):
        problems.append(f"[{SERVE_SECTION}] is missing; add it with at least `port = 8000`")
    items = dict(parser.items(SERVE_SECTION)) if parser.has_section(SERVE_SECTION) else {}
    serve = ServeSettings(root=root, **_parse_keys(SERVE_SECTION, items, SERVE_KEYS, problems))
    if RAY_WORKER_PORTS[0] <= serve.dashboard_port <= RAY_WORKER_PORTS[1]:
        problems.append(
            f"[{SERVE_SECTION}] dashboard_port = {serve.dashboard_port}: Ray keeps {RAY_WORKER_PORTS[0]}-"
            f"{RAY_WORKER_PORTS[1]} for its workers; choose a port outside that range, e.g. 8265"
        )
    return serve


def _section_spec(parser: configparser.ConfigParser, name: str, problems: list[str]) -> SectionSpec | None:
    """The section's spec; a key that is missing or wrong keeps its default (or "") so that the
    checks after this one still run, and every problem is reported in one run."""
    match = SECTION_RE.match(name)
    if match is None:
        problems.append(
            f"[{name}]: unknown section; use [{SERVE_SECTION}] or [algopkg.<Package>] "
            "(optionally [algopkg.<Package>:<variant>]) or [NODES <name>] (a KubeRay node group)"
        )
        return None
    values = _parse_keys(name, dict(parser.items(name)), SECTION_KEYS, problems)
    required = {field_name: "" for field_name, key in SECTION_KEYS.values() if key.required}
    return SectionSpec(section=name, package=match.group(1), **{**required, **values})


def _check_routes(specs: list[SectionSpec], problems: list[str]) -> None:
    """Each route owns `<route>` and `<route>/ping`; sections share a route only by `traffic`
    weights (traffic.py checks those)."""
    owner: dict[str, tuple[str, str]] = {}
    routes = {s.section: s.route for s in specs}
    for spec in (s for s in specs if s.route):
        paths = ((spec.route, "route"), (f"{spec.route}/ping", "health check"))
        clash = next(((p, owner[p]) for p, _ in paths if p in owner and routes[owner[p][0]] != spec.route), None)
        if clash is not None:
            path, (other, what) = clash
            problems.append(
                f"[{spec.section}] route = {spec.route!r}: /{path} is already the {what} of "
                f"[{other}]; give each section its own route"
            )
        for path, what in paths:
            owner.setdefault(path, (spec.section, what))


def _check_key_files(serve: ServeSettings, specs: list[SectionSpec], problems: list[str]) -> None:
    for where, value in [(SERVE_SECTION, serve.api_keys), *((s.section, s.api_keys) for s in specs)]:
        key_file = serve.key_file(value)
        if key_file is None:
            continue
        try:
            auth.read_key_file(key_file)
        except auth.KeyFileError as exc:
            problems.append(f"[{where}] api_keys = {value!r}: {exc}")


def load_config(path: Path | str) -> Config:
    """Read and validate a conf.ini.

    Raises:
        ConfigError: listing every problem, each naming `[section] key`, the value and the fix.
    """
    path = Path(path).resolve()
    parser = _read_ini(path)
    problems: list[str] = []
    serve = _serve_settings(parser, path.parent, problems)
    specs: list[SectionSpec] = []
    for name in parser.sections():
        skip = name == SERVE_SECTION or node_groups.is_nodes_section(name)
        spec = None if skip else _section_spec(parser, name, problems)
        if spec is not None:
            problems.extend(check_section(spec, path.parent / "algopkg"))
            specs.append(spec)
    _check_routes(specs, problems)
    problems.extend(traffic.problems([s for s in specs if s.route]))
    _check_key_files(serve, specs, problems)
    groups = node_groups.load({name: dict(parser.items(name)) for name in parser.sections()}, _parse_keys, problems)
    problems.extend(node_groups.fit_problems(groups, specs))
    config = Config(path=path, serve=serve, sections=tuple(specs), node_groups=groups)
    resolved = _resolve_models(config, problems)
    if problems:
        raise ConfigError(path, problems)
    return replace(config, models=resolved)


def _resolve_models(config: Config, problems: list[str]) -> dict[str, SectionModels]:
    """Every section's model files, found in its store (a directory or s3://): each missing file or
    version, unreadable object or unreachable store is a problem naming `[section] model`."""
    resolved: dict[str, SectionModels] = {}
    stores: dict[str, Store] = {}
    for spec in config.sections:
        try:
            resolved[spec.section] = models.resolve(spec.section, config.zoo_of(spec), spec.model_files, stores)
        except ModelStoreError as exc:
            problems.append(str(exc))
        if spec.models:
            problems.extend(models.multiplexed_problems(spec, config.models_of(spec), stores))
    return resolved
