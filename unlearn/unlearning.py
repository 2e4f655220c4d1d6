"""The front door: ``unlearn(model, forget=..., retain=..., method=...)``.

>>> import torch
>>> from torch.utils.data import Subset
>>> from unlearn import create_model, load_dataset
>>> splits = load_dataset("digits")
>>> model = create_model("digits_cnn", num_classes=10, in_channels=1)
>>> result = unlearn(model, forget=Subset(splits.train, range(20)), retain=Subset(splits.train, range(20, 200)),
...                  method="finetune", config={"epochs": 1})
>>> result.model is model, [step.method for step in result.plan]
(False, ['finetune'])
"""

from __future__ import annotations

import copy
import dataclasses
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import Dataset

from ._checks import whole
from .data import IndexedDataset, materialize, subset_root
from .registry import get_method, make_config, methods
from .scheduler import (
    EXPECTED,
    RETAIN_PER_FORGET,
    RUMConfig,
    check_grouping,
    group_thresholds,
    partition,
    resolve_policy,
    retain_sample,
    uses_expected,
)

__all__ = ["Step", "UnlearnResult", "unlearn"]


@dataclass(frozen=True)
class Step:
    """One step of a plan: which forget examples (training indices), which method and settings, which retain
    examples it trained on (training indices; none for a no-op), how long.

    ``score_bin`` (``rum`` only) is ``(lower, upper)`` in the scores' own units: with training-set grouping the
    group's bin between the training set's thresholds (``-inf`` / ``inf`` at the open ends), with the request's
    grouping the lowest and highest score of the group's examples."""

    group: str
    method: str
    config: dict
    indices: np.ndarray = field(repr=False)
    seconds: float
    retain_indices: np.ndarray = field(repr=False)
    score_bin: tuple[float, float] | None = None

    @property
    def retain_size(self) -> int:
        """How many retain examples the step trained on."""
        return len(self.retain_indices)


class PlanTable(pd.DataFrame):
    """A DataFrame whose printed form is the whole table (every row, column and cell: ``to_string()``), not
    pandas' elided view: a plan has a few rows, and its ``config`` column is wide."""

    @property
    def _constructor(self):
        return PlanTable

    def __repr__(self) -> str:
        return self.to_string()

    __str__ = __repr__


def _describe_bin(score_bin: tuple[float, float] | None, grouping: str | None, higher: bool | None) -> str:
    """A step's scores as text: the training-set bin as an interval (a score on a threshold belongs to the less
    memorized side), or the range of the group's scores under the request's grouping."""
    if score_bin is None:
        return ""
    lower, upper = (f"{v:.4g}" for v in score_bin)
    if grouping == "request":
        return f"[{lower}, {upper}]"
    if higher:
        return f"({lower}, {upper}{')' if upper == 'inf' else ']'}"
    return f"{'(' if lower == '-inf' else '['}{lower}, {upper})"


@dataclass(frozen=True)
class UnlearnResult:
    """What :func:`unlearn` returns: a new ``model``, the ``plan`` it followed, and the total ``seconds``.

    For ``method="rum"`` also how the groups were formed: ``grouping`` (``"training_set"`` or ``"request"``, the one
    used, after any fallback), ``thresholds`` (with training-set grouping: the ``groups - 1`` thresholds between the
    groups in the scores' own units, ascending; else None) and ``higher_is_memorized`` (the scores' direction: with
    a confidence-like score the most memorized group lies *below* the lowest threshold)."""

    model: nn.Module
    plan: list[Step]
    seconds: float
    grouping: str | None = None
    thresholds: tuple[float, ...] | None = None
    higher_is_memorized: bool | None = None

    def summary(self) -> pd.DataFrame:
        """The plan as a table: one row per step, with ``grouping`` and ``scores`` (the step's :attr:`Step.score_bin`
        as text: an interval of the training-set grouping, or ``[lowest, highest]`` of the request's) for ``rum``.
        Printing it shows the whole table (a :class:`PlanTable`; ``.to_string()`` of any DataFrame does too)."""
        rows = [{"group": s.group, "method": s.method, "examples": len(s.indices), "retain": s.retain_size,
                 "seconds": s.seconds,
                 **({"grouping": self.grouping, "scores": _describe_bin(s.score_bin, self.grouping,
                                                                        self.higher_is_memorized)}
                    if self.grouping is not None else {}),
                 "config": s.config} for s in self.plan]
        return PlanTable(rows)


