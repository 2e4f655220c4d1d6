"""The NeurIPS 2023 machine-unlearning competition's forgetting score, under two rule sets.

For each forget example, N unlearned and N retrained models give two samples of its logit-scaled confidence.
Decision rules that call a model "unlearned" (or "retrained") give a false-positive and a false-negative rate,
and with them a lower bound on the privacy epsilon that separates the two samples:
``eps = max(log(1 - d - FPR) - log FNR, log(1 - d - FNR) - log FPR)`` with ``d = 1e-5``, capped at 50; a rule
with exactly one rate at zero is skipped, one with both at zero separates perfectly (the cap). Each example's
epsilon falls in a bin of width 0.5 worth ``1, 1/2, 1/4, ...``; the forgetting quality is the average, and the
final score multiplies it by ``RA_u/RA_r * TA_u/TA_r``.

Two rule sets (``rules=``):

- ``"challenge"``: the competition's scorer, ``metric.py`` of google-deepmind/unlearning_evaluation, reproduced
  number for number (checked against a rule-by-rule transcription of it in the tests; ``metric.py`` itself needs
  CUDA), so its figures compare with the leaderboard's. Per example: the class with the larger median is
  "positive"; if one class's range is under 1% of the other's, epsilon is 50; otherwise single thresholds on a
  float32 grid of ``ceil(100 * range)`` points ("positive if conf >= t") and double thresholds around the peakier
  class, of range ``w`` (``left <= conf <= right``: right thresholds on a float64 grid of ~400 points from its
  ``min + w - 2`` to its ``max + 2``, for each 400 left ones from ``right - w - 2`` to ``right - w + 2``), with
  float32 rates as ``torch.mean`` gives them on CUDA (where ``metric.py`` runs; e.g. with 41 models perfect
  separation is then discarded, not capped); bins only up to ``ceil(log(N - 1))``,
  an epsilon past the last scoring 0. It needs as many unlearned as retrained models, and takes the confidences
  in float64, as ``metric.py``'s own ``compute_logit_scaled_confidence`` gives them.
- ``"all_intervals"`` (the default): every single- and double-threshold rule, both directions, at every cut
  between distinct values, with exact float64 rates: a superset of the challenge's rules, so its epsilons are at
  least the challenge's (but for float32 rounding, and the challenge's 1% rule, which it lacks) and its numbers do
  NOT compare with the leaderboard; every epsilon is binned (no last bin). Any numbers of unlearned and retrained
  models.

Both are vectorised: all-interval sweeps over examples and cut pairs (cumulative counts over the sorted samples),
the challenge's thresholds with binary searches in each example's sorted samples.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["RULES", "epsilons", "forgetting_quality", "forgetting_score"]

DELTA = 1e-5
CAP = 50.0
RULES = ("all_intervals", "challenge")
"""The rule sets :func:`epsilons` knows."""

_PER_UNIT = 100  # metric.py's NUM_THRESHOLDS_PER_UNIT
_BUFFER = 2.0  # the window of its double thresholds
_LEFT_THRESHOLDS = int(np.ceil(2 * _BUFFER * _PER_UNIT))
_PEAKY = 0.01  # one range under 1% of the other: epsilon = the cap


def _eps(fpr: np.ndarray, fnr: np.ndarray, delta: float) -> np.ndarray:
    """Epsilon of each (FPR, FNR) rule, as the competition scored it: a rule with exactly one of the two rates at
    zero says nothing at this sample size and is skipped (-inf); both at zero separates perfectly (+inf)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        a = np.log(np.clip(1 - delta - fpr, 0, None)) - np.log(fnr)
        b = np.log(np.clip(1 - delta - fnr, 0, None)) - np.log(fpr)
    eps = np.fmax(np.nan_to_num(a, nan=-np.inf, posinf=np.inf), np.nan_to_num(b, nan=-np.inf, posinf=np.inf))
    eps = np.where((fpr == 0) ^ (fnr == 0), -np.inf, eps)
    return np.where((fpr == 0) & (fnr == 0), np.inf, eps)


def _all_interval_epsilons(u: np.ndarray, r: np.ndarray, delta: float) -> np.ndarray:
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
    return np.where(pairs, eps, -np.inf).max(axis=(1, 2))


