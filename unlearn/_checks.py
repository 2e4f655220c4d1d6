"""Argument checks shared by the configs: a clear TypeError/ValueError that names the setting."""

from __future__ import annotations

import math
from numbers import Integral, Real
from typing import Any


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
