"""The import graph keeps the layout's promises: no circle, and no import running back up a layer.

``server/`` is in wings, lowest first: the wire contract (``protocol``), model text in and out
(``text``), the gateway, configuration, the endpoints over their one serving loop, and the
runtime that wires the app and serves it. A wing imports only wings below it (and ``adapters``,
the engines, which import nothing of ``server``); ``ise``, the command, sits above ``server`` and
``benchmarks``, and neither of those imports it, nor ``server`` the benchmarks. Read from the
source, imports inside functions included, so a deferred import cannot hide a circle.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("ise", "server", "adapters", "benchmarks")
WINGS = ("protocol", "text", "gateway", "config", "endpoints", "runtime")
# What each top-level package may import of the others.
ALLOWED = {
    "adapters": {"adapters"},
    "server": {"server", "adapters"},
    "benchmarks": {"benchmarks", "server", "adapters"},
    "ise": {"ise", "server", "benchmarks"},
}


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """The project modules ``path`` imports: ``from a.b import c`` is ``a.b.c`` where that is a module."""
    targets = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                child = f"{node.module}.{alias.name}"
                targets.add(child if child in modules else node.module)
    return {t for t in targets if t in modules}


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(path, modules) - {name} for name, path in modules.items()}


def _wing(module: str) -> int | None:
    parts = module.split(".")
    return WINGS.index(parts[1]) if parts[0] == "server" and len(parts) > 1 and parts[1] in WINGS else None


def test_server_is_all_in_wings() -> None:
    loose = [m for m in _graph() if m.startswith("server.") and _wing(m) is None]
    assert not loose, f"modules of server/ outside its wings: {loose}"


def test_no_import_runs_up_a_layer() -> None:
    wrong = []
    for module, imported in _graph().items():
        top = module.split(".")[0]
        for target in imported:
            if target.split(".")[0] not in ALLOWED[top]:
                wrong.append(f"{module} -> {target}")
            low, high = _wing(module), _wing(target)
            if low is not None and high is not None and high > low:
                wrong.append(f"{module} ({WINGS[low]}) -> {target} ({WINGS[high]})")
    assert not wrong, "imports running back up:\n" + "\n".join(sorted(wrong))


def test_no_import_circle() -> None:
    graph = _graph()
    circles = []
    # Tarjan's strongly connected components: any component of two or more modules is a circle.
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    assert not circles, f"import circles: {circles}"


def test_the_checks_see_the_whole_tree() -> None:
    """The graph covers every wing and the command, so the tests above cannot pass on an empty tree."""
    graph = _graph()
    assert {_wing(m) for m in graph} >= set(range(len(WINGS)))
    assert "ise.cli" in graph and "server.endpoints.serving" in graph and "benchmarks.cli" in graph
