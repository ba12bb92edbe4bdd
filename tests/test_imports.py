"""The import graph of manager/ and spawners/ has no cycle, counting TYPE_CHECKING and
function-level imports (issue 13), and every module's first line says its job."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("manager", "proxy", "spawners")


def modules() -> dict[str, Path]:
    return {f"{pkg}.{p.stem}": p for pkg in PACKAGES for p in sorted((ROOT / pkg).glob("*.py"))}


def import_graph() -> dict[str, set[str]]:
    mods = modules()
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for m, path in mods.items():
        pkg = m.split(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):  # every import, wherever it is
            names: list[str] = []
            if isinstance(node, ast.ImportFrom):
                if node.level == 1:
                    base = pkg + (f".{node.module}" if node.module else "")
                elif node.module and node.module.startswith("passenger_lite."):
                    base = node.module[len("passenger_lite."):]
                else:
                    continue
                names = [base] + [f"{base}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name[len("passenger_lite."):] for a in node.names if a.name.startswith("passenger_lite.")]
            graph[m].update(n for n in names if n in mods and n != m)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycle_touches_manager_or_spawners():
    # (proxy/'s own cycle, front <-> forward <-> server <-> static, is issue 13's proxy half)
    bad = [c for c in cycles(import_graph()) if any(not m.startswith("proxy.") for m in c)]
    assert bad == []


def test_every_manager_and_spawner_module_starts_with_a_docstring_line():
    for m, path in modules().items():
        if m.startswith("proxy."):
            continue
        doc = ast.get_docstring(ast.parse(path.read_text()))
        assert doc and doc.splitlines()[0].strip(), f"{path} has no first line saying its job"
