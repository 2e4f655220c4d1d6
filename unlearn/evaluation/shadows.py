"""Shadow models for LiRA and RMIA: K models, each trained on a random half of a pool made of the training and test
sets, every example IN for exactly half of them (the design of Carlini et al.'s reference code). For U-LiRA, each
shadow then unlearns part of its half with the method under test.

Trained through the model farm, so they are cached on disk, reused across evaluations and resumed after an
interruption.

Classifiers' shadows keep their logits; causal language models' keep each sequence's signals (the farm reduces
each batch, :func:`unlearn.farm.local.predict_job`), from which the attacks read the mean token log-likelihood as
``phi`` and its exponential as ``p_true`` (:mod:`unlearn.evaluation.attacks.signals`).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset, Subset

from proxies.sequences import SEQUENCE_COLUMNS
from proxies.tasks import Classification, task_of

from ..algorithms.registry import get_method
from ..data.sources import examples, join, labels_of
from ..farm.local import Job, TrainTask, check_manifest, describe_factory, fingerprint, predict_job, train_and_predict
from ..farm.registry import get_farm
from ..training.trainer import train
from ..unlearning import unlearn
from .attacks.signals import logit_scaled_confidence, true_class_log_probability

__all__ = ["PoolPredictions", "ShadowModels", "UnlearnedShadowModels", "balanced_halves", "train_shadow_models",
           "train_unlearned_shadow_models"]

SPLITS = ("train", "test")


def balanced_halves(n: int, k: int, seed: int = 0) -> np.ndarray:
    """``in_mask [k, n]``: each model takes a random half, each example is IN for exactly ``k / 2`` models.

    >>> mask = balanced_halves(6, 4, seed=1)
    >>> mask.sum(axis=0).tolist()
    [2, 2, 2, 2, 2, 2]
    """
    if k < 2 or k % 2:
        raise ValueError(f"k must be an even number >= 2 (each example IN for exactly half), got {k}")
    rng = np.random.default_rng(seed)
    return rng.random((k, n)).argsort(axis=0) < k // 2


@dataclass(frozen=True)
class PoolPredictions:
    """Predictions of K models on a pool of training and test examples: a classifier's ``logits [K, N, A, C]``, or
    for token sequences (``logits`` None) their ``signals [K, N, 6]`` (columns
    :data:`proxies.sequences.SEQUENCE_COLUMNS`, one query); ``labels`` as the data hold them (``[N]``, ``[N, T]``),
    and for each pool example its ``split`` ("train" or "test") and its index in that split.

    What the attacks read, :meth:`phi` and :meth:`p_true`, comes from either, as the target's own signals do
    (:class:`unlearn.evaluation.attacks.AttackSignals`).
    """

    logits: np.ndarray | None
    labels: np.ndarray
    split: np.ndarray
    index: np.ndarray
    signals: np.ndarray | None = field(default=None, kw_only=True)

    def __post_init__(self) -> None:
        if (self.logits is None) == (self.signals is None):
            raise ValueError("pool predictions hold either logits (classifiers) or signals (token sequences)")

    def locate(self, split: str, indices) -> np.ndarray:
        """Pool positions of examples given by split and index; raises if one is not in the pool."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        indices = np.asarray(indices)
        in_split = np.flatnonzero(self.split == split)
        order = np.argsort(self.index[in_split])
        found = np.searchsorted(self.index[in_split][order], indices)
        found = np.clip(found, 0, len(order) - 1)
        positions = in_split[order][found]
        if not np.array_equal(self.index[positions], indices):
            raise ValueError(f"some {split} examples are not in the shadow models' pool")
        return positions

    def _sequence_loss(self, positions) -> np.ndarray:
        """Each model's mean token NLL of each sequence ``[K, N]`` float64 (at ``positions``)."""
        signals = self.signals if positions is None else self.signals[:, positions]
        return signals[..., SEQUENCE_COLUMNS.index("loss")].astype(np.float64)

    def phi(self, positions=None) -> np.ndarray:
        """Logit-scaled confidence ``[K, N, A]`` (of the pool examples at ``positions``); for token sequences the
        mean token log-likelihood ``[K, N, 1]``."""
        if self.signals is not None:
            return -self._sequence_loss(positions)[..., None]
        logits = self.logits if positions is None else self.logits[:, positions]
        labels = self.labels if positions is None else self.labels[positions]
        return logit_scaled_confidence(logits, np.broadcast_to(labels[None, :, None], logits.shape[:3]))

    def p_true(self, positions=None) -> np.ndarray:
        """True-class probability ``[K, N]`` of the identity query; for token sequences the geometric mean of the
        tokens' probabilities, ``exp(-loss)``."""
        if self.signals is not None:
            return np.exp(-self._sequence_loss(positions))
        logits = (self.logits if positions is None else self.logits[:, positions])[:, :, 0]
        labels = self.labels if positions is None else self.labels[positions]
        return np.exp(true_class_log_probability(logits, np.broadcast_to(labels[None, :], logits.shape[:2])))


