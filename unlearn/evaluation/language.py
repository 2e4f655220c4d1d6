"""What :func:`unlearn.evaluate` reports of a causal language model beyond the attacks on its signals.

Per model and split (forget, retain, test), from the sequences' :class:`~.attacks.AttackSignals` (no extra pass):

- ``perplexity.<split>``: corpus perplexity, ``exp`` of the mean token negative log-likelihood over *all* scored
  tokens of the split, ``exp(sum_i n_i loss_i / sum_i n_i)`` (``n_i`` the scored tokens of sequence ``i``,
  ``loss_i`` its mean token NLL): a long sequence weighs by its tokens, as in Hugging Face's perplexity of a corpus.
  :func:`perplexity`;
- ``token_accuracy.<split>``: the mean over sequences of the fraction of scored tokens that are the argmax given the
  true prefix (open-unlearning's exact memorization, averaged per sequence as open-unlearning averages it);
- ``accuracy.<split>``: exact match, the fraction of sequences whose every scored token is the argmax.

Forget (members) against test (non-members), one teacher-forced pass each (:func:`~.attacks.text_scores`, Min-K% and
Min-K%++ at :data:`MIN_K` = 0.4, TOFU's and MUSE's setting; every scored token counts):

- ``mia_<score>.<metric>`` for the scores ``loss``, ``zlib`` (given a tokenizer), ``min_k`` and ``min_k_plus_plus``
  (open-unlearning's metric names): ``auc`` in open-unlearning's convention (the chance that a member scores lower
  than a non-member: 1 = the forget set is far more likely than unseen text, 0.5 = no signal), the balanced
  accuracy and ``tpr_at_fpr_0.001`` / ``tpr_at_fpr_0.01`` (:func:`~.attacks.membership_summary`).

Beside the retrained reference, for each evaluated model (:func:`compare_with_reference`):

- ``privleak``: MUSE's PrivLeak (:func:`~.attacks.priv_leak`) of the two models' ``mia_min_k.auc``;
- ``mia_reference.<metric>``: the reference-model attack, per sequence the model's mean token NLL minus the
  reference's (signed like a loss: a member's is low), forget vs test, summarised as the ``mia_*`` scores.

Optional, per model: ``extraction.*`` of the forget set (:func:`extraction_rows`) and ``exposure.mean`` of canaries
(:func:`exposure_rows`).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from torch import nn
from torch.utils.data import Dataset

from proxies.exposure import exposure
from proxies.extraction import discoverable_extraction, extraction_probability
from proxies.sequences import IGNORE_INDEX

from .._checks import whole
from .attacks import AttackSignals, membership_summary, priv_leak, text_scores

__all__ = ["EXTRACTION_DEFAULTS", "MIN_K", "TextOptions", "compare_with_reference", "exposure_rows",
           "extraction_rows", "perplexity", "scored_tokens", "sequence_rows", "text_attack_rows"]

MIN_K = 0.4
"""The fraction of tokens Min-K% and Min-K%++ average in :func:`unlearn.evaluate` (MUSE's PrivLeak and TOFU's
configs; the Min-K% paper's is 0.2)."""

EXTRACTION_DEFAULTS = {"n": 1000, "p": 0.5, "temperature": 1.0, "top_k": None, "top_p": None, "batch_size": 64}
"""The settings of ``evaluate(extraction={...})`` besides the required ``prefix_length`` and ``suffix_length``: ``n``
samples, probability ``p``, and the sampling scheme (:func:`proxies.extraction.extraction_probability`; Hayes et al.'s
figures use ``top_k=40``)."""

SPLITS = ("forget", "retain", "test")


@dataclass(frozen=True)
class TextOptions:
    """The language-model settings of :func:`unlearn.evaluate`: a tokenizer (the ``zlib`` score), discoverable
    extraction's settings, and canaries with never-inserted reference secrets (exposure)."""

    tokenizer: Any = None
    extraction: Mapping[str, Any] | None = None
    canaries: Dataset | None = None
    canary_references: Dataset | None = None

    def __post_init__(self) -> None:
        if self.extraction is not None:
            object.__setattr__(self, "extraction", _extraction_settings(self.extraction))
        if (self.canaries is None) != (self.canary_references is None):
            raise ValueError("exposure ranks canaries among never-inserted secrets: pass both canaries= and "
                             "canary_references= (e.g. splits.canary_secrets and splits.references), or neither")


def _extraction_settings(settings: Mapping[str, Any]) -> dict[str, Any]:
    """``settings`` over :data:`EXTRACTION_DEFAULTS`, checked before any work."""
    if not isinstance(settings, Mapping):
        raise TypeError(f"extraction must be a dict of settings (prefix_length, suffix_length, ...), got "
                        f"{type(settings).__name__}")
    missing = [key for key in ("prefix_length", "suffix_length") if key not in settings]
    unknown = sorted(set(settings) - {"prefix_length", "suffix_length", *EXTRACTION_DEFAULTS})
    if missing or unknown:
        raise ValueError(f"extraction needs prefix_length and suffix_length and takes "
                         f"{sorted(EXTRACTION_DEFAULTS)}; missing {missing}, unknown {unknown}")
    out = {**EXTRACTION_DEFAULTS, **settings}
    for key in ("prefix_length", "suffix_length", "batch_size"):
        whole(f"extraction's {key}", out[key], minimum=1)
    discoverable_extraction(np.zeros(0), n=out["n"], p=out["p"])  # refuses an n or p that is none
    return out


# ------------------------------------------------------------------------------------------ from the signals

def scored_tokens(signals: AttackSignals) -> np.ndarray:
    """How many tokens of each sequence are scored ``[N]``: labels other than -100 after the first position."""
    return (np.asarray(signals.labels)[:, 1:] != IGNORE_INDEX).sum(1)


def perplexity(signals: AttackSignals) -> float:
    """Corpus perplexity of a split (the module doc): ``exp(sum_i n_i loss_i / sum_i n_i)``.

    >>> losses = [1.0, 4.0]   # 3 scored tokens of mean NLL 1, then 1 of NLL 4
    >>> s = AttackSignals.from_sequence_signals(np.array([[0.5, 0.5, 1.0, v, 0.0, 0.5] for v in losses]),
    ...                                         np.array([[1, 2, 3, 4], [1, 2, -100, -100]]), [0, 1])
    >>> round(perplexity(s), 6) == round(math.exp((3 * 1.0 + 1 * 4.0) / 4), 6)
    True
    """
    counts = scored_tokens(signals)
    return float(math.exp((signals.loss[:, 0] * counts).sum() / counts.sum()))


def sequence_rows(signals: Mapping[str, AttackSignals]) -> dict[str, float]:
    """``token_accuracy.<split>`` and ``perplexity.<split>`` of the forget, retain and test signals.

    Raises:
        ValueError: a sequence with no scored token (its signals are NaN): leave it out.
    """
    for split in SPLITS:
        empty = ~np.isfinite(signals[split].loss[:, 0])
        if empty.any():
            raise ValueError(f"{int(empty.sum())} of the {len(empty)} {split} sequences have no scored token (or a "
                             f"non-finite logit), e.g. index {signals[split].index[empty][0]}: leave them out")
    rows = {f"token_accuracy.{split}": float(signals[split].token_accuracy[:, 0].mean()) for split in SPLITS}
    return rows | {f"perplexity.{split}": perplexity(signals[split]) for split in SPLITS}


# --------------------------------------------------------------------------------------- from the text scores

def text_attack_rows(model: nn.Module, forget: Dataset, test: Dataset, *, tokenizer=None,
                     device=None) -> tuple[dict[str, float], dict[str, pd.DataFrame]]:
    """``mia_<score>.<metric>`` of forget (members) against test (non-members), and the scores themselves by
    split (:func:`~.attacks.text_scores` at ``k =`` :data:`MIN_K`)."""
    scores = {split: text_scores(model, data, k=MIN_K, tokenizer=tokenizer, device=device)
              for split, data in (("forget", forget), ("test", test))}
    rows = {}
    for score in scores["forget"].columns:
        summary = membership_summary(scores["forget"][score], scores["test"][score])
        rows |= {f"mia_{score}.{metric}": value for metric, value in summary.items()}
    return rows, scores


def compare_with_reference(column: dict[str, float], scores: Mapping[str, pd.DataFrame],
                           reference_column: Mapping[str, float], reference_scores: Mapping[str, pd.DataFrame],
                           not_computed: dict[str, str]) -> dict[str, float]:
    """A model's ``privleak`` and ``mia_reference.*`` against the retrained reference (the module doc)."""
    rows = {}
    try:
        rows["privleak"] = priv_leak(column["mia_min_k.auc"], reference_column["mia_min_k.auc"])
    except ValueError as err:  # the reference tells the forget set apart perfectly: no denominator
        not_computed["privleak"] = str(err)
    difference = {split: scores[split]["loss"] - reference_scores[split]["loss"] for split in ("forget", "test")}
    summary = membership_summary(difference["forget"], difference["test"])
    return rows | {f"mia_reference.{metric}": value for metric, value in summary.items()}


# ------------------------------------------------------------------------------------ extraction and exposure

def extraction_rows(model: nn.Module, forget: Dataset, settings: Mapping[str, Any], *, device=None,
                    not_computed: dict[str, str]) -> dict[str, float]:
    """Probabilistic discoverable extraction of the forget set (Hayes et al. 2024), over its sequences of at least
    ``prefix_length + suffix_length`` tokens (``extraction.scored`` of them):

    - ``extraction.rate``: the fraction that are (n, p)-discoverably extractable (``1 - (1 - p_z)^n >= p``);
    - ``extraction.mean_log_p``: the mean of ``log p_z`` (``-inf`` when a truncated sampling scheme, top-k or top-p,
      cannot produce one of them);
    - ``extraction.scored``: how many were long enough.

    No rows, and the reason in ``not_computed["extraction"]``, when none is long enough.
    """
    sampling = {key: settings[key] for key in ("prefix_length", "suffix_length", "temperature", "top_k", "top_p",
                                               "batch_size")}
    try:
        with warnings.catch_warnings():  # the short sequences it warns of are counted out in extraction.scored
            warnings.filterwarnings("ignore", message=".*extraction probability is NaN")
            log_p = extraction_probability(model, forget, device=device, progress=False, **sampling)
    except ValueError as err:
        not_computed["extraction"] = str(err)
        return {}
    log_p = log_p.dropna()
    extractable = discoverable_extraction(log_p, n=settings["n"], p=settings["p"])
    return {"extraction.rate": float(extractable.mean()), "extraction.mean_log_p": float(log_p.mean()),
            "extraction.scored": float(len(log_p))}


def exposure_rows(model: nn.Module, canaries: Dataset, references: Dataset, *, device=None) -> dict[str, float]:
    """``exposure.mean``: the canaries' mean exposure in bits, each ranked among the never-inserted ``references``
    (:func:`proxies.exposure.exposure`, the rank estimate: at most ``log2 |references|``)."""
    return {"exposure.mean": float(exposure(model, canaries, references, device=device, progress=False).mean())}
