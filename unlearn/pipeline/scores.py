"""Per-example tables of a run: a split's examples by training index, and every model's attack scores."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import Dataset

from ..data.sources import IndexedDataset, labels_of, take

__all__ = ["per_example_scores", "subset"]


def subset(data: Dataset, indices: np.ndarray) -> Dataset:
    """The examples of ``data`` with the given training indices (which must all be in it), in index order: copied
    out of an in-memory split (their indices then name training examples: see :func:`unlearn.unlearn`'s check that
    forget and retain are disjoint), a ``Subset`` of a streamed one."""
    known = labels_of(data)[1].numpy()
    position = np.searchsorted(known, indices)
    if (position >= len(data)).any() or not np.array_equal(known[position.clip(max=len(data) - 1)], indices):
        raise ValueError("some indices are not in the dataset")
    part = take(data, torch.from_numpy(position))
    if isinstance(part, IndexedDataset):
        part.explicit_indices = True
    return part


def per_example_scores(models: dict[str, nn.Module], data: IndexedDataset, *, shadows=None, split: str = "train",
                       device=None, signals=None) -> pd.DataFrame:
    """Per-example attack scores of each model on ``data``: ``correct_<model>`` (exact match for a token sequence,
    then also ``token_accuracy_<model>``), ``loss_<model>`` and, given shadow
    models whose pool holds ``data`` (as ``split`` examples), ``lira_<model>`` (online LiRA; higher = more likely a
    member).

    ``signals[model][split]``, where given, are the model's signals on a dataset holding ``data``'s examples (with
    the shadow models' queries, else identity), as :func:`unlearn.evaluate` takes them: their rows are scored instead
    of predicting again."""
    from ..evaluation.attacks import lira
    from ..evaluation.evaluator import _signals

    table = {}
    indices = labels_of(data)[1].numpy()
    positions = shadows.locate(split, indices) if shadows is not None else None
    queries = shadows.queries if shadows is not None else ("identity",)
    for name, model in models.items():
        scored = _signals(model, data, split, (signals or {}).get(name), queries, device)
        table[f"correct_{name}"] = scored.correct[:, 0].astype(bool)
        if not scored.per_class:  # a token sequence: how much of it the model gets right, beside exact match
            table[f"token_accuracy_{name}"] = scored.token_accuracy[:, 0]
        table[f"loss_{name}"] = scored.loss[:, 0]
        if shadows is not None:
            table[f"lira_{name}"] = lira(scored.phi, shadows.phi(positions), shadows.in_mask[:, positions])
    return pd.DataFrame(table, index=pd.Index(indices, name="index"))
