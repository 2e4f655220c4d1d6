"""Memorization-aware machine unlearning for PyTorch classifiers.

>>> from unlearn import load_dataset, create_model, train
"""

from .data import IndexedDataset, Splits, datasets, load_dataset
from .models import create_model, models, register_model
from .training import TrainConfig, accuracy, load_checkpoint, predict, save_checkpoint, train

__all__ = [
    "IndexedDataset",
    "Splits",
    "TrainConfig",
    "accuracy",
    "create_model",
    "datasets",
    "load_checkpoint",
    "load_dataset",
    "models",
    "predict",
    "register_model",
    "save_checkpoint",
    "train",
]
