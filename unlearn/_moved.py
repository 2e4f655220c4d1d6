"""Module paths that moved when ``unlearn/`` was grouped into subpackages (0.2), kept importable for one release.

Importing an old path (``import unlearn.scheduler``, ``from unlearn.attacks.lira import lira``) gives a thin module
that re-exports every name of the new one and raises a :class:`DeprecationWarning` that names where it went, as
torchvision does when it moves a module. Nothing in this package imports an old path.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings

__all__ = ["MOVED", "install"]

_ATTACK_FILES = ("basic", "forgetting", "lira", "registry", "rmia", "signals")

MOVED: dict[str, str] = {
    "unlearn.algorithms.loop": "unlearn.algorithms.sgd",
    "unlearn.attacks": "unlearn.evaluation.attacks",
    **{f"unlearn.attacks.{name}": f"unlearn.evaluation.attacks.{name}" for name in _ATTACK_FILES},
    "unlearn.augment": "unlearn.training.augment",
    "unlearn.epochs": "unlearn.training.loop",
    "unlearn.lightning": "unlearn.training.lightning",
    "unlearn.metrics": "unlearn.evaluation.metrics",
    "unlearn.packed_farm": "unlearn.farm.packed",
    "unlearn.ray_farm": "unlearn.farm.ray",
    "unlearn.registry": "unlearn.algorithms.registry",
    "unlearn.report": "unlearn.evaluation.report",
    "unlearn.scheduler": "unlearn.algorithms.rum.policies unlearn.algorithms.rum.grouping",
    "unlearn.selection": "unlearn.data.selection",
    "unlearn.shadows": "unlearn.evaluation.shadows",
    "unlearn.subset_models": "unlearn.farm.subset_models",
    "unlearn.synthetic": "unlearn.data.synthetic",
}
"""Old module path -> new module path (or paths, separated by spaces, for a module split in two)."""

_PACKAGES = {"unlearn.attacks"}


class _MovedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds an old path of :data:`MOVED` and loads it as a module that re-exports the new one's names."""

    def find_spec(self, fullname, path, target=None):
        if fullname not in MOVED:
            return None
        return importlib.util.spec_from_loader(fullname, self, is_package=fullname in _PACKAGES)

    def create_module(self, spec):
        return None  # the default module object

    def exec_module(self, module) -> None:
        new = MOVED[module.__name__].split()
        warnings.warn(f"{module.__name__} has moved to {' and '.join(new)}; import it from there "
                      f"({module.__name__} goes in the next release)", DeprecationWarning, stacklevel=2)
        names = []
        for target in map(importlib.import_module, new):
            module.__dict__.update({k: v for k, v in vars(target).items() if not k.startswith("__")})
            names += getattr(target, "__all__", [])
        module.__all__ = names
        module.__doc__ = f"Moved to {' and '.join(new)}."


def install() -> None:
    """Put the finder on ``sys.meta_path`` (once)."""
    if not any(isinstance(finder, _MovedModules) for finder in sys.meta_path):
        sys.meta_path.insert(0, _MovedModules())  # first: an old folder left with only __pycache__ is no package
