"""aot-core's modules import each other without a circle.

Every import counts, at module level or inside a function: a function-level import that
closes a circle still means two modules each need the other (the ``cli`` <-> ``bench`` <->
``bench_worker`` circle was one). The graph is read from the sources with ``ast``, so the
test sees what the code says, not what one run happened to import.
"""

from __future__ import annotations

import ast
from pathlib import Path

import aot_core

PACKAGE = Path(aot_core.__file__).parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, modules: set[str]) -> set[str]:
    """The aot_core modules ``path`` imports (``from X import y`` counts X.y when that is a
    module, else X)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name in modules)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                target = f"{node.module}.{alias.name}"
                if target in modules:
                    out.add(target)
                elif node.module in modules:
                    out.add(node.module)
    return out


def import_graph() -> dict[str, set[str]]:
    """Module -> the aot_core modules it imports (a package's __init__ is not counted as
    importing its submodules, so re-exports do not make every submodule a circle)."""
    files = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    modules = set(files)
    graph = {name: _imports(path, modules) - {name} for name, path in files.items()}
    for name, deps in graph.items():
        # importing a submodule runs its package's __init__ first; that is not a circle
        deps.difference_update(p for p in modules if name.startswith(p + "."))
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle, as the list of modules around it, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                return [*path[path.index(dep) :], dep]
            if dep not in state and (found := visit(dep)) is not None:
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)) is not None:
            return found
    return None


def test_aot_core_has_no_import_cycle() -> None:
    graph = import_graph()
    assert "aot_core.cli" in graph and "aot_core.workflow" in graph["aot_core.bench_worker"]
    cycle = find_cycle(graph)
    assert cycle is None, "import circle: " + " -> ".join(cycle or [])


def test_the_cycle_finder_finds_a_planted_circle() -> None:
    graph = import_graph()
    graph["aot_core.workflow"] = {*graph["aot_core.workflow"], "aot_core.cli"}
    cycle = find_cycle(graph)
    assert cycle is not None and "aot_core.cli" in cycle and "aot_core.workflow" in cycle
