"""Runtime import cycles between edge's modules, checked against an explicit allow-list.

A cycle makes import order matter: whichever module of the cycle is imported first sees
the others half-initialised, so a name used at import time (a default argument, a base
class, a module-level decoder) can be missing depending on which entry point ran first.
The check reads the sources with :mod:`ast` and imports nothing of edge, so a cycle that
would break importing cannot break the check itself.

What counts as an import: every ``import`` and ``from ... import`` statement anywhere in a
module, including relative ones and those inside functions (a function-level import is
still a runtime edge, only a later one). Only the body of ``if TYPE_CHECKING:`` is left
out, because it never runs. Importing ``a.b.c`` also runs ``a/b/__init__.py``, but those
package edges are not followed: edge's ``__init__`` modules are empty or only gather their
own submodules, and counting them would report every package as a cycle with its members.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = "edge"

Graph = Mapping[str, frozenset[str]]
Cycle = frozenset[str]

# Every cycle known today, each with why it is still there. A new cycle fails this test;
# so does cutting one without deleting its entry here, so the list never goes stale.
# None is left: the last one (the admin API's token store importing the config cascade)
# went when a token's delete began taking its cascade from the caller.
KNOWN_CYCLES: frozenset[Cycle] = frozenset()


def module_files(root: Path, package: str) -> dict[str, Path]:
    """Dotted module name -> source file, for every ``.py`` file under ``root/package``."""
    modules: dict[str, Path] = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def _is_type_checking(test: ast.expr) -> bool:
    """``if TYPE_CHECKING:`` or ``if typing.TYPE_CHECKING:``."""
    if isinstance(test, ast.Name):
        return test.id == "TYPE_CHECKING"
    return isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"


def _runtime_imports(node: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """Import statements under ``node`` that can run, at any depth (functions included)."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.Import | ast.ImportFrom):
            yield child
        elif isinstance(child, ast.If) and _is_type_checking(child.test):
            # the body is for type checkers only; an ``else:`` branch does run
            for stmt in child.orelse:
                if isinstance(stmt, ast.Import | ast.ImportFrom):
                    yield stmt
                else:
                    yield from _runtime_imports(stmt)
        else:
            yield from _runtime_imports(child)


def _base_of_relative(module: str, is_package: bool, level: int) -> str:
    """The package ``from .`` (level 1), ``from ..`` (level 2) ... mean inside ``module``."""
    parts = module.split(".")
    if not is_package:
        parts = parts[:-1]  # "." is the package holding the module
    if level > 1:
        parts = parts[: len(parts) - (level - 1)]
    return ".".join(parts)


def _targets(
    stmt: ast.Import | ast.ImportFrom, module: str, is_package: bool, known: Mapping[str, Path]
) -> Iterator[str]:
    """Modules of ``known`` that running ``stmt`` inside ``module`` imports."""
    if isinstance(stmt, ast.Import):
        for alias in stmt.names:
            if alias.name in known:
                yield alias.name
        return
    base = stmt.module or ""
    if stmt.level:
        package = _base_of_relative(module, is_package, stmt.level)
        base = f"{package}.{base}" if stmt.module else package
    for alias in stmt.names:
        # ``from pkg import sub`` loads the submodule; ``from mod import name`` the module
        submodule = f"{base}.{alias.name}"
        if submodule in known:
            yield submodule
        elif base in known:
            yield base


def import_graph(modules: Mapping[str, Path]) -> dict[str, frozenset[str]]:
    """Module -> the modules of ``modules`` it imports at run time."""
    graph: dict[str, frozenset[str]] = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        is_package = path.name == "__init__.py"
        graph[name] = frozenset(
            target
            for stmt in _runtime_imports(tree)
            for target in _targets(stmt, name, is_package, modules)
            if target != name
        )
    return graph


