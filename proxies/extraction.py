"""How extractable a token sequence is from a causal LM: extraction probability, discoverable extraction, exact
memorization and extraction strength.

**Probabilistic discoverable extraction** (Hayes et al. 2024, arXiv 2410.19482). A sequence's first ``P`` tokens
are the prefix, the next ``S`` the suffix; ``p_z`` is the probability that sampling ``S`` tokens after the prefix,
with a given scheme, reproduces the suffix exactly:

    ``p_z = prod_{t=P+1}^{P+S} q(z_t | z_<t)``,

``q`` the *sampling* distribution at each step: ``softmax(logits / temperature)``, then top-k (the k largest kept,
renormalised) and then top-p (the smallest set of mass >= p kept, renormalised), the order ``transformers``'
``generate`` applies them in. Teacher forcing gives every factor from one forward pass (:func:`extraction_probability`
returns ``log p_z``). The sequence is *(n, p)-discoverably extractable* when ``n`` samples reproduce it with
probability at least ``p``: ``1 - (1 - p_z)^n >= p`` (:func:`discoverable_extraction`, :func:`samples_needed`).

**Exact memorization** (open-unlearning's EM, :func:`exact_memorization`): the fraction of a sequence's scored
tokens that are the argmax given the true prefix. **Extraction strength** (:func:`extraction_strength`): the
fraction of the scored tokens in the longest run of such argmax matches that ends the sequence.

>>> logits = torch.tensor([[0.0, 1.0, 2.0], [2.0, 1.0, 0.0]])   # two positions, three tokens
>>> [round(v, 4) for v in sampling_log_probs(logits, torch.tensor([2, 1]), top_k=2).exp().tolist()]
[0.7311, 0.2689]
>>> samples_needed(np.array([0.0, np.log(0.5), -np.inf]), p=0.9).tolist()   # 1 - 0.5^n >= 0.9 from n = 4
[1.0, 4.0, inf]
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator
from numbers import Integral, Real

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from .predictions import eval_batches
from .registry import register_proxy
from .sequences import IGNORE_INDEX, causal_task_of, logits_of, next_token

__all__ = ["discoverable_extraction", "exact_memorization", "extraction_chance", "extraction_probability",
           "extraction_strength", "samples_needed", "sampling_log_probs", "token_lengths"]

_TINY = math.log(1e-8)
"""Below this log p_z, ``-log(1 - p_z)`` is ``p_z`` to within ``p_z / 2`` relative (5e-9): taken as ``p_z``, in log
space, so that a p_z that underflows a double (e^-800) still counts."""


# --------------------------------------------------------------------------------------- the sampling distribution

def _check_sampling(temperature: float, top_k: int | None, top_p: float | None) -> None:
    """Refuse a sampling scheme that is none (a ValueError or TypeError saying what was expected)."""
    if isinstance(temperature, bool) or not isinstance(temperature, Real) or not math.isfinite(temperature) \
            or temperature < 0:
        raise ValueError(f"temperature must be a finite number >= 0 (0: greedy decoding), got {temperature!r}")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, Integral)):
        raise TypeError(f"top_k must be a whole number >= 1 or None, got {type(top_k).__name__} {top_k!r}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be >= 1 or None (no top-k truncation), got {top_k}")
    if top_p is not None and (isinstance(top_p, bool) or not isinstance(top_p, Real) or not 0 < top_p <= 1):
        raise ValueError(f"top_p must be a number in (0, 1] or None (no nucleus truncation), got {top_p!r}")


def sampling_log_probs(logits: Tensor, targets: Tensor, *, temperature: float = 1.0, top_k: int | None = None,
                       top_p: float | None = None) -> Tensor:
    """``log q(target)`` at each position under a sampling scheme, float32 of ``targets``' shape.

    ``q`` is ``softmax(logits / temperature)`` truncated by top-k, then by top-p, and renormalised; a target
    outside the kept set gets ``-inf``. ``temperature=0`` is greedy decoding: 0 where the target is the argmax (the
    first largest logit, as ``argmax`` and ``generate`` pick), ``-inf`` elsewhere. Ties follow ``transformers``:
    top-k keeps every token whose logit equals the k-th largest; top-p sorts the probabilities in descending order,
    keeps tokens until their cumulative mass reaches ``top_p`` (the one that crosses included) and keeps every
    token as probable as the last one kept (``generate`` keeps an arbitrary subset of such exact ties).

    Args:
        logits: ``[..., V]`` next-token logits.
        targets: ``[...]`` the tokens whose probability is wanted.
        temperature, top_k, top_p: the sampling scheme (None: no truncation; ``top_p=1`` none either).

    Memory: a few tensors of the logits' size (float32), the top-p sort among them.
    """
    _check_sampling(temperature, top_k, top_p)
    logits = logits.float()
    targets = targets.long().unsqueeze(-1)
    if temperature == 0:
        hit = logits.argmax(-1, keepdim=True) == targets
        return torch.zeros(hit.shape, device=logits.device).masked_fill(~hit, -math.inf).squeeze(-1)
    logits = logits / temperature
    vocab = logits.shape[-1]
    if top_k is not None and top_k < vocab:
        kth = logits.topk(int(top_k), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, -math.inf)
    if top_p is not None and top_p < 1:
        probs = logits.softmax(-1)
        ordered = probs.sort(-1, descending=True).values
        kept = ((ordered.cumsum(-1) < top_p).sum(-1, keepdim=True) + 1).clamp(max=vocab)  # the crossing one too
        least = ordered.gather(-1, kept - 1)
        del ordered
        logits = logits.masked_fill(probs < least, -math.inf)
    return logits.log_softmax(-1).gather(-1, targets).squeeze(-1)


def token_lengths(labels: Tensor) -> Tensor:
    """Each sequence's length ``[B]``: one past its last position whose label is not -100 (0 for none).

    >>> token_lengths(torch.tensor([[5, 6, -100, -100], [-100, 7, 8, 9], [-100, -100, -100, -100]])).tolist()
    [2, 4, 0]
    """
    scored = labels != IGNORE_INDEX
    last = scored.shape[1] - 1 - scored.flip(1).int().argmax(1)
    return torch.where(scored.any(1), last + 1, torch.zeros_like(last))


# ---------------------------------------------------------------------------------- model passes over the data

def _model_batches(model: nn.Module, data: Dataset, *, batch_size: int, device, progress: bool,
                   desc: str) -> Iterator[tuple[nn.Module, Tensor, Tensor, Tensor]]:
    """:func:`proxies.predictions.eval_batches` of ``data``, ``batch_size`` checked first and the token ids long."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, Integral) or batch_size < 1:
        raise ValueError(f"batch_size must be a whole number >= 1, got {batch_size!r}")
    for net, x, y, index in eval_batches(model, data, batch_size, device=device, progress=progress, desc=desc):
        yield net, x.long(), y, index


