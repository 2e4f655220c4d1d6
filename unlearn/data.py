"""Datasets whose every example carries its stable training-set index.

Per-example bookkeeping (training dynamics, memorization scores, forget sets) is keyed by the position of an
example in the training split. Every dataset here yields ``(x, y, index)`` so that the key survives shuffling,
``Subset`` and ``DataLoader``.

Named datasets live in a registry: ``digits`` (scikit-learn's real 8x8 handwritten digits, shipped in the wheel, the
default), ``fashion-mnist`` (Debian's ``dataset-fashion-mnist`` package or a torchvision root), ``mnist``,
``cifar10`` and ``cifar100`` (torchvision's loaders; they download only when asked to).

>>> splits = load_dataset("digits")
>>> x, y, index = splits.train[5]
>>> tuple(x.shape), index, splits.num_classes
((1, 8, 8), 5, 10)
"""

from __future__ import annotations

import gzip
import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset

__all__ = [
    "DatasetNotFoundError",
    "IndexedDataset",
    "Splits",
    "as_tensors",
    "batches",
    "datasets",
    "materialize",
    "subset_root",
    "tensor_batches",
    "WithIndex",
    "default_root",
    "load_dataset",
    "register_dataset",
]

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


class DatasetNotFoundError(FileNotFoundError):
    """A named dataset's files are not on this machine; the message says how to get them."""


