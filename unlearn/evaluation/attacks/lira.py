"""LiRA (Carlini et al. 2022) and its unlearning variant U-LiRA (Hayes et al. 2024): per-example likelihood ratios
between Gaussians fitted to shadow models' logit-scaled confidences.

Each example's Gaussian on a side has the median of that side's shadows as its mean and their standard
deviation as its sigma; an example with a single shadow on a side (common for U-LiRA's unlearned side: see
:func:`ulira`) takes that side's global, fixed-variance sigma instead of a sigma of 0.

The per-example Gaussian fits run as one parallel numba kernel over examples (a masked median and deviation
each), not a Python loop.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange
from scipy import stats

from proxies.devices import keep_torch_threads

__all__ = ["MIN_SHADOWS_FOR_VARIANCE", "lira", "ulira"]

MIN_SHADOWS_FOR_VARIANCE = 2
"""An example gets its own standard deviation on a side (IN / unlearned, OUT) only with at least this many
shadows there; with fewer it takes the side's global one, the fixed-variance sigma."""

_EPS = 1e-30
_HALF_LOG_2PI = 0.5 * np.log(2 * np.pi)


def _as_3d(target, shadow, mask_name: str, *masks):
    target = np.asarray(target, dtype=np.float64)
    shadow = np.asarray(shadow, dtype=np.float64)
    if target.ndim == 1:
        target = target[:, None]
    if shadow.ndim == 2:
        shadow = shadow[:, :, None]
    if target.ndim != 2 or shadow.ndim != 3 or shadow.shape[1:] != target.shape:
        raise ValueError(f"expected target [N] or [N, A] and shadow [M, N] or [M, N, A] with the same N and A, "
                         f"got {target.shape} and {shadow.shape}")
    out = []
    for mask in masks:
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != shadow.shape[:2]:
            raise ValueError(f"{mask_name} must be [M, N] = {shadow.shape[:2]}, got {mask.shape}")
        out.append(mask)
    if not (np.isfinite(target).all() and np.isfinite(shadow).all()):
        raise ValueError("target and shadow signals must be finite")
    return target, shadow, out


