"""Random edits of a valid conf.ini: `check` accepts each or names `[section] key` for every
problem; it never prints a traceback. No Ray: the project is built once per module."""

from __future__ import annotations

import configparser
import contextlib
import io
import json
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers import make_project
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modelserve import apply, cli, plan
from modelserve.config import ConfigError, load_config
from modelserve.keys import ROUTE_RE
from modelserve.node_groups import NODE_KEYS
from modelserve.settings import SECTION_KEYS, SERVE_KEYS

KEY = "fuzz-key-0123456789-abcdef"
WARMUP = '{"params": {"text": "warm"}, "repeat": 2}'
VALID = """\
; a conf.ini that `check` accepts, with every key set
[MODEL SERVE]
port = 8000              ; HTTP port
host = 127.0.0.1
address = auto
model_zoo = Model_ZOO
dashboard_port = 8265
local_cpus = 64
local_gpus = 0
deploy_timeout_s = 300
ingress = fast
access_log = json
api_keys = keys.txt

[algopkg.AlgoExample]
backend = algo_backend
model = algoexample_model_v1.npz
route = extract
method = GET,POST
warmup = warmup.json
replicas = 0-4
target_ongoing_requests = 4
upscale_delay_s = 5
downscale_delay_s = 60

[algopkg.Echo:fuzz]
backend = Echo
model = echo_model.txt
route = echo/fuzz
method = POST
replicas = 2
cpu_cost = 0.5
gpu_cost = 0
max_ongoing_requests = 16
max_replicas_per_node = 2
user_config = {"threshold": 0.5, "lowercase": true}
max_batch_size = 8
batch_wait_ms = 2
max_body_kb = 512
timeout_s = 10
max_queued = 100
api_keys = team_keys.txt
warmup = fuzz_warmup.json
env =

[NODES head]
image = modelserve-node:2.60
cpus = 2
memory = 4Gi
gpus = 0

[NODES cpu-1]
cpus = 4
memory = 16Gi
gpus = 0
min_replicas = 0
max_replicas = 4
"""
KEYS = ("keys.txt", "team_keys.txt")
WARMUP_FILE = Path("algopkg") / "Echo" / "fuzz_warmup.json"

NASTY = [
    "",
    " ",
    "0",
    "-0",
    "-1",
    "1e309",
    "-1e309",
    "nan",
    "NaN",
    "inf",
    "-inf",
    "1_000",
    "1-4",
    "0-0",
    "4-1",
    "-1-2",
    "1--2",
    "0x10",
    "9" * 5000,
    "1" + "0" * 400,
    "0.1e-400",
    "٨٠٠٠",
    "True",
    "auto",
    "local",
    "pip",
    "conda:",
    "conda:x\x00",
    "GET,,POST",
    ",",
    "{}",
    "[]",
    "{",
    '{"a": NaN}',
    '{"a": 1e999}',
    '{"a": ' + "9" * 5000 + "}",
    "[" * 5000,
    '{"a":' * 5000,
    "null",
    '"text"',
    "../../etc/passwd",
    "/etc/passwd",
    "/",
    ".",
    "..",
    "x" * 300,
    "a/" * 3000,
    "a\x00b",
    "\x00",
    "\x7f\x1b[31m",
    "%(here)s",
    "${port}",
    "-/healthz",
    "//",
    "a b",
    "http://",
    "head:99999",
    "ünïcödé",
    "\u202e\u200b",
    "\ud7ff\U0010ffff",
    "#",
    ";",
    "= =",
    "[MODEL SERVE]",
]
HEADERS = [
    "[algopkg.]",
    "[algopkg.Nope:x:y]",
    "[]",
    "[[]]",
    "[MODEL SERVE]",
    "[model serve]",
    "[algopkg.Echo]",
    "[algopkg.Echo:fuzz]",
    "[algopkg.AlgoExample]",
    "[algopkg.__pycache__]",
    "[algopkg.Echo:]",
    "[algopkg.echo]",
    "[algopkg.Nope]",
    "[algopkg.AlgoExample:a]b]",
    "[ algopkg.Echo ]",
    "[DEFAULT]",
    "[\x00]",
    "[NODES head]",
    "[NODES gpu]",
    "[NODES]",
    "[NODES GPU]",
    "[nodes gpu]",
]
KEY_NAMES = sorted({*SERVE_KEYS, *SECTION_KEYS, *NODE_KEYS})

