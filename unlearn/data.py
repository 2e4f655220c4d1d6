"""Datasets whose every example carries its stable training-set index.

Per-example bookkeeping (training dynamics, memorization scores, forget sets) is keyed by the position of an
example in the training split. Every dataset here yields ``(x, y, index)`` so that the key survives shuffling,
``Subset`` and ``DataLoader``. The in-memory :class:`IndexedDataset` and the batching of any dataset
(:func:`batches`, :func:`tensor_batches`, :class:`WithIndex`, :func:`as_tensors`, :func:`subset_root`) live in
:mod:`proxies.batching`, which the scoring layer uses on its own; they are re-exported here.

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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from proxies.batching import IndexedDataset, WithIndex, as_tensors, batches, subset_root, tensor_batches
from proxies.registries import Registry

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


_DATASETS: Registry[_DatasetSpec] = Registry("dataset")


def register_dataset(name: str, *, num_classes: int, in_channels: int, default_model: str,
                     mean: tuple[float, ...], std: tuple[float, ...], queries: tuple[str, ...] = ("identity",),
                     force: bool = False):
    """Register ``loader(root, download) -> (x_train uint8/float in [0,1], y_train, x_test, y_test, classes)``;
    duplicates are refused unless ``force``."""

    def decorator(loader: _Loader) -> _Loader:
        _DATASETS.register(name, _DatasetSpec(loader, num_classes, in_channels, default_model, mean, std, queries),
                           force=force)
        return loader

    return decorator


def datasets() -> list[str]:
    """Names accepted by :func:`load_dataset`.

    >>> "digits" in datasets()
    True
    """
    return _DATASETS.names()


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
    spec = _DATASETS.get(name)
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
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


def _register_synthetic() -> None:
    """``synthetic-cifar``: CIFAR-10-shaped images made on the fly (:mod:`unlearn.synthetic`), for GPU timing and
    smoke runs (``make check-gpu``) on a machine without the real data."""
    from .synthetic import register_synthetic_cifar

    register_synthetic_cifar("synthetic-cifar")


_register_synthetic()


# ----------------------------------------------------------------------------------------------------- in memory

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
