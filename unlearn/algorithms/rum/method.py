"""``method="rum"``: memorization-aware unlearning (RUM, Zhao et al., NeurIPS 2024). The forget set is split into
groups by memorization score (:mod:`.grouping`), and each group is unlearned in turn by the method its policy names
(:mod:`.policies`: policies, retain subsampling, stopping at the expected accuracy). Registered like every other
method, with :class:`~.policies.RUMConfig` as its config and the scores' sources as its inputs; it returns its own
plan, a :class:`RUMResult`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from proxies.tasks import task_of

from ...data.sources import join, labels_of, take
from ..plan import NOOP, PlanStep, UnlearnResult, run_step
from ..registry import get_method, make_config, methods, register_method
from ..sgd import num_classes
from .grouping import Grouping, form_groups
from .policies import (
    EXPECTED,
    RETAIN_PER_FORGET,
    RUMConfig,
    default_policy,
    resolve_policy,
    retain_sample,
    step_seed_of,
    uses_expected,
)

NAME = "rum"


@dataclass(frozen=True)
class RUMResult(UnlearnResult):
    """What ``unlearn(..., method="rum")`` returns: an :class:`~unlearn.algorithms.plan.UnlearnResult` whose plan has
    one step per step of each non-empty group's policy entry, and the :class:`~.grouping.Grouping` that formed the
    groups (``grouping.grouping``: the rule used after any fallback; ``thresholds``; each group's score ``bins``)."""

    split: Grouping | None = None
    policy: Any = None
    """The policy followed: a registered name, or the mapping given."""

    @property
    def grouping(self) -> str:
        """The grouping used, after any fallback: ``"training_set"`` or ``"request"``."""
        return self.split.grouping

    @property
    def thresholds(self) -> tuple[float, ...] | None:
        """With training-set grouping, the thresholds between the groups in the scores' own units; else None."""
        return self.split.thresholds

    @property
    def higher_is_memorized(self) -> bool:
        """The scores' direction."""
        return self.split.higher_is_memorized

    def step_columns(self, step: PlanStep) -> dict[str, Any]:
        """``grouping`` and ``scores``: the step's group as an interval of the training-set grouping, or
        ``[lowest, highest]`` of its scores under the request's."""
        return {"grouping": self.split.grouping, "scores": self.split.describe(step.group)}

    def facts(self) -> dict[str, Any]:
        """The policy and the grouping, with its thresholds in the scores' own units."""
        policy = self.policy if isinstance(self.policy, str) else "a policy of the caller's"
        if self.split.thresholds is None:
            return {"policy": policy, "grouping": "request"}
        names = " / ".join(self.split.groups)
        # from the least memorized side: a confidence-like score's thresholds descend
        cuts = self.split.thresholds if self.split.higher_is_memorized else self.split.thresholds[::-1]
        quantiles = "tertiles" if len(self.split.groups) == 3 else "quantiles"
        return {"policy": policy, "grouping": f"training_set: {quantiles} of the training set's scores, {names} "
                                              "split at " + " and ".join(f"{c:.4g}" for c in cuts)}



def _check_recording(recording, model, forget: Dataset, retain: Dataset, device) -> None:
    """Refuse a recording not made on this training set (see :meth:`proxies.TrainingRecorder.check_matches`); the
    number of classes is the width of the model's logits (which :func:`unlearn.unlearn` has checked)."""
    import proxies

    if not isinstance(recording, proxies.TrainingRecorder):
        raise TypeError(f"recording must be a proxies.TrainingRecorder, got {type(recording).__name__}")
    (forget_labels, forget_indices), (retain_labels, retain_indices) = labels_of(forget), labels_of(retain)
    recording.check_matches(torch.cat([forget_indices, retain_indices]), torch.cat([forget_labels, retain_labels]),
                            num_classes=num_classes(model, forget, device), what="the forget and retain sets")


def _per_forget(values, forget: Dataset, name: str) -> np.ndarray:
    """One finite float per forget example, in forget order, from an array in that order or a Series indexed by
    training index."""
    if isinstance(values, pd.Series):
        if values.index.has_duplicates:
            raise ValueError(f"{name} must have one value per training index (the Series index has duplicates)")
        wanted = labels_of(forget)[1].numpy()
        missing = wanted[~np.isin(wanted, values.index.to_numpy())]
        if len(missing):
            raise ValueError(f"{name} has no value for {len(missing)} forget examples (e.g. training index "
                             f"{int(missing[0])}); index the Series by training index")
        array = values.reindex(wanted).to_numpy(dtype=float)
    else:
        array = np.asarray(values, dtype=float)
        if array.shape != (len(forget),):
            raise ValueError(f"{name} must hold one value per forget example ({len(forget)}), got shape "
                             f"{array.shape}")
    if not np.isfinite(array).all():
        raise ValueError(f"{name} must be finite; {int((~np.isfinite(array)).sum())} are NaN or infinite")
    return array


def _memorization_scores(scores, proxy: str | None, *, model, forget: Dataset, retain: Dataset, higher: bool | None,
                         recording, grouping: str) -> tuple[np.ndarray, np.ndarray | None, bool]:
    """The forget examples' scores oriented so that higher means more memorized, the same for every example of the
    training set where they are known (None: only the forget set's), and the scores' own direction.

    The training set's scores are known from a Series that covers the forget and retain sets (e.g. a recording
    proxy's, which scores every recorded example). A model proxy is run on the forget set alone for the request's
    grouping (as it always was), on the forget and retain sets together for the training set's."""
    import proxies

    if scores is None and proxy is None:
        raise ValueError("method='rum' needs scores= (one memorization score per forget example) or proxy= "
                         f"(one of {proxies.available()})")
    if scores is None:
        spec = proxies.get_proxy(proxy)
        if "recording" in spec.needs and recording is None:
            raise ValueError(f"proxy {proxy!r} is read from training dynamics: pass recording= (the "
                             "TrainingRecorder filled while training the model)")
        data = forget
        if grouping == "training_set" and "recording" not in spec.needs:
            data = join(forget, retain)
        scores = proxies.compute(proxy, recording=recording, model=model, data=data, progress=False)
    values = _per_forget(scores, forget, "scores")
    higher = _direction(scores, higher, task_of(forget).name)
    population = None
    if isinstance(scores, pd.Series):
        everyone = np.concatenate([labels_of(forget)[1].numpy(), labels_of(retain)[1].numpy()])
        if np.isin(everyone, scores.index.to_numpy()).all():
            population = scores.to_numpy(dtype=float)
    sign = 1.0 if higher else -1.0
    return sign * values, None if population is None else sign * population, higher


def _direction(scores, given: bool | None, task: str) -> bool:
    """The scores' direction: ``given`` (refused where the scores' own ``attrs`` say the other), else what the
    Series says (:func:`proxies.higher_is_memorized`); an array without ``given`` is refused."""
    import proxies

    if given is not None and not isinstance(given, (bool, np.bool_)):
        raise TypeError(f"higher_is_memorized must be True or False, got {given!r}")
    if isinstance(scores, pd.Series) and scores.attrs.get("higher_is_memorized") is not None:
        own = proxies.higher_is_memorized(scores, task)
        if given is not None and bool(given) != own:
            raise ValueError(f"higher_is_memorized={given} contradicts the scores' own direction ({own}, in "
                             "scores.attrs['higher_is_memorized'])")
        return own
    if given is not None:
        return bool(given)
    if not isinstance(scores, pd.Series):
        raise ValueError("scores= given as an array do not say which way they point: pass higher_is_memorized=True "
                         "if a higher score means more memorized (e.g. Feldman-Zhang memorization) or False if less "
                         "(confidence, c_score)")
    return proxies.higher_is_memorized(scores, task)


def _expected_accuracy(expected_accuracy, recording, forget: Dataset) -> np.ndarray:
    """Each forget example's expected accuracy under a model that never saw it, in forget order."""
    if expected_accuracy is None:
        if recording is None:
            raise ValueError(f"the policy stops at target_accuracy={EXPECTED!r}: pass expected_accuracy= (each "
                             "forget example's accuracy under a model trained without it, e.g. the Feldman-Zhang "
                             "c_score) or recording= (estimated with the 'early_accuracy' proxy)")
        import proxies

        estimate = proxies.compute("early_accuracy", recording=recording)
        values = _per_forget(estimate, forget, "the early_accuracy estimate from recording=")
    else:
        values = _per_forget(expected_accuracy, forget, "expected_accuracy")
    if ((values < 0) | (values > 1)).any():
        raise ValueError("expected_accuracy must be fractions in [0, 1], got values in "
                         f"[{values.min():.3g}, {values.max():.3g}]")
    return values


def _sampled(retain: Dataset, forget_size: int, retain_per_forget: float | None, seed: int) -> Dataset:
    """The retain examples one step trains on (see :func:`~.policies.retain_sample`), drawn by index: a
    streamed retain set's are a ``Subset`` of it, nothing is read."""
    keep = torch.from_numpy(retain_sample(len(retain), forget_size, retain_per_forget=retain_per_forget, seed=seed))
    if len(keep) == len(retain):
        return retain
    return take(retain, keep)


def plan_cost(policy, group_sizes: dict[str, int], retain_size: int, *,
              retain_per_forget: float | None = None) -> int:
    """About how many examples a plan passes over, each counted once per epoch (a step stopped at its target accuracy
    takes fewer epochs): for every step of a group with examples, its epochs times what one of its epochs passes
    over (its registration's ``epoch``): the group, the retain examples it trains on (``ceil(k * group)`` with
    ``retain_per_forget`` k, else the whole retain set), or both. Retraining costs its epochs times the retain set in
    the same unit, so the ratio of the two estimates a plan's cost relative to retraining before any of it runs.

    >>> plan_cost("random_label_fast", {"low": 10, "medium": 10, "high": 10}, 1000)  # 2 epochs x (10 + 160)
    340
    >>> plan_cost("finetune_salun", {"low": 10, "medium": 10, "high": 10}, 1000)  # 10 x 1000 + 5 x (10 + 1000)
    15050
    """
    total = 0
    for group, steps in resolve_policy(policy, list(group_sizes)).items():
        size = group_sizes[group]
        if not size:
            continue
        for method_name, settings in steps:
            trial = {k: v for k, v in settings.items() if k != RETAIN_PER_FORGET}
            if trial.get("target_accuracy") == EXPECTED:
                trial["target_accuracy"] = 0.5  # a stand-in: a step's epochs are its most
            method = get_method(method_name)
            epochs = getattr(make_config(method, trial), "epochs", 1)
            k = settings.get(RETAIN_PER_FORGET, retain_per_forget)
            retained = len(retain_sample(retain_size, size, retain_per_forget=k, seed=0))
            total += epochs * {"forget": size, "retain": retained, "both": size + retained}[method.epoch]
    return total


def _check_policy(plan_for: dict[str, list[tuple[str, dict]]]) -> None:
    """Refuse a step that names no method a step can be (``rum`` itself neither), or settings its method refuses:
    every step is checked before the first one runs."""
    steps = [m for m in methods() if m != NAME]
    for group, group_steps in plan_for.items():
        for method_name, settings in group_steps:
            if method_name not in steps:
                raise ValueError(f"policy names unknown method {method_name!r} for group {group!r}; "
                                 f"expected one of {steps}")
            trial = {k: v for k, v in settings.items() if k != RETAIN_PER_FORGET}
            if trial.get("target_accuracy") == EXPECTED:
                trial["target_accuracy"] = 0.5  # a stand-in: the group's own value is known when it runs
            try:
                make_config(get_method(method_name), trial)
            except (TypeError, ValueError) as error:
                raise type(error)(f"policy step {method_name!r} of group {group!r}: {error}") from error


_FALLBACK_HINT = ("pass scores= as a Series indexed by training index that covers the whole training set (e.g. "
                  "proxies.compute(proxy, recording=...)) or proxy= with recording=")


@register_method(NAME, config=RUMConfig,
                 inputs=("scores", "proxy", "recording", "expected_accuracy", "higher_is_memorized"))
def rum(model, forget: Dataset, retain: Dataset, config: RUMConfig, *, seed: int, device,
        scores=None, proxy: str | None = None, recording=None, expected_accuracy=None,
        higher_is_memorized: bool | None = None) -> RUMResult:
    """Memorization-aware unlearning: unlearn each memorization group in turn with its policy's method.

    Args:
        model, forget, retain, config, seed, device: as for every method (see :mod:`unlearn.algorithms.registry`); each
            step's seed is :func:`unlearn.algorithms.rum.policies.step_seed_of` ``(seed, number)``.
        scores: memorization scores, a Series indexed by training index (one from :func:`proxies.compute` carries
            its direction) or an array in forget order. A Series that also covers the retain set (e.g. of the whole
            training set) gives training-set grouping its thresholds; scores of the forget set alone fall back to
            the request's own split, with a warning. Their direction must be known: from ``higher_is_memorized``,
            else the Series' ``attrs``, else its name when that is a registered proxy's (a column of
            ``scores.csv``); anything else is refused, since a wrong guess reverses the whole plan.
        higher_is_memorized: whether a higher score means more memorized (True for Feldman-Zhang memorization and
            CSL, False for confidence and the c_score); refused if the scores' ``attrs`` say otherwise.
        proxy: compute the scores with this proxy instead (see :func:`proxies.available`): a recording proxy
            scores every recorded example; a model proxy is run on the forget and retain sets together (on the
            forget set alone with ``grouping="request"``).
        recording: the :class:`proxies.TrainingRecorder` of the model's training, for recording-based proxies and
            the ``early_accuracy`` estimate. It must have been made on this training set: one with fewer examples
            than the largest training index, with other labels at the forget or retain examples' indices, or with
            another number of classes than the model's outputs is refused (a recording loaded from a file that
            predates the fingerprint is checked for its size only).
        expected_accuracy: for policies with steps that stop at ``target_accuracy="expected"``: each forget
            example's accuracy under a model trained without it (array in forget order or a Series indexed by
            training index, fractions), e.g. the Feldman-Zhang ``c_score``. Default: estimated from ``recording``
            with the ``early_accuracy`` proxy.

    Returns:
        A :class:`RUMResult`: one step per step of each non-empty group's policy entry, and the grouping used
        (after any fallback), its thresholds and the scores' direction.
    """
    start = time.perf_counter()
    if recording is not None:
        _check_recording(recording, model, forget, retain, device)
    memorization, population, higher = _memorization_scores(scores, proxy, model=model, forget=forget,
                                                            retain=retain, recording=recording,
                                                            grouping=config.grouping, higher=higher_is_memorized)
    policy = config.policy if config.policy is not None else default_policy(task_of(forget).name)
    plan_for = resolve_policy(policy, config.ordered_groups())
    _check_policy(plan_for)
    expected = _expected_accuracy(expected_accuracy, recording, forget) if uses_expected(plan_for) else None
    split = form_groups(memorization, population, groups=config.groups, grouping=config.grouping,
                        higher_is_memorized=higher, stacklevel=3, fallback_hint=_FALLBACK_HINT)  # after every check
    plan, number = [], 0
    for group in config.ordered_groups():
        positions = torch.from_numpy(split.groups[group])
        if len(positions) == 0:
            continue
        subset = take(forget, positions)
        for method_name, settings in plan_for[group] or [(NOOP, {})]:
            retain_per_forget = settings.pop(RETAIN_PER_FORGET, config.retain_per_forget)
            if settings.get("target_accuracy") == EXPECTED:
                settings["target_accuracy"] = float(expected[split.groups[group]].mean())
            step_seed = step_seed_of(seed, number)
            step_retain = retain if method_name == NOOP else _sampled(retain, len(positions), retain_per_forget,
                                                                      step_seed)
            model, step = run_step(model, group, method_name, settings, subset, step_retain, step_seed, device)
            plan.append(step)
            number += 1
    return RUMResult(model, plan, time.perf_counter() - start, split=split, policy=policy)
