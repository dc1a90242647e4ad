"""Code shape (issue 9): no module of crm_ledger over 600 lines, no function over 80.

Generated files (`chain/artifacts/`) and migrations are left out. A function's length runs
from its first decorator (or `def`) to its last line, docstring included; a nested function
counts inside its parent as well as on its own.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import crm_ledger

PACKAGE = Path(crm_ledger.__file__).parent
MAX_MODULE_LINES = 600
MAX_FUNCTION_LINES = 80
EXCLUDED_DIRS = {"migrations", "artifacts"}

#: Files allowed to stay over the limits (none: keep it that way).
OWNED_ELSEWHERE: set[str] = set()


def source_files() -> Iterator[Path]:
    """Every hand-written Python file of the package."""
    for path in sorted(PACKAGE.rglob("*.py")):
        if not EXCLUDED_DIRS & set(path.relative_to(PACKAGE).parts):
            yield path


def too_long(path: Path, root: Path = PACKAGE) -> list[str]:
    """`path` itself when over the module limit, and each function over the function limit."""
    text = path.read_text()
    name = path.relative_to(root).as_posix()
    found = []
    lines = len(text.splitlines())
    if lines > MAX_MODULE_LINES:
        found.append(f"{name}: {lines} lines")
    for node in ast.walk(ast.parse(text, name)):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
            length = (node.end_lineno or node.lineno) - first + 1
            if length > MAX_FUNCTION_LINES:
                found.append(f"{name}:{node.lineno} {node.name}(): {length} lines")
    return found


def test_the_measure_sees_long_modules_and_functions(tmp_path: Path) -> None:
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION_LINES))
    sample = tmp_path / "sample.py"
    sample.write_text(f"def long():\n{body}\n\n\ndef short():\n    return 1\n")
    assert too_long(sample, tmp_path) == ["sample.py:1 long(): 81 lines"]
    sample.write_text("x = 1\n" * MAX_MODULE_LINES)
    assert too_long(sample, tmp_path) == []
    sample.write_text("x = 1\n" * (MAX_MODULE_LINES + 1))
    assert too_long(sample, tmp_path) == [f"sample.py: {MAX_MODULE_LINES + 1} lines"]


def test_no_module_over_600_lines_and_no_function_over_80() -> None:
    found = [
        finding
        for path in source_files()
        if path.relative_to(PACKAGE).as_posix() not in OWNED_ELSEWHERE
        for finding in too_long(path)
    ]
    assert found == [], "\n".join(found)


def test_every_allowed_file_still_needs_it() -> None:
    # An entry whose file is back in shape must go, or it would hide the file's next growth.
    assert [name for name in sorted(OWNED_ELSEWHERE) if not too_long(PACKAGE / name)] == []
