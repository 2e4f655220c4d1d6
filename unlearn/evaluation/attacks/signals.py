"""Model signals for membership inference, extracted once per model and dataset.

For every example and augmentation query: the logit-scaled confidence ``phi = log p_y - log sum_{j != y} p_j``
(computed in float64 from the logits: ``phi = z_y - logsumexp_{j != y} z_j``, stable for any confidence), the
cross-entropy loss, the true-class probability, the entropy and Song & Mittal's modified entropy
``-(1 - p_y) log p_y - sum_{j != y} p_j log(1 - p_j)``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from proxies import predict
from proxies.registries import Registry
from proxies.tasks import task_of

__all__ = ["QUERIES", "AttackSignals", "extract_signals", "logit_scaled_confidence", "modified_entropy",
           "register_signals"]

QUERIES = {"identity": lambda x: x, "hflip": lambda x: torch.flip(x, dims=[-1])}
"""Augmentation queries by name (``hflip`` only where the data allows it, e.g. natural images)."""


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """``log softmax`` over the last axis in float64, stably: the one place the attacks turn logits into
    probabilities (the training recorder's float32 kernels are :func:`proxies.signals`).

    >>> np.exp(log_softmax(np.array([[0.0, np.log(3.0)]]))).round(6)
    array([[0.25, 0.75]])
    """
    z = np.asarray(logits, dtype=np.float64)
    peak = z.max(-1, keepdims=True)
    return z - (peak + np.log(np.exp(z - peak).sum(-1, keepdims=True)))


def true_class_log_probability(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """``log p_y`` of each row of logits ``[..., C]`` (float64), ``labels`` shaped like the rows."""
    return np.take_along_axis(log_softmax(logits), np.asarray(labels)[..., None], axis=-1)[..., 0]


def logit_scaled_confidence(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """``phi = log p_y - log(1 - p_y)`` per row, exactly, from logits ``[..., C]`` in float64.

    >>> logit_scaled_confidence(np.array([[2.0, 0.0]]), np.array([0])).round(6)
    array([2.])
    """
    z = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels)
    true = np.take_along_axis(z, labels[..., None], axis=-1)[..., 0]
    others = z.copy()
    np.put_along_axis(others, labels[..., None], -np.inf, axis=-1)
    if z.shape[-1] == 1:
        return np.full(true.shape, np.inf)
    peak = others.max(axis=-1)
    return true - (peak + np.log(np.exp(others - peak[..., None]).sum(axis=-1)))


def modified_entropy(probs: np.ndarray, labels: np.ndarray, eps: float = 1e-30) -> np.ndarray:
    """Song & Mittal's modified entropy ``-(1 - p_y) log p_y - sum_{j != y} p_j log(1 - p_j)``.

    >>> round(float(modified_entropy(np.array([[0.7, 0.2, 0.1]]), np.array([0]))[0]), 6)
    0.162167
    """
    p = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels)
    p_true = np.take_along_axis(p, labels[..., None], axis=-1)[..., 0]
    others = -p * np.log(np.clip(1 - p, eps, None))
    np.put_along_axis(others, labels[..., None], 0.0, axis=-1)
    return -(1 - p_true) * np.log(np.clip(p_true, eps, None)) + others.sum(axis=-1)


SIGNAL_ROWS = 65_536
"""Rows of logits :meth:`AttackSignals.from_logits` turns into signals at once."""


@dataclass(frozen=True)
class AttackSignals:
    """Per-example signals ``[N, A]`` (A augmentation queries, first = identity) and probabilities ``[N, C]``."""

    phi: np.ndarray
    loss: np.ndarray
    p_true: np.ndarray
    entropy: np.ndarray
    modified_entropy: np.ndarray
    correct: np.ndarray
    probs: np.ndarray
    labels: np.ndarray
    index: np.ndarray

    @classmethod
    def from_logits(cls, logits: np.ndarray, labels: np.ndarray, index: np.ndarray) -> AttackSignals:
        """Attack signals from logits ``[N, A, C]`` (or ``[N, C]`` for one query), computed ``SIGNAL_ROWS`` rows at a
        time: the float64 temporaries stay bounded however many examples there are (each row's signals depend on
        that row alone)."""
        if len(logits) > SIGNAL_ROWS:
            parts = [cls.from_logits(logits[i:i + SIGNAL_ROWS], labels[i:i + SIGNAL_ROWS], index[i:i + SIGNAL_ROWS])
                     for i in range(0, len(logits), SIGNAL_ROWS)]
            return cls(**{f.name: np.concatenate([getattr(part, f.name) for part in parts]) for f in fields(cls)})
        z = np.asarray(logits, dtype=np.float64)
        if z.ndim == 2:
            z = z[:, None, :]
        labels = np.asarray(labels)
        lab = np.broadcast_to(labels[:, None], z.shape[:2])
        log_p = log_softmax(z)
        p = np.exp(log_p)
        log_p_true = np.take_along_axis(log_p, lab[..., None], axis=-1)[..., 0]
        return cls(phi=logit_scaled_confidence(z, lab), loss=-log_p_true, p_true=np.exp(log_p_true),
                   entropy=-(p * log_p).sum(-1), modified_entropy=modified_entropy(p, lab),
                   correct=(z.argmax(-1) == lab), probs=p[:, 0, :], labels=labels, index=np.asarray(index))

    def take(self, positions) -> AttackSignals:
        """The signals of the examples at ``positions`` (rows, in that order), e.g. a forget set's rows of the
        signals of the whole training set.

        >>> logits = np.array([[2.0, 0.0], [0.0, 1.0], [1.0, 3.0]])
        >>> s = AttackSignals.from_logits(logits, np.array([0, 1, 1]), [7, 8, 9])
        >>> s.take(s.locate([9, 7])).index.tolist(), s.take([1]).correct.tolist()
        ([9, 7], [[True]])
        """
        positions = np.asarray(positions, dtype=np.intp)
        return type(self)(**{f.name: getattr(self, f.name)[positions] for f in fields(self)})

    def locate(self, index) -> np.ndarray:
        """Row positions of the examples with these ``index`` values (training-set indices for signals of the
        training set).

        Raises:
            ValueError: an index is not among these signals' examples.
        """
        index = np.asarray(index)
        missing = ~np.isin(index, self.index)
        if missing.any():
            raise ValueError(f"{int(missing.sum())} of {len(index)} examples are not among the signals' "
                             f"{len(self.index)} examples (e.g. index {index[missing][0]})")
        order = np.argsort(self.index, kind="stable")
        return order[np.searchsorted(self.index, index, sorter=order)]


@torch.no_grad()
def predict_queries(model: nn.Module, data: Dataset, queries=("identity",), *, batch_size: int = 1024,
                    device: torch.device | str | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Eval-mode logits ``[N, A, C]`` for each augmentation query, labels ``[N]`` and training indices ``[N]``, on
    the CPU; ``device``: where to predict (default: where the model is; a model elsewhere is copied there)."""
    unknown = [q for q in queries if q not in QUERIES]
    if unknown:
        raise ValueError(f"unknown queries {unknown}; expected some of {sorted(QUERIES)}")
    return predict(model, data, batch_size=batch_size, device=device, views=[QUERIES[q] for q in queries])


_FROM_OUTPUTS: Registry[Callable[..., AttackSignals]] = Registry("task's attack signals",
                                                                entries={"classification": AttackSignals.from_logits})


def register_signals(task: str, from_outputs: Callable[..., AttackSignals], *, force: bool = False) -> None:
    """How the attacks' signals come out of a :class:`proxies.tasks.Task`'s outputs:
    ``from_outputs(outputs [N, A, ...], targets [N, ...], index [N]) -> AttackSignals`` (numpy arrays), for the
    task named ``task``; classification's is :meth:`AttackSignals.from_logits`."""
    _FROM_OUTPUTS.register(task, from_outputs, force=force)


def extract_signals(model: nn.Module, data: Dataset, *, queries=("identity",), batch_size: int = 1024,
                    device: torch.device | str | None = None) -> AttackSignals:
    """All signals of ``model`` on ``data`` for the given augmentation queries, as the examples' task makes them
    (:func:`register_signals`).

    Raises:
        ValueError: a task no signals are registered for.
    """
    from_outputs = _FROM_OUTPUTS.get(task_of(data).name)
    logits, labels, index = predict_queries(model, data, queries, batch_size=batch_size, device=device)
    return from_outputs(logits.numpy(), labels.numpy(), index.numpy())
