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

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from proxies.tasks import same_task, task_of

from ._checks import check_finite_inputs, check_finite_weights, whole
from .algorithms.plan import PlanStep, UnlearnResult, step_of
from .algorithms.registry import Method, get_method, make_config, methods, takers
from .data.sources import IndexedDataset, Streamed, examples, first_input, labels_of, subset_root
from .training.loop import warm_up
from .training.trainer import resolve_device

__all__ = ["PlanStep", "UnlearnResult", "unlearn"]


def _check_training_sets(forget: Dataset, retain: Dataset) -> None:
    """Refuse a forget or retain set drawn from a split that :func:`unlearn.load_dataset` marks held out."""
    for name, data in (("forget", forget), ("retain", retain)):
        held_out = getattr(subset_root(data)[0], "held_out", None)
        if held_out is not None:
            raise ValueError(f"the {name} set is drawn from the {held_out} split, which the model never trained on: "
                             "a deletion request names training examples (splits.train), and positions in "
                             f"the {held_out} split would name other ones")


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
    """Refuse a model whose output cannot score the examples' targets (for classification: logits wide enough for
    the labels); return how many targets it scores."""
    task = task_of(forget)
    if not same_task(task_of(retain), task):
        raise ValueError(f"forget and retain must hold examples of one task, got {task!r} and {task_of(retain)!r}")
    inputs = first_input(forget, 2).to(device)
    task.probe(model, lambda: (inputs, labels_of(forget)[0][:len(inputs)]))
    with torch.no_grad():
        out = task.forward(model, inputs)
    labels = torch.cat([labels_of(forget)[0], labels_of(retain)[0]])
    return task.check(out, labels, min(2, len(forget)))


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
        elif value is not None or not takers(keyword):
            refused.append(keyword)
    if refused:
        why = []
        for keyword in refused:
            names = takers(keyword)
            if names:
                whom = f"method={names[0]!r}" if len(names) == 1 else f"methods {', '.join(map(repr, names))}"
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
            :mod:`unlearn.algorithms.rum.method`).
        config: the method's settings (a dict of overrides or its config dataclass; for ``"rum"`` a
            :class:`~unlearn.RUMConfig` or dict: groups, order, policy, retain_per_forget, grouping).
        seed: seed of every random choice (a ``rum`` step's own seed is drawn from it and the step's number).
        device: where to unlearn (default: the model's device).
        **options: the method's own keywords: a field of its config (e.g. ``epochs=3``; for ``"rum"``
            ``policy=``, ``grouping=``, ...) overrides ``config``'s, and an input its registration declares is
            passed to it (for ``"rum"``: ``scores=``, ``proxy=``, ``recording=``, ``expected_accuracy=``; see
            :func:`unlearn.algorithms.rum.method.rum`). One given as None is as if not given.

    Returns:
        An :class:`~unlearn.UnlearnResult` with the new ``model``, the ``plan`` (one :class:`~unlearn.PlanStep`;
        for ``"rum"`` one per group, or per step of a group's list, and a group with no forget example takes no step)
        and ``seconds``; for ``"rum"`` a :class:`~unlearn.RUMResult`, which also says how it grouped the forget
        set (its ``grouping`` and ``thresholds``).

    Raises:
        TypeError, ValueError: bad input, named in the message (a keyword the method does not take names the
            method's settings and inputs; NaN or infinite weights, or inputs of an in-memory set, and which).
        unlearn.NonFiniteError: (a ValueError) the method drove the loss or the weights to NaN or infinity:
            no model is returned.
    """
    warm_up()  # one-off imports are not the method's time
    start = time.perf_counter()
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if any(p.is_meta for p in model.parameters()):
        raise ValueError("the model's weights are on the 'meta' device, which holds shapes but no values: load its "
                         "weights (e.g. model.to_empty(device='cpu') and load_state_dict) before unlearning from it")
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

    _check_training_sets(forget, retain)
    forget_data, retain_data = examples(forget), examples(retain)  # in memory, or streamed: never copied whole
    _check_disjoint(forget, retain, forget_data, retain_data)
    check_finite_inputs(forget_data, "forget set")
    check_finite_inputs(retain_data, "retain set")
    check_finite_weights(model, "the model to unlearn from")
    if device is None:
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
    else:  # one line for a device torch does not know or this machine lacks, before any work
        device = resolve_device(device)
    model = copy.deepcopy(model).to(device).eval()
    _check_model(model, forget_data, retain_data, device)

    method_config = make_config(spec, config)
    if settings:
        method_config = dataclasses.replace(method_config, **settings)
    began = time.perf_counter()
    out = spec.fn(model, forget_data, retain_data, method_config, seed=seed, device=device, **inputs)
    check_finite_weights(out.model if isinstance(out, UnlearnResult) else out, f"{method} unlearned into a model")
    if isinstance(out, UnlearnResult):  # a method that made its own plan
        return dataclasses.replace(out, seconds=time.perf_counter() - start)
    step = step_of(out, "all", method, method_config, forget_data, retain_data, began)
    return UnlearnResult(out, [step], time.perf_counter() - start)

