"""Memorization-aware machine unlearning for PyTorch classifiers.

>>> from unlearn import load_dataset, create_model, train, unlearn
"""

from .data import IndexedDataset, Splits, Streamed, datasets, load_dataset
from .evaluation import evaluate
from .models import create_model, models, register_model
from .registry import methods, register_method
from .scheduler import POLICIES, RUMConfig, policies, register_policy
from .subset_models import memorization_scores, train_subset_models
from .training import TrainConfig, accuracy, load_checkpoint, predict, save_checkpoint, train
from .unlearning import Step, UnlearnResult, unlearn

__all__ = [
    "POLICIES",
    "IndexedDataset",
    "RUMConfig",
    "Splits",
    "Step",
    "Streamed",
    "TrainConfig",
    "UnlearnResult",
    "accuracy",
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
    "train",
    "train_subset_models",
    "unlearn",
]