@dataclass(frozen=True)
class ShadowModels(PoolPredictions):
    """Shadow models for LiRA / RMIA: ``in_mask [K, N]`` says which pool examples each one trained on."""

    in_mask: np.ndarray
    queries: tuple[str, ...]


def _pool(train: Dataset, test: Dataset) -> tuple[Dataset, np.ndarray, np.ndarray]:
    """The training and test examples as one pool (in memory when both are, else streamed), with each example's
    split and index in that split; a pool example's own index is its position in the pool."""
    train_data, test_data = examples(train), examples(test)
    pool = join(train_data, test_data, positions=True)
    split = np.array(["train"] * len(train_data) + ["test"] * len(test_data))
    index = np.concatenate([labels_of(train_data)[1].numpy(), labels_of(test_data)[1].numpy()])
    return pool, split, index


def train_shadow_models(train: Dataset, test: Dataset, model_fn: Callable[[], nn.Module], *, k: int,
                        folder: str | os.PathLike, queries: tuple[str, ...] = ("identity",), seed: int = 0,
                        farm="local", farm_options: dict | None = None, device: str | None = None,
                        force: bool = False, progress: bool = True, **train_kwargs) -> ShadowModels:
    """Train (or load from ``folder``) K shadow models on balanced random halves of ``train`` + ``test``.

    Args:
        train, test: the target's training and test sets; their examples form the pool.
        model_fn: picklable factory of the target's architecture.
        k: an even number of shadow models (16 and more for LiRA).
        folder: the cache; a rerun resumes and reuses.
        queries: augmentation queries to record (``("identity", "hflip")`` for natural images).
        farm: ``"local"``, ``"ray"`` or a farm object (see :mod:`unlearn.farm`).
        farm_options: settings of a farm given by name, e.g. ``{"gpus_per_model": 0.25}`` for Ray.
        **train_kwargs: :func:`unlearn.train` settings (as the target was trained).
    """
    pool, split, index = _pool(train, test)
    _check_queries(pool, queries)
    in_mask = balanced_halves(len(pool), k, seed)
    jobs = [Job(f"shadow-{m:04d}", np.flatnonzero(in_mask[m]), seed=seed * 1_000_003 + m) for m in range(k)]
    runner = get_farm(farm, folder, progress=progress, **(farm_options or {}))
    check_manifest(runner.folder, {"kind": "shadow_models", "k": k, "seed": seed, "queries": list(queries),
                                   "model": describe_factory(model_fn), "data": fingerprint(pool),
                                   "train": train_kwargs}, force=force)
    results = runner.run(train_and_predict, jobs, TrainTask(pool, model_fn, dict(train_kwargs), device, queries))
    labels = labels_of(pool)[0].numpy()
    if "signals" in results[jobs[0].key]:  # token sequences: the farm kept their signals
        signals = np.stack([results[job.key]["signals"] for job in jobs])
        return ShadowModels(None, labels, split, index, in_mask, tuple(queries), signals=signals)
    logits = np.stack([np.stack([results[job.key]["logits" if q == "identity" else f"logits_{q}"] for q in queries],
                                axis=1) for job in jobs])
    return ShadowModels(logits, labels, split, index, in_mask, tuple(queries))


def _check_queries(pool: Dataset, queries: tuple[str, ...]) -> None:
    """Refuse augmentation queries for token sequences (before any training)."""
    if not isinstance(task_of(pool), Classification) and tuple(queries) != ("identity",):
        raise ValueError(f"token sequences have no augmentation queries: expected ('identity',), got "
                         f"{tuple(queries)}")


@dataclass(frozen=True)
class UnlearnedShadowModels(PoolPredictions):
    """Shadows for U-LiRA: each trained on a random half of the pool and then made to unlearn part of that half
    with the method under test. ``unlearned_mask [K, N]``: the shadow trained on and then unlearned the example;
    ``out_mask [K, N]``: it never saw it."""

    unlearned_mask: np.ndarray
    out_mask: np.ndarray
    method: str


@dataclass(frozen=True)
class _UnlearnTask:
    train: TrainTask
    method: str
    method_config: dict
    forget_ids: dict
    keep_original: bool = False
    """Also predict with the model before it unlearns (``original_*`` keys): KLoM's no-unlearning baseline."""


