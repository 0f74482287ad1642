"""Layering: which diffmia modules may import which, read from the source with ``ast`` (nothing is imported).

The ground floor (errors, files, images, ...) stands on nothing else, so anything may use it; only the upper
floor (audit, cli, ...) reaches into the lab, so product code never drags training code in; and no cycle hides
anywhere, at module level or inside a function, because a cycle that works today breaks on the next reordering.
A function-local import is how a module defers a heavy dependency (torch, ...): where the imported module is not
heavy, it only hides a dependency, so it must sit at the top of the file.

Edges: ``from diffmia.x import y`` is an edge to ``diffmia.x.y`` if that is a module, else to ``diffmia.x``;
importing ``diffmia.a.b`` also initialises the package ``diffmia.a`` (unless the importer is inside it already);
imports under ``if TYPE_CHECKING:`` never run and are left out.
"""

from __future__ import annotations

import ast
import itertools
from collections import deque
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
ROOT = "diffmia"
HEAVY = frozenset(
    {
        "torch",
        "diffusers",
        "transformers",
        "peft",
        "accelerate",
        "opacus",
        "ray",
        "matplotlib",
        "pyarrow",
        "scipy",
        "sklearn",
        "httpx",
        "uvicorn",
        "jinja2",
    }
)
GROUND = (
    "diffmia.errors",
    "diffmia.registry",
    "diffmia.names",
    "diffmia.files",
    "diffmia.images",
    "diffmia.versions",
    "diffmia.assets",
    "diffmia.progress",
    "diffmia.records",
    "diffmia.families",
)
GROUND_MAY_IMPORT = frozenset({"diffmia.errors"})
# names, not modules: some of the upper floor is still being written
UPPER = frozenset(
    {
        "diffmia.audit",
        "diffmia.audit.plan",
        "diffmia.audit.models",
        "diffmia.audit.prompts",
        "diffmia.audit.quality",
        "diffmia.cli",
        "diffmia.study",
        "diffmia.serve",
    }
)
LAB = "diffmia.lab"


@dataclass(frozen=True)
class Edge:
    """``source`` imports ``target`` at ``path:line``; ``local``: inside a function, so only when it runs."""

    source: str
    target: str
    path: str
    line: int
    local: bool
    implicit: bool = False  # the package ``target`` that importing one of its modules initialises first

    def __str__(self) -> str:
        how = ("package of an import" if self.implicit else "import") + (", in a function" if self.local else "")
        return f"{self.path}:{self.line}: {self.source} -> {self.target} ({how})"


@dataclass
class Graph:
    modules: dict[str, str]  # module name -> its file, relative to the source root
    edges: list[Edge] = field(default_factory=list)
    external: dict[str, set[str]] = field(default_factory=dict)  # module -> top-level packages it imports on load

    def out(self, name: str, *, local: bool = True) -> Iterator[Edge]:
        return (e for e in self.edges if e.source == name and (local or not e.local))


# --- reading the source ------------------------------------------------------------------------------------


def module_name(path: str) -> str:
    """``diffmia/lab/__init__.py`` -> ``diffmia.lab``; ``diffmia/lab/data.py`` -> ``diffmia.lab.data``."""
    parts = path.removesuffix(".py").split("/")
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


class _Imports(ast.NodeVisitor):
    """Every import that can run: (candidate names, longest first; line; inside a function)."""

    def __init__(self, package: str) -> None:
        self.package = package
        self.found: list[tuple[tuple[str, ...], int, bool]] = []
        self.depth = 0

    def visit_FunctionDef(self, node: ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda) -> None:
        self.depth += 1
        self.generic_visit(node)
        self.depth -= 1

    visit_AsyncFunctionDef = visit_FunctionDef
    visit_Lambda = visit_FunctionDef

    def visit_If(self, node: ast.If) -> None:
        if not _is_type_checking(node.test):
            self.generic_visit(node)
            return
        for child in node.orelse:  # the body never runs; an ``else`` does
            self.visit(child)

    def visit_Import(self, node: ast.Import) -> None:
        self.found += [((alias.name,), node.lineno, self.depth > 0) for alias in node.names]

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        base = node.module or ""
        if node.level:
            anchor = self.package.split(".")[: len(self.package.split(".")) - node.level + 1]
            base = ".".join([*anchor, *([node.module] if node.module else [])])
        for alias in node.names:
            names = (base,) if alias.name == "*" else (f"{base}.{alias.name}", base)
            self.found.append((names, node.lineno, self.depth > 0))


