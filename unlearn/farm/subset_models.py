"""Ground-truth memorization scores: K models trained on random subsets through the model farm, then scored.

For token sequences the same farm and estimator give counterfactual memorization (Zhang et al. 2021): each model
keeps its token accuracy on every sequence, and ``fraction`` is the subset size (the paper's 25%, the
classifiers' 70%).

Each model trains on a seeded random ``fraction`` (70% by default) of the training set and predicts all of it; the
farm keeps each finished model's predictions on disk (:mod:`unlearn.farm`), so an interrupted run resumes. The
estimators themselves (Feldman-Zhang memorization, the C-score) are in :mod:`proxies.memorization` and read only the
predictions: ``proxies.compute("memorization", subset_models=train_subset_models(...))``.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np
import pandas as pd
from torch import nn
from torch.utils.data import Dataset

from proxies.memorization import SubsetModels
from proxies.tasks import task_of

from ..data.sources import examples, labels_of
from .local import Job, TrainTask, check_manifest, describe_factory, fingerprint, train_and_predict
from .registry import get_farm

__all__ = ["memorization_scores", "subset_jobs", "train_subset_models"]


def subset_jobs(n: int, k: int, *, fraction: float = 0.7, seed: int = 0) -> list[Job]:
    """K jobs, each training on a seeded random ``fraction`` of ``n`` examples.

    >>> [(job.key, len(job.train_ids)) for job in subset_jobs(10, 2)]
    [('subset-00000', 7), ('subset-00001', 7)]
    """
    if n < 2 or k < 1 or not 0.0 < fraction < 1.0:
        raise ValueError(f"expected n >= 2, k >= 1 and 0 < fraction < 1, got {n}, {k}, {fraction}")
    size = max(1, min(n - 1, round(fraction * n)))
    rng = np.random.default_rng(seed)
    return [Job(f"subset-{i:05d}", np.sort(rng.choice(n, size=size, replace=False)), seed=seed * 1_000_003 + i)
            for i in range(k)]


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

    Returns:
        The models' predictions, which the ``memorization`` and ``c_score`` proxies read (``subset_models=``).
    """
    jobs = subset_jobs(len(dataset), k, fraction=fraction, seed=seed)
    runner = get_farm(farm, folder, progress=progress, **(farm_options or {}))
    settings = {"kind": "subset_models", "n": len(dataset), "k": k, "fraction": fraction, "seed": seed,
                "model": describe_factory(model_fn), "data": fingerprint(dataset), "train": train_kwargs}
    check_manifest(runner.folder, settings, force=force)
    results = runner.run(train_and_predict, jobs, TrainTask(dataset, model_fn, dict(train_kwargs), device))
    labels, index = labels_of(examples(dataset))
    in_mask = np.zeros((k, len(dataset)), dtype=bool)
    for row, job in enumerate(jobs):
        in_mask[row, results[job.key]["train_ids"]] = True
    if "signals" in results[jobs[0].key]:  # token sequences: each model's token accuracy on each sequence
        column = task_of(dataset).columns.index("token_accuracy")
        accuracy = np.stack([results[job.key]["signals"][:, column] for job in jobs]).astype(np.float64)
        return SubsetModels(None, in_mask, None, index.numpy(), accuracy=accuracy)
    logits = np.stack([results[job.key]["logits"] for job in jobs])
    return SubsetModels(logits, in_mask, labels.numpy(), index.numpy())


def memorization_scores(dataset: Dataset, model_fn: Callable[[], nn.Module], *, k: int,
                        folder: str | os.PathLike, **options) -> pd.DataFrame:
    """Feldman-Zhang memorization and C-score per training example, from K subset models trained (or loaded) in
    ``folder``; ``options`` are :func:`train_subset_models`'s.

    Returns:
        A DataFrame indexed by training-set index: ``memorization``, ``c_score``, ``models_in``, ``models_out``.
    """
    return train_subset_models(dataset, model_fn, k=k, folder=folder, **options).scores()
