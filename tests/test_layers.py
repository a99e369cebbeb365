"""The layers show in the imports: no import cycle among the project's modules, and the domain
(``common/``) never reaches for Ray or the actors that wrap it."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def modules() -> dict[str, Path]:
    out = {}
    for pkg in ("common", "actors"):
        for p in (ROOT / pkg).rglob("*.py"):
            name = ".".join(p.relative_to(ROOT).with_suffix("").parts)
            out[name.removesuffix(".__init__")] = p
    return out


def imports_of(path: Path, known: dict[str, Path]) -> set[str]:
    """Every project module ``path`` imports, at module level or inside a function (a lazy
    import is still a dependency), and every top-level package it imports."""
    deps: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            deps.add(node.module.split(".")[0])
            for cand in (node.module, *(f"{node.module}.{a.name}" for a in node.names)):
                if cand in known:
                    deps.add(cand)
        elif isinstance(node, ast.Import):
            for a in node.names:
                deps.add(a.name.split(".")[0])
                if a.name in known:
                    deps.add(a.name)
    return deps


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
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
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycle():
    known = modules()
    graph = {name: {d for d in imports_of(p, known) if d in known and d != name}
             for name, p in known.items()}
    assert sum(len(v) for v in graph.values()) > 100  # the scan sees the real imports
    assert cycles(graph) == []


def test_a_cycle_is_found():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_the_domain_never_imports_ray_or_the_actors():
    known = modules()
    bad = {name: sorted(imports_of(p, known) & {"ray", "actors"})
           for name, p in known.items() if name.startswith("common")}
    assert {k: v for k, v in bad.items() if v} == {}
