"""Batches of ``(x, y, index)`` from any dataset: sliced from memory when it is there, streamed when it is not.

Per-example scores are keyed by the position of an example in the training split, so every batch carries each
example's training-set index: it survives shuffling, ``Subset`` and ``DataLoader``. Two kinds of dataset, one
interface (:func:`batches`, :func:`labels_of`, :func:`take`, :func:`join`):

- an :class:`IndexedDataset` (or a nested ``Subset`` of one) is held in memory and sliced as tensors, the fast path
  for data that fits;
- any other dataset of ``(x, y)`` or ``(x, y, index)`` items is *streamed*: read a batch at a time through a
  ``DataLoader``, never held whole. :class:`Streamed` wraps one with the loader's options (``num_workers``,
  ``pin_memory``, persistent workers); a bare dataset is streamed with the defaults (no worker processes).

Both give the same batches for the same generator: the order is one ``randperm`` of the dataset's positions.

>>> ds = IndexedDataset(torch.randn(5, 2), torch.tensor([0, 1, 0, 1, 0]))
>>> [idx.tolist() for _, _, idx in batches(Subset(ds, [4, 2, 0]), 2)]
[[4, 2], [0]]
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Iterator, Sequence

import torch
from torch import Tensor
from torch.utils.data import ConcatDataset, DataLoader, Dataset, Subset

from .tasks import same_task, task_of

__all__ = ["BATCH_PARTS", "IndexedDataset", "Streamed", "WithIndex", "as_tensors", "batches", "bound_heap_growth",
           "examples", "first_input", "join", "labels_of", "subset_root", "take", "tensor_batches"]


class IndexedDataset(Dataset):
    """Examples held in memory as tensors; item ``i`` is ``(inputs[i], targets[i], indices[i])``.

    Args:
        inputs: float tensor ``[N, ...]`` (already normalised).
        targets: integer class labels ``[N]`` (with a ``task``, what it takes: token sequences' ``labels
            [N, T]``).
        classes: optional class names.
        indices: training-set index of each example (default ``0..N-1``). Given explicitly, they say which
            training example each item is, even across different objects (``explicit_indices`` records it):
            :func:`unlearn.unlearn` then refuses a forget and a retain set that share one.
        task: the kind of example (a :class:`proxies.tasks.Task`; None: classification), which every part of the
            library finds with :func:`proxies.tasks.task_of`.

    >>> ds = IndexedDataset(torch.zeros(3, 1, 2, 2), torch.tensor([0, 1, 1]))
    >>> len(ds), ds[2][1].item(), ds[2][2]
    (3, 1, 2)
    """

    def __init__(self, inputs: Tensor, targets: Tensor, classes: list[str] | None = None,
                 indices: Tensor | None = None, *, task=None) -> None:
        if not isinstance(inputs, Tensor) or not isinstance(targets, Tensor):
            raise TypeError("inputs and targets must be tensors, "
                            f"got {type(inputs).__name__}, {type(targets).__name__}")
        # a task other than classification says what its targets are (token sequences: labels [N, T])
        if (targets.ndim != 1 and task is None) or targets.ndim == 0 or len(inputs) != len(targets):
            raise ValueError("expected targets [N] matching inputs [N, ...], "
                             f"got {tuple(targets.shape)} and {tuple(inputs.shape)}")
        if targets.is_floating_point() or targets.dtype == torch.bool:
            raise TypeError(f"targets must be integer class labels, got dtype {targets.dtype}")
        if indices is not None and (not isinstance(indices, Tensor) or indices.shape != targets.shape[:1]):
            raise ValueError(f"indices must be a tensor [{len(targets)}], got {getattr(indices, 'shape', indices)}")
        self.inputs = inputs
        self.targets = targets.long()
        self.classes = classes
        self.indices = torch.arange(len(targets)) if indices is None else indices.long()
        self.explicit_indices = indices is not None
        self.task = task

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
        n = len(dataset.dataset)
        if len(ids) and not (-n <= int(ids.min()) and int(ids.max()) < n):  # before any item is read
            bad = int(ids.max()) if int(ids.max()) >= n else int(ids.min())
            raise ValueError(f"a Subset lists position {bad} of a dataset of {n} items; its indices must lie in "
                             f"[0, {n})")
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
            raise TypeError(f"dataset items must be (x, y) or (x, y, index), got {type(item).__name__}"
                            + (" (a dataset of dicts, e.g. Hugging Face's, goes through unlearn.data.FromDicts)"
                               if isinstance(item, dict) else ""))
        if len(item) == 3:
            return tuple(item)
        return item[0], item[1], i if self.positions is None else int(self.positions[i])


class _Order:
    """A streamed loader's batch sampler: the batches of positions of the pass about to start (set before each)."""

    def __init__(self) -> None:
        self.chunks: list[Tensor] = []

    def __iter__(self):
        return (chunk.tolist() for chunk in self.chunks)

    def __len__(self) -> int:
        return len(self.chunks)