def _series(values: list[Tensor], indices: list[Tensor], name: str) -> pd.Series:
    """One float64 value per example as a Series indexed by training index."""
    if not values:
        return pd.Series(np.zeros(0), index=pd.Index(np.zeros(0, dtype=np.int64), name="index"), name=name)
    return pd.Series(torch.cat(values).cpu().double().numpy(), index=pd.Index(torch.cat(indices).numpy(),
                                                                                 name="index"), name=name)


# ------------------------------------------------------------------------------------- extraction probability

def _check_lengths(prefix_length: int, suffix_length: int) -> None:
    for name, value in (("prefix_length", prefix_length), ("suffix_length", suffix_length)):
        if isinstance(value, bool) or not isinstance(value, Integral):
            raise TypeError(f"{name} must be a whole number of tokens >= 1, got {type(value).__name__} {value!r}")
        if value < 1:
            raise ValueError(f"{name} must be >= 1 token, got {value}")


@register_proxy("extraction_probability", higher_is_memorized=True, needs=("model", "data"),
                tasks=("causal_lm",))
@torch.no_grad()
def extraction_probability(model: nn.Module, data: Dataset, *, prefix_length: int, suffix_length: int,
                           temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
                           batch_size: int = 64, device: torch.device | str | None = None,
                           progress: bool = True) -> pd.Series:
    """``log p_z`` per sequence (natural log): how likely sampling reproduces its suffix from its prefix.

    A sequence's tokens are its ``input_ids`` up to its last position whose label is not -100 (its
    :func:`token_lengths`); tokens ``1..P`` are the prefix and ``P+1..P+S`` the suffix (later tokens are ignored).
    One teacher-forced forward pass of the first ``P + S - 1`` tokens per batch gives every factor of ``p_z``
    (see the module doc and :func:`sampling_log_probs`); the model sees no padding. Eval mode, no gradients.

    Args:
        model: a causal LM (``input_ids [B, T]`` to logits ``[B, T, V]`` or an output with ``.logits``); its mode is
            restored afterwards and it is never moved.
        data: token sequences ``(input_ids [T], labels [T], index)``, right-padded.
        prefix_length, suffix_length: ``P`` and ``S`` (Hayes et al.: 50 and 50).
        temperature: divides the logits first; 0 is greedy decoding (``log p_z`` is 0 or ``-inf``).
        top_k, top_p: the truncations after it (None: none). Hayes et al.'s figures use ``top_k=40``.
        batch_size: sequences per forward pass. Memory: the logits ``[B, P+S-1, V]`` and a few ``[B, S, V]``.
        device: where to compute (default: where the model is; a model elsewhere is copied there).
        progress: show a progress bar over the batches.

    Returns:
        ``log p_z`` (<= 0, ``-inf`` where a suffix token is outside the kept set) indexed by training index; NaN
        for a sequence shorter than ``P + S``, all of which one warning counts.

    Raises:
        ValueError, TypeError: a length, temperature, top-k, top-p or batch size that is none, before any work.
        ValueError: no sequence of the (non-empty) data has ``P + S`` tokens (the longest length is named).

    >>> from proxies.batching import IndexedDataset
    >>> from proxies.sequences import CausalLM
    >>> bigram = nn.Embedding(3, 3)   # the logits of the next token are a row of the current one's
    >>> _ = bigram.weight.data.copy_(torch.tensor([[0.1, 0.6, 0.3], [0.2, 0.2, 0.6], [0.4, 0.3, 0.3]]).log())
    >>> ids = torch.tensor([[0, 1, 2], [0, 2, 0]])
    >>> data = IndexedDataset(ids, ids.clone(), task=CausalLM())
    >>> log_p = extraction_probability(bigram, data, prefix_length=1, suffix_length=2, progress=False)
    >>> log_p.apply(math.exp).round(6).tolist()   # 0.6 * 0.6 and 0.3 * 0.4
    [0.36, 0.12]
    >>> extraction_probability(bigram, data, prefix_length=1, suffix_length=2, temperature=0, progress=False).tolist()
    [0.0, -inf]
    """
    _check_lengths(prefix_length, suffix_length)
    _check_sampling(temperature, top_k, top_p)
    prefix, total = int(prefix_length), int(prefix_length) + int(suffix_length)
    values, indices, longest, short = [], [], 0, 0
    for net, x, y, index in _model_batches(model, data, batch_size=batch_size, device=device, progress=progress,
                                           desc="extraction probability"):
        lengths = token_lengths(y)
        longest = max(longest, int(lengths.max()) if len(lengths) else 0)
        enough = lengths >= total
        log_p = torch.full((len(index),), math.nan, dtype=torch.float64, device=x.device)
        if bool(enough.any()):
            tokens = x[enough, :total]
            logits = logits_of(net(tokens[:, :total - 1]))[:, prefix - 1:]  # [b, S, V]: predict tokens P+1..P+S
            log_q = sampling_log_probs(logits, tokens[:, prefix:], temperature=temperature, top_k=top_k,
                                       top_p=top_p)
            log_p[enough] = log_q.double().sum(-1)
        short += int((~enough).sum())
        values.append(log_p)
        indices.append(index)
    scores = _series(values, indices, "extraction_probability")
    if len(scores) and short == len(scores):
        raise ValueError(f"no sequence has prefix_length + suffix_length = {total} tokens: the longest has {longest} "
                         "(tokens up to the last label that is not -100)")
    if short:
        warnings.warn(f"{short} of {len(scores)} sequences have fewer than prefix_length + suffix_length = {total} "
                      "tokens: their extraction probability is NaN", stacklevel=2)
    return scores.clip(upper=0.0)  # a sum of log-probabilities, <= 0 but for rounding


