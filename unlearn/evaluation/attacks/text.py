"""Membership scores of causal language models (open-unlearning's ``evals/metrics/mia/``) and MUSE's PrivLeak.

Every score is signed like a loss: higher means *less* likely a member. From one teacher-forced forward pass per
batch (:func:`text_scores`), per sequence, over its scored tokens (labels not -100, with the model's shift: the
logits at t predict token t+1, :func:`proxies.sequences.next_token`), ``n`` of them:

- ``loss``: the mean token negative log-likelihood (the LOSS attack, Yeom et al. 2018);
- ``zlib``: that loss divided by the length in bytes of ``zlib.compress`` of the scored tokens' text, decoded
  without special tokens (Carlini et al. 2021); only with a tokenizer;
- ``min_k``: minus the mean of the lowest ``max(1, int(n * k))`` token log-probabilities (Min-K%, Shi et al. 2023);
- ``min_k_plus_plus``: the same over ``(log p(x_t) - mu_t) / sigma_t``, ``mu_t`` and ``sigma_t^2`` the mean and
  variance of ``log p(z)`` under the next-token distribution ``p`` itself (Min-K%++, Zhang et al. 2024), the
  variance floored at :data:`VARIANCE_FLOOR`.

Conventions, checked against open-unlearning (``src/evals/metrics/mia/min_k.py``: ``num_k = max(1, int(len(lp) *
self.k))`` then ``-np.mean(sorted_vals[:num_k])``; ``min_k_plus_plus.py``: ``sigma = clamp(E[l^2] - mu^2, 1e-6)``,
``(target - mu) / sqrt(sigma)``; ``zlib.py``: ``loss / len(zlib.compress(text.encode("utf-8")))`` with the text
``tokenizer.decode(labels[labels != -100], skip_special_tokens=True)``):

- every scored token counts, the last one too. open-unlearning's ``tokenwise_logprobs`` leaves out the last labelled
  token (``nonzero(...)[0][:-1]``, "to ignore eos prediction") for Min-K% and Min-K%++ but not for the loss and
  zlib; ``drop_last=True`` leaves it out of every column here (our sequences end with eos too);
- MUSE's own code (``metrics/privleak.py``) takes ``int(n * k)`` without the ``max(1, .)``, so a sequence of fewer
  than ``1/k`` tokens has no score there; here it has its lowest token's;
- the variance is computed as ``sum_z p(z) (log p(z) - mu)^2``, the same quantity as ``E[(log p)^2] - mu^2`` with
  less cancellation.

Telling members from non-members (:func:`membership_auc`, :func:`membership_tpr_at_fpr`): the AUC is the chance that
a member scores *lower* than a non-member (ties count half), the convention of open-unlearning's ``mia_auc`` (forget
labelled 0, holdout 1, loss-signed scores: "auc is 1 when the forget data is much more likely than the holdout
data"). MUSE's own AUC is one minus it, and PrivLeak (:func:`priv_leak`) is written in MUSE's.

>>> round(priv_leak(0.5, 0.5), 6), round(priv_leak(1.0, 0.5), 6), round(priv_leak(0.25, 0.5), 6)
(0.0, -100.0, 50.0)
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import roc_curve
from torch import Tensor, nn
from torch.utils.data import Dataset

from proxies.predictions import eval_batches
from proxies.sequences import IGNORE_INDEX, causal_task_of, logits_of, next_token

from ..._checks import real, whole
from ..metrics import roc_summary, tpr_at_fpr

__all__ = ["LOGIT_SCORES", "TEXT_SCORES", "VARIANCE_FLOOR", "membership_auc", "membership_summary",
           "membership_tpr_at_fpr", "priv_leak", "priv_leak_of", "scores_from_logits", "text_scores"]

TEXT_SCORES = ("loss", "zlib", "min_k", "min_k_plus_plus")
"""The columns of :func:`text_scores` (``zlib`` only with a tokenizer)."""

LOGIT_SCORES = ("loss", "min_k", "min_k_plus_plus")
"""The columns of :func:`scores_from_logits`: the scores that need the logits alone."""

VARIANCE_FLOOR = 1e-6
"""The least variance of the next-token log-probabilities in Min-K%++ (open-unlearning's clamp)."""


# ----------------------------------------------------------------------------------------------- from logits

def _scored(labels: Tensor, drop_last: bool) -> Tensor:
    """Which of the shifted labels ``[B, L]`` are scored: not -100, and with ``drop_last`` not each row's last."""
    scored = labels != IGNORE_INDEX
    if drop_last and scored.shape[1]:
        # the last scored position is the argmax of position * scored (a row with none: 0, not scored, a no-op)
        last = (scored * torch.arange(1, scored.shape[1] + 1, device=scored.device)).argmax(1)
        scored[torch.arange(len(scored), device=scored.device), last] = False
    return scored


def _placed(values: Tensor, scored: Tensor, fill: float) -> Tensor:
    """``values`` [S] of the scored positions back in their rows ``[B, L]``, ``fill`` elsewhere."""
    out = torch.full(scored.shape, fill, dtype=values.dtype, device=values.device)
    out[scored] = values
    return out


def _lowest_mean(values: Tensor, scored: Tensor, k: float) -> Tensor:
    """The mean of each row's ``max(1, int(n * k))`` lowest scored values ``[B]`` float64 (NaN for n = 0)."""
    counts = scored.sum(1)
    # int(n * k) in double precision, as Python computes it
    take = (counts.double() * k).floor().long().clamp(min=1)
    ordered = values.masked_fill(~scored, float("inf")).sort(1).values.double()
    kept = torch.arange(values.shape[1], device=values.device) < take[:, None]
    means = ordered.masked_fill(~kept, 0.0).sum(1) / take
    return means.masked_fill(counts == 0, float("nan"))


def _batch_scores(logits: Tensor, labels: Tensor, k: float, drop_last: bool) -> tuple[Tensor, Tensor, Tensor]:
    """``(scores [B, 3] float64, shifted labels [B, L], scored [B, L])`` of one batch (:func:`scores_from_logits`)."""
    logits, labels = next_token(logits_of(logits), labels)
    scored = _scored(labels, drop_last)
    tokens = labels[scored]
    if tokens.numel() and not 0 <= int(tokens.min()) <= int(tokens.max()) < logits.shape[-1]:
        raise ValueError(f"the labels hold token ids in [{int(tokens.min())}, {int(tokens.max())}] but the model's "
                         f"vocabulary has {logits.shape[-1]} tokens: a tokenizer of another vocabulary?")
    # only the scored positions' distributions: [S, V], S the batch's scored tokens, never [N, T, V]
    log_probs = torch.log_softmax(logits[scored].float(), dim=-1)
    target = log_probs.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    probs = log_probs.exp()
    mu = (probs * log_probs).sum(-1)
    variance = (probs * (log_probs - mu[:, None]).square()).sum(-1).clamp(min=VARIANCE_FLOOR)
    normalised = (target - mu) / variance.sqrt()
    per_token = _placed(target, scored, 0.0)
    loss = -per_token.double().sum(1) / scored.sum(1)  # 0 / 0: NaN for a sequence with no scored token
    min_k = -_lowest_mean(per_token, scored, k)
    min_k_plus_plus = -_lowest_mean(_placed(normalised, scored, 0.0), scored, k)
    return torch.stack([loss, min_k, min_k_plus_plus], dim=1), labels, scored


def scores_from_logits(logits: Tensor, labels: Tensor, *, k: float = 0.2, drop_last: bool = False) -> Tensor:
    """The logit-only membership scores of a batch ``[B, 3]`` float64, columns :data:`LOGIT_SCORES` (module doc).

    Args:
        logits: ``[B, T, V]`` (or an output with ``.logits``); the logits at t predict token t+1.
        labels: ``[B, T]``, -100 where a token is not scored.
        k: the fraction of tokens Min-K% and Min-K%++ average, in (0, 1].
        drop_last: leave each sequence's last scored token out (open-unlearning's Min-K%).

    Returns:
        Float64 scores on the logits' device, NaN in every column for a sequence with no scored token.

    >>> logits = torch.tensor([[[0.0, 2.0], [1.0, 0.0], [0.0, 0.0]]])  # log p: -0.1269 (token 1), -0.3133 (token 0)
    >>> scores_from_logits(logits, torch.tensor([[-100, 1, 0]])).round(decimals=4).tolist()
    [[0.2201, 0.3133, -0.3679]]
    """
    real("k", k, low=0.0, high=1.0, low_open=True)
    return _batch_scores(logits, labels, k, drop_last)[0]


# ----------------------------------------------------------------------------------------------- from a model

def _zlib_lengths(labels: Tensor, scored: Tensor, tokenizer) -> np.ndarray:
    """The length in bytes of ``zlib.compress`` of each sequence's scored tokens decoded without special tokens."""
    labels, scored = labels.cpu(), scored.cpu()
    texts = [tokenizer.decode(row[keep].tolist(), skip_special_tokens=True)
             for row, keep in zip(labels, scored, strict=True)]
    return np.array([len(zlib.compress(text.encode("utf-8"))) for text in texts], dtype=np.float64)


def _check_tokenizer(tokenizer) -> None:
    if tokenizer is not None and not callable(getattr(tokenizer, "decode", None)):
        raise TypeError(f"tokenizer must have decode(ids, skip_special_tokens=True) (a transformers tokenizer, "
                        f"e.g. splits.tokenizer), got {type(tokenizer).__name__}")


def _empty_frame(columns: Sequence[str]) -> pd.DataFrame:
    index = pd.Index(np.zeros(0, dtype=np.int64), name="index")
    return pd.DataFrame({c: np.zeros(0) for c in columns}, index=index)


@torch.no_grad()
def text_scores(model: nn.Module, data: Dataset, *, k: float = 0.2, tokenizer=None, drop_last: bool = False,
                batch_size: int = 64, device: torch.device | str | None = None) -> pd.DataFrame:
    """Each sequence's membership scores under a causal LM, signed like a loss (the module doc).

    One teacher-forced forward pass per batch, in eval mode (the model's mode is restored; it is never moved or
    changed), reduced per batch: no ``[N, T, V]`` is kept.

    Args:
        model: a causal LM (``input_ids [B, T]`` to logits ``[B, T, V]`` or an output with ``.logits``).
        data: token sequences ``(input_ids [T], labels [T], index)``, labels -100 where not scored (a
            :class:`~proxies.sequences.CausalLM` task trims each batch's trailing padding).
        k: the fraction of the scored tokens Min-K% and Min-K%++ average, in (0, 1] (0.2 in the Min-K% paper, 0.4
            in MUSE's PrivLeak).
        tokenizer: decodes the scored tokens for the ``zlib`` column (``splits.tokenizer``); without one that column
            is left out.
        drop_last: leave each sequence's last scored token (its eos) out of every column, as open-unlearning's
            Min-K% does; by default every scored token counts.
        batch_size: sequences per forward pass.
        device: where to compute (default: where the model is; elsewhere, a copy of the model).

    Returns:
        A DataFrame indexed by the sequences' training index, columns :data:`TEXT_SCORES` (without ``zlib`` when
        no tokenizer is given), float64; NaN in every column for a sequence with no scored token.

    Raises:
        ValueError, TypeError: a bad ``k``, ``batch_size`` or tokenizer, or data that are not token sequences.
    """
    real("k", k, low=0.0, high=1.0, low_open=True)
    whole("batch_size", batch_size, minimum=1)
    _check_tokenizer(tokenizer)
    task = causal_task_of(data)
    columns = [c for c in TEXT_SCORES if c != "zlib" or tokenizer is not None]
    values, lengths, indices = [], [], []
    for net, x, y, index in eval_batches(model, data, batch_size, device=device):
        if y.ndim != 2:
            raise ValueError(f"text_scores scores token sequences: labels [batch, tokens], got {list(y.shape)}")
        scores, labels, scored = _batch_scores(task.forward(net, x.long()), y, k, drop_last)
        values.append(scores.cpu())
        indices.append(index.cpu())
        if tokenizer is not None:
            lengths.append(_zlib_lengths(labels, scored, tokenizer))
    if not values:
        return _empty_frame(columns)
    scores = torch.cat(values).numpy()
    frame = pd.DataFrame(scores, columns=list(LOGIT_SCORES),
                         index=pd.Index(torch.cat(indices).numpy().astype(np.int64), name="index"))
    if tokenizer is not None:
        frame["zlib"] = frame["loss"] / np.concatenate(lengths)
    return frame[columns]


# --------------------------------------------------------------------------------------- telling members apart

def _groups(member_scores, nonmember_scores) -> tuple[np.ndarray, np.ndarray]:
    """The two groups' scores as ``(-scores, membership)`` for the ROC helpers (higher = member there)."""
    member = np.asarray(member_scores, dtype=np.float64).ravel()
    nonmember = np.asarray(nonmember_scores, dtype=np.float64).ravel()
    for name, group in (("member_scores", member), ("nonmember_scores", nonmember)):
        if not len(group):
            raise ValueError(f"{name} is empty: the AUC compares members with non-members")
        if not np.isfinite(group).all():
            raise ValueError(f"{name} must be finite; {int((~np.isfinite(group)).sum())} of {len(group)} are not "
                             "(a sequence with no scored token has NaN scores: leave it out)")
    membership = np.r_[np.ones(len(member)), np.zeros(len(nonmember))]
    return -np.concatenate([member, nonmember]), membership


def membership_auc(member_scores, nonmember_scores) -> float:
    """The AUC of telling members from non-members by a loss-signed score: the chance that a member scores *lower*
    than a non-member, ties counted half (1: every member below every non-member, 0.5: no signal).

    Args:
        member_scores, nonmember_scores: scores signed like a loss (a :func:`text_scores` column), finite.

    >>> membership_auc([0.1, 0.2, 0.9], [0.5, 0.9])
    0.75
    """
    return roc_summary(*_groups(member_scores, nonmember_scores))["auc"]


def membership_summary(member_scores, nonmember_scores) -> dict[str, float]:
    """:func:`unlearn.evaluation.metrics.roc_summary` of telling members from non-members by a loss-signed score:
    its ``auc`` is :func:`membership_auc`, its ``tpr_at_fpr_0.01`` :func:`membership_tpr_at_fpr` at ``fpr=0.01``
    (and likewise 0.001), beside the balanced accuracy; what :func:`unlearn.evaluate` reports of each text score.

    >>> membership_summary([0.1, 0.2, 0.9], [0.5, 0.9])["auc"]
    0.75
    """
    return roc_summary(*_groups(member_scores, nonmember_scores))


def membership_tpr_at_fpr(member_scores, nonmember_scores, *, fpr: float = 1e-2) -> float:
    """The highest fraction of members caught (scores at most a threshold) while at most ``fpr`` of the non-members
    are, by a loss-signed score (:func:`unlearn.evaluation.metrics.tpr_at_fpr`, LiRA's convention).

    Named apart from :func:`unlearn.evaluation.metrics.tpr_at_fpr`, which reads an ROC curve.

    >>> membership_tpr_at_fpr([0.1, 0.2, 0.9], [0.5, 0.9], fpr=0.0)
    0.6666666666666666
    """
    real("fpr", fpr, low=0.0, high=1.0)
    false_positives, true_positives, _ = roc_curve(*reversed(_groups(member_scores, nonmember_scores)))
    return tpr_at_fpr(false_positives, true_positives, fpr)


# ----------------------------------------------------------------------------------------------------- PrivLeak

def priv_leak(auc_unlearned: float, auc_retrained: float) -> float:
    """MUSE's PrivLeak, in percent: ``((1 - AUC_unl) - (1 - AUC_ret)) / (1 - AUC_ret) * 100``.

    The AUCs are :func:`membership_auc`'s (a member scores lower) of forget (members) against holdout
    (non-members), the unlearned model's and the retrained one's; MUSE scores with Min-K% at k = 0.4
    (:func:`priv_leak_of`). MUSE's own AUC is one minus this one (``metrics/privleak.py``: ``roc_curve(y, -ppl)``
    with the holdout labelled 1), and its ``eval.py`` reports ``(auc - AUC_RETRAIN) / AUC_RETRAIN * 100`` in it;
    open-unlearning's ``privleak`` turns its AUC (this one) into MUSE's with ``1 - auc`` first. So:

    - about 0: the unlearned model leaks as much as the retrained one;
    - negative, down to -100: it still tells its forget set apart (a model that memorised it, AUC 1: -100);
    - positive: over-unlearning, the forget set now looks *less* like members than unseen text does.

    Raises:
        ValueError: an AUC outside [0, 1], or a retrained model with AUC 1 (the ratio has no denominator;
            open-unlearning adds 1e-10 to it instead).

    >>> round(priv_leak(0.9, 0.6), 6)
    -75.0
    """
    real("auc_unlearned", auc_unlearned, low=0.0, high=1.0)
    real("auc_retrained", auc_retrained, low=0.0, high=1.0)
    if auc_retrained == 1.0:
        raise ValueError("auc_retrained is 1 (the retrained model tells the forget set apart perfectly): PrivLeak "
                         "divides by 1 - auc_retrained")
    return float(((1.0 - auc_unlearned) - (1.0 - auc_retrained)) / (1.0 - auc_retrained) * 100.0)


def priv_leak_of(model: nn.Module, retrained: nn.Module, forget: Dataset, holdout: Dataset, *, k: float = 0.4,
                 score: str = "min_k", tokenizer=None, drop_last: bool = False, batch_size: int = 64,
                 device: torch.device | str | None = None) -> float:
    """PrivLeak (:func:`priv_leak`) of an unlearned ``model`` against ``retrained`` (trained without the forget set):
    each model's :func:`membership_auc` of ``forget`` against ``holdout`` by one :func:`text_scores` column.

    Args:
        model, retrained: causal LMs (never moved or changed).
        forget, holdout: token sequences: the forgotten training examples and text neither model saw.
        k: Min-K%'s fraction (MUSE: Min-K% with k = 0.4).
        score: the :data:`TEXT_SCORES` column to attack with (``"zlib"`` needs ``tokenizer``).
        tokenizer, drop_last, batch_size, device: as :func:`text_scores`.

    Raises:
        ValueError: an unknown score, ``"zlib"`` without a tokenizer, or a sequence with no scored token.
    """
    if score not in TEXT_SCORES:
        raise ValueError(f"unknown score {score!r}; expected one of {list(TEXT_SCORES)}")
    if score == "zlib" and tokenizer is None:
        raise ValueError("score='zlib' decodes the tokens: pass tokenizer= (e.g. splits.tokenizer)")
    options = {"k": k, "tokenizer": tokenizer, "drop_last": drop_last, "batch_size": batch_size, "device": device}

    def auc(net: nn.Module) -> float:
        return membership_auc(text_scores(net, forget, **options)[score], text_scores(net, holdout, **options)[score])

    return priv_leak(auc(model), auc(retrained))
