"""Batches of ``(x, y, index)`` from any dataset, and the in-memory dataset they are sliced from fastest.

Per-example scores are keyed by the position of an example in the training split, so every batch carries each
example's training-set index: it survives shuffling, ``Subset`` and ``DataLoader``. An :class:`IndexedDataset` (or a
nested ``Subset`` of one) is sliced as tensors; any other dataset of ``(x, y)`` or ``(x, y, index)`` items goes
through a ``DataLoader``.

>>> ds = IndexedDataset(torch.randn(5, 2), torch.tensor([0, 1, 0, 1, 0]))
>>> [idx.tolist() for _, _, idx in batches(Subset(ds, [4, 2, 0]), 2)]
[[4, 2], [0]]
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset

__all__ = ["IndexedDataset", "WithIndex", "as_tensors", "batches", "subset_root", "tensor_batches"]


class IndexedDataset(Dataset):
    """Examples held in memory as tensors; item ``i`` is ``(inputs[i], targets[i], indices[i])``.

    Args:
        inputs: float tensor ``[N, ...]`` (already normalised).
        targets: integer class labels ``[N]``.
        classes: optional class names.
        indices: training-set index of each example (default ``0..N-1``). Given explicitly, they say which
            training example each item is, even across different objects (``explicit_indices`` records it):
            :func:`unlearn.unlearn` then refuses a forget and a retain set that share one.

    >>> ds = IndexedDataset(torch.zeros(3, 1, 2, 2), torch.tensor([0, 1, 1]))
    >>> len(ds), ds[2][1].item(), ds[2][2]
    (3, 1, 2)
    """

    def __init__(self, inputs: Tensor, targets: Tensor, classes: list[str] | None = None,
                 indices: Tensor | None = None) -> None:
        if not isinstance(inputs, Tensor) or not isinstance(targets, Tensor):
            raise TypeError("inputs and targets must be tensors, "
                            f"got {type(inputs).__name__}, {type(targets).__name__}")
        if targets.ndim != 1 or len(inputs) != len(targets):
            raise ValueError("expected targets [N] matching inputs [N, ...], "
                             f"got {tuple(targets.shape)} and {tuple(inputs.shape)}")
        if targets.is_floating_point():
            raise TypeError(f"targets must be integer class labels, got dtype {targets.dtype}")
        if indices is not None and (not isinstance(indices, Tensor) or indices.shape != targets.shape):
            raise ValueError(f"indices must be a tensor [{len(targets)}], got {getattr(indices, 'shape', indices)}")
        self.inputs = inputs
        self.targets = targets.long()
        self.classes = classes
        self.indices = torch.arange(len(targets)) if indices is None else indices.long()
        self.explicit_indices = indices is not None

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor, int]:
        return self.inputs[i], self.targets[i], int(self.indices[i])


def subset_root(dataset: Dataset) -> tuple[Dataset, Tensor | None]:
    """The dataset under a (nested) ``Subset`` and the positions in it of the subset's items (None: no Subset).

    >>> ds = IndexedDataset(torch.zeros(6, 1), torch.zeros(6, dtype=torch.long))
    >>> root, positions = subset_root(Subset(Subset(ds, [5, 3, 1]), [2, 0]))
    >>> root is ds, positions.tolist()
    (True, [1, 5])
    """
    positions = None
    while isinstance(dataset, Subset):
        ids = torch.as_tensor(dataset.indices, dtype=torch.long)
        positions = ids if positions is None else ids[positions]
        dataset = dataset.dataset
    return dataset, positions


def as_tensors(dataset: Dataset) -> tuple[Tensor, Tensor, Tensor] | None:
    """``(inputs, targets, indices)`` of an :class:`IndexedDataset` or a (nested) ``Subset`` of one, else None.

    ``indices`` are the training-set indices of the examples, in the dataset's order.
    """
    root, positions = subset_root(dataset)
    if not isinstance(root, IndexedDataset):
        return None
    if positions is None:
        return root.inputs, root.targets, root.indices
    return root.inputs[positions], root.targets[positions], root.indices[positions]


class WithIndex(Dataset):
    """Adds an index to a dataset yielding ``(x, y)``: the item's position in the dataset under any ``Subset``
    (the training-set index when that dataset is the training set); passes ``(x, y, index)`` through."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset
        self.positions = subset_root(dataset)[1]

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        item = self.dataset[i]
        if not isinstance(item, (tuple, list)) or len(item) not in (2, 3):
            raise TypeError(f"dataset items must be (x, y) or (x, y, index), got {type(item).__name__}")
        if len(item) == 3:
            return tuple(item)
        return item[0], item[1], i if self.positions is None else int(self.positions[i])


def batches(dataset: Dataset, batch_size: int, *, shuffle: bool = False, generator: torch.Generator | None = None,
            drop_last: bool = False,
            device: torch.device | str | None = None) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
    """Yield ``(x, y, index)`` batches of any dataset of ``(x, y)`` or ``(x, y, index)`` items.

    In-memory datasets (:class:`IndexedDataset` and its subsets) are sliced directly, which is much faster than a
    ``DataLoader``; anything else goes through one. Order depends only on ``generator``.

    >>> ds = IndexedDataset(torch.randn(5, 2), torch.tensor([0, 1, 0, 1, 0]))
    >>> [idx.tolist() for _, _, idx in batches(ds, 2)]
    [[0, 1], [2, 3], [4]]
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    tensors = as_tensors(dataset)
    if tensors is None:
        loader = DataLoader(WithIndex(dataset), batch_size=batch_size, shuffle=shuffle, generator=generator,
                            drop_last=drop_last)
        for x, y, idx in loader:
            yield x.to(device), torch.as_tensor(y).long().to(device), torch.as_tensor(idx).long()
        return
    inputs, targets, indices = tensors
    for x, y, idx in tensor_batches(inputs, targets, indices, batch_size=batch_size, shuffle=shuffle,
                                    generator=generator, drop_last=drop_last):
        yield x.to(device), y.to(device), idx


def tensor_batches(*tensors: Tensor, batch_size: int, shuffle: bool = False,
                   generator: torch.Generator | None = None, drop_last: bool = False) -> Iterator[tuple[Tensor, ...]]:
    """Yield aligned row slices of several ``[N, ...]`` tensors, in order or shuffled by ``generator``.

    >>> [b.tolist() for b, in tensor_batches(torch.arange(5), batch_size=2)]
    [[0, 1], [2, 3], [4]]
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    n = len(tensors[0])
    order = torch.randperm(n, generator=generator) if shuffle else None
    stop = n - n % batch_size if drop_last else n
    for start in range(0, stop, batch_size):
        if order is None:
            yield tuple(t[start:start + batch_size] for t in tensors)
        else:
            take = order[start:start + batch_size]
            yield tuple(t[take] for t in tensors)
