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
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import Dataset

from ._checks import whole
from .data import IndexedDataset, Streamed, examples, first_input, labels_of, subset_root
from .registry import Method, get_method, make_config, methods
from .scheduler import step_seed_of  # noqa: F401  (its home was here: benchmarks/bench_unlearn.py imports it so)

__all__ = ["Step", "UnlearnResult", "run_step", "unlearn"]


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


def _check_disjoint(forget: Dataset, retain: Dataset, forget_data: Dataset, retain_data: Dataset) -> None:
    """Refuse forget and retain sets that share an example: sets drawn from the same dataset, in-memory sets whose
    ``indices=`` were given as training-set indices, or streamed sets whose items carry theirs. Other sets from
    different dataset objects cannot be compared (their positions need not refer to the same examples) and pass."""
    forget_root, retain_root = subset_root(forget)[0], subset_root(retain)[0]
    both_indexed = all(isinstance(root, (IndexedDataset, Streamed)) and root.explicit_indices
                       for root in (forget_root, retain_root))
    if forget_root is not retain_root and not both_indexed:
        return
    shared = np.intersect1d(labels_of(forget_data)[1].numpy(), labels_of(retain_data)[1].numpy())
    if len(shared):
        raise ValueError(f"forget and retain share {len(shared)} examples (e.g. index {int(shared[0])}); "
                         "the retain set must exclude every forget example")


def _check_model(model: nn.Module, forget: Dataset, retain: Dataset, device: torch.device) -> int:
    """Refuse a model that does not return logits wide enough for the labels; return its number of classes."""
    with torch.no_grad():
        out = model(first_input(forget, 2).to(device))
    labels = torch.cat([labels_of(forget)[0], labels_of(retain)[0]])
    if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[0] != min(2, len(forget)):
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"model must return logits [batch, classes], got {shape}")
    if int(labels.max()) >= out.shape[1] or int(labels.min()) < 0:
        raise ValueError(f"model returns {out.shape[1]} logits but the labels span "
                         f"[{int(labels.min())}, {int(labels.max())}]")
    return int(out.shape[1])


def _as_step(model, group: str, method: str, config, forget: Dataset, retain: Dataset, began: float) -> Step:
    """Refuse what a method returned unless it is a model; else the plan step it took."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"method {method!r} returned {type(model).__name__}, not an nn.Module")
    return Step(group, method, vars(config).copy(), labels_of(forget)[1].numpy(), time.perf_counter() - began,
                labels_of(retain)[1].numpy())


def run_step(model: nn.Module, group: str, method_name: str, settings, forget: Dataset, retain: Dataset, seed: int,
             device) -> tuple[nn.Module, Step]:
    """Run one step of a plan: the registered method ``method_name`` with ``settings`` (a dict of overrides or its
    config) on ``forget`` and ``retain``, or nothing for ``"noop"``; the model it returns and the step. For a method
    that makes its own plan (e.g. ``rum``) of steps taken by other methods."""
    began = time.perf_counter()
    if method_name == "noop":
        return model, Step(group, "noop", {}, labels_of(forget)[1].numpy(), 0.0, np.empty(0, dtype=np.int64))
    method = get_method(method_name)
    config = make_config(method, settings)
    model = method.fn(model, forget, retain, config, seed=seed, device=device)
    return model, _as_step(model, group, method_name, config, forget, retain, began)


def _takers(keyword: str) -> list[str]:
    """The registered methods that take ``keyword`` (as a setting or an input)."""
    return [name for name in methods()
            if keyword in get_method(name).inputs or keyword in get_method(name).settings()]


def _split_options(method: Method, options: Mapping) -> tuple[dict, dict]:
    """``unlearn()``'s method-specific keywords as ``(settings for the config, inputs for fn)``. A keyword given
    as None is as if not given (a caller may pass one whatever the method); one that the method does not take is
    refused, naming the methods that take it and the method's own settings and inputs."""
    settings, inputs, refused = {}, {}, []
    for keyword, value in options.items():
        if keyword in method.inputs:
            inputs[keyword] = value
        elif keyword in method.settings():
            if value is not None:
                settings[keyword] = value
        elif value is not None or not _takers(keyword):
            refused.append(keyword)
    if refused:
        why = []
        for keyword in refused:
            takers = _takers(keyword)
            if takers:
                whom = f"method={takers[0]!r}" if len(takers) == 1 else f"methods {', '.join(map(repr, takers))}"
                why.append(f"{keyword} is for {whom}")
        own = f"its settings: {', '.join(method.settings()) or 'none'}"
        if method.inputs:
            own += f"; its inputs: {', '.join(method.inputs)}"
        raise ValueError(f"{method.name} does not take {', '.join(k + '=' for k in refused)}"
                         + (f" ({'; '.join(why)})" if why else "") + f"; {own}")
    return settings, inputs


