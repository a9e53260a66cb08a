"""The README does not lie: its commands exist, CI runs its test command, every key is documented."""

import re
import textwrap
from pathlib import Path

import pytest

from modelserve.node_groups import NODE_KEYS
from modelserve.settings import SECTION_KEYS, SERVE_KEYS

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


def test_the_two_commands_exist_and_ci_runs_the_test_command() -> None:
    assert "make serve" in README and "make test" in README
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^serve:", makefile, re.M) and re.search(r"^test:", makefile, re.M)
    assert "controller.py" in makefile.split("serve:")[1].split("\n\n")[0]
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def _table_rows(heading: str) -> dict[str, list[str]]:
    """`{key: [default, on change, meaning]}` of the key table under a README line."""
    rows: dict[str, list[str]] = {}
    for line in README.split(heading, 1)[1].split("\n\n", 2)[1].splitlines()[2:]:
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        for name in re.findall(r"`([a-z_]+)`", cells[0]):
            rows[name] = cells[1:]
    return rows


@pytest.mark.parametrize(
    ("heading", "declared"),
    [("`[MODEL SERVE]` keys:", SERVE_KEYS), ("Section keys:", SECTION_KEYS), ("`[NODES name]` keys:", NODE_KEYS)],
)
def test_every_conf_key_is_documented_with_its_default_and_what_a_change_does(heading: str, declared: dict) -> None:
    rows = _table_rows(heading)
    assert set(rows) == set(declared)
    for name, (_, key) in declared.items():
        assert rows[name][:2] == [key.shown_default, key.change], name


def test_the_backend_example_runs(tmp_path: Path) -> None:
    import numpy as np

    code = README.split("## The backend contract")[1].split("```python")[1].split("```")[0]
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    np.save(tmp_path / "w.npy", np.array([1.0, 2.0]))
    backend = namespace["Classifier"]()
    backend.load([str(tmp_path / "w.npy")])
    assert backend.infer({"x": [1, 1]}) == {"score": 3.0}


@pytest.mark.parametrize("installed", [False, True])
def test_ci_installs_the_debian_packages_the_tests_need_then_runs_the_test_command(
    tmp_path: Path, installed: bool
) -> None:
    """`.ci/run` as CI runs it (CI=true, no stdin), with stand-ins for apt-get and make that log their calls."""
    import shutil
    import subprocess

    bin_dir, log = tmp_path / "bin", tmp_path / "calls.log"
    bin_dir.mkdir()
    for tool in ("bash", "dirname", "id"):
        (bin_dir / tool).symlink_to(shutil.which(tool) or tool)
    stubs = ["apt-get", "make"] + (["wrk", "prometheus", "promtool"] if installed else [])
    for stub in stubs:
        (bin_dir / stub).write_text(f'#!/bin/bash\necho "{stub} $*" >> {log}\n')
    (bin_dir / "sudo").write_text('#!/bin/bash\nshift\nexec "$@"\n')  # `sudo -n CMD` when not root
    for stub in [*stubs, "sudo"]:
        (bin_dir / stub).chmod(0o755)
    env = {"PATH": str(bin_dir), "CI": "true", "HOME": str(tmp_path)}
    result = subprocess.run(
        [str(bin_dir / "bash"), str(ROOT / ".ci" / "run")],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    calls = log.read_text().splitlines()
    install = ["apt-get update -q", "apt-get install -y -q --no-install-recommends wrk prometheus"]
    assert calls == ([] if installed else install) + ["make test"], calls


def test_test_modules_have_unique_names() -> None:
    """pytest imports test modules by their base name (no __init__.py in test/): two modules of one
    name in two tiers stop the whole collection."""
    names = [p.name for p in (Path(__file__).resolve().parents[1]).rglob("test_*.py") if "fixtures" not in p.parts]
    assert sorted({n for n in names if names.count(n) > 1}) == []


def test_the_package_test_of_the_walkthrough_passes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The README's pytest example, run as an author runs it: from a project's root, on the
    example section (of the repository's own conf.ini, without the keys or splits a user added)."""
    import configparser

    from helpers import OTHER_SECTIONS_KEYS, mirror_project

    code = README.split("4. **Test it**")[1].split("```python")[1].split("```")[0]
    project = mirror_project(tmp_path / "project")
    shipped = configparser.ConfigParser(inline_comment_prefixes=(";", "#"), interpolation=None)
    shipped.read(ROOT / "conf.ini")
    dropped = ("api_keys", *OTHER_SECTIONS_KEYS)
    example = {k: v for k, v in shipped["algopkg.AlgoExample"].items() if k not in dropped}
    serve = {k: v for k, v in shipped["MODEL SERVE"].items() if k != "api_keys"}
    conf = configparser.ConfigParser(interpolation=None)
    conf.read_dict({"MODEL SERVE": serve, "algopkg.AlgoExample": example})
    with (project / "conf.ini").open("w") as out:
        conf.write(out)
    monkeypatch.chdir(project)
    namespace: dict = {}
    exec(compile(textwrap.dedent(code), "README.md", "exec"), namespace)
    tests = [fn for name, fn in namespace.items() if name.startswith("test_")]
    assert len(tests) == 1
    for test in tests:
        test()
