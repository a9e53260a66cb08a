"""pysource.parse: ast.parse, past CPython 3.11's spurious AST recursion-depth SystemError."""

from __future__ import annotations

import ast
import gc

import pytest

from modelserve import pysource


def test_parses_like_ast_parse() -> None:
    tree = pysource.parse("class Model:\n    pass\n", filename="backend.py")
    assert [type(n) for n in tree.body] == [ast.ClassDef]


def test_the_spurious_system_error_is_retried_with_the_collector_paused(monkeypatch: pytest.MonkeyPatch) -> None:
    real_parse = ast.parse
    calls: list[bool] = []

    def flaky(source: str, filename: str = "<unknown>") -> ast.Module:
        calls.append(gc.isenabled())
        if len(calls) == 1:
            raise SystemError("AST constructor recursion depth mismatch (before=144, after=164)")
        return real_parse(source, filename=filename)

    monkeypatch.setattr(ast, "parse", flaky)
    assert gc.isenabled()
    tree = pysource.parse("x = 1\n")
    assert isinstance(tree.body[0], ast.Assign)
    assert calls == [True, False]
    assert gc.isenabled()


def test_real_errors_are_not_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(SyntaxError):
        pysource.parse("def (:\n")

    def other(source: str, filename: str = "<unknown>") -> ast.Module:
        raise SystemError("something else")

    monkeypatch.setattr(ast, "parse", other)
    with pytest.raises(SystemError, match="something else"):
        pysource.parse("x = 1\n")