@njit(parallel=True, cache=True, nogil=True)
def _masked_fits(shadow, mask, center, spread):
    """Per example (in parallel chunks) and query: median and standard deviation of the shadows in ``mask``.

    ``shadow`` is ``[N, A, M]`` and ``mask`` ``[N, M]``: each example's shadow values are contiguous.
    """
    n, queries, models = shadow.shape
    chunk = 256
    for c in prange((n + chunk - 1) // chunk):
        values = np.empty(models)  # one buffer per chunk: allocating per example costs more than the fit
        for i in range(c * chunk, min(n, (c + 1) * chunk)):
            for a in range(queries):
                k = 0
                for m in range(models):
                    if mask[i, m]:
                        values[k] = shadow[i, a, m]
                        k += 1
                if k == 0:
                    center[i, a] = np.nan
                    spread[i, a] = np.nan
                    continue
                kept = values[:k]
                kept.sort()
                center[i, a] = 0.5 * (kept[(k - 1) // 2] + kept[k // 2])
                mean = kept.mean()
                total = 0.0
                for j in range(k):
                    total += (kept[j] - mean) ** 2
                spread[i, a] = np.sqrt(total / k)


def _global_spread(shadow: np.ndarray, mask: np.ndarray) -> float:
    """The standard deviation of every value in ``mask`` (all examples and queries): the fixed-variance sigma of
    that side; NaN with fewer than 2 values."""
    if mask.sum() < MIN_SHADOWS_FOR_VARIANCE:
        return np.nan
    return float(shadow[np.broadcast_to(mask[:, :, None], shadow.shape)].std())


def _fit(shadow: np.ndarray, mask: np.ndarray, fix_variance: bool) -> tuple[np.ndarray, np.ndarray]:
    """Per example and query: the median and standard deviation over the shadows in ``mask`` (NaN if none).

    The standard deviation is the side's global one (:func:`_global_spread`) for every example with
    ``fix_variance``, and for an example with fewer than ``MIN_SHADOWS_FOR_VARIANCE`` shadows in ``mask``
    otherwise (the spread of one value is 0, which would make its score +-1e58).
    """
    center = np.empty(shadow.shape[1:])
    spread = np.empty(shadow.shape[1:])
    with keep_torch_threads():  # numba's OpenMP start would change torch's thread count
        _masked_fits(np.ascontiguousarray(shadow.transpose(1, 2, 0)), np.ascontiguousarray(mask.T), center, spread)
    few = np.ones(mask.shape[1], dtype=bool) if fix_variance else mask.sum(axis=0) < MIN_SHADOWS_FOR_VARIANCE
    if few.any():
        spread[few] = _global_spread(shadow, mask)
    return center, spread


def _log_normal(x: np.ndarray, mean: np.ndarray, sd: np.ndarray) -> np.ndarray:
    sd = sd + _EPS
    return -0.5 * ((x - mean) / sd) ** 2 - np.log(sd) - _HALF_LOG_2PI


def _ratio(target, shadow, in_mask, out_mask, *, online: bool, fix_variance: bool, one_sided: bool) -> np.ndarray:
    mu_out, sd_out = _fit(shadow, out_mask, fix_variance)
    if online:
        mu_in, sd_in = _fit(shadow, in_mask, fix_variance)
        score = _log_normal(target, mu_in, sd_in) - _log_normal(target, mu_out, sd_out)
    elif one_sided:
        score = stats.norm.logcdf(target, mu_out, sd_out + _EPS)
    else:
        score = -_log_normal(target, mu_out, sd_out)
    return score.mean(axis=1)


def lira(target, shadow, in_mask, *, online: bool = True, fix_variance: bool = False,
         one_sided: bool = False) -> np.ndarray:
    """Per-example LiRA membership scores of a target model (higher = more likely a member).

    Args:
        target: the target model's logit-scaled confidence per example, ``[N]`` or ``[N, A]`` (A queries).
        shadow: the shadow models' signals, ``[M, N]`` or ``[M, N, A]``.
        in_mask: ``[M, N]``, True where shadow ``m`` trained on example ``n``.
        online: fit IN and OUT Gaussians (``log pdf_in - log pdf_out``); offline uses OUT only.
        fix_variance: one standard deviation per side for all examples instead of one per example: the spread
            of every IN value (over all examples and queries) for the IN Gaussians, of every OUT value for the OUT
            ones. Without it, an example with fewer than ``MIN_SHADOWS_FOR_VARIANCE`` (2) shadows on a side takes
            that side's global standard deviation. The reference code (tf-privacy ``research/mi_lira_2021``:
            ``score.py`` only computes the confidences; the fits are ``generate_ours`` in ``plot.py``) differs
            online: with ``fix_variance`` it sets ``std_in = std_out = np.std(dat_in)``, the IN values' spread for
            both Gaussians (offline ``np.std(dat_out)``, as here), and it truncates every example to the smallest
            number of IN / OUT shadows over examples (no change with the balanced halves of
            :func:`unlearn.evaluation.shadows.balanced_halves`).
        one_sided: offline only: ``log CDF_out`` (members sit above the OUT distribution) instead of the
            two-sided ``-log pdf_out``.

    Returns:
        ``[N]`` scores, averaged over queries; NaN for an example with no IN (online) or OUT shadow, or whose
        side has fewer than 2 values in all to take a global standard deviation from.
    """
    target, shadow, (in_mask,) = _as_3d(target, shadow, "in_mask", in_mask)
    return _ratio(target, shadow, in_mask, ~in_mask, online=online, fix_variance=fix_variance, one_sided=one_sided)


def ulira(target, shadow, unlearned_mask, out_mask, *, fix_variance: bool = False) -> np.ndarray:
    """U-LiRA: per-example scores of "this example was trained on and then unlearned" versus "never seen".

    Args:
        target: the target model's signals ``[N]`` or ``[N, A]``.
        shadow: shadow models' signals ``[M, N]`` or ``[M, N, A]``.
        unlearned_mask: ``[M, N]``, True where shadow ``m`` trained on ``n`` and then unlearned it with the method
            under test.
        out_mask: ``[M, N]``, True where shadow ``m`` never saw ``n``; shadows in neither mask are ignored.
        fix_variance: as in :func:`lira`.

    An example with a single unlearned (or unseen) shadow takes the global standard deviation of that side, as in
    :func:`lira`. With :func:`~unlearn.evaluation.shadows.train_unlearned_shadow_models` (K shadows on balanced
    halves, each unlearning a random 20% of its training examples) a training example is unseen by K/2 shadows and
    unlearned by Binomial(K/2, 0.2) of them: with K = 4, 64% have none and 32% exactly one; with K = 16, 17% and
    34%; with K = 32, 3% and 11%.

    Returns:
        ``[N]`` log likelihood ratios; a method that unlearns perfectly makes them useless (AUC 0.5).
    """
    target, shadow, (unlearned_mask, out_mask) = _as_3d(target, shadow, "masks", unlearned_mask, out_mask)
    if (unlearned_mask & out_mask).any():
        raise ValueError("unlearned_mask and out_mask overlap: a shadow cannot both have unlearned and never seen "
                         "an example")
    return _ratio(target, shadow, unlearned_mask, out_mask, online=True, fix_variance=fix_variance,
                  one_sided=False)
