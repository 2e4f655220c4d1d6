"""rum's policies (RUM, Zhao et al., NeurIPS 2024): what unlearns each memorization group, and how each step
trains. The groups themselves are :mod:`unlearn.algorithms.rum.grouping`'s.

A **policy** maps a group name to what unlearns it: ``None`` / ``"noop"`` (leave it), a method name, a
``(method, {settings})`` pair, ``{"method": ..., "config": {...}}``, or a list of those: steps that unlearn the
group in turn (each its own plan step, e.g. random labels and then a short fine-tune that repairs what they broke).
Built-in policies are the two anchor recipes, two cheap ones that train each step on a small random sample of
the retain set, and one that stops each group at its expected accuracy (below).

**Retain subsampling.** A step's cost is set by the retain examples it trains on, not by its forget group. With
``retain_per_forget=k`` (in :class:`RUMConfig` for every step, or as a ``"retain_per_forget"`` key in one entry's
settings, which rum takes out before the method sees them) each step draws a fresh seeded random sample of
``ceil(k * group size)`` examples of the retain set and the method sees only those; the plan records which.

**Stopping where a model that never saw the group would be.** A step whose settings say
``"target_accuracy": "expected"`` stops once its group's accuracy has fallen to the accuracy a model trained
without the group is expected to have (checked about once per group's worth of examples trained on): the mean of
the group's expected (held-out) accuracies, which :func:`unlearn.unlearn` takes from ``expected_accuracy=`` (e.g.
Feldman-Zhang's ``c_score``) or estimates from the training ``recording`` (the ``early_accuracy`` proxy). A highly
memorized group is pushed far, a group the model would classify without having seen it is barely touched; the
step's ``epochs`` cap the run.

**Plugins.** :func:`register_policy` adds a named policy (duplicates refused unless ``force=True``); outside packages
add theirs through the entry-point group ``unlearn.policies``, read the first time a policy is looked up by name
(:func:`policies`, or ``policy="name"``): an entry point naming a module registers its policies when imported (as
for ``unlearn.methods``), one naming a mapping (``my_policy = "my_package.policies:MY_POLICY"``) is registered
under the entry point's name. A plugin that fails to load raises ``RuntimeError`` naming it.

>>> retain_sample(1000, 30, retain_per_forget=4, seed=0).shape
(120,)
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from numbers import Real
from typing import Any

import numpy as np

from proxies.registries import Registry

from ..._checks import whole
from .grouping import check_grouping, group_names

__all__ = ["DEFAULT_POLICIES", "ENTRY_POINT_GROUP", "EXPECTED", "POLICIES", "RETAIN_PER_FORGET", "RUMConfig",
           "default_policy", "get_policy", "policies", "register_policy", "resolve_policy", "retain_sample",
           "step_seed_of", "uses_expected"]

ENTRY_POINT_GROUP = "unlearn.policies"
"""The entry-point group through which outside packages add policies (see the module doc)."""

RETAIN_PER_FORGET = "retain_per_forget"
"""The settings key of a policy entry that sets that step's retain sample (taken out before the method sees them)."""

EXPECTED = "expected"
"""``target_accuracy`` value that rum replaces by the group's expected held-out accuracy."""

_TO_EXPECTED = [("random_label", {"epochs": 10, "lr": 0.05, "batch_size": 64, RETAIN_PER_FORGET: 16,
                                  "target_accuracy": EXPECTED}),
                 ("finetune", {"epochs": 1, "lr": 0.01, "batch_size": 64, RETAIN_PER_FORGET: 16})]



def _plugin_policy(entry_point, loaded) -> None:
    if isinstance(loaded, Mapping):  # an entry point naming a policy, not a module that registers some
        register_policy(entry_point.name, loaded)


