"""The module paths of 0.1 still import for a release: each is a thin module that re-exports the new one's names
and warns with a DeprecationWarning naming where it went."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

from unlearn._moved import MOVED


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


def test_the_library_itself_imports_no_old_path():
    """In a fresh interpreter that turns DeprecationWarnings into errors, importing every package and the CLI
    touches none of the moved paths."""
    code = ("import warnings; warnings.simplefilter('error', DeprecationWarning); "
            "import unlearn, unlearn.cli, unlearn.pipeline, unlearn.farm, unlearn.evaluation, proxies; "
            "import unlearn.training.lightning")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
