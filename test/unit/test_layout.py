"""The package stays a table of contents: short modules named for one thing (STYLE.md)."""

from pathlib import Path

import modelserve

MAX_LINES = 320


def test_no_module_is_over_320_lines() -> None:
    modules = sorted(Path(modelserve.__file__).parent.glob("*.py"))
    sizes = {path.name: len(path.read_text(encoding="utf-8").splitlines()) for path in modules}
    assert len(sizes) > 20, sizes  # the package's modules were found
    too_long = {name: lines for name, lines in sizes.items() if lines > MAX_LINES}
    assert too_long == {}, f"split these modules (over {MAX_LINES} lines): {too_long}"
