"""Model signals for membership inference, extracted once per model and dataset.

For every example and augmentation query of a classifier: the logit-scaled confidence
``phi = log p_y - log sum_{j != y} p_j`` (computed in float64 from the logits: ``phi = z_y - logsumexp_{j != y} z_j``,
stable for any confidence), the cross-entropy loss, the true-class probability, the entropy and Song & Mittal's
modified entropy ``-(1 - p_y) log p_y - sum_{j != y} p_j log(1 - p_j)``.

For a token sequence under a causal language model (:meth:`AttackSignals.from_sequence_signals`), per sequence,
over its scored tokens, from one teacher-forced pass reduced per batch (:func:`proxies.predictions.predict_signals`,
never an ``[N, T, V]`` pile of logits):

- ``phi``: the mean token log-likelihood, minus the loss: the per-sequence log-likelihood LiRA fits its Gaussians to
  on language models (Carlini et al. 2022 score a sequence by its likelihood; a mean of many token log-probabilities
  is close to Gaussian across models, as the logit-scaled confidence of an image is);
- ``loss``: the mean token negative log-likelihood; ``p_true = exp(-loss)``: the geometric mean of the tokens'
  probabilities (the per-sequence probability RMIA compares across models, normalised for length: the product itself
  underflows and mostly measures length);
- ``entropy``: the mean entropy of the next-token distributions;
- ``correct``: exact match (every scored token is the argmax given the true prefix); ``token_accuracy``: the fraction
  of scored tokens that are (open-unlearning's exact memorization);
- no per-class features: ``probs`` is ``[N, 0]`` and ``modified_entropy`` NaN (a sequence has no class to take the
  modified entropy against; the SVC attack, which reads them, is not applicable to sequences).

>>> AttackSignals.from_logits(np.array([[2.0, 0.0]]), np.array([0]), [0]).token_accuracy.tolist()   # one target
[[1.0]]
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from proxies import predict
from proxies.predictions import predict_signals
from proxies.registries import Registry
from proxies.sequences import SEQUENCE_COLUMNS
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
    """Per-example signals ``[N, A]`` (A augmentation queries, first = identity) and probabilities ``[N, C]``
    (``[N, 0]`` for token sequences, which have no classes: see the module doc); ``labels`` as the data hold them
    (``[N]`` classes, ``[N, T]`` token labels), ``index`` their training indices ``[N]``.

    ``token_accuracy`` is the fraction of an example's targets the model gets right: a classifier's one label
    (``correct`` as a number), a sequence's scored tokens.
    """

    phi: np.ndarray
    loss: np.ndarray
    p_true: np.ndarray
    entropy: np.ndarray
    modified_entropy: np.ndarray
    correct: np.ndarray
    token_accuracy: np.ndarray
    probs: np.ndarray
    labels: np.ndarray
    index: np.ndarray

    @classmethod
    def from_logits(cls, logits: np.ndarray, labels: np.ndarray, index: np.ndarray) -> AttackSignals:
        """Attack signals from logits ``[N, A, C]`` (or ``[N, C]`` for one query), computed ``SIGNAL_ROWS`` rows at a
        time: the float64 temporaries stay bounded however many examples there are (each row's signals depend on
        that row alone)."""
        classes, span = np.shape(logits)[-1], np.asarray(labels)
        if span.size and (int(span.min()) < 0 or int(span.max()) >= classes):
            raise ValueError(f"the model returns {classes} logits but the labels span [{int(span.min())}, "
                             f"{int(span.max())}]: attacks need a model with a logit for every class")
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
        correct = z.argmax(-1) == lab
        return cls(phi=logit_scaled_confidence(z, lab), loss=-log_p_true, p_true=np.exp(log_p_true),
                   entropy=-(p * log_p).sum(-1), modified_entropy=modified_entropy(p, lab), correct=correct,
                   token_accuracy=correct.astype(np.float64), probs=p[:, 0, :], labels=labels,
                   index=np.asarray(index))

    @classmethod
    def from_sequence_signals(cls, signals: np.ndarray, labels: np.ndarray, index: np.ndarray) -> AttackSignals:
        """Attack signals of token sequences (the module doc) from their per-sequence signals ``[N, 6]``, columns
        :data:`proxies.sequences.SEQUENCE_COLUMNS` (:func:`proxies.predictions.predict_signals`' of a causal LM), one
        query. A sequence with no scored token has NaN signals (and ``correct`` False).

        >>> s = AttackSignals.from_sequence_signals(np.array([[0.5, 0.6, 1.2, 0.75, 0.0, 0.5]]),
        ...                                         np.array([[-100, 3, 4]]), [7])
        >>> s.phi.tolist(), s.probs.shape, bool(np.isnan(s.modified_entropy).all())
        ([[-0.75]], (1, 0), True)
        """
        values = np.asarray(signals, dtype=np.float64)
        if values.ndim != 2 or values.shape[1] != len(SEQUENCE_COLUMNS):
            raise ValueError(f"expected sequence signals [N, {len(SEQUENCE_COLUMNS)}] (columns {SEQUENCE_COLUMNS}), "
                             f"got {values.shape}")
        column = {name: values[:, [i]] for i, name in enumerate(SEQUENCE_COLUMNS)}
        loss = column["loss"]
        return cls(phi=-loss, loss=loss, p_true=np.exp(-loss), entropy=column["entropy"],
                   modified_entropy=np.full(loss.shape, np.nan), correct=column["correct"] == 1.0,
                   token_accuracy=column["token_accuracy"], probs=np.zeros((len(values), 0)),
                   labels=np.asarray(labels), index=np.asarray(index))

    @property
    def per_class(self) -> bool:
        """Whether these are a classifier's signals, with probabilities over classes (``probs``, the modified
        entropy): not a token sequence's."""
        return self.probs.shape[1] > 0

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