class IndexedDataset(Dataset):
    """Examples held in memory as tensors; item ``i`` is ``(inputs[i], targets[i], indices[i])``.

    Args:
        inputs: float tensor ``[N, ...]`` (already normalised).
        targets: integer class labels ``[N]``.
        classes: optional class names.
        indices: training-set index of each example (default ``0..N-1``). Given explicitly, they say which
            training example each item is: :func:`unlearn.unlearn` then refuses a forget and a retain set built
            this way that share one, even from different objects (``explicit_indices`` records it).

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


@dataclass(frozen=True)
class Splits:
    """Train / validation / test splits of a named dataset and what a model needs to know about them."""

    name: str
    train: IndexedDataset
    val: IndexedDataset
    test: IndexedDataset
    num_classes: int
    in_channels: int
    default_model: str
    queries: tuple[str, ...] = ("identity",)
    """Augmentation queries membership attacks may use: a horizontal flip only for natural images."""
    train_rows: Tensor | None = None
    """For each training example, its row in the dataset's official training set (before the validation split and
    ``train_size``): how a deletion request names examples."""

    def __repr__(self) -> str:
        return (f"Splits({self.name!r}, train={len(self.train)}, val={len(self.val)}, test={len(self.test)}, "
                f"num_classes={self.num_classes}, in_channels={self.in_channels})")


# ----------------------------------------------------------------------------------------------------- registry

_Loader = Callable[..., tuple[Tensor, Tensor, Tensor, Tensor, list[str] | None]]


@dataclass(frozen=True)
class _DatasetSpec:
    loader: _Loader
    num_classes: int
    in_channels: int
    default_model: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    queries: tuple[str, ...]


_DATASETS: dict[str, _DatasetSpec] = {}


def register_dataset(name: str, *, num_classes: int, in_channels: int, default_model: str,
                     mean: tuple[float, ...], std: tuple[float, ...], queries: tuple[str, ...] = ("identity",)):
    """Register ``loader(root, download) -> (x_train uint8/float in [0,1], y_train, x_test, y_test, classes)``."""

    def decorator(loader: _Loader) -> _Loader:
        if name in _DATASETS:
            raise ValueError(f"dataset {name!r} is already registered")
        _DATASETS[name] = _DatasetSpec(loader, num_classes, in_channels, default_model, mean, std, queries)
        return loader

    return decorator


def datasets() -> list[str]:
    """Names accepted by :func:`load_dataset`.

    >>> "digits" in datasets()
    True
    """
    return sorted(_DATASETS)


def default_root() -> Path:
    """Where torchvision-format datasets are looked for: ``$UNLEARN_DATA`` or ``~/.cache/memunlearn``."""
    return Path(os.environ.get("UNLEARN_DATA", Path.home() / ".cache" / "memunlearn"))


def load_dataset(name: str, *, root: str | os.PathLike | None = None, download: bool = False,
                 val_fraction: float = 0.1, train_size: int | None = None, seed: int = 0) -> Splits:
    """Load a named dataset as in-memory, normalised, indexed train / validation / test splits.

    The validation split is a seeded random ``val_fraction`` of the official training set (digits has no official
    test set: a stratified 20% is held out as test first). ``train_size`` keeps a seeded random subset of the
    remaining training examples. The same arguments always give the same splits.

    Args:
        name: one of :func:`datasets`.
        root: folder in torchvision's layout (default :func:`default_root`).
        download: let torchvision fetch missing files (MNIST, Fashion-MNIST, CIFAR).
        val_fraction: fraction of the training set held out for validation, in ``[0, 1)``.
        train_size: keep only this many training examples.
        seed: seed of the splits.

    Raises:
        ValueError: unknown name or bad fractions/sizes.
        DatasetNotFoundError: the files are missing and ``download`` is False.
    """
    if name not in _DATASETS:
        raise ValueError(f"unknown dataset {name!r}; expected one of {datasets()}")
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    spec = _DATASETS[name]
    root = Path(root) if root is not None else default_root()
    x_train, y_train, x_test, y_test, classes = spec.loader(root=root, download=download)

    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(y_train), generator=generator)
    n_val = int(round(val_fraction * len(order)))
    val_ids, train_ids = order[:n_val].sort().values, order[n_val:]
    if train_size is not None:
        if not 0 < train_size <= len(train_ids):
            raise ValueError(f"train_size must be in [1, {len(train_ids)}] for {name!r}, got {train_size}")
        train_ids = train_ids[:train_size]
    train_ids = train_ids.sort().values

    mean = torch.tensor(spec.mean).view(1, -1, 1, 1)
    std = torch.tensor(spec.std).view(1, -1, 1, 1)

    def split(x: Tensor, y: Tensor) -> IndexedDataset:
        return IndexedDataset(((x.float() - mean) / std).contiguous(), y.long(), classes)

    return Splits(name, split(x_train[train_ids], y_train[train_ids]), split(x_train[val_ids], y_train[val_ids]),
                  split(x_test, y_test), spec.num_classes, spec.in_channels, spec.default_model, spec.queries,
                  train_rows=train_ids)


# ----------------------------------------------------------------------------------------------------- loaders

@register_dataset("digits", num_classes=10, in_channels=1, default_model="digits_cnn", mean=(0.305,), std=(0.376,))
def _load_digits(root: Path, download: bool):
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = torch.from_numpy(digits.images.astype(np.float32) / 16.0).unsqueeze(1)
    labels = torch.from_numpy(digits.target.astype(np.int64))
    train_ids, test_ids = train_test_split(np.arange(len(labels)), test_size=0.2, stratify=digits.target,
                                           random_state=0)
    train_ids.sort()
    test_ids.sort()
    return images[train_ids], labels[train_ids], images[test_ids], labels[test_ids], [str(c) for c in range(10)]


def _extract_idx_gz(raw: Path, sources: list[Path]) -> None:
    """Decompress ``*-ubyte.gz`` files found in ``raw`` or ``sources`` into ``raw``, as torchvision reads them."""
    for stem in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte"):
        if (raw / stem).is_file():
            continue
        for folder in (raw, *sources):
            gz = folder / f"{stem}.gz"
            if gz.is_file():
                raw.mkdir(parents=True, exist_ok=True)
                tmp = raw / f".{stem}.partial"
                with gzip.open(gz, "rb") as src, open(tmp, "wb") as dst:
                    shutil.copyfileobj(src, dst)
                tmp.replace(raw / stem)
                break


def _load_mnist_like(cls_name: str, root: Path, download: bool, sources: tuple[Path, ...], how_to_get: str):
    import torchvision

    cls = getattr(torchvision.datasets, cls_name)
    raw = root / cls_name / "raw"
    _extract_idx_gz(raw, list(sources))
    try:
        train = cls(str(root), train=True, download=download)
        test = cls(str(root), train=False, download=download)
    except RuntimeError as err:
        if download:
            raise
        raise DatasetNotFoundError(f"{cls_name} not found under {raw}. {how_to_get}") from err
    return (train.data.unsqueeze(1) / 255.0, train.targets, test.data.unsqueeze(1) / 255.0, test.targets,
            list(train.classes))


@register_dataset("fashion-mnist", num_classes=10, in_channels=1, default_model="cnn28", mean=(0.286,), std=(0.353,))
def _load_fashion_mnist(root: Path, download: bool):
    return _load_mnist_like(
        "FashionMNIST", root, download, (DEBIAN_FASHION_MNIST,),
        f"Install Debian's copy with `apt-get install dataset-fashion-mnist` (files land in {DEBIAN_FASHION_MNIST}; "
        "`make fashion-mnist` does it), put the four *-ubyte.gz files in that raw folder, or pass download=True "
        "(CLI: --download) to fetch them with torchvision.")


@register_dataset("mnist", num_classes=10, in_channels=1, default_model="cnn28", mean=(0.1307,), std=(0.3081,))
def _load_mnist(root: Path, download: bool):
    return _load_mnist_like("MNIST", root, download, (),
                            "Put the four *-ubyte.gz files in that raw folder or pass download=True (CLI: --download).")


def _cifar_class(name: str):
    """torchvision's CIFAR loader that trusts files already on disk (md5 is checked when it downloads)."""
    import torchvision

    base = getattr(torchvision.datasets, name)

    class _LocalCIFAR(base):
        # md5 None = "the file exists"; the archive torchvision downloads is still checked against its md5.
        train_list = [[f, None] for f, _ in base.train_list]
        test_list = [[f, None] for f, _ in base.test_list]
        meta = {**base.meta, "md5": None}

    return _LocalCIFAR