def _check_disjoint(forget: Dataset, retain: Dataset, forget_data: IndexedDataset,
                    retain_data: IndexedDataset) -> None:
    """Refuse forget and retain sets that share an example: sets drawn from the same dataset, or in-memory sets
    whose ``indices=`` were given as training-set indices. Other sets from different dataset objects cannot be
    compared (their positions need not refer to the same examples) and pass."""
    forget_root, retain_root = subset_root(forget)[0], subset_root(retain)[0]
    both_indexed = all(isinstance(root, IndexedDataset) and root.explicit_indices
                       for root in (forget_root, retain_root))
    if forget_root is not retain_root and not both_indexed:
        return
    shared = np.intersect1d(forget_data.indices.numpy(), retain_data.indices.numpy())
    if len(shared):
        raise ValueError(f"forget and retain share {len(shared)} examples (e.g. index {int(shared[0])}); "
                         "the retain set must exclude every forget example")


def _check_model(model: nn.Module, forget: IndexedDataset, retain: IndexedDataset, device: torch.device) -> int:
    """Refuse a model that does not return logits wide enough for the labels; return its number of classes."""
    with torch.no_grad():
        out = model(forget.inputs[:2].to(device))
    labels = torch.cat([forget.targets, retain.targets])
    if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[0] != min(2, len(forget)):
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"model must return logits [batch, classes], got {shape}")
    if int(labels.max()) >= out.shape[1] or int(labels.min()) < 0:
        raise ValueError(f"model returns {out.shape[1]} logits but the labels span "
                         f"[{int(labels.min())}, {int(labels.max())}]")
    return int(out.shape[1])


def _check_recording(recording, forget: IndexedDataset, retain: IndexedDataset, num_classes: int) -> None:
    """Refuse a recording not made on this training set (see :meth:`proxies.TrainingRecorder.check_matches`)."""
    import proxies

    if not isinstance(recording, proxies.TrainingRecorder):
        raise TypeError(f"recording must be a proxies.TrainingRecorder, got {type(recording).__name__}")
    recording.check_matches(torch.cat([forget.indices, retain.indices]), torch.cat([forget.targets, retain.targets]),
                            num_classes=num_classes, what="the forget and retain sets")


def _per_forget(values, forget: IndexedDataset, name: str) -> np.ndarray:
    """One finite float per forget example, in forget order, from an array in that order or a Series indexed by
    training index."""
    if isinstance(values, pd.Series):
        if values.index.has_duplicates:
            raise ValueError(f"{name} must have one value per training index (the Series index has duplicates)")
        wanted = forget.indices.numpy()
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