def build_graph(files: Mapping[str, str], root: str = ROOT) -> Graph:
    """The import graph of the modules in ``files`` (path relative to the source root -> source text)."""
    graph = Graph({module_name(p): p for p in files})
    for path, text in files.items():
        name = module_name(path)
        package = name if path.endswith("__init__.py") else name.rpartition(".")[0]
        visitor = _Imports(package)
        visitor.visit(ast.parse(text, filename=path))
        graph.external[name] = set()
        for names, line, local in visitor.found:
            if names[-1].split(".")[0] != root:
                if not local:
                    graph.external[name].add(names[-1].split(".")[0])
                continue
            target = next((n for n in names if n in graph.modules), None)
            if target is None or target == name:  # a module still to be written, or itself
                continue
            graph.edges.append(Edge(name, target, path, line, local))
            graph.edges += [Edge(name, p, path, line, local, implicit=True) for p in _packages(target, name, root)]
    return graph


def _packages(target: str, importer: str, root: str) -> list[str]:
    """The packages importing ``target`` initialises that ``importer`` has not: those above neither of them."""
    parts = target.split(".")
    above = [".".join(parts[:i]) for i in range(2, len(parts))]
    return [p for p in above if p != root and p != importer and not importer.startswith(p + ".")]


def read_source(src: Path = SRC, root: str = ROOT) -> dict[str, str]:
    return {p.relative_to(src).as_posix(): p.read_text(encoding="utf-8") for p in sorted((src / root).rglob("*.py"))}


# --- questions asked of the graph --------------------------------------------------------------------------


def find_cycles(graph: Graph) -> list[list[Edge]]:
    """Cycles covering every edge that lies on one: for each such edge u -> v, the shortest way back v ~> u."""
    first: dict[tuple[str, str], Edge] = {}
    for edge in graph.edges:
        first.setdefault((edge.source, edge.target), edge)
    nexts: dict[str, list[str]] = {}
    for source, target in first:
        nexts.setdefault(source, []).append(target)
    cycles: dict[tuple[str, ...], list[Edge]] = {}
    for u, v in first:
        back = _shortest_path(nexts, v, u)
        if back is None:
            continue
        nodes = [u, *back]  # u, v, ..., u
        ring = nodes[:-1]
        start = ring.index(min(ring))
        key = tuple(ring[start:] + ring[:start])
        cycles.setdefault(key, [first[pair] for pair in itertools.pairwise(nodes)])
    return [cycles[k] for k in sorted(cycles)]


def _shortest_path(nexts: Mapping[str, list[str]], start: str, goal: str) -> list[str] | None:
    came: dict[str, str | None] = {start: None}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        if node == goal:
            path = [node]
            while (prev := came[path[-1]]) is not None:
                path.append(prev)
            return path[::-1]
        for nxt in nexts.get(node, []):
            if nxt not in came:
                came[nxt] = node
                queue.append(nxt)
    return None


def heavy_reason(graph: Graph, name: str) -> str | None:
    """How importing ``name`` loads a heavy package (``a -> b -> torch``), or None when it loads none."""
    parts = name.split(".")
    starts = [n for n in (".".join(parts[:i]) for i in range(1, len(parts) + 1)) if n in graph.modules]
    came: dict[str, str | None] = dict.fromkeys(starts)
    queue = deque(starts)
    while queue:
        node = queue.popleft()
        heavy = sorted(graph.external.get(node, set()) & HEAVY)
        if heavy:
            chain = [node]
            while (prev := came[chain[-1]]) is not None:
                chain.append(prev)
            return " -> ".join([*chain[::-1], heavy[0]])
        for edge in graph.out(node, local=False):
            if edge.target not in came:
                came[edge.target] = node
                queue.append(edge.target)
    return None


def needless_local_imports(graph: Graph) -> list[Edge]:
    return [e for e in graph.edges if e.local and not e.implicit and heavy_reason(graph, e.target) is None]


def _listing(lines: list[str]) -> str:
    """One offender a line, each once (``from m import a, b`` is one import of ``m``)."""
    return "\n  " + "\n  ".join(dict.fromkeys(lines))


# --- diffmia's own layering --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def graph() -> Graph:
    return build_graph(read_source())