def _load_cifar(name: str, root: Path, download: bool):
    cls = _cifar_class(name)
    try:
        train = cls(str(root), train=True, download=download)
        test = cls(str(root), train=False, download=download)
    except RuntimeError as err:
        raise DatasetNotFoundError(
            f"{name} not found under {root / cls.base_folder}. Extract the python-version archive there or pass "
            "download=True (CLI: --download) to fetch it with torchvision.") from err

    def to_tensor(data: np.ndarray) -> Tensor:
        return torch.from_numpy(data).permute(0, 3, 1, 2) / 255.0

    return (to_tensor(train.data), torch.tensor(train.targets), to_tensor(test.data), torch.tensor(test.targets),
            list(train.classes))


@register_dataset("cifar10", num_classes=10, in_channels=3, default_model="resnet18", queries=("identity", "hflip"),
                  mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616))
def _load_cifar10(root: Path, download: bool):
    return _load_cifar("CIFAR10", root, download)


@register_dataset("cifar100", num_classes=100, in_channels=3, default_model="resnet18", queries=("identity", "hflip"),
                  mean=(0.5071, 0.4865, 0.4409), std=(0.2673, 0.2564, 0.2762))
def _load_cifar100(root: Path, download: bool):
    return _load_cifar("CIFAR100", root, download)


# ----------------------------------------------------------------------------------------------------- batching

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


def materialize(dataset: Dataset, *, batch_size: int = 1024) -> IndexedDataset:
    """Any dataset of ``(x, y)`` or ``(x, y, index)`` items as an in-memory :class:`IndexedDataset`.

    Items without an index get their position. An :class:`IndexedDataset` comes back as it is; otherwise the
    result's ``explicit_indices`` is its source's (False for any dataset that is not an :class:`IndexedDataset`).

    >>> from torch.utils.data import TensorDataset
    >>> ds = materialize(TensorDataset(torch.randn(4, 2), torch.tensor([1, 0, 1, 0])))
    >>> ds.targets.tolist(), ds.indices.tolist()
    ([1, 0, 1, 0], [0, 1, 2, 3])
    """
    if isinstance(dataset, IndexedDataset):
        return dataset
    root = subset_root(dataset)[0]
    explicit = isinstance(root, IndexedDataset) and root.explicit_indices
    tensors = as_tensors(dataset)
    if tensors is None:
        parts = list(zip(*batches(dataset, batch_size), strict=True))
        if not parts:
            raise ValueError("cannot materialize an empty dataset")
        tensors = tuple(torch.cat(p) for p in parts)
    inputs, targets, indices = tensors
    result = IndexedDataset(inputs, targets, indices=indices)
    result.explicit_indices = explicit  # positions of a dataset that had no training indices stay positions
    return result


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
