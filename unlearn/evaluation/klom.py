"""KLoM (Georgiev et al. 2024, "Attribute-to-Delete"; the EasyDUB benchmark): how far, per example, the margins of
unlearned models lie from the margins of oracles retrained without the forget set.

An example's **margin** under a model is ``z_y - logsumexp_{j != y} z_j`` (its logit-scaled confidence, LiRA's
``phi``). Take N originals trained with different seeds, each unlearned by the method under test, and N oracles
retrained on the retain set alone: per example, KLoM is ``KL(p || q)`` in nats between the histogram ``p`` of the
unlearned models' margins and the histogram ``q`` of the oracles' (:func:`klom`). Zero means the unlearned models are
distributed like models that never saw the forget set, at that example; the benchmark reports the 95th
percentile over the forget, retain and validation examples. :func:`train_klom_models` trains the 2N models
through the model farm (cached, resumable, Ray).

>>> rng = np.random.default_rng(0)
>>> oracle = rng.normal(0.0, 1.0, (200, 3))
>>> same, moved = klom(rng.normal(0.0, 1.0, (200, 3)), oracle), klom(rng.normal(4.0, 1.0, (200, 3)), oracle)
>>> same.round(2).tolist(), moved.round(2).tolist()  # (the histograms of 200 draws differ a little by chance)
([0.33, 0.14, 0.14], [7.26, 8.8, 8.51])
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

from proxies.tasks import Classification, task_of

from ..data.sources import labels_of
from ..farm.local import Job, TrainTask, check_manifest, describe_factory, fingerprint, train_and_predict
from ..farm.registry import get_farm
from .attacks.signals import logit_scaled_confidence
from .shadows import _pool, _train_unlearn_predict, _UnlearnTask

__all__ = ["FLOOR", "KLoMModels", "klom", "margins", "train_klom_models"]

FLOOR = 1e-5
"""The probability an oracle's empty bin is given where the unlearned models have mass (EasyDUB's ``eps``)."""

GROUPS = ("forget", "retain", "validation")


def margins(logits, labels) -> np.ndarray:
    """``z_y - logsumexp_{j != y} z_j`` per row of logits ``[..., C]``, in float64 (the KLoM margin)."""
    return logit_scaled_confidence(np.asarray(logits, dtype=np.float64), np.asarray(labels))


def klom(unlearned, oracle, *, bins: int = 20, clip: float = 100.0) -> np.ndarray:
    """KLoM of each example (column), in nats, from the margins ``[models, examples]`` of unlearned models and of
    oracles (the two may count different models).

    Per example: both sides clipped to ``[-clip, clip]``; ``bins`` equal-width bins over the range of the two
    together (a range of zero width becomes ``[lo, lo + 1]``); ``p`` and ``q`` the fractions of the unlearned
    models' and the oracles' margins in each bin; ``q`` floored at :data:`FLOOR` where ``p > 0``; then
    ``KL(p || q) = sum_{p > 0} p log(p / q)``, with ``p`` the unlearned side (EasyDUB's ``klom_from_margins``; one
    public copy, data-unlearning-bench's ``load_klom``, swaps the two).

    Every margin counts: the right edge of the range belongs to the last bin (as ``np.histogram`` has it).
    EasyDUB's binning (``np.digitize`` over bins 1..20) drops the margins equal to the combined maximum, so where
    a side's largest margin is the maximum its histogram misses it; the two agree where no margin equals it.

    Raises:
        ValueError: arrays that are not 2-d with the same examples, margins that are not finite, ``bins < 1`` or
            ``clip <= 0``.
    """
    p_side, q_side = _margins_array(unlearned, "unlearned"), _margins_array(oracle, "oracle")
    if p_side.shape[1] != q_side.shape[1]:
        raise ValueError(f"unlearned and oracle margins must cover the same examples: got {p_side.shape[1]} and "
                         f"{q_side.shape[1]} columns")
    if isinstance(bins, bool) or not isinstance(bins, int) or bins < 1:
        raise ValueError(f"bins must be an int >= 1, got {bins!r}")
    if not clip > 0:
        raise ValueError(f"clip must be > 0, got {clip!r}")
    p_side, q_side = np.clip(p_side, -clip, clip), np.clip(q_side, -clip, clip)
    low = np.minimum(p_side.min(0), q_side.min(0))
    high = np.maximum(p_side.max(0), q_side.max(0))
    high = np.where(high > low, high, low + 1.0)
    edges = np.linspace(low, high, bins + 1, axis=-1)  # [examples, bins + 1]
    p, q = _fractions(p_side, edges), _fractions(q_side, edges)
    q = np.where(p > 0, np.maximum(q, FLOOR), q)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * np.log(p / q), 0.0)
    return terms.sum(-1)


def _margins_array(values, name: str) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 2 or 0 in array.shape:
        raise ValueError(f"{name} margins must be a non-empty [models, examples] array, got shape {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError(f"{name} margins hold {int((~np.isfinite(array)).sum())} values that are not finite")
    return array


def _fractions(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """The fraction of each column's values ``[models, examples]`` in each of its bins ``edges [examples, B+1]``:
    bin b holds ``edges[b] <= v < edges[b + 1]``, the last bin its right edge too."""
    models, count = values.shape
    bins = edges.shape[1] - 1
    position = np.stack([np.searchsorted(edges[i], values[:, i], side="right") - 1 for i in range(count)], axis=1)
    position = np.clip(position, 0, bins - 1)  # the right edge (the maximum) into the last bin
    flat = position + bins * np.arange(count)
    counts = np.bincount(flat.ravel(), minlength=bins * count).reshape(count, bins)
    return counts / models


@dataclass(frozen=True)
class KLoMModels:
    """The margins of N unlearned models and N oracles on every training and validation example.

    ``unlearned``, ``oracle``: ``[N, examples]``; ``group``: each example's ``"forget"``, ``"retain"`` or
    ``"validation"``; ``index``: its index in its split; ``original``: the originals' margins before they
    unlearned (the no-unlearning baseline), where known."""

    unlearned: np.ndarray
    oracle: np.ndarray
    group: np.ndarray
    index: np.ndarray
    original: np.ndarray | None = None

    def scores(self, *, bins: int = 20, clip: float = 100.0) -> pd.DataFrame:
        """Each example's KLoM: columns ``group``, ``index``, ``klom`` and (with the originals' margins)
        ``klom_original``, the KLoM of the models before unlearning."""
        table = pd.DataFrame({"group": self.group, "index": self.index,
                              "klom": klom(self.unlearned, self.oracle, bins=bins, clip=clip)})
        if self.original is not None:
            table["klom_original"] = klom(self.original, self.oracle, bins=bins, clip=clip)
        return table

    def summary(self, *, percentile: float = 95.0, bins: int = 20, clip: float = 100.0) -> pd.DataFrame:
        """The percentile of each group's KLoM (the benchmark's P95): rows forget, retain and validation,
        columns ``unlearned`` and (with the originals' margins) ``original``."""
        table = self.scores(bins=bins, clip=clip).rename(columns={"klom": "unlearned", "klom_original": "original"})
        columns = [c for c in ("original", "unlearned") if c in table]
        present = [g for g in GROUPS if (table["group"] == g).any()]
        return table.groupby("group")[columns].quantile(percentile / 100).loc[present]


def train_klom_models(train: Dataset, val: Dataset, model_fn: Callable[[], nn.Module], *, method: str,
                      forget_ids, n: int, folder: str | os.PathLike, method_config: dict | None = None,
                      seed: int = 0, farm="local", farm_options: dict | None = None, device: str | None = None,
                      force: bool = False, progress: bool = True, **train_kwargs) -> KLoMModels:
    """Train (or load from ``folder``) KLoM's 2N models and return their margins on ``train`` + ``val``.

    N originals, each trained on all of ``train`` with its own seed and then unlearning ``forget_ids`` with
    ``method`` (a method that schedules by a proxy, rum, reads it off each original's own training, as the
    U-LiRA shadows do), and N oracles, each trained on ``train`` without ``forget_ids`` with its own seed. Each
    model is a job of the farm: cached in ``folder``, resumed after an interruption, run on Ray with
    ``farm="ray"``.

    Args:
        train, val: the training set the request deletes from, and held-out examples of the same distribution.
        model_fn: picklable factory of the architecture; **train_kwargs: the :func:`unlearn.train` recipe.
        method, method_config: the unlearning method under test and its settings (for rum, ``"proxy"`` too).
        forget_ids: the training indices to delete.
        n: models on each side (EasyDUB uses 200 originals and 2,000 oracles; a handful gives a coarse estimate).

    Raises:
        ValueError: token sequences (margins are a classifier's), ``n < 2``, or forget ids outside ``train``.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise ValueError(f"n must be an int >= 2 (a histogram of one model's margin says little), got {n!r}")
    pool, split, index = _pool(train, val)
    if not isinstance(task_of(pool), Classification):
        raise ValueError("KLoM compares classifiers' margins; token sequences have none")
    forget_ids = np.unique(np.asarray(forget_ids, dtype=np.int64))
    in_train = split == "train"
    forget = in_train & np.isin(index, forget_ids)
    if forget.sum() != len(forget_ids) or forget.sum() == in_train.sum():
        raise ValueError(f"forget_ids must be {len(forget_ids)} distinct training indices of {int(in_train.sum())}, "
                         "leaving some to retain")
    retain = in_train & ~forget
    positions = np.flatnonzero(forget)
    originals = [Job(f"original-{m:04d}", np.flatnonzero(in_train), seed=seed * 1_000_003 + m) for m in range(n)]
    oracles = [Job(f"oracle-{m:04d}", np.flatnonzero(retain), seed=seed * 1_000_003 + n + m) for m in range(n)]
    runner = get_farm(farm, folder, progress=progress, **(farm_options or {}))
    check_manifest(runner.folder, {"kind": "klom_models", "n": n, "seed": seed, "method": method,
                                   "method_config": method_config or {}, "forget": positions.tolist(),
                                   "model": describe_factory(model_fn), "data": fingerprint(pool),
                                   "train": train_kwargs}, force=force)
    task = TrainTask(pool, model_fn, dict(train_kwargs), device)
    unlearn_task = _UnlearnTask(task, method, dict(method_config or {}), {job.key: positions for job in originals},
                                keep_original=True)
    labels = labels_of(pool)[0].numpy()
    results = {**runner.run(_train_unlearn_predict, originals, unlearn_task),
               **runner.run(train_and_predict, oracles, task)}
    unlearned, original, oracle = (np.stack([margins(results[job.key][key], labels) for job in jobs]) for key, jobs
                                   in (("logits", originals), ("original_logits", originals), ("logits", oracles)))
    group = np.where(forget, "forget", np.where(retain, "retain", "validation"))
    return KLoMModels(unlearned, oracle, group, index, original)
