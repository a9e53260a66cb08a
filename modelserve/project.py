"""What a conf.ini refers to on disk: packages, backend classes, model files, warm-up, requirements.

Kept apart from the schema (config.py): these checks read the project, never import it.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import TYPE_CHECKING

from modelserve import pysource
from modelserve.warmup import WarmupError, read_warmup

if TYPE_CHECKING:
    from modelserve.settings import SectionSpec


def _defines_class(backend_py: Path, name: str) -> bool:
    """Whether backend.py defines `name` at top level, found without importing it."""
    tree = pysource.parse(backend_py.read_text(encoding="utf-8"), filename=str(backend_py))
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == name:
            return True
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
            return True
        if isinstance(node, ast.ImportFrom) and any((a.asname or a.name) == name for a in node.names):
            return True
    return False


def _is_file(path: Path) -> bool:
    """`Path.is_file`, also False where the name is too long for the file system (an OSError)."""
    try:
        return path.is_file()
    except OSError:
        return False


def check_section(spec: SectionSpec, algopkg: Path) -> list[str]:
    """Every problem of one section on disk, each naming `[section] key`, the value and the fix."""
    return _check_package(spec, algopkg)


def _check_package(spec: SectionSpec, algopkg: Path) -> list[str]:
    where = f"[{spec.section}]"
    package_dir = algopkg / spec.package
    backend_py = package_dir / "backend.py"
    if not _is_file(backend_py):
        return [
            f"{where}: package {spec.package!r} not found: {backend_py} does not exist; "
            f"create algopkg/{spec.package}/backend.py or fix the section name"
        ]
    problems = [*_check_warmup(spec, package_dir), *_check_env(spec, package_dir)]
    if not spec.backend:
        return problems  # reported as a missing key
    try:
        found = _defines_class(backend_py, spec.backend)
    except SyntaxError as exc:
        return [f"{where}: {backend_py} has a syntax error at line {exc.lineno}: {exc.msg}", *problems]
    except ValueError as exc:  # not UTF-8 (a GBK or Latin-1 file), or a NUL byte
        return [f"{where}: cannot parse {backend_py} ({exc}); save it as UTF-8 text", *problems]
    if not found:
        problems.insert(
            0,
            f"{where} backend = {spec.backend!r}: no class of that name in {backend_py}; "
            "set backend to the class name defined there",
        )
    return problems


def _check_warmup(spec: SectionSpec, package_dir: Path) -> list[str]:
    if not spec.warmup:
        return []
    path = package_dir / spec.warmup
    if not _is_file(path):
        return [
            f"[{spec.section}] warmup = {spec.warmup!r}: file not found in {package_dir}; "
            "put a JSON file of requests there or remove the key"
        ]
    try:
        read_warmup(path)
    except WarmupError as exc:
        return [f"[{spec.section}] warmup = {spec.warmup!r}: {exc}"]
    return []


def _check_env(spec: SectionSpec, package_dir: Path) -> list[str]:
    if spec.env == "pip" and not _is_file(package_dir / "requirements.txt"):
        return [
            f"[{spec.section}] env = 'pip': {package_dir / 'requirements.txt'} does not exist; "
            "list the package's dependencies there, or remove the key to use the nodes' environment"
        ]
    return []
