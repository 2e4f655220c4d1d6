"""Argument checks shared by the configs: a clear TypeError/ValueError that names the setting."""

from __future__ import annotations

import math
from collections.abc import Mapping
from numbers import Integral, Real
from typing import Any


def same_settings(saved: Mapping, settings: Mapping, *, holder: str, hint: str, force: bool = False) -> bool:
    """Whether work recorded with ``saved`` settings can be reused for ``settings``: True when they are equal;
    otherwise a ValueError ``"<holder> with other settings (<the keys that differ>); <hint>"``, or, with
    ``force``, False (the caller redoes the work). The one rule behind every "refuse other settings unless
    --force" of the run folder, the model farm and a training's resume state.

    >>> same_settings({"lr": 0.1}, {"lr": 0.1}, holder="x", hint="y")
    True
    >>> same_settings({"lr": 0.1}, {"lr": 0.2}, holder="run/ holds a run", hint="pass --force")
    Traceback (most recent call last):
    ...
    ValueError: run/ holds a run with other settings (lr); pass --force
    """
    if saved == settings:
        return True
    if force:
        return False
    changed = sorted(k for k in saved.keys() | settings.keys() if saved.get(k) != settings.get(k))
    raise ValueError(f"{holder} with other settings ({', '.join(changed)}); {hint}")


class NonFiniteError(ValueError, FloatingPointError):
    """Training or unlearning made the loss or the weights NaN or infinite (or was handed such weights): it stops
    there rather than return a model that predicts nothing. A ValueError (the command line shows it as one line)
    and a FloatingPointError."""


def check_finite_inputs(dataset, what: str) -> None:
    """Refuse an in-memory dataset (an ``IndexedDataset`` or a ``Subset`` of one) whose floating-point inputs hold
    NaN or infinity, naming how many examples and the first of their training indices. A streamed dataset is not
    read here: training stops at the first non-finite loss instead (:func:`check_finite_training`)."""
    import torch

    from proxies.batching import as_tensors

    tensors = as_tensors(dataset)
    if tensors is None or not tensors[0].is_floating_point() or tensors[0].is_meta:
        return
    inputs, _, indices = tensors
    bad = ~torch.isfinite(inputs.reshape(len(inputs), -1)).all(dim=1)
    if bool(bad.any()):
        first = indices[bad][:5].tolist()
        raise ValueError(f"the {what} has {int(bad.sum())} examples whose inputs are NaN or infinite (training "
                         f"indices {first}{' ...' if int(bad.sum()) > 5 else ''}); repair or remove them")


def check_finite_weights(model, what: str) -> None:
    """A :class:`NonFiniteError` naming the first parameters of ``model`` that hold NaN or infinity (one host read
    for the whole model; nothing on the ``meta`` device)."""
    import torch

    params = [(name, p) for name, p in model.named_parameters() if not p.is_meta]
    if not params:
        return
    finite = torch.stack([torch.isfinite(p.detach()).all() for _, p in params])
    if not bool(finite.all()):
        names = [name for (name, _), ok in zip(params, finite.tolist(), strict=True) if not ok]
        raise NonFiniteError(f"{what}: the weights {names[:3]}{' ...' if len(names) > 3 else ''} are NaN or "
                             "infinite")


def whole(name: str, value: Any, minimum: int = 0) -> None:
    """Refuse anything but an int (not a bool) of at least ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise TypeError(f"{name} must be a whole number, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")


def real(name: str, value: Any, *, low: float | None = None, high: float | None = None,
         low_open: bool = False) -> None:
    """Refuse anything but a finite number (not a bool) in ``[low, high]`` (``(low, high]`` with ``low_open``)."""
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{name} must be a number, got {type(value).__name__} {value!r}")
    below = low is not None and (value <= low if low_open else value < low)
    if not math.isfinite(value) or below or (high is not None and value > high):
        bounds = f"{'(' if low_open else '['}{'-inf' if low is None else low}, {'inf' if high is None else high}]"
        raise ValueError(f"{name} must be a finite number in {bounds}, got {value!r}")