def _memorization_scores(scores, proxy: str | None, *, model, forget: IndexedDataset, retain: IndexedDataset,
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
            data = IndexedDataset(torch.cat([forget.inputs, retain.inputs]),
                                  torch.cat([forget.targets, retain.targets]),
                                  indices=torch.cat([forget.indices, retain.indices]))
        scores = proxies.compute(proxy, recording=recording, model=model, data=data, progress=False)
    values = _per_forget(scores, forget, "scores")
    higher = proxies.higher_is_memorized(scores) if isinstance(scores, pd.Series) else True
    population = None
    if isinstance(scores, pd.Series):
        everyone = np.concatenate([forget.indices.numpy(), retain.indices.numpy()])
        if np.isin(everyone, scores.index.to_numpy()).all():
            population = scores.to_numpy(dtype=float)
    sign = 1.0 if higher else -1.0
    return sign * values, None if population is None else sign * population, higher


def _expected_accuracy(expected_accuracy, recording, forget: IndexedDataset) -> np.ndarray:
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


def _groups(memorization: np.ndarray, population: np.ndarray | None, higher: bool, rum: RUMConfig):
    """The forget set's groups (positions), the thresholds in the scores' own units (None for the request's split)
    and each group's score bin (see :attr:`Step.score_bin`); ``memorization`` and ``population`` point the usual
    way. Training-set grouping without the training set's scores warns and falls back to the request's split."""
    if rum.grouping == "training_set" and population is None:
        warnings.warn("rum was given only the forget set's scores, so its groups are the request's own split (the "
                      "RUM paper's: equal-count groups by rank within the forget set), and their meaning depends on "
                      "the request. For groups that mean the same memorization level whatever the request "
                      "(thresholds at the whole training set's quantiles), pass scores= as a Series indexed by "
                      "training index that covers the whole training set (e.g. proxies.compute(proxy, "
                      "recording=...)) or proxy= with recording=; pass grouping='request' to ask for this split "
                      "and silence the warning.", UserWarning, stacklevel=3)
    if rum.grouping == "request" or population is None:
        groups = partition(memorization, rum.groups)
        own = memorization if higher else -memorization
        bins = {g: (float(own[p].min()), float(own[p].max())) if len(p) else None for g, p in groups.items()}
        return groups, None, bins
    cut = group_thresholds(population, rum.groups)
    groups = partition(memorization, rum.groups, thresholds=cut)
    edges = np.concatenate([[-np.inf], cut, [np.inf]])
    bins = {}
    for k, g in enumerate(groups):
        lower, upper = float(edges[k]), float(edges[k + 1])
        bins[g] = (lower, upper) if higher else (-upper, -lower)
    thresholds = tuple(float(t) for t in (cut if higher else -cut[::-1]))
    return groups, thresholds, bins


def step_seed_of(seed: int, number: int) -> int:
    """The seed of step ``number`` of a ``rum`` run with ``seed``: drawn from both, so that no step of one run
    shares its random choices with a step of another (``seed + number`` would: step 1 of seed 0 is step 0 of seed
    1)."""
    return int(np.random.SeedSequence([seed % 2**64, number]).generate_state(1)[0])  # a negative seed too


def _sampled(retain: IndexedDataset, forget_size: int, retain_per_forget: float | None, seed: int) -> IndexedDataset:
    """The retain examples one step trains on (see :func:`unlearn.scheduler.retain_sample`)."""
    keep = torch.from_numpy(retain_sample(len(retain), forget_size, retain_per_forget=retain_per_forget, seed=seed))
    if len(keep) == len(retain):
        return retain
    return IndexedDataset(retain.inputs[keep], retain.targets[keep], indices=retain.indices[keep])


def _run_step(model, group: str, method_name: str, settings, forget: IndexedDataset, retain: IndexedDataset,
              seed: int, device) -> tuple[nn.Module, Step]:
    start = time.perf_counter()
    if method_name == "noop":
        return model, Step(group, "noop", {}, forget.indices.numpy(), 0.0, np.empty(0, dtype=np.int64))
    method = get_method(method_name)
    config = make_config(method, settings)
    model = method.fn(model, forget, retain, config, seed=seed, device=device)
    if not isinstance(model, nn.Module):
        raise TypeError(f"method {method_name!r} returned {type(model).__name__}, not an nn.Module")
    return model, Step(group, method_name, vars(config).copy(), forget.indices.numpy(), time.perf_counter() - start,
                       retain.indices.numpy())


def unlearn(model: nn.Module, *, forget: Dataset, retain: Dataset, method: str = "rum", scores=None,
            proxy: str | None = None, recording=None, policy=None, config=None, seed: int = 0,
            device: torch.device | str | None = None, expected_accuracy=None,
            grouping: str | None = None) -> UnlearnResult:
    """Remove ``forget`` from a trained classifier; the caller's model is never modified.

    Args:
        model: any classifier ``nn.Module`` returning logits ``[batch, classes]``.
        forget: the examples to remove (a Dataset or Subset of the training set; items ``(x, y)`` or
            ``(x, y, index)``).
        retain: training examples to keep (must not share examples with ``forget``).
        method: a name from :func:`unlearn.methods` (``"rum"``: memorization-aware scheduling).
        scores: for ``"rum"``: memorization scores, a Series indexed by training index (one from
            :func:`proxies.compute` carries its direction) or an array in forget order. A Series that also covers
            the retain set (e.g. of the whole training set) gives training-set grouping its thresholds; scores of
            the forget set alone fall back to the request's own split, with a warning.
        proxy: for ``"rum"``: compute the scores with this proxy instead (see :func:`proxies.available`): a
            recording proxy scores every recorded example; a model proxy is run on the forget and retain sets
            together (on the forget set alone with ``grouping="request"``).
        recording: the :class:`proxies.TrainingRecorder` of the model's training, for recording-based proxies. It
            must have been made on this training set: one with fewer examples than the largest training index, with
            other labels at the forget or retain examples' indices, or with another number of classes than the
            model's outputs is refused (a recording loaded from a file that predates the fingerprint is checked
            for its size only).
        policy: for ``"rum"``: a name from :data:`unlearn.scheduler.POLICIES` or a mapping group -> method (or
            a list of steps; see :mod:`unlearn.scheduler`).
        config: the method's settings (a dict of overrides or its config dataclass); for ``"rum"`` a
            :class:`~unlearn.scheduler.RUMConfig` or dict (groups, order, policy, retain_per_forget).
        seed: seed of every random choice (a ``rum`` step's own seed is drawn from it and the step's number).
        device: where to unlearn (default: the model's device).
        expected_accuracy: for ``"rum"`` policies with steps that stop at ``target_accuracy="expected"``: each
            forget example's accuracy under a model trained without it (array in forget order or a Series indexed
            by training index, fractions), e.g. the Feldman-Zhang ``c_score``. Default: estimated from
            ``recording`` with the ``early_accuracy`` proxy.
        grouping: for ``"rum"``: ``"training_set"`` (the groups are bins between the training set's score quantiles,
            the same memorization levels whatever the request) or ``"request"`` (the RUM paper's: equal-count
            groups by rank within the forget set); overrides the config's (default ``"training_set"``). See
            :mod:`unlearn.scheduler`.

    Returns:
        An :class:`UnlearnResult` with the new ``model``, the ``plan`` (one :class:`Step` per group, or per step of
        a group's list; a group with no forget example takes no step) and ``seconds``; for ``"rum"`` also the
        ``grouping`` used and its ``thresholds``.

    Raises:
        TypeError, ValueError: bad input, named in the message.
    """
    start = time.perf_counter()
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    for name, data in (("forget", forget), ("retain", retain)):
        if not (hasattr(data, "__len__") and hasattr(data, "__getitem__")):
            raise TypeError(f"{name} must be a torch Dataset with __len__ and __getitem__, got {type(data).__name__}")
    if not isinstance(method, str) or method not in methods():
        raise ValueError(f"unknown unlearning method {method!r}; expected one of {methods()}")
    if method != "rum" and (scores is not None or proxy is not None or policy is not None
                            or expected_accuracy is not None or recording is not None):
        raise ValueError(f"scores, proxy, recording, policy and expected_accuracy are for method='rum', not {method!r}")
    if method != "rum" and grouping is not None:
        raise ValueError(f"grouping is for method='rum', not {method!r}")
    if grouping is not None:
        check_grouping(grouping)
    whole("seed", seed, minimum=-(2**63))
    if len(forget) == 0:
        raise ValueError("the forget set is empty: nothing to unlearn")
    if len(retain) == 0:
        raise ValueError("the retain set is empty")

    forget_data, retain_data = materialize(forget), materialize(retain)
    _check_disjoint(forget, retain, forget_data, retain_data)
    if device is None:
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
    device = torch.device(device)
    model = copy.deepcopy(model).to(device).eval()
    num_classes = _check_model(model, forget_data, retain_data, device)
    if recording is not None:
        _check_recording(recording, forget_data, retain_data, num_classes)

    if method != "rum":
        model, step = _run_step(model, "all", method, config, forget_data, retain_data, seed, device)
        return UnlearnResult(model, [step], time.perf_counter() - start)

    if config is None:
        rum = RUMConfig()
    elif isinstance(config, RUMConfig):
        rum = config
    elif isinstance(config, Mapping):
        rum = RUMConfig(**config)
    else:
        raise TypeError(f"config for method='rum' must be a RUMConfig or dict, got {type(config).__name__}")
    if policy is not None:
        rum = dataclasses.replace(rum, policy=policy)
    if grouping is not None:
        rum = dataclasses.replace(rum, grouping=grouping)
    memorization, population, higher = _memorization_scores(scores, proxy, model=model, forget=forget_data,
                                                            retain=retain_data, recording=recording,
                                                            grouping=rum.grouping)
    plan_for = resolve_policy(rum.policy, rum.ordered_groups())
    for group, steps in plan_for.items():
        for method_name, settings in steps:
            if method_name not in methods() or method_name == "rum":
                raise ValueError(f"policy names unknown method {method_name!r} for group {group!r}; "
                                 f"expected one of {[m for m in methods() if m != 'rum']}")
            # every step's settings are checked before the first step runs
            trial = {k: v for k, v in settings.items() if k != RETAIN_PER_FORGET}
            if trial.get("target_accuracy") == EXPECTED:
                trial["target_accuracy"] = 0.5  # a stand-in: the group's own value is known when it runs
            try:
                make_config(get_method(method_name), trial)
            except (TypeError, ValueError) as error:
                raise type(error)(f"policy step {method_name!r} of group {group!r}: {error}") from error
    expected = _expected_accuracy(expected_accuracy, recording, forget_data) if uses_expected(plan_for) else None
    groups, thresholds, bins = _groups(memorization, population, higher, rum)  # after every check: its warning too
    plan, number = [], 0
    for group in rum.ordered_groups():
        positions = torch.from_numpy(groups[group])
        if len(positions) == 0:
            continue
        subset = IndexedDataset(forget_data.inputs[positions], forget_data.targets[positions],
                                indices=forget_data.indices[positions])
        for method_name, settings in plan_for[group] or [("noop", {})]:
            retain_per_forget = settings.pop(RETAIN_PER_FORGET, rum.retain_per_forget)
            if settings.get("target_accuracy") == EXPECTED:
                settings["target_accuracy"] = float(expected[groups[group]].mean())
            step_seed = step_seed_of(seed, number)
            step_retain = retain_data if method_name == "noop" else _sampled(
                retain_data, len(positions), retain_per_forget, step_seed)
            model, step = _run_step(model, group, method_name, settings, subset, step_retain, step_seed, device)
            plan.append(dataclasses.replace(step, score_bin=bins[group]))
            number += 1
    return UnlearnResult(model, plan, time.perf_counter() - start,
                         grouping="request" if thresholds is None else "training_set", thresholds=thresholds,
                         higher_is_memorized=higher)
