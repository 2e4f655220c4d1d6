"""Ground truth: the Feldman-Zhang memorization score and the C-score, from K models trained on random subsets.

``mem(i) = P[f_S(x_i) = y_i] - P[f_{S minus i}(x_i) = y_i]``, estimated as
``mean(correct_i | i in subset) - mean(correct_i | i not in subset)`` over K models each trained on a random 70%.
The C-score (Jiang et al.) is the held-out term alone. The models are trained through a model farm
(:mod:`unlearn.farm`): each finished model's predictions are on disk, so an interrupted run resumes.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import Dataset

from .registry import register_proxy

__all__ = ["SubsetModels", "feldman_zhang", "subset_jobs", "train_subset_models"]


def feldman_zhang(correct: np.ndarray, in_mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(memorization, c_score)`` per example from ``correct[K, N]`` and ``in_mask[K, N]`` (bool).

    An example never (or always) in a subset has NaN scores: its IN (or OUT) term is undefined.

    >>> correct = np.array([[1, 1], [1, 0], [0, 0], [1, 1]], dtype=bool)
    >>> in_mask = np.array([[1, 1], [1, 0], [0, 1], [0, 0]], dtype=bool)
    >>> feldman_zhang(correct, in_mask)
    (array([0.5, 0. ]), array([0.5, 0.5]))
    """
    correct = np.asarray(correct, dtype=bool)
    in_mask = np.asarray(in_mask, dtype=bool)
    if correct.shape != in_mask.shape or correct.ndim != 2:
        raise ValueError(f"correct and in_mask must both be [K, N], got {correct.shape} and {in_mask.shape}")
    n_in = in_mask.sum(axis=0)
    n_out = (~in_mask).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        p_in = (correct & in_mask).sum(axis=0) / n_in
        p_out = (correct & ~in_mask).sum(axis=0) / n_out
    p_in = np.where(n_in > 0, p_in, np.nan)
    p_out = np.where(n_out > 0, p_out, np.nan)
    return p_in - p_out, p_out


def subset_jobs(n: int, k: int, *, fraction: float = 0.7, seed: int = 0):
    """K jobs, each training on a seeded random ``fraction`` of ``n`` examples."""
    from unlearn.farm import Job

    if n < 2 or k < 1 or not 0.0 < fraction < 1.0:
        raise ValueError(f"expected n >= 2, k >= 1 and 0 < fraction < 1, got {n}, {k}, {fraction}")
    size = max(1, min(n - 1, round(fraction * n)))
    rng = np.random.default_rng(seed)
    return [Job(f"subset-{i:05d}", np.sort(rng.choice(n, size=size, replace=False)), seed=seed * 1_000_003 + i)
            for i in range(k)]


@dataclass(frozen=True)
class SubsetModels:
    """Predictions of K subset models on every example: ``logits[K, N, C]``, ``in_mask[K, N]``, ``labels[N]``."""

    logits: np.ndarray
    in_mask: np.ndarray
    labels: np.ndarray
    index: np.ndarray

    @property
    def correct(self) -> np.ndarray:
        return self.logits.argmax(axis=2) == self.labels[None, :]

    def scores(self) -> pd.DataFrame:
        """Memorization, C-score and the IN/OUT model counts per example."""
        mem, c_score = feldman_zhang(self.correct, self.in_mask)
        return pd.DataFrame({"memorization": mem, "c_score": c_score, "models_in": self.in_mask.sum(0),
                             "models_out": (~self.in_mask).sum(0)}, index=pd.Index(self.index, name="index"))


def train_subset_models(dataset: Dataset, model_fn: Callable[[], nn.Module], *, k: int, folder: str | os.PathLike,
                        fraction: float = 0.7, seed: int = 0, farm="local", farm_options: dict | None = None,
                        device: str | None = None, force: bool = False, progress: bool = True,
                        **train_kwargs) -> SubsetModels:
    """Train (or load from ``folder``) K models on random subsets and collect their predictions.

    Args:
        dataset: the training set (items ``(x, y)`` or ``(x, y, index)``).
        model_fn: builds a fresh model, e.g. ``functools.partial(create_model, "digits_cnn", num_classes=10,
            in_channels=1)`` (picklable, for a Ray farm).
        k: number of models (the anchor used 400; hundreds are needed for stable scores).
        folder: where each model's predictions go; a rerun resumes from what is there.
        fraction: subset size as a fraction of the dataset.
        seed: seed of the subsets and the models.
        farm: ``"local"``, ``"ray"`` or a farm object (see :mod:`unlearn.farm`); a farm object writes to its own
            folder.
        farm_options: settings of a farm given by name, e.g. ``{"gpus_per_model": 0.25}`` for Ray.
        force: discard results in ``folder`` made with other settings instead of refusing.
        **train_kwargs: passed to :func:`unlearn.train` (epochs, lr, batch_size, ...).
    """
    from unlearn.data import batches
    from unlearn.farm import TrainTask, check_manifest, describe_factory, fingerprint, get_farm, train_and_predict

    jobs = subset_jobs(len(dataset), k, fraction=fraction, seed=seed)
    runner = get_farm(farm, folder, progress=progress, **(farm_options or {}))
    settings = {"kind": "subset_models", "n": len(dataset), "k": k, "fraction": fraction, "seed": seed,
                "model": describe_factory(model_fn), "data": fingerprint(dataset), "train": train_kwargs}
    check_manifest(runner.folder, settings, force=force)
    results = runner.run(train_and_predict, jobs, TrainTask(dataset, model_fn, dict(train_kwargs), device))
    labels, index = [], []
    for _, y, idx in batches(dataset, 4096):
        labels.append(y)
        index.append(idx)
    logits = np.stack([results[job.key]["logits"] for job in jobs])
    in_mask = np.zeros((k, len(dataset)), dtype=bool)
    for row, job in enumerate(jobs):
        in_mask[row, results[job.key]["train_ids"]] = True
    return SubsetModels(logits, in_mask, torch.cat(labels).numpy(), torch.cat(index).numpy())


@register_proxy("memorization", higher_is_memorized=True, needs=("subset_models",))
def memorization(subset_models: SubsetModels) -> pd.Series:
    """Feldman-Zhang memorization: accuracy on an example when trained on it minus when not."""
    return subset_models.scores()["memorization"]


@register_proxy("c_score", higher_is_memorized=False, needs=("subset_models",))
def c_score(subset_models: SubsetModels) -> pd.Series:
    """C-score: expected accuracy on an example of models that did not train on it."""
    return subset_models.scores()["c_score"]