class _ChallengeRates:
    """metric.py's epsilon of a rule from its counts of false positives and false negatives among n models each,
    tabulated once per float32 factor: on CUDA ``torch.mean`` over the models of a ``[n, T]`` float32 tile is the
    float32 count times ``float32(T) / float32(n * T)``, which depends on the family's number of rules T and is not
    always the correctly rounded ``count / n`` (for n = 41, ``float32(41 * float32(1/41)) < 1``, so ``tpr + tnr``
    misses 2 and perfect separation is discarded rather than infinite). -inf marks a discarded rule."""

    def __init__(self, n: int, delta: float):
        self.n, self.delta, self._tables = n, delta, {}

    def table(self, rules: int) -> np.ndarray:
        factor = np.float32(rules) / np.float32(self.n * rules)
        if factor not in self._tables:
            counts = np.arange(self.n + 1, dtype=np.float32)
            rate = counts * factor  # [n + 1]: the rate of each count
            fpr, fnr = rate[:, None], rate[None, :]  # table[false positives, false negatives]
            tpr, tnr = rate[::-1][None, :], rate[::-1][:, None]
            with np.errstate(divide="ignore", invalid="ignore"):
                one_minus = np.float32(1 - self.delta)
                eps = np.fmax(np.log(one_minus - fpr) - np.log(fnr), np.log(one_minus - fnr) - np.log(fpr))
            eps = np.clip(eps, np.float32(0), None)  # NaN stays NaN: a rule with both terms undefined
            eps = np.where((fpr * fnr == 0), np.nan, eps)  # exactly one rate at zero (both: below)
            eps = np.where((fpr + fnr == 0) & (tpr + tnr == 2), np.inf, eps)
            self._tables[factor] = np.nan_to_num(eps, nan=-np.inf, posinf=np.inf)
        return self._tables[factor]