def unlearn(model: nn.Module, *, forget: Dataset, retain: Dataset, method: str = "rum", config=None, seed: int = 0,
            device: torch.device | str | None = None, **options) -> UnlearnResult:
    """Remove ``forget`` from a trained classifier; the caller's model is never modified.

    Args:
        model: any classifier ``nn.Module`` returning logits ``[batch, classes]``.
        forget: the examples to remove (a Dataset or Subset of the training set; items ``(x, y)`` or
            ``(x, y, index)``).
        retain: training examples to keep (must not share examples with ``forget``). Either set may be held in
            memory (an :class:`~unlearn.data.IndexedDataset` or a ``Subset`` of one: the fast path) or streamed (any
            other dataset, read a batch at a time; wrap it in :class:`~unlearn.data.Streamed` to choose the
            ``DataLoader``'s workers): a streamed set is never held whole, only its labels and indices are kept,
            and a step that trains on part of it takes the part by index.
        method: a name from :func:`unlearn.methods` (``"rum"``: memorization-aware scheduling, see
            :mod:`unlearn.algorithms.rum`).
        config: the method's settings (a dict of overrides or its config dataclass; for ``"rum"`` a
            :class:`~unlearn.scheduler.RUMConfig` or dict: groups, order, policy, retain_per_forget, grouping).
        seed: seed of every random choice (a ``rum`` step's own seed is drawn from it and the step's number).
        device: where to unlearn (default: the model's device).
        **options: the method's own keywords: a field of its config (e.g. ``epochs=3``; for ``"rum"``
            ``policy=``, ``grouping=``, ...) overrides ``config``'s, and an input its registration declares is
            passed to it (for ``"rum"``: ``scores=``, ``proxy=``, ``recording=``, ``expected_accuracy=``; see
            :func:`unlearn.algorithms.rum.rum`). One given as None is as if not given.

    Returns:
        An :class:`UnlearnResult` with the new ``model``, the ``plan`` (one :class:`Step`; for ``"rum"`` one per
        group, or per step of a group's list, and a group with no forget example takes no step) and ``seconds``;
        for ``"rum"`` also the ``grouping`` used and its ``thresholds``.

    Raises:
        TypeError, ValueError: bad input, named in the message (a keyword the method does not take names the
            method's settings and inputs).
    """
    start = time.perf_counter()
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    for name, data in (("forget", forget), ("retain", retain)):
        if not (hasattr(data, "__len__") and hasattr(data, "__getitem__")):
            raise TypeError(f"{name} must be a torch Dataset with __len__ and __getitem__, got {type(data).__name__}")
    if not isinstance(method, str) or method not in methods():
        raise ValueError(f"unknown unlearning method {method!r}; expected one of {methods()}")
    spec = get_method(method)
    settings, inputs = _split_options(spec, options)
    whole("seed", seed, minimum=-(2**63))
    if len(forget) == 0:
        raise ValueError("the forget set is empty: nothing to unlearn")
    if len(retain) == 0:
        raise ValueError("the retain set is empty")

    forget_data, retain_data = examples(forget), examples(retain)  # in memory, or streamed: never copied whole
    _check_disjoint(forget, retain, forget_data, retain_data)
    if device is None:
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
    device = torch.device(device)
    model = copy.deepcopy(model).to(device).eval()
    _check_model(model, forget_data, retain_data, device)

    method_config = make_config(spec, config)
    if settings:
        method_config = dataclasses.replace(method_config, **settings)
    began = time.perf_counter()
    out = spec.fn(model, forget_data, retain_data, method_config, seed=seed, device=device, **inputs)
    if isinstance(out, UnlearnResult):  # a method that made its own plan
        return dataclasses.replace(out, seconds=time.perf_counter() - start)
    step = _as_step(out, "all", method, method_config, forget_data, retain_data, began)
    return UnlearnResult(out, [step], time.perf_counter() - start)

