"""The import graph inside each package has no cycle (imports under TYPE_CHECKING and
inside functions count too: a cycle hidden there is still two modules that need each other).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = sorted(p for p in (ROOT / "packages").glob("*/src/*") if (p / "__init__.py").exists())


def module_edges(package: Path) -> dict[str, set[str]]:
    """Map each module of ``package`` to the modules of the same package it imports."""
    name = package.name
    modules = {p.stem for p in package.glob("*.py")}
    edges: dict[str, set[str]] = {}
    for path in package.glob("*.py"):
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.ImportFrom) and node.module:
                if node.module == name:
                    targets = [alias.name for alias in node.names]
                elif node.module.startswith(name + "."):
                    targets = [node.module.split(".")[1]]
            elif isinstance(node, ast.Import):
                targets = [
                    alias.name.split(".")[1]
                    for alias in node.names
                    if alias.name.startswith(name + ".")
                ]
            found.update(t for t in targets if t in modules and t != path.stem)
        edges[path.stem] = found
    return edges


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """Return one cycle as a list of modules (first == last), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_find_cycle_finds_one_and_only_one() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


@pytest.mark.parametrize("package", PACKAGES, ids=lambda p: p.name)
def test_no_import_cycle_inside_the_package(package: Path) -> None:
    edges = module_edges(package)
    assert edges, f"no modules found in {package}"
    cycle = find_cycle(edges)
    assert cycle is None, f"{package.name}: import cycle " + " -> ".join(cycle or [])
