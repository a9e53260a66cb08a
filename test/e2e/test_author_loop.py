"""The package author's loop, as a user runs it: `controller.py try` and `controller.py dev`, no Ray.

`dev` is proven the way an author uses it: a request, an edit, the next request; the reload time
(edit to the first answer from the new code) is measured and printed at the end of the run.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from helpers import ECHO_SECTION, MEASURED, REPO, controller, dev_server, make_project, wait_for, write_conf

from modelserve.node import free_port

pytestmark = pytest.mark.e2e

EXAMPLE = """
[algopkg.AlgoExample]
backend = algo_backend
model = algoexample_model_v1.npz
route = extract
method = GET,POST
warmup = warmup.json
"""
BROKEN = """
from modelserve import Backend


def open_weights(path):
    raise FileNotFoundError(f"no weights at {path}")


class Broken(Backend):
    def __init__(self):
        open_weights("/nowhere/weights.bin")

    def infer(self, params):
        return params
"""
DIGIT_PNG = REPO / "algopkg" / "AlgoExample" / "digit.png"


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = make_project(tmp_path_factory.mktemp("author"))
    (root / "algopkg" / "Broken").mkdir()
    (root / "algopkg" / "Broken" / "__init__.py").write_text("")
    (root / "algopkg" / "Broken" / "backend.py").write_text(BROKEN)
    broken = "[algopkg.Broken]\nbackend = Broken\nroute = broken\nmethod = POST\n"
    write_conf(root, {"port": free_port()}, EXAMPLE, ECHO_SECTION, broken)
    return root


def _try(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return controller("-c", str(project / "conf.ini"), "try", *args, timeout=120)


def test_try_prints_the_digit_class_of_the_warmup_sample_and_of_a_form_upload(project: Path) -> None:
    done = _try(project, "AlgoExample")
    assert done.returncode == 0, done.stderr
    envelope = json.loads(done.stdout)
    assert envelope["status"] == 1 and envelope["result"]["class"] == 0, envelope  # warmup.json is a 0
    assert "loaded in" in done.stderr and "-> 200" in done.stderr and "p50" in done.stderr
    upload = _try(project, "extract", "--form", f"image=@{DIGIT_PNG}", "-n", "5")
    assert upload.returncode == 0, upload.stderr
    assert json.loads(upload.stdout)["result"]["class"] == 2
    assert "5 call(s): p50" in upload.stderr


def test_try_answers_a_bad_request_as_the_route_does_and_exits_1(project: Path) -> None:
    done = _try(project, "algopkg.AlgoExample", "--params", '{"x": [1, 2]}', "-H", "x-request-id: try-1")
    assert done.returncode == 1
    assert json.loads(done.stdout) == {
        "status": 0,
        "error": {"type": "BadRequest", "message": '"x" must hold 64 pixel values, got shape [2]'},
        "request_id": "try-1",
    }
    assert "-> 400" in done.stderr


def test_try_on_a_package_that_fails_to_load_shows_its_own_traceback(project: Path) -> None:
    done = _try(project, "Broken", "--params", "{}")
    assert done.returncode == 1 and done.stdout == ""
    backend = project / "algopkg" / "Broken" / "backend.py"
    assert f'File "{backend}", line 11, in __init__' in done.stderr, done.stderr
    assert 'open_weights("/nowhere/weights.bin")' in done.stderr
    assert "FileNotFoundError: no weights at /nowhere/weights.bin" in done.stderr
    assert "modelserve/" not in done.stderr, "our frames are trimmed"


def test_try_names_the_sections_when_one_is_unknown(project: Path) -> None:
    done = _try(project, "Nope")
    assert done.returncode == 2
    assert "no section 'Nope'; the sections are: algopkg.AlgoExample, algopkg.Echo, algopkg.Broken" in done.stderr


@pytest.fixture(scope="module")
def dev(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str, Path]]:
    """`controller.py dev` on a project of its own (its files get edited): (project, base URL, its output)."""
    root = make_project(tmp_path_factory.mktemp("dev"))
    write_conf(root, {"port": free_port()}, EXAMPLE, ECHO_SECTION)
    with dev_server(root / "conf.ini", "/extract/ping") as (base, log):
        yield root, base, log


def _digit(base: str) -> Any:
    files = {"image": ("digit.png", DIGIT_PNG.read_bytes(), "image/png")}
    response = requests.post(f"{base}/extract", files=files, timeout=10)
    assert response.status_code == 200, response.text
    return response.json()["result"]["class"]


def _first_answer_within(check: Any, seconds: float, what: str) -> float:
    """Seconds from now to the first answer that passes `check`, polling every 20 ms; fails past `seconds`."""
    started = time.monotonic()
    while True:
        if check():
            return time.monotonic() - started
        if time.monotonic() - started > seconds:
            raise AssertionError(f"{what}: not within {seconds} s")
        time.sleep(0.02)


def test_dev_serves_every_section_and_says_what_does_not_apply(dev: tuple[Path, str, Path]) -> None:
    _, base, log = dev
    assert _digit(base) == 2
    echo = requests.post(f"{base}/echo", json={"a": 1}, timeout=10).json()
    assert echo["result"]["params"] == {"a": 1} and echo["result"]["model"] == ["echo-model-v1"]
    missing = requests.get(f"{base}/nope", timeout=10)
    assert missing.status_code == 404 and "the routes here are: /echo, /extract" in missing.json()["error"]["message"]
    assert "replicas, traffic splits and mirrors, stages, autoscaling" in log.read_text()


def test_dev_reloads_an_edited_backend_within_a_second_and_keeps_serving_through_a_syntax_error(
    dev: tuple[Path, str, Path],
) -> None:
    root, base, log = dev
    backend = root / "algopkg" / "AlgoExample" / "backend.py"
    good = backend.read_text()
    assert _digit(base) == 2
    for version, offset in enumerate((100, 200, 300)):  # several edits in a row, some within one second
        backend.write_text(good.replace('{"class": int(p.argmax())', f'{{"class": int(p.argmax()) + {offset}'))
        took = _first_answer_within(lambda o=offset: _digit(base) == 2 + o, 1.0, f"edit {version + 1}")
        MEASURED.append(f"dev: edit {version + 1} of backend.py answered by the new code after {took:.3f} s")
    backend.write_text(good + "\ndef broken(:\n")
    wait_for(lambda: "SyntaxError" in log.read_text(), 5, "the syntax error printed")
    assert _digit(base) == 302  # the last good version keeps serving
    assert "did not load (the previous version keeps serving)" in log.read_text()
    assert f'File "{backend}", line' in log.read_text()
    backend.write_text(good)
    took = _first_answer_within(lambda: _digit(base) == 2, 1.0, "the fix")
    MEASURED.append(f"dev: the fixed backend.py answered after {took:.3f} s")


def test_dev_reloads_a_section_on_a_model_file_or_conf_ini_change_keeping_the_others(
    dev: tuple[Path, str, Path],
) -> None:
    root, base, _ = dev

    def echo() -> dict[str, Any]:
        answer: dict[str, Any] = requests.post(f"{base}/echo", json={}, timeout=10).json()["result"]
        return answer

    model = root / "Model_ZOO" / "echo_model.txt"
    model.write_text("echo-model-v2\n")
    took = _first_answer_within(lambda: echo()["model"] == ["echo-model-v2"], 1.0, "the model file change")
    MEASURED.append(f"dev: a model file change answered after {took:.3f} s")
    conf = root / "conf.ini"
    conf.write_text(conf.read_text().replace("cpu_cost = 0.5", 'cpu_cost = 0.5\nuser_config = {"lowercase": true}'))
    took = _first_answer_within(lambda: echo()["config"] == {"lowercase": True}, 1.0, "the conf.ini change")
    MEASURED.append(f"dev: a conf.ini user_config change answered after {took:.3f} s")
    assert _digit(base) == 2  # the other section was not touched
    shutil.copy(REPO / "test" / "fixtures" / "Model_ZOO" / "echo_model.txt", model)