def test_no_import_cycles(graph):
    cycles = find_cycles(graph)
    shown = [" => ".join(str(e) for e in cycle) for cycle in cycles]
    assert not cycles, f"{len(cycles)} import cycle(s), module-level or inside functions:{_listing(shown)}"


def test_nothing_imports_the_root_package(graph):
    offenders = [str(e) for e in graph.edges if e.target == ROOT]
    assert not offenders, (
        "import from the defining module (diffmia.versions for __version__), not from the package 'diffmia':"
        + _listing(offenders)
    )


def test_the_ground_floor_stands_on_errors_alone(graph):
    missing = [name for name in GROUND if name not in graph.modules]
    assert not missing, f"ground-floor modules not found: {', '.join(missing)}"
    offenders = [str(e) for name in GROUND for e in graph.out(name) if e.target not in GROUND_MAY_IMPORT]
    assert not offenders, f"the ground floor may import only {', '.join(GROUND_MAY_IMPORT)}:{_listing(offenders)}"


def test_only_the_upper_floor_reaches_the_lab(graph):
    def in_lab(name: str) -> bool:
        return name == LAB or name.startswith(LAB + ".")

    offenders = [str(e) for e in graph.edges if in_lab(e.target) and not in_lab(e.source) and e.source not in UPPER]
    assert not offenders, (
        f"only {', '.join(sorted(UPPER))} may import {LAB}; take shipped files from diffmia.assets:"
        + _listing(offenders)
    )


def test_function_local_imports_only_defer_heavy_modules(graph):
    offenders = [str(e) for e in needless_local_imports(graph)]
    assert not offenders, (
        f"these modules load none of {', '.join(sorted(HEAVY))}: import them at the top of the file:"
        + _listing(offenders)
    )


# --- the checks themselves, on toy packages: none of the tests above may pass vacuously ----------------------


def test_a_planted_three_cycle_is_found_through_functions_but_not_through_type_checking():
    files = {
        "toy/__init__.py": "",
        "toy/a.py": "from toy import b\n",
        "toy/b.py": "def f():\n    import toy.c\n",
        "toy/c.py": "from typing import TYPE_CHECKING\n\nif TYPE_CHECKING:\n    from toy.a import x\n",
    }
    assert find_cycles(build_graph(files, root="toy")) == []
    files["toy/c.py"] = "from toy.a import x\n"
    (cycle,) = find_cycles(build_graph(files, root="toy"))
    assert [(e.source, e.target, e.local) for e in cycle] == [
        ("toy.a", "toy.b", False),
        ("toy.b", "toy.c", True),
        ("toy.c", "toy.a", False),
    ]


def test_importing_the_own_package_init_and_relative_imports_count():
    files = {
        "toy/__init__.py": "from toy.sub.m import y\n",
        "toy/sub/__init__.py": "",
        "toy/sub/m.py": "def f():\n    from .. import z\n",
        "toy/sub/n.py": "from . import m\n",
    }
    graph = build_graph(files, root="toy")
    edges = {(e.source, e.target, e.implicit) for e in graph.edges}
    assert ("toy", "toy.sub", True) in edges and ("toy.sub.n", "toy.sub.m", False) in edges
    assert ("toy.sub.n", "toy.sub", True) not in edges  # its own package is initialised before it runs
    (cycle,) = find_cycles(graph)
    assert [(e.source, e.target) for e in cycle] == [("toy", "toy.sub.m"), ("toy.sub.m", "toy")]


def test_a_local_import_is_allowed_only_of_a_module_that_loads_a_heavy_package():
    files = {
        "toy/__init__.py": "",
        "toy/light.py": "import json\n\ndef f():\n    import torch\n",
        "toy/heavy.py": "from typing import TYPE_CHECKING\n\nimport toy.light\nfrom toy.deep import g\n",
        "toy/deep/__init__.py": "import sklearn\n",
        "toy/deep/leaf.py": "",
        "toy/user.py": "def f():\n    import toy.light\n    import toy.heavy\n    from toy.deep import leaf\n",
    }
    graph = build_graph(files, root="toy")
    assert heavy_reason(graph, "toy.heavy") == "toy.heavy -> toy.deep -> sklearn"
    assert heavy_reason(graph, "toy.deep.leaf") == "toy.deep -> sklearn"  # its package is initialised first
    assert heavy_reason(graph, "toy.light") is None  # torch only when f runs
    assert [(e.source, e.target) for e in needless_local_imports(graph)] == [("toy.user", "toy.light")]
