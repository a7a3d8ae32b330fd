"""The import graph of every aot package: no circles, and aot-core's contract apart from
its application.

Every import counts, at module level or inside a function: a function-level import that
closes a circle still means two modules each need the other (the ``cli`` <-> ``bench`` <->
``bench_worker`` circle was one). The graph is read from the sources with ``ast``, so the
test sees what the code says, not what one run happened to import, and it needs none of
the other packages installed.
"""

from __future__ import annotations

import ast
from pathlib import Path

import aot_core

CORE = Path(aot_core.__file__).parent
PACKAGES = CORE.parents[2]  # packages/aot-core/src/aot_core -> packages/
# Every importable package of the monorepo, by its source directory.
SOURCES = {
    "aot_core": CORE,
    "aot_vllm": PACKAGES / "aot-vllm" / "src" / "aot_vllm",
    "aot_legacy": PACKAGES / "aot-legacy" / "src" / "aot_legacy",
    "aot_compat": PACKAGES / "aot-compat" / "src" / "aot_compat",
    "engines": PACKAGES / "aot-compat" / "src" / "engines",
}
# aot-core's application: the `aot` command and what only it uses. Everything else at
# aot_core's top level (and artifacts/) is the contract backends and callers build on.
APPLICATION = ("cli", "bench", "models", "evaluation", "tune", "usage", "serve", "__main__")


def _module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, modules: set[str]) -> set[str]:
    """The modules of ``modules`` that ``path`` imports (``from X import y`` counts X.y
    when that is a module, else X)."""
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


def import_graph(*names: str) -> dict[str, set[str]]:
    """Module -> the modules of the named packages it imports (a package's __init__ is not
    counted as importing its submodules, so re-exports do not make every submodule a circle)."""
    files = {
        _module_name(p, SOURCES[n]): p
        for n in names or ("aot_core",)
        for p in SOURCES[n].rglob("*.py")
    }
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


def is_application(module: str) -> bool:
    return module.split(".")[1:2] != [] and module.split(".")[1] in APPLICATION


def contract_violations(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """aot-core contract modules -> the application modules they import."""
    out = {}
    for name, deps in graph.items():
        if name.startswith("aot_core") and not is_application(name):
            bad = {d for d in deps if d.startswith("aot_core.") and is_application(d)}
            if bad:
                out[name] = bad
    return out


def test_every_package_has_no_import_cycle() -> None:
    for name, source in SOURCES.items():
        assert source.is_dir(), f"{source} is missing: update SOURCES"
        graph = import_graph(name)
        cycle = find_cycle(graph)
        assert cycle is None, f"{name}: import circle: " + " -> ".join(cycle or [])
    graph = import_graph(*SOURCES)
    assert "aot_core.cli.app" in graph and "aot_core.cli.workflow" in graph["aot_core.bench.worker"]
    cycle = find_cycle(graph)
    assert cycle is None, "import circle across packages: " + " -> ".join(cycle or [])


def test_the_cycle_finder_finds_a_planted_circle() -> None:
    graph = import_graph()
    graph["aot_core.cli.workflow"] = {*graph["aot_core.cli.workflow"], "aot_core.cli.app"}
    cycle = find_cycle(graph)
    assert cycle is not None and "aot_core.cli.app" in cycle and "aot_core.cli.workflow" in cycle


def test_the_contract_never_imports_the_application() -> None:
    graph = import_graph()
    contract = sorted(n for n in graph if not is_application(n))
    # what the package's __init__ re-exports is contract, and so is what backends build on
    for name in ("aot_core", "aot_core.spec", "aot_core.registry", "aot_core.artifacts.store"):
        assert name in contract, name
    assert contract_violations(graph) == {}


def test_a_planted_contract_to_application_import_is_found() -> None:
    graph = import_graph()
    graph["aot_core.spec"] = {*graph["aot_core.spec"], "aot_core.bench.run"}
    assert contract_violations(graph) == {"aot_core.spec": {"aot_core.bench.run"}}
