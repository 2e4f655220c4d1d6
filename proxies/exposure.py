"""Exposure (Carlini et al. 2019, "The Secret Sharer"): how far a language model ranks a secret it trained on
(a *canary*, e.g. "the random number is 281265017") ahead of secrets of the same format it never saw.

A sequence's log-perplexity is the sum of its scored tokens' negative log-likelihoods (:func:`log_perplexities`,
in nats). Two estimates, as in tf-privacy's ``secret_sharer/exposures.py``:

- ``"rank"`` (interpolation): ``exposure = log2 |R| - log2 rank``, ``rank = 1 +`` the number of references
  (never-inserted secrets) whose log-perplexity is at most the canary's. A canary ahead of every reference has
  exposure ``log2 |R|``; one behind every reference ``log2 |R| - log2(|R| + 1)``, just below 0.
- ``"skewnorm"`` (extrapolation, for secret spaces too large to enumerate): fit ``scipy.stats.skewnorm`` to the
  references' log-perplexities; ``exposure = -log2 cdf(canary's)``, through a log cdf (:func:`skewnorm_log_cdf`)
  so that a canary far in the left tail gets a finite exposure where ``cdf`` (and scipy's ``logcdf``, its log)
  would round to 0.

Sum or mean: Carlini et al. sum (``-log2 Pr(s)``). When every candidate has the same format, hence the same number
``L`` of scored tokens, the mean is the sum divided by ``L``: the ranking is the same, and so is the skew-normal
fit up to the optimiser's tolerance (a location-scale family: scaling the data scales the fitted location and
scale, and the cdf at the scaled canary is unchanged). Neither is true across lengths, which :func:`exposure`
warns about. The base of the logarithm is such a scale too.

>>> exposure_from_perplexities([1.0, 2.5, 9.0], [2.0, 3.0, 4.0, 5.0]).round(4).tolist()   # ranks 1, 2 and 5
[2.0, 1.0, -0.3219]
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable

import numpy as np
import pandas as pd
import torch
from scipy import integrate, special, stats
from torch import nn
from torch.utils.data import Dataset

from .extraction import _model_batches
from .registry import register_proxy
from .sequences import causal_task_of, token_log_probs

__all__ = ["EXPOSURE_METHODS", "exposure", "exposure_from_perplexities", "log_perplexities", "skewnorm_log_cdf"]


def _rank_exposure(canary: np.ndarray, references: np.ndarray) -> np.ndarray:
    """``log2 |R| - log2(1 + #{references <= canary})``: tf-privacy's interpolation, whose sort puts a reference
    before a secret of the same perplexity, so a tie counts against the canary (its 2021 version sorted with an
    unstable ``argsort`` and left ties to chance). Returned in the canaries' order (tf-privacy's come sorted by
    perplexity)."""
    ahead = np.searchsorted(np.sort(references), canary, side="right")
    return np.where(np.isnan(canary), np.nan, math.log2(len(references)) - np.log2(ahead + 1.0))


_TAIL = -50.0
"""Below this log cdf (cdf < 2e-22) the skew-normal cdf is integrated here, in log space: scipy's (Boost's, and in
the left tail of a positive shape a quadrature of the density itself) loses digits there (1.6% at cdf 1e-249 with
shape 11) and then underflows to 0, so that its ``logcdf``, the log of that, is ``-inf``."""


def _tail_log_cdf(z: float, shape: float) -> float:
    """``log int_{-inf}^z 2 phi(t) Phi(shape t) dt`` (a standard skew-normal's log cdf) as ``log pdf(z) + log
    int_0^inf pdf(z - u) / pdf(z) du``: the ratio is of order 1, so nothing underflows (agrees with mpmath at 40
    digits to 1e-15)."""
    def log_density(t: float) -> float:
        return math.log(2) - t * t / 2 - 0.5 * math.log(2 * math.pi) + float(special.log_ndtr(shape * t))

    top = log_density(z)
    ratio, _ = integrate.quad(lambda u: math.exp(log_density(z - u) - top), 0, math.inf)
    return top + math.log(ratio)


def skewnorm_log_cdf(x, shape: float, loc: float = 0.0, scale: float = 1.0) -> np.ndarray:
    """``log cdf`` of ``scipy.stats.skewnorm(shape, loc, scale)`` that stays finite and accurate in the left tail
    (scipy's below :data:`_TAIL`, an integral of the log-density there).

    >>> from scipy import integrate, special, stats
    >>> float(stats.skewnorm.logcdf(-10.0, 11.0)), round(float(skewnorm_log_cdf(-10.0, 11.0)), 4)
    (-inf, -6112.9521)
    """
    z = (np.asarray(x, dtype=np.float64) - loc) / scale
    out = np.array(stats.skewnorm.logcdf(z, shape), dtype=np.float64, ndmin=1)
    flat_z = np.broadcast_to(z, out.shape).ravel()
    for i in np.flatnonzero(~(out.ravel() > _TAIL) & np.isfinite(flat_z)):
        out.flat[i] = _tail_log_cdf(float(flat_z[i]), float(shape))
    return out.reshape(np.shape(z))


def _skewnorm_exposure(canary: np.ndarray, references: np.ndarray) -> np.ndarray:
    """``-log2 cdf(canary)`` under the skew-normal distribution fitted to the references (maximum likelihood,
    ``scipy.stats.skewnorm.fit``), the log cdf finite however far in the tail (:func:`skewnorm_log_cdf`)."""
    if len(references) < 3 or np.ptp(references) == 0:
        raise ValueError(f"method='skewnorm' fits three parameters: it needs at least 3 reference perplexities, not "
                         f"all equal, got {np.round(references, 6).tolist()}")
    return -skewnorm_log_cdf(canary, *stats.skewnorm.fit(references)) / math.log(2)


EXPOSURE_METHODS: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "rank": _rank_exposure,
    "skewnorm": _skewnorm_exposure,
}
"""The ways to estimate exposure by name: ``f(canary log-perplexities, reference log-perplexities) -> exposures``."""


def exposure_from_perplexities(canary, references, *, method: str = "rank"):
    """Each canary's exposure against the references, from log-perplexities (a pure function; see the module doc).

    Args:
        canary: the canaries' log-perplexities (an array, or a Series whose index the result keeps). NaN stays NaN.
        references: the log-perplexities of secrets of the same format that the model never saw (finite).
        method: ``"rank"`` (interpolation) or ``"skewnorm"`` (extrapolation); see :data:`EXPOSURE_METHODS`.

    Returns:
        Exposures in bits, an array or a Series with ``canary``'s index.

    Raises:
        ValueError: an unknown method, no reference, a reference that is not finite, or (skewnorm) fewer than 3
            references, or all equal.
    """
    if method not in EXPOSURE_METHODS:
        raise ValueError(f"unknown exposure method {method!r}; expected one of {sorted(EXPOSURE_METHODS)}")
    refs = np.asarray(references, dtype=np.float64).ravel()
    if not len(refs):
        raise ValueError("references is empty: exposure ranks a canary among never-inserted secrets of its format")
    if not np.isfinite(refs).all():
        raise ValueError(f"references must be finite log-perplexities; {int((~np.isfinite(refs)).sum())} of "
                         f"{len(refs)} are not")
    values = EXPOSURE_METHODS[method](np.asarray(canary, dtype=np.float64), refs)
    if isinstance(canary, pd.Series):
        return pd.Series(values, index=canary.index, name="exposure")
    return values


@torch.no_grad()
def _perplexities_and_lengths(model, data, *, batch_size, device, progress) -> tuple[pd.Series, np.ndarray]:
    """Each sequence's log-perplexity (Series by training index) and its number of scored tokens."""
    task = causal_task_of(data)
    sums, counts, indices = [], [], []
    for net, x, y, index in _model_batches(model, data, batch_size=batch_size, device=device, progress=progress,
                                           desc="log-perplexity"):
        log_probs, scored = token_log_probs(task.forward(net, x), y)
        sums.append(-log_probs.double().sum(1))
        counts.append(scored.sum(1))
        indices.append(index)
    if not sums:
        return pd.Series(np.zeros(0), index=pd.Index(np.zeros(0, dtype=np.int64), name="index")), np.zeros(0, int)
    counts = torch.cat(counts).cpu().numpy()
    values = np.where(counts > 0, torch.cat(sums).cpu().numpy(), np.nan)
    return pd.Series(values, index=pd.Index(torch.cat(indices).numpy(), name="index"),
                     name="log_perplexity"), counts


def log_perplexities(model: nn.Module, data: Dataset, *, batch_size: int = 64,
                     device: torch.device | str | None = None, progress: bool = True) -> pd.Series:
    """Each sequence's log-perplexity: the sum of its scored tokens' negative log-likelihoods in nats (labels not
    -100 after the first position; teacher forcing, eval mode, one pass per batch). NaN for a sequence with no
    scored token.

    Args:
        model: a causal LM (its mode is restored afterwards; never moved).
        data: token sequences ``(input_ids [T], labels [T], index)``.
        batch_size: sequences per forward pass.
        device: where to compute (default: where the model is).
        progress: show a progress bar over the batches.

    Returns:
        A Series indexed by training index.
    """
    return _perplexities_and_lengths(model, data, batch_size=batch_size, device=device, progress=progress)[0]


@register_proxy("exposure", higher_is_memorized=True, needs=("model", "canaries", "references"),
                tasks=("causal_lm",))
def exposure(model: nn.Module, canaries: Dataset, references: Dataset, *, method: str = "rank",
             batch_size: int = 64, device: torch.device | str | None = None, progress: bool = True) -> pd.Series:
    """Exposure of each canary (Carlini et al. 2019; see the module doc), in bits.

    Args:
        model: a causal LM (its mode is restored afterwards; never moved).
        canaries: the inserted secrets, token sequences (e.g. an :class:`~proxies.batching.IndexedDataset` with a
            :class:`~proxies.sequences.CausalLM` task); label -100 on what is not scored (e.g. the format's prefix,
            so that only the secret's tokens count, or the padding).
        references: never-inserted secrets of the same format, scored the same way. ``"rank"`` resolves exposures
            up to ``log2 |R|`` bits; Carlini et al. enumerate the whole secret space where they can.
        method: ``"rank"`` or ``"skewnorm"`` (:data:`EXPOSURE_METHODS`).
        batch_size, device, progress: as :func:`log_perplexities`.

    Returns:
        Exposures indexed by the canaries' training index.

    Raises:
        ValueError: an unknown method (before any work), no reference, or one with no scored token.

    Warns:
        When the canaries and references do not all have the same number of scored tokens: a sum of token NLLs
        then also measures length.
    """
    if method not in EXPOSURE_METHODS:
        raise ValueError(f"unknown exposure method {method!r}; expected one of {sorted(EXPOSURE_METHODS)}")
    options = {"batch_size": batch_size, "device": device, "progress": progress}
    canary, canary_lengths = _perplexities_and_lengths(model, canaries, **options)
    reference, reference_lengths = _perplexities_and_lengths(model, references, **options)
    lengths = np.unique(np.concatenate([canary_lengths, reference_lengths]))
    if len(lengths) > 1:
        warnings.warn(f"canaries and references score different numbers of tokens ({lengths.tolist()}): exposure "
                      "compares summed log-perplexities, which assumes one format, one length", stacklevel=2)
    return exposure_from_perplexities(canary, reference.to_numpy(), method=method)
