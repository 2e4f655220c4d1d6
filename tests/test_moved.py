"""The module paths of 0.1 still import for a release: each is a thin module that re-exports the new one's names
and warns with a DeprecationWarning naming where it went."""

from __future__ import annotations

import ast
import importlib
import re
import subprocess
import sys
from pathlib import Path

import pytest

from unlearn._moved import MOVED

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("old", sorted(MOVED))
def test_an_old_path_imports_warns_and_reexports_the_new_one(old, monkeypatch):
    monkeypatch.delitem(sys.modules, old, raising=False)  # imported afresh: the warning comes each time
    with pytest.warns(DeprecationWarning, match=f"{old} has moved to"):
        module = importlib.import_module(old)
    for new in MOVED[old].split():
        target = importlib.import_module(new)
        public = getattr(target, "__all__", [n for n in vars(target) if not n.startswith("_")])
        assert public and all(getattr(module, name) is getattr(target, name) for name in public)


def test_the_old_names_a_user_imports_resolve(monkeypatch):
    for old in ("unlearn.scheduler", "unlearn.attacks", "unlearn.attacks.lira", "unlearn.registry"):
        monkeypatch.delitem(sys.modules, old, raising=False)
    with pytest.warns(DeprecationWarning):
        from unlearn.attacks.lira import lira
        from unlearn.registry import register_method
        from unlearn.scheduler import POLICIES, partition, step_seed_of
    import unlearn.algorithms.rum as rum
    from unlearn.algorithms.registry import register_method as new_register

    assert lira is sys.modules["unlearn.evaluation.attacks.lira"].lira and register_method is new_register
    assert POLICIES is rum.POLICIES and partition is rum.partition and callable(step_seed_of)


def test_unlearn_step_is_plan_step_with_a_warning():
    import unlearn

    with pytest.warns(DeprecationWarning, match="PlanStep"):
        assert unlearn.Step is unlearn.PlanStep
    with pytest.raises(AttributeError):
        unlearn.no_such_name  # noqa: B018


def _imported(module: str, is_package: bool, source: str) -> set[tuple[str, int]]:
    """Every module path ``source`` (the code of ``module``) imports anywhere, with its line: ``import a.b`` and
    ``from a.b import c`` import ``a`` and ``a.b`` (and ``a.b.c`` where ``c`` is a submodule), relative imports
    resolved, and the constant names given to ``importlib.import_module``."""
    package = module if is_package else module.rpartition(".")[0]
    named = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            named.update((alias.name, node.lineno) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1] + ([node.module] if node.module else []))
            named.add((base, node.lineno))
            named.update((f"{base}.{alias.name}", node.lineno) for alias in node.names)
        elif (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str)
              and (getattr(node.func, "attr", None) or getattr(node.func, "id", None)) == "import_module"):
            named.add((node.args[0].value, node.lineno))
    # importing a.b.c imports a and a.b first
    return {(name[:end], line) for name, line in named for end in
            [m.start() for m in re.finditer(r"\.", name)] + [len(name)]}


def test_the_import_finder_sees_an_old_path_however_it_is_written():
    code = ("import unlearn.attacks.lira\nfrom unlearn import scheduler\nfrom ..registry import x\n"
            "def f():\n    importlib.import_module('unlearn.metrics')\n")
    found = {name for name, _ in _imported("unlearn.algorithms.x", False, code)} & set(MOVED)
    assert found == {"unlearn.attacks", "unlearn.attacks.lira", "unlearn.scheduler", "unlearn.registry",
                     "unlearn.metrics"}
    assert {name for name, _ in _imported("unlearn.data", True, "from .selection import y")} >= {
        "unlearn.data.selection", "unlearn"}


def test_no_module_of_the_library_names_an_old_path():
    """No module of the packages (imports inside functions included) names a moved path, read from the source;
    the slow test below imports them in a fresh interpreter."""
    old = []
    for package in ("unlearn", "proxies"):
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            is_package = parts[-1] == "__init__"
            module = ".".join(parts[:-1] if is_package else parts)
            old += [f"{path.relative_to(ROOT).as_posix()}:{line} imports {name}"
                    for name, line in _imported(module, is_package, path.read_text()) if name in MOVED]
    assert sorted(old) == []


@pytest.mark.slow
def test_the_library_itself_imports_no_old_path():
    """In a fresh interpreter that turns DeprecationWarnings into errors, importing every package and the CLI
    touches none of the moved paths."""
    code = ("import warnings; warnings.simplefilter('error', DeprecationWarning); "
            "import unlearn, unlearn.cli, unlearn.pipeline, unlearn.farm, unlearn.evaluation, proxies; "
            "import unlearn.training.lightning")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
