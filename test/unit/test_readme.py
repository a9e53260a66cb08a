"""The README does not lie: its commands exist, CI runs its test command, every key is documented."""

import re
from pathlib import Path

import pytest

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
    ("heading", "declared"), [("`[MODEL SERVE]` keys:", SERVE_KEYS), ("Section keys:", SECTION_KEYS)]
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