def _train_unlearn_predict(job: Job, task: _UnlearnTask) -> dict[str, np.ndarray]:
    """Train on the job's half, unlearn its forget part with the method under test, predict the pool (a
    classifier's logits, token sequences' signals: :func:`unlearn.farm.local.predict_job`)."""
    from proxies import TrainingRecorder

    forget_ids = task.forget_ids[job.key]
    config = dict(task.method_config)
    # a method that schedules by a proxy (rum) reads it off each shadow's own training, as the target's did
    scheduling = {"proxy": config.pop("proxy", "confidence")} if get_method(task.method).takes("proxy") else {}
    recorder = TrainingRecorder(len(task.train.dataset)) if scheduling else None
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(job.seed)
        model = task.train.model_fn()
    model, _ = train(model, Subset(task.train.dataset, job.train_ids.tolist()), seed=job.seed,
                     device=task.train.device, progress=False, recorder=recorder, **task.train.train_kwargs)
    retain_ids = np.setdiff1d(job.train_ids, forget_ids)
    original = {f"original_{k}": v for k, v in predict_job(model, job, task.train).items()
                if k != "train_ids"} if task.keep_original else {}
    result = unlearn(model, forget=Subset(task.train.dataset, forget_ids.tolist()),
                     retain=Subset(task.train.dataset, retain_ids.tolist()), method=task.method,
                     config=config or None, seed=job.seed, recording=recorder, **scheduling)
    return {**predict_job(result.model, job, task.train), "forget_ids": forget_ids, **original}


def train_unlearned_shadow_models(train: Dataset, test: Dataset, model_fn: Callable[[], nn.Module], *, method: str,
                                  k: int, folder: str | os.PathLike, method_config: dict | None = None,
                                  forget_fraction: float = 0.2, seed: int = 0, farm="local",
                                  farm_options: dict | None = None, device: str | None = None, force: bool = False,
                                  progress: bool = True, **train_kwargs) -> UnlearnedShadowModels:
    """Train (or load) K shadows on balanced halves of ``train`` + ``test``, each then unlearning a random
    ``forget_fraction`` of its own training examples from ``train`` with ``method`` (U-LiRA's IN models).
    For ``method="rum"`` each shadow is trained with the training recorder and scheduled by the proxy named in
    ``method_config["proxy"]`` (default ``"confidence"``); the other keys of ``method_config`` configure RUM.
    ``farm`` and ``farm_options`` as in :func:`train_shadow_models`."""
    if not 0.0 < forget_fraction < 1.0:
        raise ValueError(f"forget_fraction must be in (0, 1), got {forget_fraction}")
    pool, split, index = _pool(train, test)
    in_mask = balanced_halves(len(pool), k, seed)
    rng = np.random.default_rng(seed + 1)
    jobs, forget_ids = [], {}
    for m in range(k):
        job = Job(f"unlearned-{m:04d}", np.flatnonzero(in_mask[m]), seed=seed * 1_000_003 + m)
        candidates = job.train_ids[split[job.train_ids] == "train"]
        forget_ids[job.key] = np.sort(rng.choice(candidates, max(1, round(forget_fraction * len(candidates))),
                                                 replace=False))
        jobs.append(job)
    runner = get_farm(farm, folder, progress=progress, **(farm_options or {}))
    check_manifest(runner.folder, {"kind": "unlearned_shadow_models", "k": k, "seed": seed, "method": method,
                                   "method_config": method_config or {}, "forget_fraction": forget_fraction,
                                   "model": describe_factory(model_fn), "data": fingerprint(pool),
                                   "train": train_kwargs}, force=force)
    task = _UnlearnTask(TrainTask(pool, model_fn, dict(train_kwargs), device), method, dict(method_config or {}),
                        forget_ids)
    results = runner.run(_train_unlearn_predict, jobs, task)
    unlearned = np.zeros_like(in_mask)
    for m, job in enumerate(jobs):
        unlearned[m, results[job.key]["forget_ids"]] = True
    labels = labels_of(pool)[0].numpy()
    if "signals" in results[jobs[0].key]:  # token sequences
        signals = np.stack([results[job.key]["signals"] for job in jobs])
        return UnlearnedShadowModels(None, labels, split, index, unlearned, ~in_mask, method, signals=signals)
    logits = np.stack([results[job.key]["logits"][:, None] for job in jobs])
    return UnlearnedShadowModels(logits, labels, split, index, unlearned, ~in_mask, method)
