"""What travels to the cluster: staged packages, the replica runtime, digests, requirements."""

import subprocess
import sys
from pathlib import Path

from helpers import make_project

from modelserve import packaging


def test_a_staged_package_holds_only_that_package(tmp_path: Path) -> None:
    project = make_project(tmp_path)
    (project / "algopkg" / "Echo" / "__pycache__").mkdir(exist_ok=True)
    (project / "algopkg" / "Echo" / "__pycache__" / "x.pyc").write_bytes(b"0")
    with packaging.staged_package(project / "algopkg", "Echo") as staged:
        assert staged.name == "algopkg"
        assert sorted(p.name for p in staged.iterdir()) == ["Echo", "__init__.py"]
        assert (staged / "Echo" / "backend.py").is_file() and not (staged / "Echo" / "__pycache__").exists()
    assert not staged.exists()


def test_the_runtime_holds_what_a_replica_runs_and_nothing_the_controller_runs() -> None:
    names = {p.name for p in packaging.replica_modules()}
    assert {
        "__init__.py",
        "app.py",
        "ingress.py",
        "pipeline.py",
        "backend.py",
        "envelope.py",
        "errors.py",
        "replica_spec.py",
    } <= names
    assert not names & {"cli.py", "bench.py", "config.py", "plan.py", "cluster.py", "node.py", "status.py"}


def test_the_staged_runtime_imports_on_its_own(tmp_path: Path) -> None:
    """The uploaded modules are complete: `modelserve.app` imports from them alone."""
    with packaging.staged_runtime() as staged:
        code = "import modelserve.app, sys; print(modelserve.app.__file__)"
        result = subprocess.run(
            [sys.executable, "-c", code], cwd=tmp_path, env={"PYTHONPATH": str(staged.parent)}, capture_output=True,
            text=True, timeout=120,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == str(staged / "app.py")


def test_editing_the_cli_leaves_the_replica_modules_unchanged(tmp_path: Path) -> None:
    runtime = tmp_path / "modelserve"
    runtime.mkdir()
    for path in Path(packaging.__file__).parent.glob("*.py"):
        (runtime / path.name).write_text(path.read_text())
    before = packaging.files_digest(packaging.replica_modules(runtime))
    (runtime / "cli.py").write_text("# edited\n")
    assert packaging.files_digest(packaging.replica_modules(runtime)) == before
    (runtime / "envelope.py").write_text((runtime / "envelope.py").read_text() + "\n# edited\n")
    assert packaging.files_digest(packaging.replica_modules(runtime)) != before


def test_files_digest_follows_names_and_content(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_text("1")
    b.write_text("1")
    assert packaging.files_digest([a]) != packaging.files_digest([b])
    first = packaging.files_digest([a])
    a.write_text("2")
    assert packaging.files_digest([a]) != first


def test_requirements_without_comments_and_blank_lines(tmp_path: Path) -> None:
    path = tmp_path / "requirements.txt"
    path.write_text("# pinned\nnumpy==1.26  # the model\n\nrequests\n")
    assert packaging.read_requirements(path) == ("numpy==1.26", "requests")
