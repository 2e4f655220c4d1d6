"""The NeurIPS 2023 machine-unlearning competition's forgetting score.

For each forget example, N unlearned and N retrained models give two samples of its logit-scaled confidence. Every
single- and double-threshold rule that calls a model "unlearned" gives a false-positive and a false-negative rate,
and with them a lower bound on the privacy epsilon that separates the two samples:
``eps = max(log(1 - d - FPR) - log FNR, log(1 - d - FNR) - log FPR)`` with ``d = 1e-5``, capped at 50 (a rule
with exactly one rate at zero is skipped, as the competition's scorer does). Each
example's epsilon falls in a bin of width 0.5 worth ``1, 1/2, 1/4, ...``; the forgetting quality is the average, and
the final score multiplies it by ``RA_u/RA_r * TA_u/TA_r``.

The threshold sweeps are vectorised over examples and thresholds (cumulative counts over the sorted samples).
"""

from __future__ import annotations

import numpy as np

__all__ = ["epsilons", "forgetting_quality", "forgetting_score"]

DELTA = 1e-5
CAP = 50.0


def _eps(fpr: np.ndarray, fnr: np.ndarray, delta: float) -> np.ndarray:
    """Epsilon of each (FPR, FNR) rule, as the competition scored it: a rule with exactly one of the two rates at
    zero says nothing at this sample size and is skipped (-inf); both at zero separates perfectly (+inf)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        a = np.log(np.clip(1 - delta - fpr, 0, None)) - np.log(fnr)
        b = np.log(np.clip(1 - delta - fnr, 0, None)) - np.log(fpr)
    eps = np.fmax(np.nan_to_num(a, nan=-np.inf, posinf=np.inf), np.nan_to_num(b, nan=-np.inf, posinf=np.inf))
    eps = np.where((fpr == 0) ^ (fnr == 0), -np.inf, eps)
    return np.where((fpr == 0) & (fnr == 0), np.inf, eps)


def epsilons(unlearned, retrained, *, delta: float = DELTA, cap: float = CAP) -> np.ndarray:
    """Per-example epsilon from ``unlearned [Nu, E]`` and ``retrained [Nr, E]`` signals (models x examples).

    Rules: "unlearned if t1 <= phi < t2" and its complement, over every pair of cut points between distinct
    sorted values (single thresholds are the pairs that touch an end).
    """
    u = np.asarray(unlearned, dtype=np.float64)
    r = np.asarray(retrained, dtype=np.float64)
    if u.ndim != 2 or r.ndim != 2 or u.shape[1] != r.shape[1] or len(u) == 0 or len(r) == 0:
        raise ValueError(f"expected unlearned [Nu, E] and retrained [Nr, E] with the same E, got {u.shape}, {r.shape}")
    values = np.concatenate([u, r]).T  # [E, n]
    is_u = np.r_[np.ones(len(u)), np.zeros(len(r))]
    order = np.argsort(values, axis=1, kind="stable")
    sorted_values = np.take_along_axis(values, order, axis=1)
    labels = is_u[order]  # [E, n]
    zeros = np.zeros((len(values), 1))
    cum_u = np.concatenate([zeros, np.cumsum(labels, axis=1)], axis=1)  # [E, n+1]: unlearned below each cut
    cum_r = np.concatenate([zeros, np.cumsum(1 - labels, axis=1)], axis=1)
    # a cut between two equal values is no threshold
    valid = np.ones_like(cum_u, dtype=bool)
    valid[:, 1:-1] = sorted_values[:, 1:] > sorted_values[:, :-1]
    inside_u = cum_u[:, None, :] - cum_u[:, :, None]  # [E, i, j]: unlearned with cut_i <= rank < cut_j
    inside_r = cum_r[:, None, :] - cum_r[:, :, None]
    pairs = valid[:, :, None] & valid[:, None, :] & np.triu(np.ones((cum_u.shape[1],) * 2, dtype=bool))
    fpr = inside_r / len(r)
    fnr = 1 - inside_u / len(u)
    eps = np.fmax(_eps(fpr, fnr, delta), _eps(1 - fpr, 1 - fnr, delta))  # the interval and its complement
    eps = np.where(pairs, eps, -np.inf).max(axis=(1, 2))
    return np.clip(eps, 0.0, cap)


def forgetting_quality(eps: np.ndarray, *, bin_width: float = 0.5) -> float:
    """Average over examples of ``2^-bin`` where ``bin = floor(eps / bin_width)``: 1 is perfect forgetting.

    >>> forgetting_quality(np.array([0.0, 0.6, 1.2]))
    0.5833333333333334
    """
    eps = np.asarray(eps, dtype=np.float64)
    return float(np.mean(0.5 ** np.floor(eps / bin_width)))


def forgetting_score(unlearned, retrained, *, retain_accuracy: tuple[float, float],
                     test_accuracy: tuple[float, float], delta: float = DELTA) -> dict[str, float]:
    """The competition score: forgetting quality times ``RA_u/RA_r * TA_u/TA_r``.

    Args:
        unlearned, retrained: ``[N, E]`` signals of N unlearned / retrained models on E forget examples.
        retain_accuracy, test_accuracy: ``(unlearned, retrained)`` mean accuracies.
    """
    quality = forgetting_quality(epsilons(unlearned, retrained, delta=delta))
    utility = (retain_accuracy[0] / retain_accuracy[1]) * (test_accuracy[0] / test_accuracy[1])
    return {"forgetting_quality": quality, "utility": utility, "score": quality * utility}
