"""LiRA (Carlini et al. 2022) and its unlearning variant U-LiRA (Hayes et al. 2024): per-example likelihood ratios
between Gaussians fitted to shadow models' logit-scaled confidences.

All fits are vectorised over examples (masked medians and deviations over the shadow axis), not a loop.
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy import stats

__all__ = ["lira", "ulira"]

_EPS = 1e-30


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


def _fit(shadow: np.ndarray, mask: np.ndarray, fix_variance: bool) -> tuple[np.ndarray, np.ndarray]:
    """Per example and query: the median and standard deviation over the shadows in ``mask``."""
    values = np.where(mask[:, :, None], shadow, np.nan)
    with warnings.catch_warnings():  # an example with no shadow in the mask gets NaN, which is the answer
        warnings.simplefilter("ignore", RuntimeWarning)
        center = np.nanmedian(values, axis=0)
        spread = np.nanstd(values) * np.ones_like(center) if fix_variance else np.nanstd(values, axis=0)
    return center, spread


def _ratio(target, shadow, in_mask, out_mask, *, online: bool, fix_variance: bool, one_sided: bool) -> np.ndarray:
    mu_out, sd_out = _fit(shadow, out_mask, fix_variance)
    if online:
        mu_in, sd_in = _fit(shadow, in_mask, fix_variance)
        score = stats.norm.logpdf(target, mu_in, sd_in + _EPS) - stats.norm.logpdf(target, mu_out, sd_out + _EPS)
    elif one_sided:
        score = stats.norm.logcdf(target, mu_out, sd_out + _EPS)
    else:
        score = -stats.norm.logpdf(target, mu_out, sd_out + _EPS)
    return score.mean(axis=1)


def lira(target, shadow, in_mask, *, online: bool = True, fix_variance: bool = False,
         one_sided: bool = False) -> np.ndarray:
    """Per-example LiRA membership scores of a target model (higher = more likely a member).

    Args:
        target: the target model's logit-scaled confidence per example, ``[N]`` or ``[N, A]`` (A queries).
        shadow: the shadow models' signals, ``[M, N]`` or ``[M, N, A]``.
        in_mask: ``[M, N]``, True where shadow ``m`` trained on example ``n``.
        online: fit IN and OUT Gaussians (``log pdf_in - log pdf_out``); offline uses OUT only.
        fix_variance: one global standard deviation instead of one per example.
        one_sided: offline only: ``log CDF_out`` (members sit above the OUT distribution) instead of the
            two-sided ``-log pdf_out``.

    Returns:
        ``[N]`` scores, averaged over queries; NaN for an example with no IN (online) or OUT shadow.
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

    Returns:
        ``[N]`` log likelihood ratios; a method that unlearns perfectly makes them useless (AUC 0.5).
    """
    target, shadow, (unlearned_mask, out_mask) = _as_3d(target, shadow, "masks", unlearned_mask, out_mask)
    if (unlearned_mask & out_mask).any():
        raise ValueError("unlearned_mask and out_mask overlap: a shadow cannot both have unlearned and never seen "
                         "an example")
    return _ratio(target, shadow, unlearned_mask, out_mask, online=True, fix_variance=fix_variance,
                  one_sided=False)
