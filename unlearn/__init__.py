"""Memorization-aware machine unlearning for PyTorch classifiers.

The front door is :func:`unlearn` (:mod:`unlearn.unlearning`); the subpackages are what it stands on: ``data``,
``training``, ``methods`` (``rum`` among them), ``evaluation``, ``farm`` and ``pipeline`` (``unlearn run``).

>>> from unlearn import load_dataset, create_model, train, unlearn
"""

import warnings as _warnings

from . import _moved
from ._checks import NonFiniteError
from .algorithms import PlanStep, UnlearnResult, methods, register_method
from .algorithms.rum import POLICIES, RUMConfig, RUMResult, policies, register_policy
from .data import IndexedDataset, Splits, Streamed, datasets, load_dataset
from .evaluation import evaluate
from .farm import memorization_scores, train_subset_models
from .models import create_model, models, register_model
from .training import TrainConfig, load_checkpoint, predict, save_checkpoint, top1_accuracy, train
from .unlearning import unlearn

_moved.install()  # the module paths of 0.1 (unlearn.scheduler, unlearn.attacks, ...) still import, with a warning

__all__ = [
    "POLICIES",
    "IndexedDataset",
    "NonFiniteError",
    "PlanStep",
    "RUMConfig",
    "RUMResult",
    "Splits",
    "Streamed",
    "TrainConfig",
    "UnlearnResult",
    "create_model",
    "datasets",
    "evaluate",
    "load_checkpoint",
    "load_dataset",
    "memorization_scores",
    "methods",
    "models",
    "policies",
    "predict",
    "register_method",
    "register_model",
    "register_policy",
    "save_checkpoint",
    "top1_accuracy",
    "train",
    "train_subset_models",
    "unlearn",
]


_RENAMED = {"Step": "PlanStep", "accuracy": "top1_accuracy"}
"""0.1's names, kept for a release: the plan's steps (training's loop has batch losses), and a model's top-1 accuracy
(``accuracy`` is also a proxy, a score of training dynamics)."""


def __getattr__(name: str):
    if name in _RENAMED:
        _warnings.warn(f"unlearn.{name} is now unlearn.{_RENAMED[name]} (unlearn.{name} goes in the next release)",
                       DeprecationWarning, stacklevel=2)
        return globals()[_RENAMED[name]]
    raise AttributeError(f"module 'unlearn' has no attribute {name!r}")
