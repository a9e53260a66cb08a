"""Model versions in a local model_zoo (the same layout as in an object store), resolved and pinned; no Ray."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import make_project, write_conf

from modelserve import inprocess, plan, status
from modelserve.config import ConfigError, load_config

SECTION = """
[algopkg.Echo]
backend = Echo
model = {model}
route = echo
method = POST
"""


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = make_project(tmp_path)
    for version in (1, 2):
        folder = root / "Model_ZOO" / "echo" / str(version)
        folder.mkdir(parents=True)
        (folder / "a.txt").write_text(f"echo-v{version}-a\n")
        (folder / "b.txt").write_text(f"echo-v{version}-b\n")
    return root


def conf(project: Path, model: str) -> Path:
    return write_conf(project, {"port": 8000}, SECTION.format(model=model))


def test_latest_is_pinned_to_the_highest_version_and_its_files_go_to_the_backend_in_name_order(project: Path) -> None:
    config = load_config(conf(project, "echo@latest"))
    found = config.models["algopkg.Echo"]
    assert found.pinned == ("echo@2",) and [f.name for f in found.files] == ["echo/2/a.txt", "echo/2/b.txt"]
    args = plan.replica_args(config.sections[0], config, "d")
    assert args.model_files == ("echo/2/a.txt", "echo/2/b.txt") and args.stored_files == ()  # local: read in place
    assert args.rollout_keys["model@"] == ["echo@2"] and args.rollout_keys["model"] == ["echo@latest"]
    pipeline = inprocess.load_section(config, config.sections[0])
    assert pipeline.backend.infer({})["model"] == ["echo-v2-a", "echo-v2-b"]
    (project / "Model_ZOO" / "echo" / "3").mkdir()
    (project / "Model_ZOO" / "echo" / "3" / "a.txt").write_text("echo-v3\n")
    moved = load_config(project / "conf.ini")
    assert plan.replica_args(moved.sections[0], moved, "d") != args  # the next apply rolls the section to 3


def test_new_content_under_the_same_name_changes_the_digest(project: Path) -> None:
    first = load_config(conf(project, "echo@1")).models["algopkg.Echo"].digest
    (project / "Model_ZOO" / "echo" / "1" / "b.txt").write_text("retrained\n")
    assert load_config(project / "conf.ini").models["algopkg.Echo"].digest != first


@pytest.mark.parametrize(
    ("model", "message"),
    [
        ("echo@7", "echo/7/: no such version; the versions there are: 1, 2; put it in model_zoo or fix the name"),
        ("nothing@latest", "nothing/: no numbered versions"),
        ("echo@", "'echo@': the version must be a number"),
    ],
)
def test_a_missing_version_is_named_with_the_versions_there_are(project: Path, model: str, message: str) -> None:
    with pytest.raises(ConfigError) as failed:
        load_config(conf(project, model))
    assert any(p.startswith(f"[algopkg.Echo] model = {model!r}: ") and message in p for p in failed.value.problems), (
        failed.value.problems
    )


def test_status_shows_the_served_version_only_where_a_section_serves_one() -> None:
    plain = status.Row("algopkg.A", "http://h/a", 1, 1, "HEALTHY", models=("w.npz",))
    versioned = status.Row("algopkg.B", "http://h/b", 1, 1, "HEALTHY", models=("digits@3",))
    assert "MODEL" not in status.table([plain])
    lines = status.table([plain, versioned]).splitlines()
    assert lines[0].split()[-1] == "MODEL" and lines[1].split()[-1] == "w.npz" and lines[2].split()[-1] == "digits@3"
