"""Proxies read off a training recording: the confidence family, learning events and cumulative sample loss.

A recording of token sequences (:mod:`proxies.sequences`) holds each sequence's per-token means of the same
columns, so every proxy here means the same per token: ``confidence`` is the mean probability of the next token,
``accuracy`` and the learning events are of exact match (every token right), ``csl`` sums the mean token NLL; its
``token_accuracy`` column has a proxy of its own.

On token sequences the confidence family and CSL point the other way than on images (``directions``): the better a
model fits a fortune while training, the more counterfactually memorized it is (benchmarks/README.md, "Language
models on fortunes": confidence +0.45, token accuracy +0.62, CSL -0.54 Spearman with counterfactual memorization).

They cost nothing beyond training: the :class:`~proxies.TrainingRecorder` already holds every presentation.
Averages skip presentations an example missed (``drop_last``); an example never presented scores NaN.
"""

from __future__ import annotations

import numpy as np
import torch

from .kernels import learning_events
from .recording import TrainingRecorder
from .registry import register_proxy

SEQUENCES_REVERSED = {"causal_lm": True}
"""The confidence family's direction on token sequences: a higher score is *more* memorized there."""


def _mean(recording: TrainingRecorder, column: str) -> np.ndarray:
    values = recording[column]
    if recording.num_epochs == 0:
        raise ValueError("the recording has no epochs")
    with np.errstate(invalid="ignore"):
        counts = (~np.isnan(values)).sum(axis=0)
        return np.where(counts > 0, np.nansum(values, axis=0) / np.maximum(counts, 1), np.nan)


@register_proxy("confidence", higher_is_memorized=False, needs=("recording",), directions=SEQUENCES_REVERSED)
def confidence(recording: TrainingRecorder) -> np.ndarray:
    """Mean true-class probability over training presentations."""
    return _mean(recording, "confidence")


@register_proxy("max_confidence", higher_is_memorized=False, needs=("recording",), directions=SEQUENCES_REVERSED)
def max_confidence(recording: TrainingRecorder) -> np.ndarray:
    """Mean max-class probability over training presentations."""
    return _mean(recording, "max_confidence")


@register_proxy("negative_entropy", higher_is_memorized=False, needs=("recording",), directions=SEQUENCES_REVERSED)
def negative_entropy(recording: TrainingRecorder) -> np.ndarray:
    """Mean negative prediction entropy, sum_k p_k log p_k, over training presentations."""
    return -_mean(recording, "entropy")


@register_proxy("accuracy", higher_is_memorized=False, needs=("recording",), directions=SEQUENCES_REVERSED)
def accuracy(recording: TrainingRecorder) -> np.ndarray:
    """Fraction of training presentations classified correctly."""
    return _mean(recording, "correct")


@register_proxy("token_accuracy", higher_is_memorized=True, needs=("recording",), tasks=("causal_lm",))
def token_accuracy(recording: TrainingRecorder) -> np.ndarray:
    """Mean fraction of a sequence's tokens predicted by argmax over training presentations (token sequences)."""
    if "token_accuracy" not in recording.columns:
        raise ValueError("token_accuracy is a proxy of token sequences: this recording holds "
                         f"{list(recording.columns)} (a classifier's); use 'accuracy'")
    return _mean(recording, "token_accuracy")


@register_proxy("forgetting_events", higher_is_memorized=True, needs=("recording",))
def forgetting_events(recording: TrainingRecorder, backend: str = "auto",
                      device: torch.device | str | None = None) -> np.ndarray:
    """Number of learned-then-forgotten transitions (Toneva et al.); never learned counts every presentation."""
    return _events(recording, backend, device)["forgetting_events"]


@register_proxy("first_learned", higher_is_memorized=True, needs=("recording",))
def first_learned(recording: TrainingRecorder, backend: str = "auto",
                  device: torch.device | str | None = None) -> np.ndarray:
    """First presentation at which the example was classified correctly (number of presentations if never)."""
    return _events(recording, backend, device)["first_learned"]


@register_proxy("presentations_needed", higher_is_memorized=True, needs=("recording",))
def presentations_needed(recording: TrainingRecorder, backend: str = "auto",
                         device: torch.device | str | None = None) -> np.ndarray:
    """Presentations until the example stayed learned: last incorrect presentation + 1."""
    return _events(recording, backend, device)["presentations_needed"]


@register_proxy("csl", higher_is_memorized=True, needs=("recording",), directions={"causal_lm": False})
def csl(recording: TrainingRecorder) -> np.ndarray:
    """Cumulative sample loss: the sum of the training loss over presentations (Ravikumar et al. 2025)."""
    if recording.num_epochs == 0:
        raise ValueError("the recording has no epochs")
    loss = recording["loss"]
    return np.where(np.isnan(loss).all(axis=0), np.nan, np.nansum(loss, axis=0))


def _events(recording: TrainingRecorder, backend: str, device: torch.device | str | None = None
            ) -> dict[str, np.ndarray]:
    """Learning events over presentations; an epoch an example missed repeats its previous presentation.

    The counting runs on ``device`` (default: the CPU, where the recording is): on a GPU the ``[E, N]`` correctness
    matrix is copied there and ``backend="auto"`` picks the CUDA kernel; the counts come back to the CPU.
    """
    correct = recording["correct"]
    missing = np.isnan(correct)
    if missing.any():  # forward-fill along epochs so a missed epoch adds no transition; leading gaps count as wrong
        filled = np.where(missing, 0.0, correct)
        for epoch in range(1, len(filled)):
            filled[epoch] = np.where(missing[epoch], filled[epoch - 1], filled[epoch])
        correct = filled
    correct = torch.from_numpy(correct > 0.5)
    events = learning_events(correct if device is None else correct.to(device), backend=backend)
    events = {k: v.cpu().numpy() for k, v in events.items()}
    never = missing.all(axis=0)  # as float with NaN only where needed: counts stay integers otherwise
    return {k: np.where(never, np.nan, v) if never.any() else v for k, v in events.items()}


@register_proxy("early_accuracy", higher_is_memorized=False, needs=("recording",))
def early_accuracy(recording: TrainingRecorder, fraction: float = 0.9) -> np.ndarray:
    """Correctness at the first epoch whose training accuracy reaches ``fraction`` of the last epoch's.

    An estimate of the accuracy a model that never saw the example would have on it, Feldman and Zhang's
    ``c_score``: up to that epoch the model has fitted what generalizes and memorized little (how fast an example is
    learned tracks its C-score, Jiang et al. 2021). An example not presented in that epoch takes its next
    presentation's value (NaN if none). On token sequences it reads the token accuracy (the fraction of a sequence's
    tokens right, not exact match): an estimate of a sequence's token accuracy under a model that never saw it.
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction!r}")
    correct = recording["token_accuracy" if "token_accuracy" in recording.columns else "correct"]
    if recording.num_epochs == 0:
        raise ValueError("the recording has no epochs")
    presented_any = ~np.isnan(correct).all(axis=1)
    if not presented_any.any():
        raise ValueError("the recording has no presentations")
    curve = np.full(len(correct), np.nan)
    curve[presented_any] = np.nanmean(correct[presented_any], axis=1)
    final = curve[presented_any][-1]  # the last epoch that presented anything
    epoch = int(np.argmax(curve >= fraction * final))  # NaN (an empty epoch) never qualifies
    later = correct[epoch:]
    presented = ~np.isnan(later)
    first = np.argmax(presented, axis=0)
    values = later[first, np.arange(correct.shape[1])]
    return np.where(presented.any(axis=0), values, np.nan).astype(np.float64)