POLICIES: Registry[dict[str, Any]] = Registry("policy", ENTRY_POINT_GROUP, on_entry_point=_plugin_policy, entries={
    # anchor (a): leave the least memorized alone, fine-tune the middle, SalUn the most memorized
    "finetune_salun": {
        "low": None,
        "medium": ("finetune", {"epochs": 10, "lr": 0.1}),
        "high": ("salun", {"epochs": 5, "lr": 0.1}),
    },
    # anchor (b): NegGrad+ on every group, gentler and longer as memorization grows
    "neggrad_plus": {
        "low": ("neggrad_plus", {"alpha": 0.99, "epochs": 5, "lr": 0.01}),
        "medium": ("neggrad_plus", {"alpha": 0.97, "epochs": 5, "lr": 0.01}),
        "high": ("neggrad_plus", {"alpha": 0.97, "epochs": 10, "lr": 0.001}),
    },
    # not from the paper: cheap. Only the most memorized group is unlearned (random labels, 2 short epochs on a
    # retain sample of 16 per forget example); the others are left, as the anchor leaves the least memorized. A short
    # fine-tune of the middle group moved ToW by <= 0.004 in the benchmark's variant runs (benchmarks/README.md).
    "random_label_fast": {
        "low": None,
        "medium": None,
        "high": ("random_label", {"epochs": 2, "lr": 0.02, "batch_size": 64, RETAIN_PER_FORGET: 16}),
    },
    # not from the paper: the cheap policy plus a repair. After the random labels, one epoch of fine-tuning at half
    # the rate on a fresh retain sample of the same size wins back the retain and test accuracy they cost; on
    # digits it also wins back part of what was forgotten (benchmarks/README.md).
    "random_label_repair": {
        "low": None,
        "medium": None,
        "high": [("random_label", {"epochs": 2, "lr": 0.02, "batch_size": 64, RETAIN_PER_FORGET: 16}),
                 ("finetune", {"epochs": 1, "lr": 0.01, "batch_size": 64, RETAIN_PER_FORGET: 16})],
    },
    # not from the paper: memorization-aware stopping. Random labels on the medium and high groups, each stopped
    # once its accuracy falls to what a model that never saw it is expected to score (see "Stopping where a model
    # that never saw the group would be" above), then the repair; up to 10 epochs on a sample of 16 per example.
    "random_label_to_expected": {"low": None, "medium": _TO_EXPECTED, "high": _TO_EXPECTED},
    # language models (token sequences), not from a paper: NPO on every group, longer as memorization grows; the
    # text default (benchmarks/README.md, "Unlearning secrets from a language model")
    "npo_graded": {
        "low": ("npo", {"epochs": 2}),
        "medium": ("npo", {"epochs": 5}),
        "high": ("npo", {"epochs": 10}),
    },
    # language models: NPO on the medium and high groups, each stopped once its token accuracy (exact memorization)
    # falls to what a model that never saw it is expected to show, estimated from the recording (early_accuracy of
    # the token accuracy); up to 20 epochs
    "npo_to_expected": {
        "low": None,
        "medium": ("npo", {"epochs": 20, "target_accuracy": EXPECTED}),
        "high": ("npo", {"epochs": 20, "target_accuracy": EXPECTED}),
    },
})
"""Policies by name: the RUM paper's two recipes, three of this library's, any :func:`register_policy` added and
the plugins' (a :class:`proxies.Registry`, a mapping from name to policy)."""

DEFAULT_POLICIES = {"classification": "finetune_salun", "causal_lm": "npo_graded"}
"""The policy ``rum`` follows when none is named, by the kind of example (:attr:`proxies.tasks.Task.name`): the RUM
paper's first recipe for classifiers; for language models the one ``benchmarks/bench_text_unlearn.py`` chose: on
3 seeds of the canary request it leaves no secret extractable with test perplexity within 3.2% of retraining's, in
15% of its time (``npo_to_expected`` stops before the secrets' membership is gone, PrivLeak -45 to -62)."""


def default_policy(task: str) -> str:
    """The policy ``rum`` follows on examples of the task named ``task`` when none is named."""
    return DEFAULT_POLICIES.get(task, DEFAULT_POLICIES["classification"])