MMAP_THRESHOLD = 128 * 1024
"""The allocation size from which glibc's ``malloc`` takes memory straight from the kernel, fixed by
:func:`bound_heap_growth` (glibc's default, before it starts moving it)."""

_heap_bounded = False


def bound_heap_growth() -> bool:
    """Keep glibc's heap from growing with a stream's length: fix its mmap threshold at :data:`MMAP_THRESHOLD`.

    glibc raises the threshold to the size of each large block freed (up to 32 MiB), so once a batch has come and
    gone, later batches are carved out of the heap, between the small item tensors a collation leaves there. The
    holes never fit the next batch and the heap grows by about a batch's worth every few batches: predicting 100k
    3x32x32 images in batches of 1024 took 650 MiB more, 80 MiB with the threshold fixed
    (``benchmarks/bench_scale.py``). Called when a streamed dataset first makes its ``DataLoader``; a process that
    sets ``MALLOC_MMAP_THRESHOLD_`` itself, or a C library other than glibc, is left as it is. Returns whether the
    threshold is fixed.
    """
    global _heap_bounded
    if _heap_bounded or "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return _heap_bounded
    try:
        libc = ctypes.CDLL("libc.so.6")
        _heap_bounded = bool(libc.mallopt(-3, MMAP_THRESHOLD))  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):  # not glibc
        _heap_bounded = False
    return _heap_bounded


class _Loader:
    """One ``DataLoader`` of a :class:`Streamed` dataset, fed batches of positions by its :class:`_Order`."""

    def __init__(self, stream: Streamed, pin: bool, persistent: bool) -> None:
        bound_heap_growth()
        self.order = _Order()
        self.busy = False
        workers = stream.num_workers
        extra = {"prefetch_factor": stream.prefetch_factor} if workers and stream.prefetch_factor else {}
        # the loader's own generator only seeds its workers: neither the order nor the global RNG is touched
        self.loader = DataLoader(stream.items, batch_sampler=self.order, num_workers=workers, pin_memory=pin,
                                 persistent_workers=persistent and workers > 0,
                                 generator=torch.Generator().manual_seed(stream.worker_seed), **extra)