# ----------------------------------------------------------------------------------------- (n, p)-extraction

def _log_hazard(log_p) -> np.ndarray:
    """``log(-log(1 - p_z))`` from ``log p_z`` (NaN stays NaN): ``-inf`` at ``p_z = 0``, ``inf`` at ``p_z = 1``,
    ``log p_z`` itself for tiny ``p_z`` (no underflow)."""
    log_p = np.minimum(np.asarray(log_p, dtype=np.float64), 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        exact = np.log(-np.log1p(-np.exp(log_p)))
    return np.where(log_p < _TINY, log_p, exact)


def _check_n_p(n: float | None, p: float | None) -> None:
    if n is not None and (isinstance(n, bool) or not isinstance(n, Real) or not 1 <= n < math.inf):
        raise ValueError(f"n must be a finite number of samples >= 1, got {n!r}")
    if p is not None and (isinstance(p, bool) or not isinstance(p, Real) or not 0 < p <= 1):
        raise ValueError(f"p must be a probability in (0, 1], got {p!r}")


def _samples_ratio(log_p, p: float) -> np.ndarray:
    """``r = log(1 - p) / log(1 - p_z)``, formed in log space (no underflow of a tiny ``p_z``, no overflow but to
    ``inf``): ``n`` samples extract with probability >= ``p`` iff ``n >= r``. 0 at ``p_z = 1``, ``inf`` at
    ``p_z = 0`` and at ``p = 1 > p_z``, NaN where ``log_p`` is."""
    hazard = _log_hazard(log_p)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        ratio = np.exp(np.log(-np.log1p(-p)) - hazard)
    return np.where(hazard == np.inf, 0.0, ratio)


def _like(values: np.ndarray, log_p):
    """``values`` as a Series with ``log_p``'s index when ``log_p`` is one, else as an array."""
    if isinstance(log_p, pd.Series):
        return pd.Series(values, index=log_p.index, name=log_p.name)
    return values


def extraction_chance(log_p, *, n: float):
    """``1 - (1 - p_z)^n``: the probability that ``n`` samples reproduce the suffix at least once, from ``log p_z``
    (an array or Series; NaN stays NaN), computed as ``-expm1(n * log1p(-p_z))`` with ``n * log1p(-p_z)`` formed
    in log space (``-n p_z`` for tiny ``p_z``), so that neither ``p_z`` near 1 nor near 0 cancels or underflows.

    >>> extraction_chance(np.array([0.0, np.log(0.5), -np.inf]), n=2).tolist()
    [1.0, 0.75, 0.0]
    >>> round(float(extraction_chance(np.log(1e-300), n=2) / 1e-300), 9)   # no underflow, no cancellation
    2.0
    """
    _check_n_p(n, None)
    with np.errstate(over="ignore"):
        rate = np.exp(math.log(n) + _log_hazard(log_p))  # -log((1 - p_z)^n)
    return _like(-np.expm1(-rate), log_p)


def discoverable_extraction(log_p, *, n: float, p: float):
    """Whether each sequence is (n, p)-discoverably extractable: ``1 - (1 - p_z)^n >= p``.

    Decided as ``n >= log(1 - p) / log(1 - p_z)`` with the ratio formed in log space, which is the definition
    without rounding: ``p = 1`` holds only for ``p_z = 1`` (where ``1 - 0.5^100`` rounds to 1 in a double), and a
    ``p_z`` of 1e-300 (or one that underflows, given as its log) still counts with ``n`` large enough.

    Args:
        log_p: ``log p_z`` per sequence (an array or a Series, e.g. :func:`extraction_probability`'s). NaN (a
            sequence too short to score) is False.
        n: the number of samples (finite, >= 1).
        p: the probability asked for, in (0, 1].

    Returns:
        A bool array, or a bool Series with ``log_p``'s index.

    >>> discoverable_extraction(np.log([1.0, 0.5, 0.25]), n=3, p=0.8).tolist()   # chances 1, 0.875, 0.578
    [True, True, False]
    >>> discoverable_extraction(np.log([1.0, 0.5]), n=1000, p=1.0).tolist()
    [True, False]
    """
    _check_n_p(n, p)
    ratio = _samples_ratio(log_p, p)
    return _like(~np.isnan(ratio) & (n >= np.nan_to_num(ratio, nan=np.inf)), log_p)


def samples_needed(log_p, *, p: float):
    """The fewest samples ``n`` that make each sequence (n, p)-discoverably extractable: the smallest whole
    ``n >= log(1 - p) / log(1 - p_z)``; 1 where ``p_z >= p``, ``inf`` where ``p_z = 0`` (or ``p = 1 > p_z``), NaN
    where ``log_p`` is. The same ratio as :func:`discoverable_extraction`'s, so that it holds at ``n`` and not at
    ``n - 1``.

    Returns:
        A float array, or a Series with ``log_p``'s index.

    >>> (samples_needed(np.log([0.1, 1e-300]), p=0.5) / [1, 1e299]).round(6).tolist()   # ceil(log 2 / p_z)
    [7.0, 6.931472]
    """
    _check_n_p(None, p)
    ratio = _samples_ratio(log_p, p)
    return _like(np.where(np.isnan(ratio), np.nan, np.maximum(np.ceil(ratio), 1.0)), log_p)


# ------------------------------------------------------------------------- argmax from the true prefix (EM, ES)

def _argmax_matches(model, data, *, batch_size, device, progress, desc) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
    """``(correct [B, T-1], scored [B, T-1], index)`` per batch: whether each next token is the argmax given the
    true prefix, and which next tokens are scored (labels not -100)."""
    task = causal_task_of(data)
    for net, x, y, index in _model_batches(model, data, batch_size=batch_size, device=device, progress=progress,
                                           desc=desc):
        logits, labels = next_token(task.forward(net, x), y)
        scored = labels != IGNORE_INDEX
        yield (logits.argmax(-1) == labels) & scored, scored, index


@register_proxy("exact_memorization", higher_is_memorized=True, needs=("model", "data"),
                tasks=("causal_lm",))
@torch.no_grad()
def exact_memorization(model: nn.Module, data: Dataset, *, batch_size: int = 64,
                       device: torch.device | str | None = None, progress: bool = True) -> pd.Series:
    """Exact memorization (open-unlearning's EM): the fraction of scored tokens that are the argmax given the prefix.

    Teacher forcing: each token is compared with the model's argmax after the true tokens before it, one forward
    pass per batch, in eval mode.

    The scored tokens are those whose label is not -100 after the first position (as in the loss and
    :data:`proxies.sequences.SEQUENCE_COLUMNS`' ``token_accuracy``). open-unlearning also leaves out each
    sequence's last scored token (its data end with an end-of-text token): give that token the label -100 to
    match it. A sequence with no scored token gets NaN.

    Args:
        model: a causal LM (its mode is restored afterwards; never moved).
        data: token sequences ``(input_ids [T], labels [T], index)``.
        batch_size: sequences per forward pass.
        device: where to compute (default: where the model is).
        progress: show a progress bar over the batches.

    Returns:
        Values in [0, 1] indexed by training index.

    >>> from proxies.batching import IndexedDataset
    >>> from proxies.sequences import CausalLM
    >>> bigram = nn.Embedding(3, 3)
    >>> _ = bigram.weight.data.copy_(torch.eye(3).roll(1, dims=1))   # predicts token + 1 (mod 3)
    >>> ids = torch.tensor([[0, 1, 2, 0], [0, 2, 0, 1]])
    >>> exact_memorization(bigram, IndexedDataset(ids, ids.clone(), task=CausalLM()), progress=False).tolist()
    [1.0, 0.6666666666666666]
    """
    values, indices = [], []
    for correct, scored, index in _argmax_matches(model, data, batch_size=batch_size, device=device,
                                                  progress=progress, desc="exact memorization"):
        counts = scored.sum(1).double()
        values.append(torch.where(counts > 0, correct.sum(1).double() / counts, math.nan))
        indices.append(index)
    return _series(values, indices, "exact_memorization")


@register_proxy("extraction_strength", higher_is_memorized=True, needs=("model", "data"),
                tasks=("causal_lm",))
@torch.no_grad()
def extraction_strength(model: nn.Module, data: Dataset, *, batch_size: int = 64,
                        device: torch.device | str | None = None, progress: bool = True) -> pd.Series:
    """Extraction strength (open-unlearning's ES): the fraction of scored tokens in the final run of argmax matches.

    ``ES = 1 - k*/N`` over a sequence's ``N`` scored tokens, ``k*`` the first of them from which every later one is
    the argmax given the true prefix (teacher forcing, eval mode).

    ``k* = N`` when the last scored token is not the argmax, so ES is 0 there. open-unlearning's loop (``for k in
    range(N): ... break``) ends at ``k = N - 1`` when nothing matches and reports ``1/N`` instead: this function
    reports 0 (the definition). Its data also leave out the last labelled token (see :func:`exact_memorization`).
    A sequence with no scored token gets NaN.

    Args and Returns: as :func:`exact_memorization`.

    >>> from proxies.batching import IndexedDataset
    >>> from proxies.sequences import CausalLM
    >>> bigram = nn.Embedding(3, 3)
    >>> _ = bigram.weight.data.copy_(torch.eye(3).roll(1, dims=1))   # predicts token + 1 (mod 3)
    >>> ids = torch.tensor([[0, 2, 0, 1], [0, 1, 2, 1]])
    >>> extraction_strength(bigram, IndexedDataset(ids, ids.clone(), task=CausalLM()), progress=False).tolist()
    [0.6666666666666666, 0.0]
    """
    values, indices = [], []
    for correct, scored, index in _argmax_matches(model, data, batch_size=batch_size, device=device,
                                                  progress=progress, desc="extraction strength"):
        positions = torch.arange(scored.shape[1], device=scored.device)
        last_wrong = torch.where(scored & ~correct, positions, -1).max(1, keepdim=True).values
        run = (scored & (positions > last_wrong)).sum(1).double()  # the scored tokens after the last miss
        counts = scored.sum(1).double()
        values.append(torch.where(counts > 0, run / counts, math.nan))
        indices.append(index)
    return _series(values, indices, "extraction_strength")
