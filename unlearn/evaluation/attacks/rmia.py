"""RMIA (Zarifzadeh et al., ICML 2024), offline: compare how much more likely the target model makes ``x`` than the
population does, against the same ratio for population examples ``z``.

``LR(x, z) = [P(x|f) / P(x)] / [P(z|f) / P(z)]``; the score of ``x`` is the fraction of ``z`` with
``LR(x, z) >= gamma``. Offline, ``P(x) = (1+a)/2 * mean P_out(x) + (1-a)/2`` from reference models that did not
train on ``x``; ``a`` is tuned on a reference model.

The population ``z`` must be disjoint from the ``x`` scored: an ``x`` among the ``z`` is compared with itself
(``LR = 1 >= gamma``), which adds ``1/|z|`` to every such score. Where the non-members must supply both, they are
split in two halves by :func:`disjoint_halves`.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import roc_auc_score

__all__ = ["disjoint_halves", "rmia", "tune_rmia_a"]


def _marginal(reference: np.ndarray, out_mask: np.ndarray | None, a: float) -> np.ndarray:
    reference = np.asarray(reference, dtype=np.float64)
    if out_mask is None:
        mean_out = reference.mean(axis=0)
    else:
        counts = out_mask.sum(axis=0)
        mean_out = np.where(counts > 0, (reference * out_mask).sum(axis=0) / np.maximum(counts, 1), np.nan)
    return (1 + a) / 2 * mean_out + (1 - a) / 2


def disjoint_halves(index) -> tuple[np.ndarray, np.ndarray]:
    """Positions of two disjoint halves of examples, deterministic: by ``index`` order, the 1st, 3rd, 5th...
    example is an ``x`` (scored), the 2nd, 4th... one is in the population ``z``.

    >>> disjoint_halves([12, 10, 11, 13])
    (array([1, 0]), array([2, 3]))
    """
    order = np.argsort(np.asarray(index), kind="stable")
    if len(order) < 2:
        raise ValueError(f"splitting examples into scored ones and a population needs at least 2, got {len(order)}")
    return order[0::2], order[1::2]


def rmia(target_x, reference_x, target_z, reference_z, *, a: float = 0.3, gamma: float = 1.0,
         out_mask_x=None, out_mask_z=None) -> np.ndarray:
    """Offline RMIA scores of the examples ``x`` (higher = more likely a member).

    Args:
        target_x: the target model's true-class probability for each ``x`` ``[N]``.
        reference_x: reference models' probabilities for ``x`` ``[M, N]`` (OUT models; or pass ``out_mask_x``).
        target_z: the target model's probability for population examples ``z`` ``[Z]``: non-members of the
            target, none of them among the ``x`` (see :func:`disjoint_halves`).
        reference_z: reference models' probabilities for ``z`` ``[M, Z]``.
        a: offline correction of ``P(x)`` (see :func:`tune_rmia_a`).
        gamma: likelihood-ratio threshold.
        out_mask_x: ``[M, N]``, which reference models did not train on each ``x`` (default: all of them).
        out_mask_z: the same for ``z``.

    Returns:
        ``[N]`` scores in ``[0, 1]``; NaN for an ``x`` no reference model left out.
    """
    if not 0.0 <= a <= 1.0 or gamma <= 0:
        raise ValueError(f"expected 0 <= a <= 1 and gamma > 0, got {a}, {gamma}")
    ratio_x = np.asarray(target_x, dtype=np.float64) / _marginal(reference_x, out_mask_x, a)
    ratio_z = np.asarray(target_z, dtype=np.float64) / _marginal(reference_z, out_mask_z, a)
    ratio_z = np.sort(ratio_z[np.isfinite(ratio_z)])
    if len(ratio_z) == 0:
        raise ValueError("RMIA needs population examples z with reference models that left them out")
    # LR(x, z) >= gamma  <=>  ratio_z <= ratio_x / gamma: count with one binary search per x
    score = np.searchsorted(ratio_z, ratio_x / gamma, side="right") / len(ratio_z)
    return np.where(np.isfinite(ratio_x), score, np.nan)


def tune_rmia_a(reference: np.ndarray, in_mask: np.ndarray, *, grid=None, gamma: float = 1.0,
                target: int = 0) -> float:
    """The ``a`` of ``grid`` (default ``0, 0.1, ..., 1``) that maximises RMIA's AUC (the first such) when
    reference model ``target`` plays the target and the other reference models' OUT predictions give ``P(x)``.

    The examples ``target`` did not see are split by position with :func:`disjoint_halves`: every second one
    forms the population ``z``, the others are the non-member ``x`` scored beside ``target``'s members.
    """
    grid = np.linspace(0, 1, 11) if grid is None else grid
    reference = np.asarray(reference, dtype=np.float64)
    in_mask = np.asarray(in_mask, dtype=bool)
    if reference.shape != in_mask.shape or reference.shape[0] < 2:
        raise ValueError(f"reference and in_mask must both be [M >= 2, N], got {reference.shape}, {in_mask.shape}")
    others = np.delete(np.arange(len(reference)), target)
    members = in_mask[target]
    if members.all() or not members.any():
        raise ValueError("the tuning target needs both members and non-members")
    nonmembers = np.flatnonzero(~members)
    if len(nonmembers) < 2:
        raise ValueError("the tuning target needs at least 2 non-members: half of them form the population")
    x_rows, z_rows = disjoint_halves(nonmembers)
    z = nonmembers[z_rows]
    x = np.sort(np.r_[np.flatnonzero(members), nonmembers[x_rows]])
    out = ~in_mask[others]
    best, best_auc = 0.0, -1.0
    for a in grid:
        score = rmia(reference[target, x], reference[others][:, x], reference[target, z], reference[others][:, z],
                     a=a, gamma=gamma, out_mask_x=out[:, x], out_mask_z=out[:, z])
        usable = np.isfinite(score)
        auc = roc_auc_score(members[x][usable], score[usable])
        if auc > best_auc:
            best, best_auc = float(a), auc
    return best