class Streamed(Dataset):
    """A dataset read a batch at a time through a ``DataLoader``, never held in memory.

    Every part of the library that takes a dataset (training, the recorder, :func:`unlearn.unlearn` and its
    methods, the model-based proxies, the attacks' signals, ``evaluate``, the farm) streams a dataset that is not
    an in-memory :class:`IndexedDataset`; wrapping it in ``Streamed`` chooses how. Items are ``(x, y, index)``:
    an item ``(x, y)`` of ``dataset`` gets its position (under any ``Subset``, see :class:`WithIndex`).

    Args:
        dataset: any map-style dataset of ``(x, y)`` or ``(x, y, index)`` items (e.g. a torchvision ``ImageFolder``
            with a ``ToTensor`` transform).
        num_workers: worker processes that read items (0: in the calling process).
        pin_memory: pin the batches' pages for asynchronous copies (None: when the batches go to CUDA).
        persistent_workers: keep the workers between passes, so that each epoch does not start them again
            (None: whenever there are workers). A pass started while another is running (e.g. the forget set's
            batches inside the retain set's) gets a loader of its own.
        prefetch_factor: batches each worker reads ahead (None: torch's default).
        targets: the items' labels by position, when known without reading the items (e.g. ``ImageFolder.targets``):
            :func:`labels_of` then reads no item (but five, spread over the dataset, to check them against). Otherwise
            the labels (and indices) of the items asked about are read once, in a pass that drops their inputs, and
            kept.
        worker_seed: seeds the workers' random number generators (a random transform in a worker draws from them).
        task: the kind of example (a :class:`proxies.tasks.Task`; None: the wrapped dataset's, else
            classification).

    Only the labels and training-set indices are kept, one integer each per item: a million examples cost 16 MB
    (token sequences keep their labels, ``[T]`` integers each).
    The first loader fixes glibc's mmap threshold (:func:`bound_heap_growth`), without which the heap grows with the
    number of batches read.

    >>> ds = Streamed(IndexedDataset(torch.randn(6, 2), torch.tensor([0, 1, 2, 0, 1, 2])))
    >>> labels, indices = labels_of(Subset(ds, [5, 0]))
    >>> labels.tolist(), indices.tolist()
    ([2, 0], [5, 0])
    """

    def __init__(self, dataset: Dataset, *, num_workers: int = 0, pin_memory: bool | None = None,
                 persistent_workers: bool | None = None, prefetch_factor: int | None = None,
                 targets: Sequence[int] | Tensor | None = None, worker_seed: int = 0, task=None) -> None:
        if not (hasattr(dataset, "__len__") and hasattr(dataset, "__getitem__")):
            raise TypeError(f"dataset must be a map-style torch Dataset with __len__ and __getitem__, got "
                            f"{type(dataset).__name__}")
        if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
            raise ValueError(f"num_workers must be a whole number >= 0, got {num_workers!r}")
        if prefetch_factor is not None and (isinstance(prefetch_factor, bool) or not isinstance(prefetch_factor, int)
                                            or prefetch_factor < 1):
            raise ValueError(f"prefetch_factor must be None or a whole number >= 1, got {prefetch_factor!r}")
        self.dataset = dataset
        self.items = WithIndex(dataset)
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.persistent_workers = num_workers > 0 if persistent_workers is None else bool(persistent_workers)
        self.prefetch_factor = prefetch_factor
        self.worker_seed = int(worker_seed)
        self.task = task if task is not None else getattr(subset_root(dataset)[0], "task", None)  # or the data's
        n = len(dataset)
        self._labels = torch.full((n,), -1, dtype=torch.long)
        self._indices = torch.full((n,), -1, dtype=torch.long)
        self._known = torch.zeros(n, dtype=torch.bool)
        self._loaders: dict[bool, _Loader] = {}
        if targets is not None:
            targets = torch.as_tensor(targets)
            if targets.shape != (n,) or targets.is_floating_point():
                raise ValueError(f"targets must be {n} integer labels, one per item, got "
                                 f"{targets.dtype} {tuple(targets.shape)}")
            self._labels = targets.long().clone()
            self._check_targets()
            if not self.explicit_indices:  # the index of an item is its position: nothing to read
                positions = self.items.positions
                self._indices = torch.arange(n) if positions is None else positions.clone()
                self._known[:] = True

    def _check_targets(self, samples: int = 5) -> None:
        """Read a few items spread over the dataset (the first and last among them) and refuse ``targets`` that
        disagree with their labels: wrong ones would train and score every example against another's label."""
        n = len(self._labels)
        for i in sorted({round(k * (n - 1) / (samples - 1)) for k in range(samples)} if n else ()):
            label = self.dataset[i][1]
            if int(torch.as_tensor(label)) != int(self._labels[i]):
                raise ValueError(f"targets disagree with the items: item {i}'s label is {int(torch.as_tensor(label))}"
                                 f" but targets[{i}] is {int(self._labels[i])}; targets are the labels of the items "
                                 "in order (e.g. an ImageFolder's .targets, of the same folder)")

    @property
    def explicit_indices(self) -> bool:
        """Whether the items carry their own training-set index (items ``(x, y, index)``)."""
        if not hasattr(self, "_explicit"):
            self._explicit = len(self.dataset) > 0 and len(self.dataset[0]) == 3
        return self._explicit

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        return self.items[i]

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_loaders": {}}  # a loader (its worker processes) stays in the process it is in

    def __repr__(self) -> str:
        return f"Streamed({type(self.dataset).__name__}, {len(self)} items, num_workers={self.num_workers})"

    def read(self, chunks: list[Tensor], *, pin: bool = False) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
        """``(x, y, index)`` batches of the items at each of ``chunks`` (batches of positions), in that order."""
        chunks = [chunk for chunk in chunks if len(chunk)]  # (an empty tensor splits into one empty chunk)
        if not chunks:
            return
        entry = self._loaders.get(pin)
        if entry is None or entry.busy:
            fresh = _Loader(self, pin, persistent=entry is None and self.persistent_workers)
            if entry is None:
                self._loaders[pin] = fresh
            entry = fresh
        entry.busy = True
        entry.order.chunks = chunks
        try:
            for x, y, index in entry.loader:
                yield x, torch.as_tensor(y).long(), torch.as_tensor(index).long()
        finally:
            entry.busy = False

    def labels(self, positions: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """The labels and training-set indices of the items at ``positions`` (None: all), read once."""
        positions = torch.arange(len(self)) if positions is None else torch.as_tensor(positions, dtype=torch.long)
        missing = positions[~self._known[positions]].unique()
        chunks = [chunk for chunk in missing.split(1024) if len(chunk)]
        for chunk, (_, y, index) in zip(chunks, self.read(chunks), strict=True):
            if self._labels.shape[1:] != y.shape[1:]:  # labels of another shape (token sequences [T]): kept as read
                self._labels = torch.full((len(self), *y.shape[1:]), -1, dtype=torch.long)
            self._labels[chunk], self._indices[chunk] = y, index
            self._known[chunk] = True
        return self._labels[positions], self._indices[positions]


BATCH_PARTS = ("x", "y", "index")
"""The parts of a batch, as :func:`batches`' ``moved`` names them: inputs, labels, training-set indices."""


def batches(dataset: Dataset, batch_size: int, *, shuffle: bool = False, generator: torch.Generator | None = None,
            drop_last: bool = False, device: torch.device | str | None = None,
            moved: tuple[str, ...] = ("x", "y")) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
    """Yield ``(x, y, index)`` batches of any dataset of ``(x, y)`` or ``(x, y, index)`` items.

    In-memory datasets (:class:`IndexedDataset` and its subsets) are sliced directly, which is much faster than a
    ``DataLoader``; anything else is streamed through one (:class:`Streamed`: its options, or the defaults). Order
    depends only on ``generator`` (a CPU generator: the same order on every device) and is the same for both kinds:
    the positions in ``randperm(len(dataset), generator=generator)``.

    Where the batches go: the parts named in ``moved`` (of ``"x"``, ``"y"``, ``"index"``; default the inputs and
    labels) are put on ``device``, the others stay on the CPU. On a device other than the CPU, an in-memory
    dataset's tensors (the moved parts) are copied there once per call, with the shuffled order, and every batch
    is gathered there: no copy and no host sync per batch. A streamed dataset's batches come from a
    ``DataLoader`` with ``pin_memory`` (on CUDA, unless its :class:`Streamed` says otherwise) and are copied with
    ``non_blocking=True``. On the CPU nothing is copied.

    >>> ds = IndexedDataset(torch.randn(5, 2), torch.tensor([0, 1, 0, 1, 0]))
    >>> [idx.tolist() for _, _, idx in batches(ds, 2)]
    [[0, 1], [2, 3], [4]]
    >>> [x.device.type + "/" + idx.device.type for x, _, idx in batches(ds, 4, device="meta")]
    ['meta/cpu', 'meta/cpu']
    >>> def order(data):
    ...     shuffled = batches(data, 2, shuffle=True, generator=torch.Generator().manual_seed(1))
    ...     return [i.tolist() for _, _, i in shuffled]
    >>> order(Streamed(ds)) == order(ds)
    True
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
        stream, positions = _stream_of(dataset)
        order = torch.randperm(len(dataset), generator=generator) if shuffle else torch.arange(len(dataset))
        if positions is not None:
            order = positions[order]
        stop = len(order) - len(order) % batch_size if drop_last else len(order)
        pin = stream.pin_memory if stream.pin_memory is not None else target is not None and target.type == "cuda"
        for parts in stream.read(list(order[:stop].split(batch_size)), pin=pin):
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


# ------------------------------------------------------------------------------------- one interface, two kinds

def _stream_of(dataset: Dataset) -> tuple[Streamed, Tensor | None]:
    """The :class:`Streamed` dataset under ``dataset``'s subsets and the positions in it (a dataset with no
    ``Streamed`` under it is streamed with the defaults)."""
    root, positions = subset_root(dataset)
    if isinstance(root, Streamed):
        return root, positions
    return Streamed(dataset), None


def examples(dataset: Dataset) -> Dataset:
    """``dataset`` as the library's methods take it: an :class:`IndexedDataset` when it is in memory (one, or a
    ``Subset`` of one: copied out, the fast path), else streamed (a :class:`Streamed` dataset, or a ``Subset`` of one,
    as it is; any other dataset wrapped in a default ``Streamed``). Nothing is read.

    >>> data = IndexedDataset(torch.zeros(4, 2), torch.tensor([0, 1, 0, 1]))
    >>> type(examples(Subset(data, [1, 2]))).__name__, type(examples(Streamed(data))).__name__
    ('IndexedDataset', 'Streamed')
    """
    root, _ = subset_root(dataset)
    if isinstance(root, IndexedDataset):
        if isinstance(dataset, IndexedDataset):
            return dataset
        inputs, targets, indices = as_tensors(dataset)
        result = IndexedDataset(inputs, targets, root.classes, indices=indices, task=getattr(root, "task", None))
        result.explicit_indices = root.explicit_indices  # positions of a dataset without indices stay positions
        return result
    if isinstance(root, Streamed):
        return dataset
    return Streamed(dataset)


def labels_of(dataset: Dataset) -> tuple[Tensor, Tensor]:
    """The labels and training-set indices of ``dataset``'s items, in its order: sliced from memory, or kept by its
    :class:`Streamed` dataset (read once; its inputs are dropped)."""
    root, positions = subset_root(dataset)
    if isinstance(root, IndexedDataset):
        if positions is None:
            return root.targets, root.indices
        return root.targets[positions], root.indices[positions]
    stream, positions = _stream_of(dataset)
    return stream.labels(positions)


def take(dataset: Dataset, positions: Tensor | Sequence[int]) -> Dataset:
    """The items of ``dataset`` at ``positions``: an in-memory dataset's copied out (an :class:`IndexedDataset`), a
    streamed one's by reference (a ``Subset``: nothing is read or copied)."""
    positions = torch.as_tensor(positions, dtype=torch.long)
    if isinstance(dataset, IndexedDataset):
        result = IndexedDataset(dataset.inputs[positions], dataset.targets[positions], dataset.classes,
                                indices=dataset.indices[positions], task=getattr(dataset, "task", None))
        result.explicit_indices = dataset.explicit_indices
        return result
    return Subset(dataset, positions.tolist())