SignalExtractor = Callable[..., AttackSignals]
"""``extract(model, data, *, queries, batch_size, device) -> AttackSignals``: a kind of example's signals
(``batch_size`` None: the kind's default)."""


def _classifier_signals(model: nn.Module, data: Dataset, *, queries, batch_size: int | None,
                        device) -> AttackSignals:
    """A classifier's: its logits ``[N, A, C]`` for every query, then :meth:`AttackSignals.from_logits`."""
    logits, labels, index = predict_queries(model, data, queries, batch_size=batch_size or 1024, device=device)
    return AttackSignals.from_logits(logits.numpy(), labels.numpy(), index.numpy())


def _sequence_signals(model: nn.Module, data: Dataset, *, queries, batch_size: int | None, device) -> AttackSignals:
    """A causal LM's: each batch reduced to its sequences' signals where it is computed
    (:func:`proxies.predictions.predict_signals`), then :meth:`AttackSignals.from_sequence_signals`."""
    if tuple(queries) != ("identity",):
        raise ValueError(f"token sequences have no augmentation queries: expected ('identity',), got {tuple(queries)}")
    signals, labels, index = predict_signals(model, data, batch_size=batch_size or 64, device=device)
    return AttackSignals.from_sequence_signals(signals.numpy(), labels.numpy(), index.numpy())


_EXTRACTORS: Registry[SignalExtractor] = Registry("task's attack signals",
                                                 entries={"classification": _classifier_signals,
                                                          "causal_lm": _sequence_signals})


def register_signals(task: str, extract: SignalExtractor, *, force: bool = False) -> None:
    """How the attacks' signals come out of a model on the examples of the :class:`proxies.tasks.Task` named
    ``task``: ``extract(model, data, *, queries, batch_size, device) -> AttackSignals`` (numpy arrays; ``batch_size``
    None for the kind's default). Classification's predicts the logits and calls :meth:`AttackSignals.from_logits`;
    causal LMs' reduces each batch to per-sequence signals (:meth:`AttackSignals.from_sequence_signals`)."""
    _EXTRACTORS.register(task, extract, force=force)


def extract_signals(model: nn.Module, data: Dataset, *, queries=("identity",), batch_size: int | None = None,
                    device: torch.device | str | None = None) -> AttackSignals:
    """All signals of ``model`` on ``data`` for the given augmentation queries, as the examples' task makes them
    (:func:`register_signals`).

    Args:
        batch_size: examples per forward pass (default: 1024 images, 64 token sequences).

    Raises:
        ValueError: a task no signals are registered for; queries other than identity for token sequences.
    """
    extract = _EXTRACTORS.get(task_of(data).name)
    return extract(model, data, queries=queries, batch_size=batch_size, device=device)