text = st.text(max_size=80)
#: Values our parsers accept, so that Ray's own schema sees odd but well-formed combinations.
well_formed = st.one_of(
    st.integers(-2, 2000).map(str),
    st.floats(0, 100_000).map(repr),
    st.tuples(st.integers(0, 1100), st.integers(0, 1100)).map(lambda r: f"{r[0]}-{r[1]}"),
    st.from_regex(ROUTE_RE, fullmatch=True),
    st.sampled_from(["GET", "POST", "GET,POST", "on", "off", "json", "fast", "proxy", "pip", "conda:x", "auto"]),
)
values = st.one_of(
    well_formed,
    text,
    st.sampled_from(NASTY),
    st.integers().map(str),
    st.floats().map(repr),
    st.text(st.characters(codec="utf-8"), min_size=200, max_size=2000),
    st.recursive(
        st.none() | st.booleans() | st.floats() | st.integers() | text,
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(text, inner, max_size=3),
        max_leaves=8,
    ).map(json.dumps),
)
sections = st.tuples(
    st.sampled_from(["AlgoExample", "Echo", "Batcher", "Inputs", "EnvNew", "Legacy", "Nope", "__init__"]),
    st.from_regex(r"(:[A-Za-z0-9_-]{1,12})?", fullmatch=True),
).map(lambda name: f"[algopkg.{name[0]}{name[1]}]")
lines = st.one_of(
    st.sampled_from(HEADERS),
    sections,
    st.text(max_size=40).map(lambda name: f"[{name}]"),
    st.tuples(st.sampled_from(KEY_NAMES) | text, values).map(lambda kv: f"{kv[0]} = {kv[1]}"),
    values,
)
contents = st.one_of(st.text(max_size=300), st.binary(max_size=300), st.sampled_from(NASTY).map(str.encode))


@dataclass(frozen=True)
class Edit:
    """One edit of the project: `kind` says what, `at` picks the line, `new` is what goes in."""

    kind: str
    at: int = 0
    new: str | bytes = ""


edits = st.one_of(
    st.builds(Edit, st.just("value"), st.integers(0, 200), values),
    st.builds(Edit, st.just("delete"), st.integers(0, 200)),
    st.builds(Edit, st.just("duplicate"), st.integers(0, 200)),
    st.builds(Edit, st.just("insert"), st.integers(0, 200), lines),
    st.builds(Edit, st.just("rename"), st.integers(0, 200), st.sampled_from(HEADERS) | lines),
    st.builds(Edit, st.just("bytes"), st.integers(0, 5000), st.binary(min_size=1, max_size=8)),
    st.builds(Edit, st.sampled_from(["keys.txt", "team_keys.txt", "warmup"]), new=contents),
)


def _edit(conf: list[str], files: dict[str, str | bytes], edit: Edit) -> None:
    keyed = [i for i, line in enumerate(conf) if "=" in line and not line.startswith(("[", ";"))]
    headers = [i for i, line in enumerate(conf) if line.startswith("[")]
    if edit.kind == "value" and keyed:
        i = keyed[edit.at % len(keyed)]
        conf[i] = f"{conf[i].split('=')[0]}= {edit.new}"
    elif edit.kind == "rename" and headers:
        conf[headers[edit.at % len(headers)]] = str(edit.new)
    elif edit.kind == "delete" and conf:
        del conf[edit.at % len(conf)]
    elif edit.kind == "duplicate" and conf:
        i = edit.at % len(conf)
        conf.insert(i, conf[i])
    elif edit.kind == "insert":
        conf.insert(edit.at % (len(conf) + 1), str(edit.new))
    elif edit.kind in files:
        files[edit.kind] = edit.new


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_project(tmp_path_factory.mktemp("fuzz"))


def _write(project: Path, conf: str | bytes, extra: dict[str, str | bytes]) -> Path:
    """Give conf.ini, the key files and the warm-up file these contents (valid ones where `extra` has none)."""
    targets = {"conf.ini": project / "conf.ini", **{k: project / k for k in KEYS}, "warmup": project / WARMUP_FILE}
    for name, target in targets.items():
        content = conf if name == "conf.ini" else extra.get(name, f"{KEY}\n" if name in KEYS else WARMUP)
        if isinstance(content, bytes):
            target.write_bytes(content)
        else:
            target.write_text(content, encoding="utf-8", errors="surrogatepass")
    return targets["conf.ini"]


def _headers(conf: str | bytes) -> set[str]:
    """Every name configparser could take for a section of `conf` (a superset is fine)."""
    text = conf.decode("utf-8", errors="replace") if isinstance(conf, bytes) else conf
    lines = io.StringIO(text, newline=None)  # as `read_text` splits them: not at \x1e, \u2028, ...
    found = (configparser.ConfigParser.SECTCRE.match(line.strip()) for line in lines)
    return {"MODEL SERVE", *(m.group("header") for m in found if m)}


def _problem_names_a_section_or_the_file(problem: str, sections: set[str]) -> bool:
    if problem.startswith(("not a valid INI file: ", "cannot read the file (")):
        return True
    return any(problem.startswith(f"[{name}]") for name in sections)


def check(project: Path, conf: str | bytes, extra: dict[str, str | bytes] | None = None) -> list[str]:
    """`controller.py check` on the project: [] if accepted, else the problems, each asserted to
    name a `[section]` (or the file); any other exception fails the test."""
    path = _write(project, conf, extra or {})
    try:
        config = load_config(path)
        apply.validated(config, plan.deploy_config(config, plan.Artifacts.placeholder(config)))
        found: list[str] = []
    except ConfigError as exc:
        found = exc.problems
        assert found and exc.path == str(path)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(["check", "-c", str(path)])
    assert code == (2 if found else 0), (code, found, err.getvalue())
    assert "Traceback" not in err.getvalue() + out.getvalue()
    sections = _headers(conf)
    for problem in found:
        assert _problem_names_a_section_or_the_file(problem, sections), problem
    if found:
        assert err.getvalue().startswith(f"error: {path}: {len(found)} problem(s)"), err.getvalue()
    return found


