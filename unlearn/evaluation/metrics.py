"""Unlearning metrics: ROC summaries of membership scores, tug-of-war (ToW) against a retrained model, intervals over
seeds, and the log-log ROC plot.

>>> roc_summary(np.array([0.9, 0.8, 0.3, 0.1]), np.array([1, 1, 0, 0]))["auc"]
1.0
>>> round(tow({"forget": 0.9, "retain": 1.0, "test": 0.95}, {"forget": 0.85, "retain": 1.0, "test": 0.95}), 4)
0.95
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import numpy as np
from scipy import stats
from sklearn.metrics import roc_auc_score, roc_curve

from proxies.files import written

__all__ = ["mean_interval", "plot_roc", "roc_summary", "tow", "tow_mia", "tpr_at_fpr"]

SPLITS = ("forget", "retain", "test")


def _check(scores, membership) -> tuple[np.ndarray, np.ndarray]:
    scores = np.asarray(scores, dtype=float).ravel()
    membership = np.asarray(membership).ravel()
    if scores.shape != membership.shape:
        raise ValueError(f"scores and membership must have the same length, got {scores.shape} and {membership.shape}")
    if not set(np.unique(membership).tolist()) <= {0, 1}:
        raise ValueError("membership must be 0/1 (1 = member)")
    membership = membership.astype(bool)
    if membership.all() or not membership.any():
        raise ValueError("membership needs both members and non-members")
    if not np.isfinite(scores).all():
        raise ValueError("scores must be finite")
    return scores, membership


def tpr_at_fpr(fpr: np.ndarray, tpr: np.ndarray, target: float) -> float:
    """The highest true-positive rate at a false-positive rate no larger than ``target`` (LiRA's convention)."""
    ok = fpr <= target
    return float(tpr[ok].max()) if ok.any() else 0.0


def roc_summary(scores, membership) -> dict[str, float]:
    """AUC, balanced accuracy ``max_t 1 - (FPR + FNR) / 2`` and TPR at 0.1% / 1% FPR of a membership score.

    Args:
        scores: higher = more likely a member.
        membership: 1 for members, 0 for non-members.
    """
    scores, membership = _check(scores, membership)
    fpr, tpr, _ = roc_curve(membership, scores)
    return {
        "auc": float(roc_auc_score(membership, scores)),
        "balanced_accuracy": float(np.max(1 - (fpr + (1 - tpr)) / 2)),
        "tpr_at_fpr_0.001": tpr_at_fpr(fpr, tpr, 0.001),
        "tpr_at_fpr_0.01": tpr_at_fpr(fpr, tpr, 0.01),
    }


def _accuracies(values: Mapping[str, float], name: str) -> dict[str, float]:
    missing = [s for s in SPLITS if s not in values]
    if missing:
        raise ValueError(f"{name} needs accuracies for {list(SPLITS)}, missing {missing}")
    out = {s: float(values[s]) for s in SPLITS}
    if not all(0.0 <= v <= 1.0 for v in out.values()):
        raise ValueError(f"{name} accuracies must be fractions in [0, 1], got {out}")
    return out


def tow(unlearned: Mapping[str, float], retrained: Mapping[str, float]) -> float:
    """Tug of war: ``prod over forget/retain/test of (1 - |acc_unlearned - acc_retrained|)``, accuracies as
    fractions. 1 means indistinguishable from retraining by accuracy."""
    u, r = _accuracies(unlearned, "unlearned"), _accuracies(retrained, "retrained")
    return float(np.prod([1 - abs(u[s] - r[s]) for s in SPLITS]))


def tow_mia(unlearned: Mapping[str, float], retrained: Mapping[str, float], *, mia_unlearned: float,
            mia_retrained: float) -> float:
    """ToW with the forget term replaced by ``1 - |MIA_unlearned - MIA_retrained|`` (MIA results as fractions)."""
    u, r = _accuracies(unlearned, "unlearned"), _accuracies(retrained, "retrained")
    return float((1 - abs(mia_unlearned - mia_retrained)) * (1 - abs(u["retain"] - r["retain"]))
                 * (1 - abs(u["test"] - r["test"])))


def mean_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float]:
    """Mean and half-width of the Student-t confidence interval over seeds (half-width NaN for one value).

    >>> mean, half = mean_interval([0.90, 0.92, 0.94])
    >>> round(mean, 2), round(half, 4)
    (0.92, 0.0497)
    """
    values = np.asarray(values, dtype=float)
    if values.size == 0:
        raise ValueError("mean_interval needs at least one value")
    mean = float(values.mean())
    if values.size < 2:
        return mean, float("nan")
    sem = values.std(ddof=1) / np.sqrt(values.size)
    return mean, float(sem * stats.t.ppf(0.5 + confidence / 2, values.size - 1))


def plot_roc(curves: Mapping[str, tuple[np.ndarray, np.ndarray]], path: str | os.PathLike, *,
             title: str = "membership inference") -> None:
    """Save a log-log ROC plot (the standard view for low-FPR attacks) of ``{label: (scores, membership)}``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.8, 4.4))
    for label, (scores, membership) in curves.items():
        scores, membership = _check(scores, membership)
        fpr, tpr, _ = roc_curve(membership, scores)
        auc = roc_auc_score(membership, scores)
        ax.plot(np.clip(fpr, 1e-5, 1), np.clip(tpr, 1e-5, 1), label=f"{label} (AUC {auc:.3f})")
    ax.plot([1e-5, 1], [1e-5, 1], "k:", linewidth=0.8)
    ax.set(xscale="log", yscale="log", xlim=(1e-5, 1), ylim=(1e-5, 1), xlabel="false positive rate",
           ylabel="true positive rate", title=title)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    with written(path) as tmp:
        fig.savefig(tmp, dpi=120)
    plt.close(fig)

