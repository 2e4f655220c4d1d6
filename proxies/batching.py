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

__all__ = ["BATCH_PARTS", "IndexedDataset", "WithIndex", "as_tensors", "batches", "subset_root", "tensor_batches"]


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


BATCH_PARTS = ("x", "y", "index")
"""The parts of a batch, as :func:`batches`' ``moved`` names them: inputs, labels, training-set indices."""


def batches(dataset: Dataset, batch_size: int, *, shuffle: bool = False, generator: torch.Generator | None = None,
            drop_last: bool = False, device: torch.device | str | None = None,
            moved: tuple[str, ...] = ("x", "y")) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
    """Yield ``(x, y, index)`` batches of any dataset of ``(x, y)`` or ``(x, y, index)`` items.

    In-memory datasets (:class:`IndexedDataset` and its subsets) are sliced directly, which is much faster than a
    ``DataLoader``; anything else goes through one. Order depends only on ``generator`` (a CPU generator: the same
    order on every device).

    Where the batches go: the parts named in ``moved`` (of ``"x"``, ``"y"``, ``"index"``; default the inputs and
    labels) are put on ``device``, the others stay on the CPU. On a device other than the CPU, an in-memory
    dataset's tensors (the moved parts) are copied there once per call, with the shuffled order, and every batch
    is gathered there: no copy and no host sync per batch. A streamed dataset's batches come from a
    ``DataLoader`` with ``pin_memory`` (on CUDA) and are copied with ``non_blocking=True``. On the CPU nothing is
    copied: the batches are those of earlier versions, bit for bit.

    >>> ds = IndexedDataset(torch.randn(5, 2), torch.tensor([0, 1, 0, 1, 0]))
    >>> [idx.tolist() for _, _, idx in batches(ds, 2)]
    [[0, 1], [2, 3], [4]]
    >>> [x.device.type + "/" + idx.device.type for x, _, idx in batches(ds, 4, device="meta")]
    ['meta/cpu', 'meta/cpu']
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    unknown = [part for part in moved if part not in BATCH_PARTS]
    if unknown or isinstance(moved, str):
        raise ValueError(f"moved must name parts of {BATCH_PARTS}, got {moved!r}")
    target = None if device is None else torch.device(device)
    where = [target if part in moved else None for part in BATCH_PARTS]
    tensors = as_tensors(dataset)
    if tensors is None:
        pin = target is not None and target.type == "cuda"  # pinned pages: the copies below can be asynchronous
        loader = DataLoader(WithIndex(dataset), batch_size=batch_size, shuffle=shuffle, generator=generator,
                            drop_last=drop_last, pin_memory=pin)
        for x, y, idx in loader:
            parts = (x, torch.as_tensor(y).long(), torch.as_tensor(idx).long())
            yield tuple(part if to is None else part.to(to, non_blocking=True)
                        for part, to in zip(parts, where, strict=True))
        return
    yield from _gathered(tensors, where, batch_size=batch_size, shuffle=shuffle, generator=generator,
                         drop_last=drop_last)


def tensor_batches(*tensors: Tensor, batch_size: int, shuffle: bool = False,
                   generator: torch.Generator | None = None, drop_last: bool = False,
                   device: torch.device | str | None = None) -> Iterator[tuple[Tensor, ...]]:
    """Yield aligned row slices of several ``[N, ...]`` tensors, in order or shuffled by ``generator``.

    ``device``: where the slices are wanted. The tensors (and the shuffled order, drawn on the CPU) are moved there
    once, and each batch is gathered there, instead of a copy per batch; None leaves each tensor where it is.

    >>> [b.tolist() for b, in tensor_batches(torch.arange(5), batch_size=2)]
    [[0, 1], [2, 3], [4]]
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    target = None if device is None else torch.device(device)
    return _gathered(tensors, [target] * len(tensors), batch_size=batch_size, shuffle=shuffle, generator=generator,
                     drop_last=drop_last)


def _gathered(tensors, devices, *, batch_size: int, shuffle: bool, generator: torch.Generator | None,
              drop_last: bool) -> Iterator[tuple[Tensor, ...]]:
    """Row batches of ``tensors``, each gathered on its entry of ``devices`` (None: where it is). A tensor is moved
    once, and the order once to each device it is needed on (a CPU order indexes CPU tensors as it always did)."""
    n = len(tensors[0])
    order = torch.randperm(n, generator=generator) if shuffle else None
    moved = [t if to is None else t.to(to) for t, to in zip(tensors, devices, strict=True)]
    orders: dict[torch.device, Tensor] = {}
    if order is not None:
        for t in moved:
            if t.device not in orders:
                orders[t.device] = order.to(t.device)
    stop = n - n % batch_size if drop_last else n
    for start in range(0, stop, batch_size):
        if order is None:
            yield tuple(t[start:start + batch_size] for t in moved)
        else:
            yield tuple(t[orders[t.device][start:start + batch_size]] for t in moved)
