"""Ground truth: the Feldman-Zhang memorization score and the C-score, from the predictions of K models trained on
random subsets.

``mem(i) = P[f_S(x_i) = y_i] - P[f_{S minus i}(x_i) = y_i]``, estimated as
``mean(correct_i | i in subset) - mean(correct_i | i not in subset)`` over K models each trained on a random 70%.
The C-score (Jiang et al.) is the held-out term alone. The estimators here take the models' predictions
(:class:`SubsetModels`) and train nothing: :func:`unlearn.farm.subset_models.train_subset_models` trains the models
through the model farm and returns them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from .registry import register_proxy

__all__ = ["SubsetModels", "feldman_zhang"]


def feldman_zhang(correct: np.ndarray, in_mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(memorization, c_score)`` per example from ``correct[K, N]`` (bool, or a score in [0, 1] such as a token
    accuracy: then the memorization is Zhang et al.'s counterfactual memorization) and ``in_mask[K, N]`` (bool).

    An example never (or always) in a subset has NaN scores: its IN (or OUT) term is undefined.

    >>> correct = np.array([[1, 1], [1, 0], [0, 0], [1, 1]], dtype=bool)
    >>> in_mask = np.array([[1, 1], [1, 0], [0, 1], [0, 0]], dtype=bool)
    >>> feldman_zhang(correct, in_mask)
    (array([0.5, 0. ]), array([0.5, 0.5]))
    """
    correct = np.asarray(correct, dtype=np.float64)
    in_mask = np.asarray(in_mask, dtype=bool)
    if correct.shape != in_mask.shape or correct.ndim != 2:
        raise ValueError(f"correct and in_mask must both be [K, N], got {correct.shape} and {in_mask.shape}")
    n_in = in_mask.sum(axis=0)
    n_out = (~in_mask).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        p_in = np.where(in_mask, correct, 0.0).sum(axis=0) / n_in
        p_out = np.where(in_mask, 0.0, correct).sum(axis=0) / n_out
    p_in = np.where(n_in > 0, p_in, np.nan)
    p_out = np.where(n_out > 0, p_out, np.nan)
    return p_in - p_out, p_out


@dataclass(frozen=True)
class SubsetModels:
    """Predictions of K subset models on every example: ``logits[K, N, C]``, ``in_mask[K, N]`` (whether model k
    trained on example n), ``labels[N]`` and the examples' training-set ``index[N]``.

    Language models keep no logits (``[K, N, T, V]`` would not fit): their ``accuracy[K, N]`` is each sequence's
    teacher-forced token accuracy under each model, the measure M of counterfactual memorization (Zhang et al.
    2021, ``E[M | in] - E[M | out]``), and ``logits`` and ``labels`` are None.

    >>> logits = np.array([[[2.0, 0.0], [0.0, 1.0]], [[0.0, 1.0], [0.0, 1.0]]])
    >>> models = SubsetModels(logits, np.array([[1, 0], [0, 1]], dtype=bool), np.array([0, 1]), np.array([7, 9]))
    >>> models.scores()["memorization"].to_dict()
    {7: 1.0, 9: 0.0}
    """

    logits: np.ndarray | None
    in_mask: np.ndarray
    labels: np.ndarray | None
    index: np.ndarray
    accuracy: np.ndarray | None = None

    @property
    def correct(self) -> np.ndarray:
        """``[K, N]``: each model's top-1 correctness, or its token accuracy on a sequence."""
        if self.accuracy is not None:
            return self.accuracy
        return self.logits.argmax(axis=2) == self.labels[None, :]

    def scores(self) -> pd.DataFrame:
        """Memorization, C-score and the IN/OUT model counts per example."""
        mem, c_score = feldman_zhang(self.correct, self.in_mask)
        return pd.DataFrame({"memorization": mem, "c_score": c_score, "models_in": self.in_mask.sum(0),
                             "models_out": (~self.in_mask).sum(0)}, index=pd.Index(self.index, name="index"))


@register_proxy("memorization", higher_is_memorized=True, needs=("subset_models",))
def memorization(subset_models: SubsetModels) -> pd.Series:
    """Feldman-Zhang memorization: accuracy on an example when trained on it minus when not (for token sequences,
    counterfactual memorization: the same of the token accuracy)."""
    return subset_models.scores()["memorization"]


@register_proxy("c_score", higher_is_memorized=False, needs=("subset_models",))
def c_score(subset_models: SubsetModels) -> pd.Series:
    """C-score: expected accuracy on an example of models that did not train on it."""
    return subset_models.scores()["c_score"]
