"""``memorization_estimate``: recorded proxies combined into one estimate of Feldman-Zhang memorization.

Each recorded proxy is turned into its rank among the training set's examples (a fraction in (0, 1], oriented so
that a high rank means more memorized), which makes them scale-free and comparable across datasets; the estimate is
a weighted sum of those ranks. The weights were chosen once on digits' FZ memorization (K=256 subset models;
``benchmarks/fit_memorization_estimate.py``) and never on the data an evaluation uses (``benchmarks/README.md``
measures it on Fashion-MNIST): the mean rank of ``confidence``, ``csg`` and ``loss_iqr``, the best of the rank
averages of one to four recorded proxies there (Spearman 0.440 against 0.430 for ``confidence`` alone). A ridge
regression on all eleven ranks did worse under 10-fold cross-validation (0.403), so it was not kept.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

from . import learning_speed, training_traces  # noqa: F401  (the features register first)
from .recording import TrainingRecorder
from .registry import compute, get_proxy, register_proxy

FEATURES = ("confidence", "max_confidence", "negative_entropy", "accuracy", "forgetting_events", "first_learned",
            "presentations_needed", "csl", "csg", "sgal", "loss_iqr")
"""The recorded proxies the estimate combines, in the order of :data:`WEIGHTS`."""

WEIGHTS: dict[str, float] = {"confidence": 1 / 3, "csg": 1 / 3, "loss_iqr": 1 / 3}
"""Weight per feature rank (features left out weigh 0), chosen by ``benchmarks/fit_memorization_estimate.py`` on
digits."""


def feature_ranks(recording: TrainingRecorder, features=FEATURES) -> pd.DataFrame:
    """Each of ``features`` (default :data:`FEATURES`) as its rank among the recording's examples, a fraction in
    (0, 1] (ties share their mean rank), oriented so that higher means more memorized; NaN where the proxy is NaN."""
    features = list(features)
    table = compute(features, recording=recording)
    ranks = {}
    for name in features:
        oriented = table[name] if get_proxy(name).higher_is_memorized else -table[name]
        ranks[name] = oriented.rank(pct=True)
    return pd.DataFrame(ranks)


@register_proxy("memorization_estimate", higher_is_memorized=True, needs=("recording",),
                tasks=("classification",))
def memorization_estimate(recording: TrainingRecorder, weights: Mapping[str, float] | None = None) -> np.ndarray:
    """Mean training-set rank of confidence, CSG and the loss trace's IQR, chosen on digits' FZ memorization.

    Args:
        recording: a recording with input gradients (``csg`` needs them; ``sgal`` also needs weight norms).
        weights: ``{feature: weight}`` over :data:`FEATURES` instead of :data:`WEIGHTS`.

    Raises:
        ValueError: ``weights`` naming something outside :data:`FEATURES`, or none at all.
    """
    weights = WEIGHTS if weights is None else dict(weights)
    unknown = sorted(set(weights) - set(FEATURES))
    if unknown or not weights:
        raise ValueError(f"weights must name some of {list(FEATURES)}, got {sorted(weights)}")
    ranks = feature_ranks(recording, list(weights))
    return sum(float(weight) * ranks[name].to_numpy() for name, weight in weights.items())
