"""Membership-inference attacks: pure functions over signal arrays and membership masks.

Attack signals are extracted once per model and dataset (:func:`extract_signals`); attacks score them:
:func:`loss_threshold`, :func:`loss_logreg` and :func:`svc` on one model; :func:`lira` / :func:`ulira` and
:func:`rmia` with shadow or reference models; :func:`epsilons` / :func:`forgetting_score` from many unlearned and
retrained models (``rules="challenge"`` for the NeurIPS 2023 scorer's own rules, comparable with its leaderboard).
Language models: :func:`text_scores` (LOSS, zlib, Min-K%, Min-K%++ per sequence), :func:`membership_auc` /
:func:`membership_tpr_at_fpr` (:func:`membership_summary`: both and more) on them, and MUSE's :func:`priv_leak`
(:func:`priv_leak_of` from the models). :func:`extract_signals` gives the registered attacks a sequence's signals too
(its mean token log-likelihood as LiRA's ``phi``).
"""

from .basic import SVC_FEATURES, loss_logreg, loss_threshold, svc
from .forgetting import epsilons, forgetting_quality, forgetting_score
from .lira import lira, ulira
from .registry import DEFAULT_ATTACKS, AttackInputs, NotApplicable, attacks, get_attack, register_attack
from .rmia import disjoint_halves, rmia, tune_rmia_a
from .signals import (
    QUERIES,
    AttackSignals,
    extract_signals,
    logit_scaled_confidence,
    modified_entropy,
    register_signals,
)
from .text import (
    TEXT_SCORES,
    membership_auc,
    membership_summary,
    membership_tpr_at_fpr,
    priv_leak,
    priv_leak_of,
    scores_from_logits,
    text_scores,
)

__all__ = [
    "DEFAULT_ATTACKS",
    "QUERIES",
    "AttackInputs",
    "NotApplicable",
    "SVC_FEATURES",
    "TEXT_SCORES",
    "AttackSignals",
    "attacks",
    "disjoint_halves",
    "epsilons",
    "extract_signals",
    "forgetting_quality",
    "forgetting_score",
    "get_attack",
    "lira",
    "logit_scaled_confidence",
    "loss_logreg",
    "loss_threshold",
    "membership_auc",
    "membership_summary",
    "membership_tpr_at_fpr",
    "modified_entropy",
    "priv_leak",
    "priv_leak_of",
    "register_signals",
    "register_attack",
    "rmia",
    "scores_from_logits",
    "svc",
    "text_scores",
    "tune_rmia_a",
    "ulira",
]
