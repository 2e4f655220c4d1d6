"""Datasets of other shapes as the ``(x, y)`` items the library takes.

:class:`FromDicts` reads datasets whose items are dicts, as Hugging Face ``datasets`` yield them
(``{"image": <PIL image>, "label": 3}``):

>>> import torch
>>> rows = [{"pixels": torch.zeros(1, 2, 2), "label": 1}, {"pixels": torch.ones(1, 2, 2), "label": 0}]
>>> data = FromDicts(rows, input="pixels")
>>> x, y = data[1]
>>> x.shape, y, data.targets.tolist()
(torch.Size([1, 2, 2]), 0, [1, 0])
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

__all__ = ["FromDicts"]


def _to_tensor(value: Any) -> torch.Tensor:
    """A PIL image as torchvision's ``to_tensor`` makes it (``[C, H, W]`` in [0, 1]); anything else through
    ``torch.as_tensor``."""
    if hasattr(value, "getbands"):  # a PIL image
        from torchvision.transforms.functional import to_tensor

        return to_tensor(value)
    return torch.as_tensor(np.asarray(value) if not isinstance(value, torch.Tensor) else value)


class FromDicts(Dataset):
    """A map-style dataset of dict items, as ``(x, y)`` items: ``x = transform(item[input])``, ``y = item[label]``.

    Args:
        dataset: anything with ``len()`` and ``[i]`` giving dicts (a Hugging Face ``Dataset``, a list of dicts).
        input: the key of the input (default ``"image"``, Hugging Face's name for image datasets).
        label: the key of the class label (default ``"label"``).
        transform: turns an input into a tensor (default: a PIL image as torchvision's ``to_tensor`` makes it, e.g.
            ``[1, 28, 28]`` in [0, 1]; any other value through ``torch.as_tensor``). Normalise here if the model
            expects it.

    ``targets`` holds every label, read from the dataset's ``label`` column when it has columns (a Hugging Face
    ``Dataset``: no image is decoded) and otherwise from the items; pass it to :class:`~unlearn.data.Streamed`
    (``targets=``) to stream the images. In memory, :func:`~unlearn.data.materialize` copies it into an
    :class:`~unlearn.data.IndexedDataset`.

    Raises:
        ValueError: an item without the keys, named with those it has; an empty dataset.
        TypeError: items that are not dicts.
    """

    def __init__(self, dataset, *, input: str = "image", label: str = "label",
                 transform: Callable[[Any], torch.Tensor] | None = None) -> None:
        if not (hasattr(dataset, "__len__") and hasattr(dataset, "__getitem__")):
            raise TypeError(f"dataset must be map-style (len() and [i]), got {type(dataset).__name__}")
        if len(dataset) == 0:
            raise ValueError("the dataset has no items")
        self.dataset, self.input, self.label = dataset, input, label
        self.transform = transform or _to_tensor
        self._check(dataset[0], 0)
        self.targets = torch.as_tensor(self._labels(), dtype=torch.long)

    def _check(self, item, i: int) -> Mapping:
        if not isinstance(item, Mapping):
            raise TypeError(f"item {i} is a {type(item).__name__}, not a dict: FromDicts reads datasets of dicts")
        missing = [key for key in (self.input, self.label) if key not in item]
        if missing:
            raise ValueError(f"item {i} has no {missing} (its keys: {sorted(item)}); pass input= and label= with "
                             "the keys of the input and the class label")
        return item

    def _labels(self) -> list[int]:
        column = None
        if hasattr(self.dataset, "column_names"):  # a Hugging Face Dataset: the column, without decoding images
            column = self.dataset[self.label]
        if column is None:
            column = [self._check(self.dataset[i], i)[self.label] for i in range(len(self.dataset))]
        return [int(y) for y in column]

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        item = self._check(self.dataset[i], i)
        return self.transform(item[self.input]), int(item[self.label])
