"""The project's own checks pass on a user's project: a package's style is the user's, and a
valid conf.ini section (a key file beside conf.ini, a canary, a mirror) keeps the suite green."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from modelserve.config import load_config

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent

#: Valid Python in a style the project's ruff rules reject: unused and unsorted imports, tabs,
#: long lines, a semicolon, missing blank lines.
USER_BACKEND = (
    "import sys, os\n"
    "import json\n"
    "class algo_backend:\n"
    "\tdef __init__(self, model_path , **kw):\n"
    "\t\tself.note = 'this line is long on purpose, as a user may write it: " + "x" * 90 + "'\n"
    "\tdef infer(self, params):\n"
    "\t\tx = params.get('x');  return {'x' : x}\n"
)


def lint_commands() -> list[list[str]]:
    """The ruff lines of the Makefile's `lint` target, as `make lint` runs them."""
    recipe = re.search(r"^lint:.*\n((?:\t.*\n)+)", (ROOT / "Makefile").read_text(), re.M)
    assert recipe, "the Makefile has no lint target"
    lines = [line.strip().replace("$(BIN)/", f"{BIN}/") for line in recipe.group(1).splitlines()]
    commands = [line.split() for line in lines if "ruff" in line]
    assert [c[1] for c in commands] == ["check", "format"], lines
    return commands


def lint(project: Path) -> list[subprocess.CompletedProcess[str]]:
    return [subprocess.run(c, cwd=project, capture_output=True, text=True, timeout=120) for c in lint_commands()]


def test_lint_passes_on_a_user_s_badly_styled_package(tmp_path: Path) -> None:
    compile(USER_BACKEND, "backend.py", "exec")  # valid Python
    project = tmp_path / "project"
    project.mkdir()
    for name in ("pyproject.toml", "Makefile"):
        shutil.copy(ROOT / name, project / name)
    shutil.copytree(ROOT / "algopkg", project / "algopkg")
    shutil.copytree(ROOT / "Model_ZOO", project / "Model_ZOO")
    package = project / "algopkg" / "UserModel"
    package.mkdir()
    (package / "__init__.py").write_text("from .backend import algo_backend\n\n\n\n")
    (package / "backend.py").write_text(USER_BACKEND)
    (project / "Model_ZOO" / "convert.py").write_text(USER_BACKEND)  # "model files only", but users do this
    # The same file in our code is caught: the lint runs and applies the project's rules.
    (project / "modelserve").mkdir()
    (project / "modelserve" / "styled_like_a_user.py").write_text(USER_BACKEND)
    caught = lint(project)
    assert all(r.returncode != 0 for r in caught) and "styled_like_a_user.py" in caught[0].stdout, caught
    shutil.rmtree(project / "modelserve")
    for result in lint(project):
        assert result.returncode == 0, (result.args, result.stdout, result.stderr)


def test_mypy_checks_our_package_only() -> None:
    tomllib = pytest.importorskip("tomllib")
    mypy = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["mypy"]
    assert mypy["files"] == ["modelserve"]


USER_SECTIONS = """
[algopkg.AlgoExample:partner]
backend = algo_backend
model = algoexample_model_v1.npz
route = partner
api_keys = partner_keys.txt

[algopkg.AlgoExample:canary]
backend = algo_backend
model = algoexample_model_v1.npz
route = extract
traffic = 10

[algopkg.AlgoExample:shadow]
backend = algo_backend
model = algoexample_model_v1.npz
route = shadow
mirror_of = algopkg.AlgoExample
"""

#: The e2e example conf (`repository_conf`) from this conf.ini loads, and its routes are open.
E2E_CHECK = """
import sys, tempfile
from pathlib import Path
sys.path[:0] = ["test", "test/e2e"]
from helpers import make_project
from test_controller import repository_conf
from modelserve.config import load_config
project = make_project(Path(tempfile.mkdtemp()))
(project / "conf.ini").write_text(repository_conf(8000, 8265))
config = load_config(project / "conf.ini")
assert [s.section for s in config.sections] == ["algopkg.AlgoExample"], config.sections
assert not config.serve.api_keys and not config.sections[0].api_keys
"""


def test_the_suite_stays_green_with_a_user_s_sections(tmp_path: Path) -> None:
    """A copy of the project whose conf.ini has keys for every route, the example split 90/10 with a
    canary, a mirror and a section with its own key file: the tests that read conf.ini pass."""
    project = tmp_path / "project"
    project.mkdir()
    for name in ("test", "algopkg", "Model_ZOO"):
        shutil.copytree(ROOT / name, project / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", project / "pyproject.toml")
    (project / "modelserve").symlink_to(ROOT / "modelserve", target_is_directory=True)
    shipped = (ROOT / "conf.ini").read_text()
    assert "\nroute = extract " in shipped and "\nmodel_zoo = Model_ZOO " in shipped
    conf = shipped.replace("\nroute = extract ", "\ntraffic = 90\nroute = extract ", 1)
    conf = conf.replace("\nmodel_zoo = Model_ZOO ", "\napi_keys = keys.txt\nmodel_zoo = Model_ZOO ", 1)
    (project / "conf.ini").write_text(conf + textwrap.dedent(USER_SECTIONS))
    (project / "keys.txt").write_text("user-key-0123456789abcdef\n")
    (project / "partner_keys.txt").write_text("partner-key-0123456789abcdef\n")

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, *args], cwd=project, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL
        )

    loaded = run("-c", "from modelserve.config import load_config; print(len(load_config('conf.ini').sections))")
    expected = len(load_config(ROOT / "conf.ini").sections) + 3  # the sections already there (the user's too), and 3
    assert loaded.returncode == 0 and loaded.stdout.strip() == str(expected), loaded.stderr  # valid, as a user's is
    suite = run("-m", "pytest", "-q", "-p", "no:cacheprovider", "test/unit/test_config.py")
    assert suite.returncode == 0, suite.stdout[-3000:] + suite.stderr[-2000:]
    assert " passed" in suite.stdout and "failed" not in suite.stdout, suite.stdout[-500:]
    e2e = run("-c", E2E_CHECK)
    assert e2e.returncode == 0, e2e.stderr[-3000:]
