"""The layering of fastlm's Python package: no import cycle among its modules,
counting imports inside functions (a cycle hidden in a function works until the
first refactoring imports it at the top), and no module grown past a size one
reader can hold."""
import ast
import os
from typing import Dict, List, Set

import pytest

PKG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "python", "fastlm")
MAX_LINES = 650


def _modules(compiled: bool = False) -> Dict[str, str]:
    """Dotted module name -> path, for every .py file of the package (and with
    ``compiled`` its extension module ``fastlm._C``, which imports nothing of it,
    whether or not a build has put it in the source tree yet)."""
    mods = {"fastlm._C": os.path.join(PKG_DIR, "_C")} if compiled else {}
    for root, _, files in os.walk(PKG_DIR):
        for f in files:
            if compiled and f.endswith((".so", ".pyd")):
                f = f.split(".")[0] + ".py"
            if f.endswith(".py"):
                rel = os.path.relpath(os.path.join(root, f), os.path.dirname(PKG_DIR))[:-3]
                parts = rel.split(os.sep)
                if parts[-1] == "__init__":
                    parts.pop()
                mods[".".join(parts)] = os.path.join(root, f)
    return mods


def _imports(name: str, path: str, mods: Dict[str, str]) -> Set[str]:
    """The package modules ``name`` imports anywhere in its body (module level,
    functions, methods), as dotted names. ``from . import x`` counts as an import
    of the submodule x when there is one, otherwise of the package itself."""
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), filename=path)
    package = name if path.endswith("__init__.py") else name.rpartition(".")[0]
    found: Set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                base_name = ".".join(base + ([node.module] if node.module else []))
            else:
                base_name = node.module or ""
            targets = [f"{base_name}.{a.name}" if f"{base_name}.{a.name}" in mods else base_name
                       for a in node.names]
        else:
            continue
        for t in targets:
            # "import fastlm.x.y" imports the deepest package module named.
            while t and t not in mods:
                t = t.rpartition(".")[0]
            if t and t != name:
                found.add(t)
    return found


def _cycles(graph: Dict[str, Set[str]]) -> List[List[str]]:
    """One cycle per strongly connected component of more than one module
    (Tarjan's algorithm), each as a path that starts and ends at the same module."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on_stack: Set[str] = set()
    comps: List[List[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                comps.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)

    cycles = []
    for comp in comps:  # a shortest path back to the component's first module
        start, members = comp[0], set(comp)
        paths = {start: [start]}
        frontier = [start]
        cycle = None
        while frontier and cycle is None:
            nxt = []
            for v in frontier:
                for w in sorted(graph[v] & members):
                    if w == start:
                        cycle = paths[v] + [start]
                        break
                    if w not in paths:
                        paths[w] = paths[v] + [w]
                        nxt.append(w)
                if cycle:
                    break
            frontier = nxt
        cycles.append(cycle or comp)
    return cycles


def _graph() -> Dict[str, Set[str]]:
    mods, every = _modules(), _modules(compiled=True)
    return {m: _imports(m, p, every) & set(mods) for m, p in mods.items()}


def test_the_graph_sees_function_level_imports():
    g = _graph()
    assert "fastlm" in g and "fastlm.lm" in g and "fastlm.cli" in g
    assert "fastlm.lm" in g["fastlm"]  # __init__'s module-level import
    assert any(g[m] for m in g if m != "fastlm")


def test_cycle_finder_reports_a_cycle():
    g = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(g) == [["a", "b", "c", "a"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle():
    cycles = _cycles(_graph())
    assert not cycles, "import cycles among fastlm's modules: " + "; ".join(" -> ".join(c) for c in cycles)


@pytest.mark.parametrize("name,path", sorted(_modules().items()))
def test_module_is_short(name, path):
    with open(path, encoding="utf-8") as f:
        n = sum(1 for _ in f)
    assert n <= MAX_LINES, f"{name} has {n} lines (over {MAX_LINES}); split it by responsibility"