def strongly_connected(graph: Graph) -> list[frozenset[str]]:
    """Tarjan's algorithm, iterative so a long import chain cannot hit the recursion limit."""
    index: dict[str, int] = {}
    lowlink: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[frozenset[str]] = []
    # the depth-first path: each frame a node and the iterator over its unvisited successors
    work: list[tuple[str, Iterator[str]]] = []

    def visit(node: str) -> None:
        index[node] = lowlink[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        work.append((node, iter(sorted(graph.get(node, ())))))

    for start in sorted(graph):
        if start in index:
            continue
        visit(start)
        while work:
            node, successors = work[-1]
            for succ in successors:
                if succ not in index:
                    visit(succ)
                    break
                if succ in on_stack:
                    lowlink[node] = min(lowlink[node], index[succ])
            else:
                work.pop()
                if work:
                    parent = work[-1][0]
                    lowlink[parent] = min(lowlink[parent], lowlink[node])
                if lowlink[node] == index[node]:
                    members: set[str] = set()
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        members.add(member)
                        if member == node:
                            break
                    components.append(frozenset(members))
    return components


def import_cycles(root: Path, package: str) -> set[Cycle]:
    """Every set of modules that import each other, directly or through the others."""
    graph = import_graph(module_files(root, package))
    return {c for c in strongly_connected(graph) if len(c) > 1}


def test_edge_has_only_the_known_import_cycles() -> None:
    found = import_cycles(ROOT, PACKAGE)
    new = sorted(sorted(c) for c in found - KNOWN_CYCLES)
    gone = sorted(sorted(c) for c in KNOWN_CYCLES - found)
    assert not new, f"new runtime import cycle(s), cut them: {new}"
    assert not gone, f"cycle(s) no longer exist, delete them from KNOWN_CYCLES: {gone}"


# --- the checker itself, on small made-up packages ------------------------------------


def write_package(root: Path, files: Mapping[str, str]) -> None:
    for relative, source in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(source, encoding="utf-8")


@pytest.mark.parametrize(
    ("a_source", "cycles"),
    [
        ("from pkg.b import f\n", {frozenset({"pkg.a", "pkg.b"})}),
        ("import pkg.b\n", {frozenset({"pkg.a", "pkg.b"})}),
        ("from . import b\n", {frozenset({"pkg.a", "pkg.b"})}),
        ("from .b import f\n", {frozenset({"pkg.a", "pkg.b"})}),
        ("from .sub.c import g\n", {frozenset({"pkg.a", "pkg.b", "pkg.sub.c"})}),
        ("def later() -> None:\n    from pkg.b import f\n", {frozenset({"pkg.a", "pkg.b"})}),
        (
            "try:\n    import pkg.b\nexcept ImportError:\n    pass\n",
            {frozenset({"pkg.a", "pkg.b"})},
        ),
        ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.b import f\n", set()),
        ("import typing\nif typing.TYPE_CHECKING:\n    import pkg.b\n", set()),
        (
            "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    pass\nelse:\n"
            "    import pkg.b\n",
            {frozenset({"pkg.a", "pkg.b"})},
        ),
        ("import os\nimport json\n", set()),
    ],
    ids=[
        "from-absolute",
        "import-absolute",
        "from-dot-import-module",
        "from-dot-module",
        "relative-into-subpackage",
        "function-level",
        "inside-try",
        "type-checking-skipped",
        "typing-attribute-skipped",
        "type-checking-else-counts",
        "outside-package-ignored",
    ],
)
def test_cycle_finder_sees_each_kind_of_import(
    tmp_path: Path, a_source: str, cycles: set[Cycle]
) -> None:
    write_package(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/a.py": a_source,
            "pkg/b.py": "from pkg.a import x\n\ndef f() -> None: ...\n",
            "pkg/sub/__init__.py": "",
            "pkg/sub/c.py": "from ..b import f\n",
        },
    )
    # pkg.b imports pkg.a, so a cycle exists exactly when pkg.a reaches pkg.b
    assert import_cycles(tmp_path, "pkg") == cycles


def test_cycle_finder_separates_independent_cycles(tmp_path: Path) -> None:
    write_package(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/a.py": "import pkg.b\n",
            "pkg/b.py": "import pkg.c\n",
            "pkg/c.py": "import pkg.a\nimport pkg.d\n",
            "pkg/d.py": "import pkg.e\n",
            "pkg/e.py": "from . import d\n",
            "pkg/leaf.py": "import pkg.a\nimport pkg.e\n",
        },
    )
    assert import_cycles(tmp_path, "pkg") == {
        frozenset({"pkg.a", "pkg.b", "pkg.c"}),
        frozenset({"pkg.d", "pkg.e"}),
    }
