"""Parse Python source into an AST, around a CPython 3.11 bug.

CPython 3.11 (seen on 3.11.7 in our CI) can raise a spurious
`SystemError: AST constructor recursion depth mismatch` from `ast.parse` on valid source
(python/cpython#106905): a garbage collection during AST construction runs other code that
moves the interpreter's recursion counter. Parsing the same text again with the collector paused
succeeds; a real error (SyntaxError, ValueError) is raised by the first try as before.
"""

from __future__ import annotations

import ast
import gc


def parse(source: str, filename: str = "<unknown>") -> ast.Module:
    """`ast.parse(source, filename)`, retried once with the collector paused on that SystemError."""
    try:
        return ast.parse(source, filename=filename)
    except SystemError as exc:
        if "recursion depth mismatch" not in str(exc):
            raise
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        return ast.parse(source, filename=filename)
    finally:
        if was_enabled:
            gc.enable()
