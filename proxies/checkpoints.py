"""Model proxies averaged over checkpoints: a trained model, or the checkpoints of its training (e.g. one per
epoch), scored one after another and averaged per example.

>>> import numpy as np
>>> from torch import nn
>>> models = [nn.Linear(2, 2), nn.Linear(2, 2)]
>>> scores = iter([1.0, 3.0])
>>> average_over_checkpoints(models, lambda m: (np.full(2, next(scores)), np.array([4, 7]))).tolist()
[2.0, 2.0]
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd
from torch import nn
from tqdm.auto import tqdm

__all__ = ["as_checkpoints", "average_over_checkpoints"]


def as_checkpoints(model: nn.Module | Sequence[nn.Module]) -> list[nn.Module]:
    """A model or a sequence of checkpoints (models), as a non-empty list."""
    models = [model] if isinstance(model, nn.Module) else list(model)
    if not models or not all(isinstance(m, nn.Module) for m in models):
        raise TypeError("model must be an nn.Module or a non-empty sequence of nn.Module checkpoints")
    return models


def average_over_checkpoints(model: nn.Module | Sequence[nn.Module],
                             score: Callable[[nn.Module], tuple[np.ndarray, np.ndarray]], *, desc: str | None = None,
                             progress: bool = False) -> pd.Series:
    """The per-example mean over checkpoints of ``score(checkpoint) -> (values [N] float64, training indices [N])``
    (every checkpoint scores the same examples in the same order), as a Series indexed by training index."""
    checkpoints = as_checkpoints(model)
    total, index = None, None
    for checkpoint in tqdm(checkpoints, desc=desc, unit="checkpoint", disable=not progress or len(checkpoints) == 1,
                           leave=False):
        values, index = score(checkpoint)
        total = values if total is None else total + values
    return pd.Series(total / len(checkpoints), index=pd.Index(index, name="index"))