@dataclass(frozen=True)
class RUMConfig:
    """How ``method="rum"`` splits and orders the forget set.

    Args:
        groups: number of memorization groups.
        order: group names in the order they are unlearned (default: least memorized first).
        policy: a name from :data:`POLICIES` or a mapping from group name to what unlearns it; None: the data's
            default (:data:`DEFAULT_POLICIES`).
        retain_per_forget: retain examples per forget example that each step trains on (a fresh seeded random
            sample of ``ceil(k * group size)``, the whole retain set when that is not smaller); ``None``: the whole
            retain set. A policy entry's own ``"retain_per_forget"`` setting wins over this one.
        grouping: ``"training_set"`` (default): each group is a bin between quantiles of the score over the whole
            training set, so a group means the same memorization level whatever the request (it falls back to
            ``"request"``, with a warning, when only the forget set's scores are known); ``"request"``: the RUM
            paper's split, equal-count groups by rank within the forget set (see the module doc).

    Raises:
        ValueError: fewer than one group, an order that does not list each group once, a ``retain_per_forget``
            that is not a positive finite number, or a grouping not in :data:`GROUPINGS`.
    """

    groups: int = 3
    order: Sequence[str] | None = None
    policy: str | Mapping[str, Any] | None = None
    retain_per_forget: float | None = None
    grouping: str = "training_set"

    def __post_init__(self) -> None:
        whole("groups", self.groups, minimum=1)
        names = group_names(self.groups)
        if self.order is not None and sorted(self.order) != sorted(names):
            raise ValueError(f"order must list each group once, {list(names)}; got {list(self.order)}")
        check_retain_per_forget(self.retain_per_forget, "retain_per_forget")
        check_grouping(self.grouping)

    def ordered_groups(self) -> tuple[str, ...]:
        return tuple(self.order) if self.order is not None else group_names(self.groups)


def check_retain_per_forget(value: Any, where: str) -> None:
    """Refuse anything but ``None`` or a positive finite number (``where`` names the setting in the message)."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{where} must be a positive number or None, got {type(value).__name__} {value!r}")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{where} must be a positive finite number of retain examples per forget example or "
                         f"None (the whole retain set), got {value!r}")


def retain_sample(retain_size: int, forget_size: int, *, retain_per_forget: float | None, seed: int) -> np.ndarray:
    """Positions in the retain set that a step trains on, sorted: a seeded random sample of
    ``ceil(retain_per_forget * forget_size)`` without replacement, or every position when ``retain_per_forget`` is
    ``None`` or the sample would not be smaller than the retain set.

    >>> retain_sample(10, 2, retain_per_forget=1.5, seed=0).tolist()
    [5, 6, 9]
    >>> retain_sample(5, 2, retain_per_forget=None, seed=0).tolist()
    [0, 1, 2, 3, 4]
    """
    check_retain_per_forget(retain_per_forget, "retain_per_forget")
    if retain_per_forget is None:
        return np.arange(retain_size)
    size = math.ceil(retain_per_forget * forget_size)
    if size >= retain_size:
        return np.arange(retain_size)
    return np.sort(np.random.default_rng(seed).choice(retain_size, size, replace=False))


def step_seed_of(seed: int, number: int) -> int:
    """The seed of step ``number`` of a ``rum`` run with ``seed``: drawn from both, so that no step of one run
    shares its random choices with a step of another (``seed + number`` would: step 1 of seed 0 is step 0 of seed
    1)."""
    return int(np.random.SeedSequence([seed % 2**64, number]).generate_state(1)[0])  # a negative seed too


def _resolve_step(entry: Any) -> tuple[str, dict] | None:
    """One step ``(method, settings)`` from a method name, a pair or a ``{"method", "config"}`` mapping; else None.
    A pair's settings are a mapping without a ``"method"`` key, so ``[name, {"method": ...}]`` is two steps."""
    if isinstance(entry, str):
        return entry, {}
    if isinstance(entry, Mapping) and "method" in entry:
        return entry["method"], dict(entry.get("config") or {})
    if (isinstance(entry, tuple | list) and len(entry) == 2 and isinstance(entry[0], str)
            and (entry[1] is None or (isinstance(entry[1], Mapping) and "method" not in entry[1]))):
        return entry[0], dict(entry[1] or {})
    return None


def _resolve_entry(entry: Any, group: str) -> list[tuple[str, dict]]:
    """One policy entry as the steps it takes: ``[]`` for a no-op, else ``[(method, settings), ...]``."""
    if entry is None:
        return []
    step = _resolve_step(entry)
    if step is not None:
        return [] if step[0] == "noop" else [step]
    steps = [_resolve_step(item) for item in entry] if isinstance(entry, list) and entry else [None]
    if any(step is None or step[0] == "noop" for step in steps):
        raise TypeError(f"policy entry for {group!r} must be None, a method name, (method, settings), "
                        f"{{'method': ..., 'config': ...}}, or a non-empty list of steps of those three kinds (run "
                        f"in turn); got {entry!r}")
    return steps


