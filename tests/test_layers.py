"""The architecture, checked from the imports (``ast``): layers, no cycles, no private names.

The allowed direction is stated once, in ``ALLOWED``: a module of a layer may import modules
of the layers listed for it, and nothing else of ``wal`` or ``cli``. The log knows nothing of
databases; the database side knows entries, not the storage; tools sit on top and only
``cli/`` and ``benchmarks/`` import them. ``docs/architecture.md`` draws the same table.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# The layer of each module, by the longest matching name prefix.
LAYER_OF = {
    "wal.errors": "foundation",
    "wal.codec": "foundation",
    "wal.entry": "foundation",
    "wal.crashpoints": "foundation",
    "wal.binding": "foundation",
    "wal.masking": "foundation",
    "wal.money": "foundation",
    "wal.log": "log",
    "wal.db": "db",
    "wal.config": "config",
    "wal.sync": "sync",
    "wal.orders": "orders",
    "wal.service": "service",
    "wal.tools": "tools",
    "wal": "public",  # wal/__init__.py: the one public face
    "cli": "cli",
}

# Which layers each layer may import (itself included where listed).
ALLOWED = {
    "foundation": {"foundation"},
    "log": {"foundation", "log"},
    "db": {"foundation", "db"},
    "config": {"foundation", "log"},
    "sync": {"foundation", "log", "db", "config", "sync"},
    "public": {"foundation", "log", "db", "config", "sync", "public"},
    "orders": {"foundation", "log", "db", "config", "sync", "public", "orders"},
    "service": {"foundation", "log", "db", "config", "sync", "public", "orders", "service"},
    "tools": {"foundation", "log", "db", "config", "sync", "public", "orders", "tools"},
    "cli": {
        "foundation",
        "log",
        "db",
        "config",
        "sync",
        "public",
        "orders",
        "service",
        "tools",
        "cli",
    },
}

# Imports done inside a function, each with the reason it is not at module level. A call-time
# import may never be what keeps a cycle open (the cycle check below counts them too).
CALL_TIME_ALLOWED = {
    ("cli.commands.wal_bench", "wal.tools.bench"): "loads the benchmark code only for `bench`",
    ("cli.commands.wal_status", "wal.db"): "SQLAlchemy only when a database is checked",
    ("cli.commands.wal_status", "wal.sync.status"): "the published views, read only by status",
    ("cli.commands.wal_status", "wal.sync.identity"): "the log's database, read only by status",
    ("cli.commands.wal_sync", "cli._target"): "SQLAlchemy only for the command that needs it",
    ("cli.commands.wal_sync", "wal.sync.status"): "SQLAlchemy only for the command that needs it",
    ("cli.commands.wal_replay", "cli._target"): "SQLAlchemy only for the command that needs it",
    ("cli.commands.wal_metrics", "wal.sync.metrics"): "prometheus_client only for `metrics`",
    ("cli.commands.wal_metrics", "wal.sync.status"): "the published view, only for `metrics`",
}


@dataclass(frozen=True)
class Import:
    module: str  # the importing module
    target: str  # the module imported (a name imported from a package resolves to it)
    names: tuple[str, ...]
    line: int
    call_time: bool


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    out = {}
    for top in ("wal", "cli"):
        for path in sorted((ROOT / top).rglob("*.py")):
            out[_module_name(path)] = path
    return out


MODULES = _modules()


def _resolve(base: str, name: str) -> str:
    """``from base import name``: the submodule ``base.name`` when there is one, else base."""
    sub = f"{base}.{name}"
    return sub if sub in MODULES else base


def _imports(module: str, path: Path) -> Iterator[Import]:
    tree = ast.parse(path.read_text(), str(path))
    function_nodes: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            for inner in ast.walk(node):
                if inner is not node:
                    function_nodes.add(id(inner))
    for node in ast.walk(tree):
        call_time = id(node) in function_nodes
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in ("wal", "cli"):
                    yield Import(module, alias.name, (), node.lineno, call_time)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.split(".")[0] not in ("wal", "cli"):
                continue
            names = tuple(a.name for a in node.names)
            targets = {_resolve(node.module, n) for n in names}
            for target in sorted(targets):
                yield Import(module, target, names, node.lineno, call_time)


ALL_IMPORTS = [imp for mod, path in MODULES.items() for imp in _imports(mod, path)]


def layer(module: str) -> str:
    for prefix in sorted(LAYER_OF, key=len, reverse=True):
        if module == prefix or module.startswith(prefix + "."):
            return LAYER_OF[prefix]
    raise AssertionError(f"{module} has no layer in LAYER_OF: add it there")


def test_every_module_has_a_layer() -> None:
    for module in MODULES:
        assert layer(module) in ALLOWED


def test_layers_only_import_downwards() -> None:
    wrong = [
        f"{i.module}:{i.line} imports {i.target} ({layer(i.module)} -> {layer(i.target)})"
        for i in ALL_IMPORTS
        if layer(i.target) not in ALLOWED[layer(i.module)]
    ]
    assert not wrong, "imports against the layer rule:\n" + "\n".join(wrong)


def test_no_private_names_across_modules() -> None:
    wrong = [
        f"{i.module}:{i.line} imports {name} from {i.target}"
        for i in ALL_IMPORTS
        for name in i.names
        if name.startswith("_") and not name.startswith("__")
    ]
    assert not wrong, "private names imported from another module:\n" + "\n".join(wrong)


def test_no_call_time_imports_but_the_listed_ones() -> None:
    found = {(i.module, i.target) for i in ALL_IMPORTS if i.call_time}
    unlisted = sorted(found - set(CALL_TIME_ALLOWED))
    assert not unlisted, f"imports inside functions (move them up, or list why): {unlisted}"
    stale = sorted(set(CALL_TIME_ALLOWED) - found)
    assert not stale, f"CALL_TIME_ALLOWED lists imports that are gone: {stale}"


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_no_import_cycles() -> None:
    graph: dict[str, set[str]] = {}
    for i in ALL_IMPORTS:
        if i.target != i.module:
            graph.setdefault(i.module, set()).add(i.target)
    cycle = _cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


@pytest.mark.parametrize(
    ("graph", "has_cycle"),
    [({"a": {"b"}, "b": {"c"}}, False), ({"a": {"b"}, "b": {"c"}, "c": {"a"}}, True)],
)
def test_the_cycle_check_finds_cycles(graph: dict[str, set[str]], has_cycle: bool) -> None:
    assert (_cycle(graph) is not None) is has_cycle


def test_subpackages_say_what_they_own_and_may_import() -> None:
    for module, path in MODULES.items():
        if path.name == "__init__.py" and module.count(".") == 1 and module.startswith("wal."):
            doc = ast.get_docstring(ast.parse(path.read_text())) or ""
            assert "Layer rule" in doc, f"{module}: the package docstring states its layer rule"


def test_the_architecture_page_names_every_module() -> None:
    page = (ROOT / "docs" / "architecture.md").read_text()
    missing = [
        module
        for module, path in MODULES.items()
        if module.startswith("wal.") and path.name != "__init__.py" and path.name not in page
    ]
    assert not missing, f"docs/architecture.md's tree lacks: {missing}"


def test_every_test_module_has_a_unique_name() -> None:
    """pytest imports test modules by their basename (``rootdir``-less directories, prepend
    mode): two ``test_x.py`` in different directories make the whole run stop at collection."""
    names: dict[str, list[str]] = {}
    for f in sorted((ROOT / "tests").rglob("*.py")):
        if f.name != "conftest.py" and f.name != "__init__.py":
            names.setdefault(f.name, []).append(str(f.relative_to(ROOT)))
    clashes = {n: ps for n, ps in names.items() if len(ps) > 1}
    assert clashes == {}, f"test modules with the same name: {clashes}"
