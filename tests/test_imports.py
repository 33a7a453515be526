"""sdrun (stage0) and stage1 import each other in no circle.

stage0 looks its stage1 up (sdrun.specbuild, sdrun.units, sdrun.run...), and the stage1s use
sdrun's library (sdrun.spec, sdrun.pod, sdrun.linux...): a module of each that reaches the
other and back is a circle, which only import order keeps working (build_spec once imported
stage1.interface, which imports sdrun.pod, which imports sdrun.spec). Every import counts, a
function's own as much as a module's, all but those under TYPE_CHECKING, which never run.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

from tests.conftest import PROJECT

PACKAGES = ("sdrun", "stage1")


def modules(root: Path) -> dict[str, Path]:
    """The modules of PACKAGES under root, by dotted name (a package by its own name)."""
    found = {}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            name = ".".join(path.relative_to(root).with_suffix("").parts).removesuffix(".__init__")
            found[name] = path
    return found


def _run_time_nodes(node: ast.AST) -> Iterator[ast.AST]:
    """The nodes below node, but those of `if TYPE_CHECKING:` blocks (their else branches are kept)."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
            for branch in child.orelse:
                yield branch
                yield from _run_time_nodes(branch)
            continue
        yield child
        yield from _run_time_nodes(child)


def imported(path: Path, known: dict[str, Path]) -> set[str]:
    """The modules of known that the module at path imports (`from P import M` imports P.M if M is
    a module, P otherwise)."""

    def module_of(name: str) -> str | None:
        while name and name not in known:
            name = name.rpartition(".")[0]
        return name or None

    names: list[str] = []
    for node in _run_time_nodes(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names += [f"{node.module}.{alias.name}" for alias in node.names]
    return {module for module in map(module_of, names) if module is not None}


def import_circles(root: Path) -> list[set[str]]:
    """The strongly connected components of more than one module in the import graph (Tarjan's)."""
    known = modules(root)
    graph = {name: imported(path, known) - {name} for name, path in known.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    circles: list[set[str]] = []

    def visit(name: str) -> None:
        index[name] = low[name] = len(index)
        stack.append(name)
        for other in graph[name]:
            if other not in index:
                visit(other)
                low[name] = min(low[name], low[other])
            elif other in stack:
                low[name] = min(low[name], index[other])
        if low[name] == index[name]:
            component: set[str] = set()
            while not component or name not in component:
                component.add(stack.pop())
            if len(component) > 1:
                circles.append(component)

    for name in graph:
        if name not in index:
            visit(name)
    return circles


def across_packages(circles: list[set[str]]) -> list[set[str]]:
    return [circle for circle in circles if len({module.partition(".")[0] for module in circle}) > 1]


def test_sdrun_and_stage1_import_each_other_in_no_circle() -> None:
    assert across_packages(import_circles(PROJECT)) == []


def test_a_circle_through_a_function_s_import_is_found(tmp_path: Path) -> None:
    """The check above can fail: a circle as build_spec's was (a function's import closing it) is
    found, and one only TYPE_CHECKING closes is not."""
    files = {
        "sdrun/__init__.py": "",
        "sdrun/spec.py": "def build():\n    from stage1.interface import named\n",
        "sdrun/pod.py": "from sdrun import spec\n",
        "sdrun/paths.py": "",
        "stage1/__init__.py": "",
        "stage1/interface.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from sdrun import paths\n"
        "def entry():\n    from sdrun.pod import load\n",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text(text)
    assert across_packages(import_circles(tmp_path)) == [{"sdrun.spec", "sdrun.pod", "stage1.interface"}]
    (tmp_path / "sdrun/spec.py").write_text("")
    assert import_circles(tmp_path) == []
