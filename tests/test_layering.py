"""fpn_lab's modules import in one direction: no circle of imports between its modules, counting the
imports made inside functions too (a package's ``__init__`` handing out its own submodules excepted),
and the adapter to mmdet takes nothing from the packages built on it."""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import ROOT


def import_graph(package: Path) -> dict[str, set[str]]:
    """``{module: modules of the package it imports}``, from every ``import`` statement of each file."""
    files = {}
    for f in package.rglob("*.py"):
        parts = f.relative_to(package.parent).with_suffix("").parts
        files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f

    def resolve(name: str) -> str:
        while name and name not in files:
            name = name.rsplit(".", 1)[0] if "." in name else ""
        return name

    graph: dict[str, set[str]] = {m: set() for m in files}
    for module, f in files.items():
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            for target in filter(None, map(resolve, names)):
                own_submodule = f.name == "__init__.py" and target.startswith(module + ".")
                if target != module and not own_submodule:
                    graph[module].add(target)
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index, low, stack, on, found, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_module_imports_come_back_in_a_circle():
    assert circles(import_graph(ROOT / "fpn_lab")) == []


def test_the_finder_sees_a_circle_made_of_imports_inside_functions(tmp_path):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from pkg.b import f\n")
    (pkg / "b.py").write_text("def f():\n    from pkg import a\n    return a\n")
    (pkg / "c.py").write_text("import pkg.a\n")
    assert circles(import_graph(pkg)) == [["pkg.a", "pkg.b"]]


def test_the_mmdet_adapter_imports_nothing_built_on_it():
    graph = import_graph(ROOT / "fpn_lab")
    above = ("fpn_lab.models", "fpn_lab.learner", "fpn_lab.runner", "fpn_lab.icevision", "fpn_lab.viz", "fpn_lab.all")
    up = {m: sorted(t for t in targets if t.startswith(above))
          for m, targets in graph.items() if m.startswith("fpn_lab.mmdet_adapter")}
    assert {m: t for m, t in up.items() if t} == {}
