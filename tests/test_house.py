"""The house rules the code keeps, checked from its source: no import cycle between modules (imports inside
functions included), and no function longer than 80 lines (the CLI's parser builder aside)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("unlearn", "proxies")
LONGEST = 80
LONG_ON_PURPOSE = {"unlearn/cli.py:build_parser"}  # one add_argument per option: long, flat and plain


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The project modules ``name`` imports anywhere in its code (a ``from package import submodule`` names the
    submodule)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    named = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            named.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1] + ([node.module] if node.module else []))
            named.update(f"{base}.{alias.name}" for alias in node.names)
            if node.module or not node.level:  # (from . import x: only the submodule x)
                named.add(base)
    # a module's own packages are imported before it whatever it says: naming them is no cycle
    ancestors = {name.rsplit(".", k)[0] for k in range(1, name.count(".") + 1)}
    return {m for m in named if m in modules and m != name and m not in ancestors}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_module_imports_itself_through_others():
    modules = _modules()
    graph = {name: _imports(name, path, modules) for name, path in modules.items()}
    assert _cycles(graph) == []


def test_no_function_is_longer_than_80_lines():
    long = []
    for path in _modules().values():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                where = f"{path.relative_to(ROOT).as_posix()}:{node.name}"
                if node.end_lineno - node.lineno + 1 > LONGEST and where not in LONG_ON_PURPOSE:
                    long.append(f"{where} ({node.end_lineno - node.lineno + 1} lines)")
    assert long == []


def test_only_the_rum_package_asks_for_rum_by_name():
    """The pipeline and the report ask a method what it takes and what it says of its plan; none branches on
    ``method == "rum"``."""
    asking = []
    for name, path in _modules().items():
        if name.startswith("unlearn.algorithms.rum"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Compare) and any(isinstance(c, ast.Constant) and c.value == "rum"
                                                     for c in [node.left, *node.comparators]):
                asking.append(f"{path.relative_to(ROOT).as_posix()}:{node.lineno}")
    assert asking == []
