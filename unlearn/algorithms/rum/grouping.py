"""How rum splits a forget set into memorization groups, computed in one place (:func:`form_groups`) for the
method, its plan and the report (:func:`group_of`).

``"training_set"`` grouping (the default) bins each forget example by the whole training set's score quantiles
(:func:`group_thresholds`, :func:`partition` with ``thresholds=``), so a group means the same memorization level
whatever the request; ``"request"`` grouping is the RUM paper's: equal-count groups by rank within the forget set
(:func:`partition` without thresholds). Without the training set's scores, training-set grouping warns and falls
back to the request's.

>>> partition(np.array([0.9, 0.1, 0.5, 0.3, 0.7, 0.2]), groups=3)
{'low': array([1, 5]), 'medium': array([2, 3]), 'high': array([0, 4])}
>>> cut = group_thresholds(np.arange(10.0), groups=3)  # the training set's tertiles
>>> cut, partition(np.array([8.5, 9.0]), groups=3, thresholds=cut)
(array([3., 6.]), {'low': array([], dtype=int64), 'medium': array([], dtype=int64), 'high': array([0, 1])})
>>> group_of(pd.Series([0.9, 0.1, 0.5, 0.3], name="memorization"), np.array([0, 1, 2])).tolist()
['high', 'low', 'medium']
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from ..._checks import whole

__all__ = ["GROUPINGS", "Grouping", "check_grouping", "form_groups", "group_names", "group_of", "group_thresholds",
           "partition"]

GROUPINGS = ("training_set", "request")
"""How ``rum`` forms its groups: bins of the training set's score quantiles (the default), or the request's own
split by rank (the RUM paper's)."""


def check_grouping(grouping: Any) -> None:
    """Refuse a grouping that is not one of :data:`GROUPINGS`."""
    if not isinstance(grouping, str) or grouping not in GROUPINGS:
        raise ValueError(f"grouping must be one of {list(GROUPINGS)}, got {grouping!r}")


def group_names(groups: int) -> tuple[str, ...]:
    """Names of memorization groups, least memorized first: low/medium/high for 3, low/high for 2, else q0, q1..."""
    return {1: ("all",), 2: ("low", "high"), 3: ("low", "medium", "high")}.get(
        groups, tuple(f"q{i}" for i in range(groups)))


def group_thresholds(memorization: np.ndarray, groups: int = 3) -> np.ndarray:
    """The ``groups - 1`` thresholds between memorization groups: the ``1/groups, 2/groups, ...`` quantiles (numpy's
    default, linear interpolation) of the finite scores, e.g. of every training example (NaN, e.g. an example a
    recording never saw, is left out).

    ``memorization`` must point the usual way (higher = more memorized): negate a confidence-like score first.

    Raises:
        ValueError: no finite score.
    """
    whole("groups", groups, minimum=1)
    memorization = np.asarray(memorization, dtype=float).ravel()
    finite = memorization[np.isfinite(memorization)]
    if len(finite) == 0:
        raise ValueError("no finite memorization score to take the group thresholds from")
    return np.quantile(finite, np.arange(1, groups) / groups)


def partition(memorization: np.ndarray, groups: int = 3, *, thresholds=None) -> dict[str, np.ndarray]:
    """Positions of the examples in each group, least memorized group first.

    Without ``thresholds``: groups of (as near as possible) equal size by rank within ``memorization`` (the RUM
    paper's split of a request; ties keep their order, a stable sort). With ``thresholds`` (``groups - 1``
    non-decreasing values, e.g. :func:`group_thresholds` of the whole training set): group ``k`` holds the scores in
    ``(thresholds[k-1], thresholds[k]]``, so a score equal to a threshold goes to the less memorized group; groups
    may be empty.

    ``memorization`` must point the usual way (higher = more memorized): negate a confidence-like score first.

    Raises:
        ValueError: thresholds that are not ``groups - 1`` non-decreasing numbers.
    """
    memorization = np.asarray(memorization, dtype=float)
    names = group_names(groups)
    if thresholds is None:
        order = np.argsort(memorization, kind="stable")
        return {name: np.sort(chunk) for name, chunk in zip(names, np.array_split(order, groups), strict=True)}
    thresholds = np.asarray(thresholds, dtype=float)
    if thresholds.shape != (groups - 1,):
        raise ValueError(f"need {groups - 1} thresholds for {groups} groups, got shape {thresholds.shape}")
    if (np.diff(thresholds) < 0).any() or np.isnan(thresholds).any():
        raise ValueError(f"thresholds must be non-decreasing numbers, got {thresholds.tolist()}")
    bins = np.searchsorted(thresholds, memorization, side="left")  # how many thresholds each score exceeds
    return {name: np.flatnonzero(bins == k) for k, name in enumerate(names)}


@dataclass(frozen=True)
class Grouping:
    """A forget set split into memorization groups.

    Attributes:
        groups: each group's positions in the forget set, least memorized group first.
        grouping: the rule used, after any fallback (one of :data:`GROUPINGS`).
        thresholds: with training-set grouping, the ``groups - 1`` thresholds between the groups in the scores'
            own units, ascending; else None.
        higher_is_memorized: the scores' direction (with a confidence-like score the most memorized group lies
            *below* the lowest threshold).
        bins: each group's scores as ``(lower, upper)`` in the scores' own units: its bin between the training
            set's thresholds (``-inf`` / ``inf`` at the open ends), or, with the request's grouping, the lowest and
            highest score of its examples (None for an empty group).
    """

    groups: dict[str, np.ndarray]
    grouping: str
    thresholds: tuple[float, ...] | None
    higher_is_memorized: bool
    bins: dict[str, tuple[float, float] | None]

    def describe(self, group: str) -> str:
        """A group's scores as text: its training-set bin as an interval (a score on a threshold belongs to the
        less memorized side), or ``[lowest, highest]`` of its scores under the request's grouping."""
        if self.bins.get(group) is None:
            return ""
        lower, upper = (f"{v:.4g}" for v in self.bins[group])
        if self.grouping == "request":
            return f"[{lower}, {upper}]"
        if self.higher_is_memorized:
            return f"({lower}, {upper}{')' if upper == 'inf' else ']'}"
        return f"{'(' if lower == '-inf' else '['}{lower}, {upper})"

    def labels(self) -> np.ndarray:
        """The group name of each forget example, in forget order."""
        labels = np.empty(sum(len(p) for p in self.groups.values()), dtype=object)
        for name, positions in self.groups.items():
            labels[positions] = name
        return labels


def form_groups(memorization: np.ndarray, population: np.ndarray | None, *, groups: int, grouping: str,
                higher_is_memorized: bool = True, fallback_hint: str = "", stacklevel: int = 2) -> Grouping:
    """Split a forget set into ``groups`` memorization groups by ``grouping``.

    Args:
        memorization: the forget examples' scores, pointing the usual way (higher = more memorized).
        population: every training example's scores, the same way (None: only the forget set's are known; then
            training-set grouping warns and falls back to the request's).
        groups, grouping: how many groups, and the rule (:data:`GROUPINGS`).
        higher_is_memorized: the scores' own direction, for the thresholds and bins in their own units.
        fallback_hint: what the caller should pass for training-set thresholds, added to the fallback's warning.
    """
    check_grouping(grouping)
    if grouping == "training_set" and population is None:
        hint = fallback_hint or "pass the whole training set's scores"
        warnings.warn("only the forget set's scores were given, so the groups are the request's own split (the RUM "
                      "paper's: equal-count groups by rank within the forget set), and their meaning depends on the "
                      "request. For groups that mean the same memorization level whatever the request (thresholds "
                      f"at the whole training set's quantiles), {hint}; "
                      "pass grouping='request' to ask for this split and silence the warning.", UserWarning,
                      stacklevel=stacklevel + 1)
    if grouping == "request" or population is None:
        split = partition(memorization, groups)
        own = memorization if higher_is_memorized else -memorization
        bins = {g: (float(own[p].min()), float(own[p].max())) if len(p) else None for g, p in split.items()}
        return Grouping(split, "request", None, higher_is_memorized, bins)
    cut = group_thresholds(population, groups)
    split = partition(memorization, groups, thresholds=cut)
    edges = np.concatenate([[-np.inf], cut, [np.inf]])
    bins = {}
    for k, g in enumerate(split):
        lower, upper = float(edges[k]), float(edges[k + 1])
        bins[g] = (lower, upper) if higher_is_memorized else (-upper, -lower)
    thresholds = tuple(float(t) for t in (cut if higher_is_memorized else -cut[::-1]))
    return Grouping(split, "training_set", thresholds, higher_is_memorized, bins)


def group_of(scores: pd.Series, ids: np.ndarray, groups: int = 3, *, grouping: str = "request") -> pd.Series:
    """The memorization group (``low`` / ``medium`` / ``high``, as rum forms them) of each of the examples ``ids``
    by ``scores``, a Series indexed by training index (one from :func:`proxies.compute` carries its direction).

    ``grouping``: ``"request"`` (the default here): equal-count groups by rank among ``ids``; ``"training_set"``:
    bins between the quantiles of every finite score of ``scores`` (pass the training set's), as :func:`unlearn`
    forms them from the same Series. A Series of ``ids`` alone falls back to ``"request"`` with a warning.
    """
    import proxies

    check_grouping(grouping)
    higher = proxies.higher_is_memorized(scores)
    sign = 1.0 if higher else -1.0
    covers_more = not np.isin(scores.index.to_numpy(), ids).all()
    split = form_groups(sign * scores.reindex(ids).to_numpy(dtype=float),
                        sign * scores.to_numpy(dtype=float) if covers_more else None, groups=groups,
                        grouping=grouping, higher_is_memorized=higher, stacklevel=2)
    return pd.Series(split.labels(), index=pd.Index(ids, name="index"), name="group")
