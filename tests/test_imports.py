"""The import graph of passenger_lite: no cycle in proxy/ or spawners/, and the proxy never imports the
manager (manager.config aside). Every import counts: top-level, TYPE_CHECKING and function-level."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("proxy", "manager", "spawners")


def _module(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    return ".".join(rel.parts)


def _graph() -> dict[str, set[str]]:
    """module -> the project modules it imports (as 'proxy.front', 'manager.config'...)."""
    modules = {_module(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for mod, path in modules.items():
        pkg = mod.rsplit(".", 1)[0]  # a module's package (that of proxy/__init__.py is proxy)
        out: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = pkg.split(".")
                    base = base[:len(base) - (node.level - 1)]
                    stem = ".".join(base + ([node.module] if node.module else []))
                else:
                    stem = node.module or ""
                names = [stem] + [f"{stem}.{a.name}" for a in node.names]
            for n in names:
                n = n.removeprefix("passenger_lite.")
                while n and n not in modules:
                    n = n.rpartition(".")[0]
                if n and n != mod:
                    out.add(n)
        graph[mod] = out
    return graph


def _cycles(graph: dict[str, set[str]], prefix: str) -> list[list[str]]:
    """The strongly connected groups (more than one module) among modules under `prefix` (Tarjan)."""
    nodes = [m for m in graph if m.startswith(prefix)]
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    groups: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if not w.startswith(prefix):
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for v in nodes:
        if v not in index:
            visit(v)
    return groups


def test_the_graph_sees_every_kind_of_import():
    g = _graph()
    assert "proxy.forward" in g["proxy.front"]          # top level
    assert "manager.config" in g["proxy.server"]         # absolute
    assert "proxy.sockets" in g["manager.metrics"]       # inside a function


def test_no_import_cycle_in_spawners():
    assert _cycles(_graph(), "spawners.") == []


def test_no_import_cycle_in_proxy():
    assert _cycles(_graph(), "proxy.") == []


def test_the_proxy_imports_nothing_of_the_manager_but_its_config():
    g = _graph()
    bad = {m: sorted(n for n in deps if n.startswith("manager.") and n != "manager.config")
           for m, deps in g.items() if m.startswith("proxy.")}
    assert {m: d for m, d in bad.items() if d} == {}


def test_checkout_is_a_leaf():
    assert _graph()["proxy.checkout"] == set()


def test_no_import_cycle_in_manager():
    assert _cycles(_graph(), "manager.") == []


def test_no_import_cycle_across_packages():
    assert _cycles(_graph(), "") == []


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}, "") == [["a", "b", "c"]]


def test_every_module_starts_with_a_docstring_line_saying_its_job():
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            if path.name == "__init__.py" and not path.read_text().strip():
                continue
            doc = ast.get_docstring(ast.parse(path.read_text()))
            assert doc and doc.splitlines()[0].strip(), f"{path} has no first line saying its job"
