"""What travels to the cluster: packages and the replica runtime staged for upload, digests.

An algorithm package goes to the nodes as a `py_modules` entry holding just
`algopkg/__init__.py` and `algopkg/<Package>/`; the modules a replica runs (modelserve's
`app.py` and what it imports) go the same way. Ray names an upload by a hash of its
content, so a URI changes exactly when that code does: editing the CLI rolls nothing.
"""

from __future__ import annotations

import ast
import hashlib
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from modelserve import pysource

_IGNORED = shutil.ignore_patterns("__pycache__", "*.pyc", ".ipynb_checkpoints", ".git")


def tree_digest(directory: Path) -> str:
    """A digest of a directory's name and every file in it (paths and bytes): what an upload holds."""
    digest = hashlib.sha256(directory.name.encode())
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(directory)).encode() + b"\0")
        digest.update(path.read_bytes())
        digest.update(b"\0")
    return digest.hexdigest()


@contextmanager
def staged_package(algopkg_dir: Path, package: str) -> Iterator[Path]:
    """A temporary `algopkg/` directory holding only `package`, ready for upload."""
    with tempfile.TemporaryDirectory(prefix="modelserve-pkg-") as tmp:
        staged = Path(tmp) / "algopkg"
        shutil.copytree(algopkg_dir / package, staged / package, ignore=_IGNORED)
        init = algopkg_dir / "__init__.py"
        (staged / "__init__.py").write_bytes(init.read_bytes() if init.is_file() else b"")
        yield staged


def read_requirements(path: Path) -> tuple[str, ...]:
    """The requirement lines of a requirements.txt, without comments and blank lines."""
    lines = (line.split("#", 1)[0].strip() for line in path.read_text(encoding="utf-8").splitlines())
    return tuple(line for line in lines if line)


_RUNTIME_DIR = Path(__file__).resolve().parent
_REPLICA_ENTRY = "app"


def _imported_modules(source: Path, runtime_dir: Path) -> set[str]:
    """modelserve modules a file imports (`from modelserve import x`, `from modelserve.x import y`)."""
    found: set[str] = set()
    for node in ast.walk(pysource.parse(source.read_text(encoding="utf-8"), filename=str(source))):
        if isinstance(node, ast.ImportFrom) and node.module == "modelserve":
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("modelserve."):
            found.add(str(node.module).split(".")[1])
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[1] for a in node.names if a.name.startswith("modelserve."))
    return {name for name in found if (runtime_dir / f"{name}.py").is_file()}


def replica_modules(runtime_dir: Path = _RUNTIME_DIR) -> list[Path]:
    """The files a replica runs: `app.py`, `__init__.py` and everything they import, transitively."""
    seen: set[str] = set()
    todo = [_REPLICA_ENTRY, "__init__"]
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo.extend(_imported_modules(runtime_dir / f"{name}.py", runtime_dir) - seen)
    return sorted(runtime_dir / f"{name}.py" for name in seen)


@contextmanager
def staged_runtime() -> Iterator[Path]:
    """A temporary `modelserve/` directory holding only the replica's modules, ready for upload."""
    with tempfile.TemporaryDirectory(prefix="modelserve-runtime-") as tmp:
        staged = Path(tmp) / "modelserve"
        staged.mkdir()
        for path in replica_modules():
            shutil.copy2(path, staged / path.name)
        yield staged


def files_digest(paths: Iterable[Path], chunk_bytes: int = 1 << 20) -> str:
    """sha256 over the names and contents of files, in order."""
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.name.encode() + b"\0")
        with path.open("rb") as handle:
            while chunk := handle.read(chunk_bytes):
                digest.update(chunk)
        digest.update(b"\0")
    return digest.hexdigest()[:16]