def _inside(sorted_values: np.ndarray, left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """How many of ``sorted_values`` lie in ``[left, right]`` (none where ``left > right``)."""
    counts = np.searchsorted(sorted_values, right, side="right") - np.searchsorted(sorted_values, left, side="left")
    return np.maximum(counts, 0)


def _challenge_example(pos: np.ndarray, neg: np.ndarray, rates: _ChallengeRates) -> float:
    """One example's epsilon under metric.py's rules (before the final clip) from sorted positive and negative
    confidences, or NaN where no rule is left (metric.py's assertion)."""
    n = len(pos)
    best = -np.inf
    # single thresholds: positive if conf >= t, t on torch.linspace's float32 grid (as metric.py builds it)
    lo, hi = min(pos[0], neg[0]), max(pos[-1], neg[-1])
    count = int(np.ceil((hi - lo) * _PER_UNIT))
    if count > 0:
        t = torch.linspace(torch.tensor(lo, dtype=torch.float64), torch.tensor(hi, dtype=torch.float64),
                           count).numpy().astype(np.float64)
        false_pos = n - np.searchsorted(neg, t, side="left")
        false_neg = np.searchsorted(pos, t, side="left")
        best = rates.table(count)[false_pos, false_neg].max()
    # double thresholds around the peakier class (the negative one on a tie), in float64 as numpy gives them
    pos_range, neg_range = pos[-1] - pos[0], neg[-1] - neg[0]
    width = neg_range if pos_range > neg_range else pos_range
    peaky, other = (neg, pos) if pos_range >= neg_range else (pos, neg)
    start, stop = peaky[0] + width - _BUFFER, peaky[-1] + _BUFFER
    count = int(np.ceil((stop - start) * _PER_UNIT))
    if count > 0:
        right = np.linspace(start, stop, count)
        left = np.linspace(right - width - _BUFFER, right - width + _BUFFER, _LEFT_THRESHOLDS, axis=-1)
        right = right[:, None]
        false_pos = _inside(other, left, right)
        false_neg = n - _inside(peaky, left, right)
        best = max(best, rates.table(count * _LEFT_THRESHOLDS)[false_pos, false_neg].max())
    return best if best > -np.inf else np.nan


def _challenge_epsilons(u: np.ndarray, r: np.ndarray, delta: float, cap: float) -> np.ndarray:
    if len(u) != len(r):
        raise ValueError(f"the challenge's rules need as many unlearned as retrained models, got {len(u)} and "
                         f"{len(r)}")
    if not (np.isfinite(u).all() and np.isfinite(r).all()):
        raise ValueError("the challenge's rules need finite confidences")
    retrained_positive = np.median(r, axis=0) > np.median(u, axis=0)
    pos = np.sort(np.where(retrained_positive, r, u), axis=0)
    neg = np.sort(np.where(retrained_positive, u, r), axis=0)
    pos_range, neg_range = pos[-1] - pos[0], neg[-1] - neg[0]
    with np.errstate(invalid="ignore", divide="ignore"):  # 0 / 0 is not under 1%: both classes constant
        peaky = np.minimum(pos_range, neg_range) / np.maximum(pos_range, neg_range) < _PEAKY
    rates = _ChallengeRates(len(u), delta)
    eps = np.full(u.shape[1], cap)
    for e in np.flatnonzero(~peaky):
        eps[e] = _challenge_example(pos[:, e], neg[:, e], rates)
    if np.isnan(eps).any():
        e = int(np.flatnonzero(np.isnan(eps))[0])
        raise ValueError(f"no threshold of the challenge's rules leaves both error rates nonzero or both zero for "
                         f"example {e} (metric.py fails its assertion there), e.g. all its values are equal")
    return eps


def epsilons(unlearned, retrained, *, rules: str = "all_intervals", delta: float = DELTA,
             cap: float = CAP) -> np.ndarray:
    """Per-example epsilon from ``unlearned [Nu, E]`` and ``retrained [Nr, E]`` signals (models x examples).

    Args:
        unlearned, retrained: the logit-scaled confidences of each model on each forget example.
        rules: ``"all_intervals"``: "unlearned if t1 <= phi < t2" and its complement over every pair of cut
            points between distinct sorted values (single thresholds are the pairs that touch an end), a superset
            of the challenge's rules whose numbers do not compare with its leaderboard; ``"challenge"``: exactly
            the competition's ``metric.py`` (see the module docstring; needs ``Nu == Nr``).
        delta: the ``d`` of the bound.
        cap: the largest epsilon (the challenge's 50), also given to an example whose classes' ranges differ
            100-fold under the challenge's rules.

    Returns:
        ``[E]`` epsilons in ``[0, cap]`` (float32 values under the challenge's rules, as ``metric.py`` computes).

    Raises:
        ValueError: bad shapes, an unknown rule set; under the challenge's rules unequal model counts, non-finite
            values, or an example no rule can score (``metric.py``'s assertion fails there; note that as published
            that ``assert`` is on a NumPy array, which raises whenever more than one rule is left: it is read here
            as meant, "some rule is left").
    """
    if rules not in RULES:
        raise ValueError(f"unknown rules {rules!r}; expected one of {RULES}")
    u = np.asarray(unlearned, dtype=np.float64)
    r = np.asarray(retrained, dtype=np.float64)
    if u.ndim != 2 or r.ndim != 2 or u.shape[1] != r.shape[1] or len(u) == 0 or len(r) == 0:
        raise ValueError(f"expected unlearned [Nu, E] and retrained [Nr, E] with the same E, got {u.shape}, {r.shape}")
    eps = _challenge_epsilons(u, r, delta, cap) if rules == "challenge" else _all_interval_epsilons(u, r, delta)
    return np.clip(eps, 0.0, cap)


def forgetting_quality(eps: np.ndarray, *, bin_width: float = 0.5, num_models: int | None = None) -> float:
    """Average over examples of ``2^-bin`` where ``bin = floor(eps / bin_width)``: 1 is perfect forgetting.

    Args:
        eps: per-example epsilons (:func:`epsilons`).
        bin_width: the width of a bin.
        num_models: the challenge's binning for N unlearned models: bins only while one ends by
            ``ceil(log(N - 1))`` (natural log; none for N <= 2), an epsilon past the last bin scoring 0. Default:
            every epsilon is binned.

    >>> forgetting_quality(np.array([0.0, 0.6, 1.2]))
    0.5833333333333334
    >>> forgetting_quality(np.array([0.0, 0.6, 1.2]), num_models=3)  # bins up to ceil(log 2) = 1
    0.5
    """
    eps = np.asarray(eps, dtype=np.float64)
    if num_models is None:
        return float(np.mean(0.5 ** np.floor(eps / bin_width)))
    with np.errstate(divide="ignore", invalid="ignore"):
        max_epsilon = np.ceil(np.log(num_models - 1))
    ends = []  # metric.py's loop: bins [start, start + width) from 0 while they end by max_epsilon
    start = 0.0
    while start + bin_width <= max_epsilon:
        ends.append(start + bin_width)
        start += bin_width
    bins = np.searchsorted(np.asarray(ends), eps, side="right")  # the first bin with eps < its end
    points = np.where(bins < len(ends), 0.5 ** bins.astype(np.float64), 0.0)
    return float(points.sum() / len(eps))


def forgetting_score(unlearned, retrained, *, retain_accuracy: tuple[float, float],
                     test_accuracy: tuple[float, float], rules: str = "all_intervals",
                     delta: float = DELTA) -> dict[str, float]:
    """The competition score: forgetting quality times ``RA_u/RA_r * TA_u/TA_r``.

    Args:
        unlearned, retrained: ``[N, E]`` signals of N unlearned / retrained models on E forget examples.
        retain_accuracy, test_accuracy: ``(unlearned, retrained)`` mean accuracies.
        rules: ``"challenge"`` for the competition's ``metric.py`` rules and binning (comparable with its
            leaderboard), ``"all_intervals"`` (default) for every interval rule and every bin (see
            :func:`epsilons`).
    """
    eps = epsilons(unlearned, retrained, rules=rules, delta=delta)
    quality = forgetting_quality(eps, num_models=len(np.asarray(unlearned)) if rules == "challenge" else None)
    utility = (retain_accuracy[0] / retain_accuracy[1]) * (test_accuracy[0] / test_accuracy[1])
    return {"forgetting_quality": quality, "utility": utility, "score": quality * utility}
