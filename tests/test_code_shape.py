"""The shape the code keeps: short functions, and an audit recipe that reads in one screen."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "diffmia"
MAX_FUNCTION_LINES = 80
MAX_AUDIT_FUNCTION_LINES = 60  # the audit's stages read like the recipe that calls them
MAX_AUDIT_MODULE_LINES = 400
MAX_RECIPE_LINES = 60
MARKERS = ("fmt: skip", "fmt: off")  # the formatter formats everything, or it is not the formatter


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


def test_the_audit_packages_functions_and_modules_are_short():
    long = {
        name: n for name, n in function_lengths().items() if name.startswith("audit/") and n > MAX_AUDIT_FUNCTION_LINES
    }
    assert not long, f"audit functions over {MAX_AUDIT_FUNCTION_LINES} lines: {long}"
    modules = {p.name: len(p.read_text(encoding="utf-8").splitlines()) for p in (SRC / "audit").glob("*.py")}
    assert len(modules) >= 6 and not {m: n for m, n in modules.items() if n > MAX_AUDIT_MODULE_LINES}, modules


def test_no_formatter_marker_anywhere():
    root = SRC.parents[1]
    found = [
        f"{path.relative_to(root)}:{number}"
        for folder in ("src", "tests", "benchmarks")
        for path in sorted((root / folder).rglob("*.py"))
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if any(f"# {marker}" in line for marker in MARKERS)
    ]
    assert not found, f"formatter markers: {found}"


def test_the_audit_recipe_reads_in_one_screen():
    assert function_lengths()["audit/__init__.py:run_audit"] <= MAX_RECIPE_LINES


def test_the_measure_counts_signature_docstring_and_body(tmp_path):
    (tmp_path / "m.py").write_text(
        'def f(\n    a,\n):\n    """doc"""\n    return a\n\n\nclass C:\n    def g(self):\n        pass\n'
    )
    assert function_lengths(tmp_path) == {"m.py:f": 5, "m.py:g": 2}


def _prints(tree: ast.AST) -> list[int]:
    """The lines of ``print(...)`` calls outside a command line: an ``if __name__ == "__main__":`` block or the
    ``main`` function it calls."""
    found = []
    for node in ast.walk(tree):
        if (isinstance(node, ast.If) and "__main__" in ast.unparse(node.test)) or (
            isinstance(node, ast.FunctionDef) and node.name == "main"
        ):
            node.body = []  # a module's own command line may print
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "print":
            found.append(node.lineno)
    return found


def test_library_code_logs_and_never_prints():
    offenders = {
        str(path.relative_to(SRC)): lines
        for path in sorted(SRC.rglob("*.py"))
        if path.name != "cli.py" and (lines := _prints(ast.parse(path.read_text(encoding="utf-8"))))
    }
    assert not offenders, f"print() in library code (log through logging.getLogger(__name__)): {offenders}"
    assert _prints(ast.parse("print(1)\nif __name__ == '__main__':\n    print(2)\ndef main():\n    print(3)\n")) == [1]
