"""Per-example tables of a run: the forget set's memorization groups and every model's attack scores.

>>> import numpy as np, pandas as pd
>>> group_of(pd.Series([0.9, 0.1, 0.5, 0.3]), np.array([0, 1, 2])).tolist()
['high', 'low', 'medium']
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import Dataset

from ..data import IndexedDataset, labels_of, take
from ..scheduler import partition

__all__ = ["group_of", "per_example_scores", "subset"]


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


def group_of(scores: pd.Series, ids: np.ndarray, groups: int = 3, *, grouping: str = "request") -> pd.Series:
    """The memorization group (``low`` / ``medium`` / ``high``, as RUM splits it) of each forget example, by the
    scores (a proxy Series from :func:`proxies.compute` carries its direction).

    ``grouping`` is the rule of :func:`unlearn.unlearn`'s ``grouping=`` (see :mod:`unlearn.scheduler`):
    ``"request"`` (the default here, as before): equal-count groups by rank among ``ids``; ``"training_set"``: bins
    between the quantiles of every finite score of ``scores`` (pass the training set's), as ``unlearn`` forms them
    from the same Series. A Series of ``ids`` alone falls back to ``"request"`` with a warning, as ``unlearn`` does.
    """
    import warnings

    import proxies

    from ..scheduler import check_grouping, group_thresholds

    check_grouping(grouping)
    sign = 1.0 if proxies.higher_is_memorized(scores) else -1.0
    values = sign * scores.reindex(ids).to_numpy(dtype=float)
    thresholds = None
    if grouping == "training_set":
        if np.isin(scores.index.to_numpy(), ids).all():
            warnings.warn("group_of was given only the forget set's scores: its groups are the request's own split; "
                          "pass the whole training set's scores for training-set thresholds", UserWarning,
                          stacklevel=2)
        else:
            thresholds = group_thresholds(sign * scores.to_numpy(dtype=float), groups)
    labels = np.empty(len(ids), dtype=object)
    for name, positions in partition(values, groups, thresholds=thresholds).items():
        labels[positions] = name
    return pd.Series(labels, index=pd.Index(ids, name="index"), name="group")


def per_example_scores(models: dict[str, nn.Module], data: IndexedDataset, *, shadows=None, split: str = "train",
                       device=None, signals=None) -> pd.DataFrame:
    """Per-example attack scores of each model on ``data``: ``correct_<model>``, ``loss_<model>`` and, given shadow
    models whose pool holds ``data`` (as ``split`` examples), ``lira_<model>`` (online LiRA; higher = more likely a
    member).

    ``signals[model][split]``, where given, are the model's signals on a dataset holding ``data``'s examples (with
    the shadow models' queries, else identity), as :func:`unlearn.evaluate` takes them: their rows are scored instead
    of predicting again."""
    from ..attacks import lira
    from ..evaluation import _signals

    table = {}
    indices = labels_of(data)[1].numpy()
    positions = shadows.locate(split, indices) if shadows is not None else None
    queries = shadows.queries if shadows is not None else ("identity",)
    for name, model in models.items():
        scored = _signals(model, data, split, (signals or {}).get(name), queries, device)
        table[f"correct_{name}"] = scored.correct[:, 0].astype(bool)
        table[f"loss_{name}"] = scored.loss[:, 0]
        if shadows is not None:
            table[f"lira_{name}"] = lira(scored.phi, shadows.phi(positions), shadows.in_mask[:, positions])
    return pd.DataFrame(table, index=pd.Index(indices, name="index"))
