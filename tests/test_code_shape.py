"""The shape the code keeps: short functions, and an audit recipe that reads in one screen."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "diffmia"
MAX_FUNCTION_LINES = 80
MAX_RECIPE_LINES = 60


def function_lengths(root: Path = SRC) -> dict[str, int]:
    """Lines of every function and method (signature, docstring and body) by ``path:name``."""
    lengths = {}
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lengths[f"{path.relative_to(root)}:{node.name}"] = node.end_lineno - node.lineno + 1  # type: ignore[operator]
    return lengths


def test_no_function_is_longer_than_a_screen():
    lengths = function_lengths()
    long = {name: n for name, n in lengths.items() if n > MAX_FUNCTION_LINES}
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines: {long}"
    assert len(lengths) > 300  # the walk found the package


def test_the_audit_recipe_reads_in_one_screen():
    assert function_lengths()["audit.py:run_audit"] <= MAX_RECIPE_LINES


def test_the_measure_counts_signature_docstring_and_body(tmp_path):
    (tmp_path / "m.py").write_text(
        'def f(\n    a,\n):\n    """doc"""\n    return a\n\n\nclass C:\n    def g(self):\n        pass\n'
    )
    assert function_lengths(tmp_path) == {"m.py:f": 5, "m.py:g": 2}