#: About 8 s for the file on one core here; well under 40 s on a slow 2-core machine.
FUZZ = settings(
    max_examples=600, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def test_the_starting_file_is_valid(project: Path) -> None:
    assert check(project, VALID) == []


@FUZZ
@given(st.lists(edits, min_size=1, max_size=4))
def test_random_edits_are_accepted_or_named(project: Path, changes: list[Edit]) -> None:
    conf, files = VALID.splitlines(), dict[str, str | bytes]()
    for change in changes:
        if change.kind == "bytes":
            continue
        _edit(conf, files, change)
    data = ("\n".join(conf) + "\n").encode("utf-8", errors="surrogatepass")
    for change in (c for c in changes if c.kind == "bytes"):
        at = change.at % (len(data) + 1)
        data = data[:at] + bytes(change.new) + data[at:]
    check(project, data, files)


@settings(FUZZ, max_examples=250)
@given(st.one_of(st.text(max_size=500), st.binary(max_size=500), lines.map(lambda line: f"{line}\n" * 2)))
def test_any_file_is_accepted_or_named(project: Path, conf: str | bytes) -> None:
    check(project, conf)


@settings(FUZZ, max_examples=250)
@given(st.sampled_from([*KEYS, "warmup"]), contents)
def test_a_broken_key_or_warmup_file_is_named(project: Path, which: str, content: str | bytes) -> None:
    found = check(project, VALID, {which: content})
    named = {
        "keys.txt": "[MODEL SERVE] api_keys",
        "team_keys.txt": "[algopkg.Echo:fuzz] api_keys",
        "warmup": "[algopkg.Echo:fuzz] warmup",
    }
    assert all(p.startswith(f"{named[which]} = ") for p in found), found


USER_CONFIG = 'user_config = {"threshold": 0.5, "lowercase": true}'
#: Edits found while fuzzing that crashed `check` with a traceback, and the problem each gets now.
FOUND = [
    ("model = echo_model.txt", "model = " + "x" * 300, "[algopkg.Echo:fuzz] model = 'xxx"),  # ENAMETOOLONG
    ("warmup = fuzz_warmup.json", "warmup = " + "x" * 300, "[algopkg.Echo:fuzz] warmup = 'xxx"),
    ("[algopkg.Echo:fuzz]", "[algopkg." + "X" * 300 + "]", "[algopkg.XXX"),
    ("model_zoo = Model_ZOO", "model_zoo = " + "x" * 300, "[algopkg.AlgoExample] model = 'algoexample_model_v1.npz'"),
    ("model_zoo = Model_ZOO", "model_zoo = a\x00b", "[MODEL SERVE] model_zoo = 'a\\x00b': holds a NUL character"),
    ("api_keys = keys.txt", "api_keys = a\x00b", "[MODEL SERVE] api_keys = 'a\\x00b': holds a NUL character"),
    (USER_CONFIG, "user_config = " + "[" * 5000, "[algopkg.Echo:fuzz] user_config = '[[["),  # RecursionError
    (USER_CONFIG, 'user_config = {"a": ' + "9" * 5000 + "}", '[algopkg.Echo:fuzz] user_config = \'{"a": 999'),
]


@pytest.mark.parametrize(("old", "new", "expected"), FOUND)
def test_edits_that_once_crashed_check_are_named(project: Path, old: str, new: str, expected: str) -> None:
    assert old in VALID
    found = check(project, VALID.replace(old, new, 1))
    assert any(p.startswith(expected) for p in found), found


@pytest.mark.parametrize("content", ["[" * 5000, '{"params": {}, "repeat": 1000000000000}'])
def test_warmup_files_that_once_crashed_check_are_named(project: Path, content: str) -> None:
    (problem,) = check(project, VALID, {"warmup": content})
    assert problem.startswith("[algopkg.Echo:fuzz] warmup = 'fuzz_warmup.json': "), problem


@pytest.mark.parametrize(
    ("source", "expected"),
    [("# 注释\nclass Echo: pass\n".encode("gbk"), "cannot parse"), (b"class Echo: pass\n\x00", "null bytes")],
)
def test_a_backend_py_that_is_not_utf8_text_is_named(tmp_path: Path, source: bytes, expected: str) -> None:
    """A GBK backend.py crashed `check` with a UnicodeDecodeError."""
    project = make_project(tmp_path)
    (project / "algopkg" / "Echo" / "backend.py").write_bytes(source)
    (problem,) = check(project, VALID)
    assert problem.startswith("[algopkg.Echo:fuzz]: ") and expected in problem, problem


def test_a_file_saved_with_a_bom_is_read(project: Path) -> None:
    """Notepad's UTF-8 starts with a BOM, which read as "File contains no section headers"."""
    assert check(project, "\ufeff" + VALID) == []
