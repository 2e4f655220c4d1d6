"""The unlearning papers' standard attacks on one model: a loss threshold, logistic regression on the loss
(NeurIPS 2023 unlearning kit) and the SVC attack on softmax features."""

from __future__ import annotations

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_score
from sklearn.svm import SVC

from ..metrics import roc_summary
from .signals import AttackSignals

__all__ = ["SVC_FEATURES", "loss_logreg", "loss_threshold", "svc"]


def loss_threshold(member_loss, nonmember_loss) -> dict[str, float]:
    """ROC summary of ``-loss`` as a membership score (members have lower loss)."""
    member_loss, nonmember_loss = np.ravel(member_loss), np.ravel(nonmember_loss)
    scores = -np.concatenate([member_loss, nonmember_loss])
    membership = np.r_[np.ones(len(member_loss)), np.zeros(len(nonmember_loss))]
    return roc_summary(scores, membership)


def _balanced(a: np.ndarray, b: np.ndarray, rng: np.random.Generator, cap: int | None = None):
    n = min(len(a), len(b)) if cap is None else min(len(a), len(b), cap)
    if n < 1:
        raise ValueError("both groups need at least one example")
    return a[rng.choice(len(a), n, replace=False)], b[rng.choice(len(b), n, replace=False)]


def loss_logreg(forget_loss, test_loss, *, n_splits: int = 10, seed: int = 0) -> dict[str, float]:
    """Cross-validated accuracy of a logistic regression telling forget (1) from test (0) examples by their loss.

    The larger group is subsampled to the size of the smaller; ``n_splits``-fold stratified cross-validation.
    About 0.5 means the forget set looks like unseen data.
    """
    rng = np.random.default_rng(seed)
    forget, test = _balanced(np.ravel(forget_loss), np.ravel(test_loss), rng)
    if len(forget) < n_splits:
        raise ValueError(f"loss_logreg needs at least {n_splits} examples per group, got {len(forget)}")
    x = np.log(np.concatenate([forget, test]) + 1e-12)[:, None]  # log loss: the classes separate on a log scale
    y = np.r_[np.ones(len(forget)), np.zeros(len(test))]
    folds = StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    accuracy = cross_val_score(LogisticRegression(), x, y, cv=folds, scoring="accuracy")
    return {"accuracy": float(accuracy.mean()), "accuracy_std": float(accuracy.std())}


SVC_FEATURES = {
    "correctness": lambda s: s.correct[:, :1].astype(float),
    "confidence": lambda s: s.p_true[:, :1],
    "entropy": lambda s: s.entropy[:, :1],
    "m_entropy": lambda s: s.modified_entropy[:, :1],
    "prob": lambda s: s.probs,
}
"""The five feature sets of the SVC attack, from the identity query."""


def svc(retain: AttackSignals, test: AttackSignals, forget: AttackSignals, *, features=tuple(SVC_FEATURES),
        max_train: int = 5000, seed: int = 0) -> dict[str, float]:
    """The SVC attack: an RBF SVC (C=3) learns member (retain) vs non-member (test) from softmax features and
    labels the forget set. Returns, per feature set, the fraction of forget examples it calls non-members
    (MIA efficacy: higher = better forgotten). Classifiers' signals only (token sequences have no classes)."""
    unknown = [f for f in features if f not in SVC_FEATURES]
    if unknown:
        raise ValueError(f"unknown SVC features {unknown}; expected some of {list(SVC_FEATURES)}")
    rng = np.random.default_rng(seed)
    members, nonmembers = _balanced(np.arange(len(retain.labels)), np.arange(len(test.labels)), rng, max_train)
    result = {}
    for name in features:
        make = SVC_FEATURES[name]
        x = np.concatenate([make(retain)[members], make(test)[nonmembers]])
        y = np.r_[np.ones(len(members)), np.zeros(len(nonmembers))]
        model = SVC(C=3, gamma="auto", kernel="rbf").fit(x, y)
        result[name] = float((model.predict(make(forget)) == 0).mean())
    return result
