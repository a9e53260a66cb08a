"""What travels to the cluster: a package staged for upload, digests of model files.

An algorithm package goes to the nodes as a `py_modules` entry holding just
`algopkg/__init__.py` and `algopkg/<Package>/`. Ray names the upload by a hash
of its content, so the URI changes exactly when the package's code does.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

_IGNORED = shutil.ignore_patterns("__pycache__", "*.pyc", ".ipynb_checkpoints", ".git")


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


def runtime_digest() -> str:
    """Digest of modelserve's own sources: a new runtime rolls the replicas like new package code."""
    return files_digest(sorted(Path(__file__).parent.glob("*.py")))


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
