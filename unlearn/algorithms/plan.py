"""What an unlearning run did: the steps of its plan (:class:`PlanStep`) and the :class:`UnlearnResult` that
:func:`unlearn.unlearn` returns. A method that makes its own plan of several steps (``rum``) runs each through
:func:`run_step` and may return a subclass of :class:`UnlearnResult` that says more about how it planned
(:meth:`UnlearnResult.facts`, extra :meth:`~UnlearnResult.summary` columns).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from torch import nn
from torch.utils.data import Dataset

from ..data.sources import labels_of
from .registry import NOOP, get_method, make_config

__all__ = ["PlanStep", "PlanTable", "UnlearnResult", "run_step", "step_of"]


@dataclass(frozen=True)
class PlanStep:
    """One step of a plan: which forget examples (training indices), which method and settings, which retain
    examples it trained on (training indices; none for a no-op), how long."""

    group: str
    method: str
    config: dict
    indices: np.ndarray = field(repr=False)
    seconds: float
    retain_indices: np.ndarray = field(repr=False)

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


@dataclass(frozen=True)
class UnlearnResult:
    """What :func:`unlearn.unlearn` returns: a new ``model``, the ``plan`` it followed, and the total ``seconds``."""

    model: nn.Module
    plan: list[PlanStep]
    seconds: float

    def summary(self) -> pd.DataFrame:
        """The plan as a table: one row per step (group, method, examples, retain, seconds, the columns the
        method adds, config). Printing it shows the whole table (a :class:`PlanTable`; ``.to_string()`` of any
        DataFrame does too)."""
        rows = []
        for step in self.plan:
            row = {"group": step.group, "method": step.method, "examples": len(step.indices),
                   "retain": step.retain_size, "seconds": step.seconds}
            rows.append({**row, **self.step_columns(step), "config": step.config})
        return PlanTable(rows, columns=None if rows else ["group", "method", "examples", "retain", "seconds",
                                                          "config"])

    def plan_table(self) -> pd.DataFrame:
        """:meth:`summary` with each step's settings and forget examples (training indices) as JSON text, readable
        from any language: what ``plan.csv`` holds (``unlearn run``, :meth:`save`)."""
        plan = self.summary()
        return pd.DataFrame(plan).assign(config=[json.dumps(c, default=str, sort_keys=True) for c in plan["config"]],
                                         indices=[json.dumps(step.indices.tolist()) for step in self.plan])

    def save(self, path: str | os.PathLike) -> Path:
        """Write the model's ``state_dict`` to ``path`` (tensors only: :func:`unlearn.load_checkpoint` or
        ``torch.load(path, weights_only=True)`` reads it) and the plan (:meth:`plan_table`) to ``<stem>.plan.csv``
        beside it, each written whole; returns the plan's path.

        >>> import tempfile, pathlib, torch
        >>> result = UnlearnResult(torch.nn.Linear(2, 2), [], 0.0)
        >>> result.save(pathlib.Path(tempfile.mkdtemp()) / "unlearned.pt").name
        'unlearned.plan.csv'
        """
        from proxies.files import written

        from ..training.trainer import save_checkpoint

        path = Path(path)
        save_checkpoint(self.model, path)
        plan_path = path.with_name(f"{path.stem}.plan.csv")
        with written(plan_path) as tmp:
            self.plan_table().to_csv(tmp, index=False)
        return plan_path

    def step_columns(self, step: PlanStep) -> dict[str, Any]:
        """Columns a method that plans adds to a step's row of :meth:`summary` (none here)."""
        return {}

    def facts(self) -> dict[str, Any]:
        """What the method says of how it planned, as short texts for a report (none here; ``rum``: its grouping
        and thresholds)."""
        return {}


def step_of(model, group: str, method: str, config, forget: Dataset, retain: Dataset, began: float) -> PlanStep:
    """Refuse what a method returned unless it is a model; else the plan step it took."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"method {method!r} returned {type(model).__name__}, not an nn.Module")
    return PlanStep(group, method, vars(config).copy(), labels_of(forget)[1].numpy(), time.perf_counter() - began,
                    labels_of(retain)[1].numpy())


def run_step(model: nn.Module, group: str, method_name: str, settings, forget: Dataset, retain: Dataset, seed: int,
             device) -> tuple[nn.Module, PlanStep]:
    """Run one step of a plan: the registered method ``method_name`` with ``settings`` (a dict of overrides or its
    config) on ``forget`` and ``retain``, or nothing for :data:`NOOP`; the model it returns and the step. For a
    method that makes its own plan (e.g. ``rum``) of steps taken by other methods."""
    began = time.perf_counter()
    if method_name == NOOP:
        return model, PlanStep(group, NOOP, {}, labels_of(forget)[1].numpy(), 0.0, np.empty(0, dtype=np.int64))
    method = get_method(method_name)
    config = make_config(method, settings)
    model = method.fn(model, forget, retain, config, seed=seed, device=device)
    return model, step_of(model, group, method_name, config, forget, retain, began)