def join(first: Dataset, second: Dataset, *, positions: bool = False) -> Dataset:
    """The items of ``first`` then those of ``second``: one :class:`IndexedDataset` when both are in memory, else a
    :class:`Streamed` dataset (with the loader options of the streamed one) of the two, whose labels and indices are
    known without a read. ``positions``: an item's index is its position in the result instead of its own (which
    part of a batch came from ``second``: ``index >= len(first)``).

    >>> a = IndexedDataset(torch.zeros(2, 1), torch.tensor([0, 1]))
    >>> b = IndexedDataset(torch.ones(1, 1), torch.tensor([1]))
    >>> labels_of(join(a, Streamed(b)))[0].tolist(), labels_of(join(a, b, positions=True))[1].tolist()
    ([0, 1, 1], [0, 1, 2])
    """
    first, second = examples(first), examples(second)
    task = task_of(first)
    if not same_task(task, task_of(second)):
        raise ValueError(f"cannot join examples of two tasks ({task!r} and {task_of(second)!r})")
    (labels_a, indices_a), (labels_b, indices_b) = labels_of(first), labels_of(second)
    indices = torch.arange(len(first) + len(second)) if positions else torch.cat([indices_a, indices_b])
    if isinstance(first, IndexedDataset) and isinstance(second, IndexedDataset):
        result = IndexedDataset(torch.cat([first.inputs, second.inputs]), torch.cat([labels_a, labels_b]),
                                first.classes, indices=indices, task=task)
        result.explicit_indices = not positions and first.explicit_indices and second.explicit_indices
        return result
    stream = _stream_of(second if isinstance(first, IndexedDataset) else first)[0]
    both = ConcatDataset([_with_index(first), _with_index(second)])
    joined = Streamed(_Reindexed(both, indices) if positions else both, num_workers=stream.num_workers,
                      pin_memory=stream.pin_memory, persistent_workers=stream.persistent_workers,
                      prefetch_factor=stream.prefetch_factor, worker_seed=stream.worker_seed, task=task)
    joined._labels, joined._indices = torch.cat([labels_a, labels_b]), indices.clone()
    joined._known[:] = True
    return joined


class _Reindexed(Dataset):
    """The items of ``dataset`` under other indices."""

    def __init__(self, dataset: Dataset, indices: Tensor) -> None:
        self.dataset, self.indices = dataset, indices

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        x, y, _ = self.dataset[i]
        return x, y, int(self.indices[i])


def _with_index(dataset: Dataset) -> Dataset:
    """``dataset`` with items ``(x, y, index)``."""
    return dataset if isinstance(subset_root(dataset)[0], (IndexedDataset, Streamed)) else WithIndex(dataset)


def first_input(dataset: Dataset, n: int = 1) -> Tensor:
    """The inputs of the first ``n`` items, stacked ``[n, ...]`` (e.g. to probe a model's output width)."""
    if isinstance(dataset, IndexedDataset):
        return dataset.inputs[:n]
    return torch.stack([torch.as_tensor(dataset[i][0]) for i in range(min(n, len(dataset)))])
