"""A section loaded in this process (inprocess.py, modelserve.testing): no Ray anywhere."""

from __future__ import annotations

import importlib.util
import json
import os
import py_compile
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import ECHO_SECTION, REPO, make_project, write_conf

from modelserve import inprocess
from modelserve.config import load_config
from modelserve.testing import load_section

STREAM = """
[algopkg.Inputs:stream]
backend = Streamer
route = stream
method = POST
"""
TYPED = """
[algopkg.Inputs:typed]
backend = Typed
route = typed
method = GET,POST
warmup = typed_warmup.json
"""


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = make_project(tmp_path)
    write_conf(root, {"port": 8000}, ECHO_SECTION, STREAM, TYPED)
    return root


def test_a_section_is_found_by_name_package_or_route(project: Path) -> None:
    config = load_config(project / "conf.ini")
    for name in ("algopkg.Echo", "Echo", "echo", "/echo"):
        assert inprocess.find_section(config, name).section == "algopkg.Echo"
    assert inprocess.find_section(config, "Inputs:typed").route == "typed"
    with pytest.raises(inprocess.LocalError, match=r"no section 'Nope'; the sections are: algopkg.Echo, "):
        inprocess.find_section(config, "Nope")


def test_the_route_answers_as_a_replica_does_with_the_sections_settings(project: Path) -> None:
    conf = project / "conf.ini"
    conf.write_text(conf.read_text().replace("cpu_cost = 0.5", 'cpu_cost = 0.5\nuser_config = {"lowercase": true}'))
    with load_section("Echo", config=conf) as route:
        answer = route.call({"a": 1}, headers={"x-request-id": "r-1"})
        assert answer.status == 200 and answer.headers["x-request-id"] == "r-1"
        body = answer.json()
        assert body["result"]["params"] == {"a": 1} and body["result"]["config"] == {"lowercase": True}
        assert body["result"]["model"] == ["echo-model-v1"] and body["request_id"] == "r-1"
        assert answer.body == json.dumps(body, separators=(",", ":")).encode()  # the envelope's own bytes
        failed = route.call({"fail": 1})
        assert failed.status == 500 and "Traceback" not in failed.body.decode()
        assert route.get().status == 405 and route.get().headers["allow"] == "POST"
        assert route.ping().json()["result"] == "pong"
        assert "/echo" in route.openapi()["paths"]


def test_typed_params_and_streams_go_through_the_same_pipeline(project: Path) -> None:
    with load_section("typed", config=project / "conf.ini") as route:
        assert route.call({"text": "ab", "times": 2}).json()["result"] == {"text": "abab", "area": 0}
        refused = route.call({"text": "", "times": 9})
        assert refused.status == 400 and "times" in refused.json()["error"]["message"]
        assert route.get(query={"text": "hi"}).json()["result"]["text"] == "hi"
    with load_section("stream", config=project / "conf.ini") as route:
        answer = route.call({"n": 3, "clock": False})
        assert answer.headers["content-type"] == "application/x-ndjson"
        assert [json.loads(line)["i"] for line in answer.body.splitlines()] == [0, 1, 2]


def test_an_edit_within_the_same_second_and_of_the_same_size_is_loaded(project: Path) -> None:
    """A cached .pyc is trusted by its source's mtime in whole seconds and its size."""
    config = load_config(project / "conf.ini")
    spec = inprocess.find_section(config, "Echo")
    backend = project / "algopkg" / "Echo" / "backend.py"
    stat = backend.stat()
    first = inprocess.load_section(config, spec)
    # As an earlier import left it (CI and this machine run with PYTHONDONTWRITEBYTECODE=1: made here).
    py_compile.compile(str(backend), cfile=importlib.util.cache_from_source(str(backend)), doraise=True)
    backend.write_text(backend.read_text().replace("VERSION = 1", "VERSION = 7"))
    os.utime(backend, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # the same second, the same size
    second = inprocess.load_section(config, spec)
    assert first.backend.infer({})["version"] == 1 and second.backend.infer({})["version"] == 7


def test_a_failed_load_shows_the_packages_own_frames_only(project: Path) -> None:
    backend = project / "algopkg" / "Echo" / "backend.py"
    backend.write_text(backend.read_text().replace("FAIL_LOAD = False", "FAIL_LOAD = True"))
    config = load_config(project / "conf.ini")
    with pytest.raises(Exception) as failed:
        inprocess.load_section(config, inprocess.find_section(config, "Echo"))
    shown = inprocess.package_traceback(failed.value)
    assert f'File "{backend}", line' in shown and 'raise RuntimeError("echo model is corrupted")' in shown
    assert "RuntimeError: echo model is corrupted" in shown
    assert "modelserve.errors.ModelLoadError: Echo.load failed" in shown.splitlines()[-1]
    assert str(Path(inprocess.__file__).parent) not in shown  # our frames are trimmed


@pytest.mark.parametrize(
    ("requirements", "missing"),
    [
        ("numpy>=1\n# a comment\n\n", []),
        ("numpy<1\n", ["numpy<1 (this Python has "]),
        ("surely-not-installed-pkg==1.0\n", ["surely-not-installed-pkg==1.0"]),
    ],
)
def test_a_pip_env_runs_here_only_when_this_python_has_its_requirements(
    project: Path, requirements: str, missing: list[str]
) -> None:
    (project / "algopkg" / "Echo" / "requirements.txt").write_text(requirements)
    conf = project / "conf.ini"
    conf.write_text(conf.read_text().replace("cpu_cost = 0.5", "cpu_cost = 0.5\nenv = pip"))
    config = load_config(conf)
    spec = inprocess.find_section(config, "Echo")
    found = inprocess.missing_requirements(spec, config)
    assert len(found) == len(missing) and all(f.startswith(m) for f, m in zip(found, missing, strict=True))
    if missing:
        with pytest.raises(inprocess.LocalError, match=r"\.venv-Echo/bin/python controller.py try algopkg.Echo"):
            inprocess.require_environment(spec, config, "try")


def test_try_says_what_to_run_for_a_conda_env(project: Path) -> None:
    conf = project / "conf.ini"
    conf.write_text(conf.read_text().replace("cpu_cost = 0.5", "cpu_cost = 0.5\nenv = conda:vision"))
    done = subprocess.run(
        [sys.executable, str(REPO / "controller.py"), "-c", str(conf), "try", "Echo", "--params", "{}"],
        capture_output=True,
        text=True,
        timeout=60,
        env={k: v for k, v in os.environ.items() if k != "CONDA_DEFAULT_ENV"},
    )
    assert done.returncode == 2
    assert "[algopkg.Echo] env = conda:vision" in done.stderr
    assert "conda run -n vision python controller.py try algopkg.Echo" in done.stderr