def resolve_policy(policy: str | Mapping[str, Any], groups: Sequence[str]) -> dict[str, list[tuple[str, dict]]]:
    """Normalise a policy to ``{group: [(method, settings), ...]}`` (no steps for a no-op) and check it.

    The settings are new dicts and may hold rum's :data:`RETAIN_PER_FORGET` key (checked here).

    >>> resolve_policy("random_label_repair", ["low", "medium", "high"])["high"][1][0]
    'finetune'
    """
    name = "the policy"
    if isinstance(policy, str):
        name, policy = f"policy {policy!r}", get_policy(policy)
    if not isinstance(policy, Mapping):
        raise TypeError(f"policy must be a name or a mapping from group to method, got {type(policy).__name__}")
    missing = [g for g in groups if g not in policy]
    extra = [g for g in policy if g not in groups]
    if extra:  # named first: a misspelt group is also a missing one
        raise ValueError(f"{name} has entries for {extra}, which are not groups of this split ({list(groups)})"
                         + (f", and none for {missing}" if missing else "") + ": a misspelt group, or a policy "
                         "written for another number of groups (pass policy= with one entry per group)")
    if missing:
        raise ValueError(f"{name} has no entry for groups {missing} (groups: {list(groups)})")
    resolved = {}
    for group in groups:
        resolved[group] = _resolve_entry(policy[group], group)
        for _, settings in resolved[group]:
            check_retain_per_forget(settings.get(RETAIN_PER_FORGET), f"{RETAIN_PER_FORGET} of group {group!r}")
            target = settings.get("target_accuracy")
            if isinstance(target, str) and target != EXPECTED:
                raise ValueError(f"target_accuracy of group {group!r} must be a fraction, None or {EXPECTED!r}, "
                                 f"got {target!r}")
    return resolved


def uses_expected(resolved: Mapping[str, list[tuple[str, dict]]]) -> bool:
    """Whether a resolved policy has a step that stops at the expected accuracy."""
    return any(settings.get("target_accuracy") == EXPECTED for steps in resolved.values() for _, settings in steps)


def register_policy(name: str, policy: Mapping[str, Any], force: bool = False) -> None:
    """Add ``policy`` (a mapping from group name to what unlearns it; see the module doc) to :data:`POLICIES` as
    ``name``, so that ``policy=name`` (and the CLI's ``--policy``, built from :func:`policies`) finds it.

    Args:
        name: the policy's name.
        policy: group -> entry; every entry is checked now (the groups it must cover are checked when it runs).
        force: replace a policy already registered under ``name`` (a built-in one too).

    Raises:
        ValueError: an empty name, or one already registered without ``force``.
        TypeError: a policy that is not a mapping, or an entry of the wrong kind.

    >>> register_policy("doc_high_only", {"low": None, "medium": None, "high": ("finetune", {"epochs": 1})})
    >>> "doc_high_only" in policies()
    True
    >>> del POLICIES["doc_high_only"]
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"a policy's name must be a non-empty string, got {name!r}")
    if not isinstance(policy, Mapping) or not policy:
        raise TypeError(f"policy {name!r} must be a non-empty mapping from group name to what unlearns it, got "
                        f"{type(policy).__name__} {policy!r}")
    resolve_policy(policy, list(policy))  # every entry's kind and settings, before it is registered
    POLICIES.register(name, dict(policy), force=force)


def policies() -> list[str]:
    """Names of the registered policies (built-in, registered and plugins'), sorted."""
    return POLICIES.names()


def get_policy(name: str) -> dict[str, Any]:
    """The policy registered as ``name`` (a mapping from group name to what unlearns it).

    >>> get_policy("random_label_fast")["high"][0]
    'random_label'

    Raises:
        ValueError: an unknown name, with the names there are.
    """
    if name not in POLICIES:
        raise ValueError(f"unknown policy {name!r}; expected one of {policies()} or a mapping")
    return POLICIES[name]
