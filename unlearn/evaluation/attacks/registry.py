"""Attacks by name, as :func:`unlearn.evaluate` runs them: each takes the extracted signals (and shadow models when
it needs them) and returns named figures.

``@register_attack("name", needs_shadows=...)`` adds one; :func:`attacks` lists them. U-LiRA and the forgetting
score need many models unlearned by the method under test, so they are plain functions (:func:`ulira`,
:func:`forgetting_score`) used by the benchmarks rather than entries here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from proxies.registries import Registry

from ..metrics import roc_summary
from .basic import loss_logreg, loss_threshold, svc
from .lira import lira
from .rmia import disjoint_halves, rmia, tune_rmia_a
from .signals import AttackSignals

__all__ = ["DEFAULT_ATTACKS", "ENTRY_POINT_GROUP", "AttackInputs", "NotApplicable", "attacks", "get_attack",
           "register_attack"]

DEFAULT_ATTACKS = ("loss_threshold", "loss_logreg", "svc")
"""What :func:`unlearn.evaluate` and ``unlearn run`` attack with unless told otherwise: the attacks that need no
shadow models."""

ENTRY_POINT_GROUP = "unlearn.evaluation.attacks"
"""Outside packages add attacks through this entry-point group: each entry point names a module whose import
registers them."""


class NotApplicable(ValueError):
    """An attack that cannot be computed on these inputs (e.g. cross-validation over one forget example) raises this
    with the reason; :func:`unlearn.evaluate` then leaves its metrics out and lists the reason in the report's
    ``attrs["not_computed"]``."""


@dataclass(frozen=True)
class AttackInputs:
    """What an attack sees: the target model's signals on forget / retain / test, and optionally shadow models
    (:class:`unlearn.evaluation.shadows.ShadowModels`) with the pool positions of the forget and test examples.

    ``population`` (with its pool positions) holds RMIA's population ``z``: non-members of the target that the
    shadows predicted, none of them a forget or test example. Without one, RMIA splits the test examples in two
    halves (:func:`unlearn.evaluation.attacks.disjoint_halves`): one is scored, the other is the population.
    """

    forget: AttackSignals
    retain: AttackSignals
    test: AttackSignals
    shadows: Any = None
    forget_positions: np.ndarray | None = None
    test_positions: np.ndarray | None = None
    seed: int = 0
    population: AttackSignals | None = None
    population_positions: np.ndarray | None = None


@dataclass(frozen=True)
class Attack:
    name: str
    fn: Callable[[AttackInputs], dict[str, float]]
    needs_shadows: bool


_ATTACKS: Registry[Attack] = Registry("attack", ENTRY_POINT_GROUP)


def register_attack(name: str, *, needs_shadows: bool = False, force: bool = False):
    """Register ``fn(inputs: AttackInputs) -> dict[str, float]`` under ``name``; duplicates are refused."""

    def decorator(fn):
        _ATTACKS.register(name, Attack(name, fn, needs_shadows), force=force)
        return fn

    return decorator


def attacks() -> list[str]:
    """Names of the registered attacks (built-in and plugins'), sorted."""
    return _ATTACKS.names()


def get_attack(name: str) -> Attack:
    """The attack registered as ``name``.

    Raises:
        ValueError: an unknown name, with the names there are.
    """
    return _ATTACKS.get(name)


@register_attack("loss_threshold")
def _loss_threshold(inputs: AttackInputs) -> dict[str, float]:
    """ROC of ``-loss``: forget examples as members, test examples as non-members."""
    return loss_threshold(inputs.forget.loss[:, 0], inputs.test.loss[:, 0])


@register_attack("loss_logreg")
def _loss_logreg(inputs: AttackInputs) -> dict[str, float]:
    n_splits = min(10, len(inputs.forget.loss), len(inputs.test.loss))
    if n_splits < 2:
        raise NotApplicable(f"cross-validates over at least 2 forget and 2 test examples, got "
                            f"{len(inputs.forget.loss)} and {len(inputs.test.loss)}")
    return loss_logreg(inputs.forget.loss[:, 0], inputs.test.loss[:, 0], n_splits=n_splits, seed=inputs.seed)


@register_attack("svc")
def _svc(inputs: AttackInputs) -> dict[str, float]:
    """The SVC attack on softmax features over classes; not applicable to token sequences, which have none."""
    if not all(s.per_class for s in (inputs.forget, inputs.retain, inputs.test)):
        raise NotApplicable("svc reads features of a distribution over classes (the probability vector, the "
                            "modified entropy), which a token sequence does not have: attack language models with "
                            "the loss, Min-K% or LiRA instead")
    return svc(inputs.retain, inputs.test, inputs.forget, seed=inputs.seed)


def _members_vs_test(inputs: AttackInputs, score_fn) -> dict[str, float]:
    positions = np.concatenate([inputs.forget_positions, inputs.test_positions])
    target = np.concatenate([inputs.forget.phi, inputs.test.phi])
    scores = score_fn(target, positions)
    membership = np.r_[np.ones(len(inputs.forget_positions)), np.zeros(len(inputs.test_positions))]
    usable = np.isfinite(scores)
    if not (membership[usable] == 1).any() or not (membership[usable] == 0).any():
        raise NotApplicable(f"no {'forget' if not (membership[usable] == 1).any() else 'test'} example has "
                            "shadows on both sides (train more shadows)")
    return roc_summary(scores[usable], membership[usable])


@register_attack("lira", needs_shadows=True)
def _lira(inputs: AttackInputs) -> dict[str, float]:
    """Online LiRA: forget examples as members, test examples as non-members of the target, on ``phi`` (a
    classifier's logit-scaled confidence, a sequence's mean token log-likelihood)."""
    shadows = inputs.shadows
    return _members_vs_test(inputs, lambda target, pos: lira(target, shadows.phi(pos), shadows.in_mask[:, pos]))


@register_attack("lira_offline", needs_shadows=True)
def _lira_offline(inputs: AttackInputs) -> dict[str, float]:
    shadows = inputs.shadows
    return _members_vs_test(inputs, lambda target, pos: lira(target, shadows.phi(pos), shadows.in_mask[:, pos],
                                                             online=False, one_sided=True))


@register_attack("rmia", needs_shadows=True)
def _rmia(inputs: AttackInputs) -> dict[str, float]:
    """Offline RMIA: forget examples as members, test examples as non-members ``x``, and a population ``z``
    disjoint from both: ``inputs.population``, else every second test example by index (scored: the others);
    ``a`` tuned on the first shadow model. ``P(x|f)`` is ``p_true``: the true-class probability, or for a token
    sequence the geometric mean of its tokens' probabilities (:mod:`~.signals`)."""
    shadows = inputs.shadows
    if len(shadows.in_mask) < 4:  # tuning a holds one shadow out; the rest must leave each example out somewhere
        raise ValueError(f"rmia needs at least 4 shadow models, got {len(shadows.in_mask)}")
    if inputs.population is None:
        x_rows, z_rows = disjoint_halves(inputs.test.index)
        population, z = inputs.test.take(z_rows), inputs.test_positions[z_rows]
        inputs = replace(inputs, test=inputs.test.take(x_rows), test_positions=inputs.test_positions[x_rows])
    else:
        population, z = inputs.population, np.asarray(inputs.population_positions)
        if len(z) != len(population.index):
            raise ValueError(f"population_positions must give the pool position of each of the {len(population.index)} "
                             f"population examples, got {len(z)}")
        shared = np.isin(z, np.r_[inputs.forget_positions, inputs.test_positions])
        if shared.any():
            raise ValueError(f"{int(shared.sum())} of the {len(z)} population examples are also forget or test "
                             "examples: RMIA's population must be disjoint from the examples it scores")
    p_ref = shadows.p_true()
    a = tune_rmia_a(p_ref, shadows.in_mask)
    out_z = ~shadows.in_mask[:, z]

    def score(_, positions):
        target_p = np.concatenate([inputs.forget.p_true[:, 0], inputs.test.p_true[:, 0]])
        return rmia(target_p, p_ref[:, positions], population.p_true[:, 0], p_ref[:, z], a=a,
                    out_mask_x=~shadows.in_mask[:, positions], out_mask_z=out_z)

    return {**_members_vs_test(inputs, score), "a": a}
