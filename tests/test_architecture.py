"""The layers, checked on the source: who may import whom, and no import cycles anywhere.

consensus ← storage ← p2p ← node, and lab beside them, reaching nodes only through RPC
(docs/architecture.md draws it). Every import counts: at module level, inside functions and
under TYPE_CHECKING, since a lazy import that papers over a cycle is still a cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("consensus", "storage", "p2p", "node", "lab")

#: package -> the first-party packages it may import (besides itself)
ALLOWED = {
    "consensus": set(),
    "storage": {"consensus"},
    "p2p": {"consensus", "storage"},
    "node": {"consensus", "storage", "p2p"},
    # The lab drives nodes from outside through RPC: it builds transactions and computes the
    # theory with consensus/, simulates with the in-memory store, and never touches a
    # daemon's internals or its network code.
    "lab": {"consensus", "storage"},
}
#: the pure core reads no clock, draws no randomness of its own and does no I/O
FORBIDDEN_STDLIB = {
    "consensus": {"asyncio", "socket", "sqlite3", "time", "random", "subprocess", "threading"},
}
THIRD_PARTY_ONLY_IN = {  # heavy or I/O libraries and who may use them
    "aiohttp": {"node", "lab"},
    "asyncio_dgram": {"p2p"},
    "matplotlib": {"lab"},
    "rich": {"lab"},
}


def _modules() -> dict[str, Path]:
    mods: dict[str, Path] = {}
    for package in PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            parts = list(path.relative_to(REPO).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            mods[".".join(parts)] = path
    return mods


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    """Every absolute module name `name` imports, anywhere in the file."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*up, *([node.module] if node.module else [])])
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def _first_party(imported: str) -> str | None:
    """The module of ours `imported` names (a module, or a name inside one), if any."""
    while imported:
        if imported in MODULES:
            return imported
        imported = imported.rpartition(".")[0]
    return None


GRAPH = {
    name: {m for i in _imports(name, path) if (m := _first_party(i)) and m != name}
    for name, path in MODULES.items()
}


def test_every_package_is_there() -> None:
    assert {name.split(".")[0] for name in MODULES} == set(PACKAGES)


@pytest.mark.parametrize("package", PACKAGES)
def test_layers_only_import_downwards(package: str) -> None:
    wrong = sorted(
        f"{name} imports {dep}"
        for name, deps in GRAPH.items()
        if name.split(".")[0] == package
        for dep in deps
        if dep.split(".")[0] not in ALLOWED[package] | {package}
    )
    assert not wrong, "\n".join(wrong)


def test_the_pure_core_does_no_io_and_reads_no_clock() -> None:
    wrong = []
    for name, path in MODULES.items():
        banned = FORBIDDEN_STDLIB.get(name.split(".")[0], set())
        wrong += [f"{name} imports {i}" for i in _imports(name, path) if i.split(".")[0] in banned]
    assert not wrong, "\n".join(sorted(wrong))


def test_heavy_libraries_stay_where_they_belong() -> None:
    wrong = []
    for name, path in MODULES.items():
        for imported in _imports(name, path):
            allowed = THIRD_PARTY_ONLY_IN.get(imported.split(".")[0])
            if allowed is not None and name.split(".")[0] not in allowed:
                wrong.append(f"{name} imports {imported}")
    assert not wrong, "\n".join(sorted(wrong))


def test_the_daemon_does_not_need_matplotlib() -> None:
    """A plain install (and the daemon's image) has no matplotlib: the lab imports it only
    where a plot is drawn, never at module level."""
    for name, path in MODULES.items():
        tree = ast.parse(path.read_text())
        top = [n for n in tree.body if isinstance(n, ast.Import | ast.ImportFrom)]
        names = {a.name for n in top if isinstance(n, ast.Import) for a in n.names}
        names |= {n.module or "" for n in top if isinstance(n, ast.ImportFrom)}
        assert not any(n.split(".")[0] == "matplotlib" for n in names), name


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0

    def visit(node: str) -> None:
        nonlocal counter
        index[node] = low[node] = counter
        counter += 1
        stack.append(node)
        on_stack.add(node)
        for dep in sorted(graph.get(node, ())):
            if dep not in index:
                visit(dep)
                low[node] = min(low[node], low[dep])
            elif dep in on_stack:
                low[node] = min(low[node], index[dep])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_import_cycles_anywhere() -> None:
    # A package's __init__ that re-exports its own modules is not a cycle of design: leave
    # out edges from a package to its own submodules.
    graph = {
        name: {d for d in deps if not d.startswith(name + ".")} for name, deps in GRAPH.items()
    }
    assert _cycles(graph) == []


def test_cycle_finder_finds_a_lazy_cycle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
