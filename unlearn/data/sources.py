"""Datasets whose every example carries its stable training-set index.

Per-example bookkeeping (training dynamics, memorization scores, forget sets) is keyed by the position of an
example in the training split. Every dataset here yields ``(x, y, index)`` so that the key survives shuffling,
``Subset`` and ``DataLoader``. The in-memory :class:`IndexedDataset` and the batching of any dataset
(:func:`batches`, :func:`tensor_batches`, :class:`WithIndex`, :func:`as_tensors`, :func:`subset_root`) live in
:mod:`proxies.batching`, which the scoring layer uses on its own; they are re-exported here.

Named datasets live in a registry: ``digits`` (scikit-learn's real 8x8 handwritten digits, shipped in the wheel, the
default), ``fashion-mnist`` (Debian's ``dataset-fashion-mnist`` package or a torchvision root), ``mnist``,
``cifar10`` and ``cifar100`` (torchvision's loaders; they download only when asked to). Two sources take an
argument after a colon (:func:`dataset_sources`): ``imagefolder:PATH`` reads a folder of images with one subfolder
per class (torchvision's ``ImageFolder``) and ``torchvision:CLASS`` any torchvision dataset class taking
``(root, train=, download=)``, such as ``torchvision:KMNIST``. They are held in memory; a dataset that does not fit
is streamed instead (any dataset that is not an :class:`IndexedDataset`; :class:`Streamed` chooses the loader's
workers), through the same functions.

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
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from proxies.batching import (
    IndexedDataset,
    Streamed,
    WithIndex,
    as_tensors,
    batches,
    examples,
    first_input,
    join,
    labels_of,
    subset_root,
    take,
    tensor_batches,
)
from proxies.registries import Registry

from .._checks import whole

__all__ = [
    "DatasetNotFoundError",
    "DatasetSpec",
    "IndexedDataset",
    "Splits",
    "Streamed",
    "as_tensors",
    "batches",
    "dataset_kind",
    "datasets",
    "examples",
    "first_input",
    "get_dataset",
    "join",
    "labels_of",
    "materialize",
    "subset_root",
    "take",
    "tensor_batches",
    "WithIndex",
    "check_dataset_name",
    "dataset_sources",
    "default_root",
    "load_dataset",
    "register_dataset",
]

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


def image_size(shape) -> int | tuple[int, int]:
    """The image size a model factory takes (``img_size``) of inputs shaped ``[..., H, W]``: ``H`` for a square
    image, else ``(H, W)``."""
    height, width = int(shape[-2]), int(shape[-1])
    return height if height == width else (height, width)


def mark_held_out(splits) -> None:
    """Tag the validation and test splits' datasets as held out (``held_out = "validation"`` / ``"test"``), so that
    :func:`unlearn.unlearn` can refuse a deletion request drawn from them: their positions are not training
    indices, and would name other examples."""
    for attribute, name in (("val", "validation"), ("test", "test")):
        root = subset_root(getattr(splits, attribute))[0]
        if root is not subset_root(splits.train)[0]:
            root.held_out = name


class DatasetNotFoundError(FileNotFoundError):
    """A named dataset's files are not on this machine; the message says how to get them."""


@dataclass(frozen=True)
class Splits:
    """Train / validation / test splits of a named dataset and what a model needs to know about them."""

    name: str
    train: IndexedDataset | Streamed
    val: IndexedDataset | Streamed
    test: IndexedDataset | Streamed
    num_classes: int
    in_channels: int
    default_model: str
    queries: tuple[str, ...] = ("identity",)
    """Augmentation queries membership attacks may use: a horizontal flip only for natural images."""
    train_rows: Tensor | None = None
    """For each training example, its row in the dataset's official training set (before the validation split and
    ``train_size``): how a deletion request names examples."""
    train_paths: list[str] | None = None
    """For each training example of an ``imagefolder:``, its file relative to the folder (``CLASS/IMAGE.png``):
    another way a deletion request names examples (a ``path`` column), and a column of ``scores.csv``."""

    def __post_init__(self) -> None:
        mark_held_out(self)

    @property
    def model_options(self) -> dict:
        """What :func:`unlearn.create_model` needs to know of the data: ``num_classes``, ``in_channels`` and
        ``img_size`` (an int for square images, else ``(height, width)``: a vision transformer's; a factory that
        does not take it is not given it)."""
        return {"num_classes": self.num_classes, "in_channels": self.in_channels,
                "img_size": image_size(first_input(self.train).shape)}

    def __repr__(self) -> str:
        return (f"Splits({self.name!r}, train={len(self.train)}, val={len(self.val)}, test={len(self.test)}, "
                f"num_classes={self.num_classes}, in_channels={self.in_channels})")


# ----------------------------------------------------------------------------------------------------- registry

_Loader = Callable[..., tuple[Tensor, Tensor, Tensor, Tensor, list[str] | None]]


@dataclass(frozen=True)
class DatasetSpec:
    """A named dataset as registered: its loader and what a model needs to know about it (:func:`get_dataset`)."""

    loader: _Loader
    num_classes: int
    in_channels: int
    default_model: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    queries: tuple[str, ...]


_DATASETS: Registry[DatasetSpec] = Registry("dataset")


def register_dataset(name: str, *, num_classes: int, in_channels: int, default_model: str,
                     mean: tuple[float, ...], std: tuple[float, ...], queries: tuple[str, ...] = ("identity",),
                     force: bool = False):
    """Register ``loader(root, download) -> (x_train uint8/float in [0,1], y_train, x_test, y_test, classes)``;
    duplicates are refused unless ``force``."""

    def decorator(loader: _Loader) -> _Loader:
        _DATASETS.register(name, DatasetSpec(loader, num_classes, in_channels, default_model, mean, std, queries),
                           force=force)
        return loader

    return decorator


def datasets() -> list[str]:
    """Names accepted by :func:`load_dataset`.

    >>> "digits" in datasets(), "fortunes" in datasets()
    (True, True)
    """
    return sorted([*_DATASETS.names(), *(name for kind in _KINDS.values() for name in kind.names())])


def get_dataset(name: str) -> DatasetSpec:
    """The dataset registered as ``name``: its loader, classes, channels, default model, normalisation and the
    augmentation queries attacks may use (:func:`load_dataset` reads and splits it).

    >>> get_dataset("digits").default_model
    'digits_cnn'

    Raises:
        ValueError: an unknown name, with the names there are.
    """
    return _DATASETS.get(name)


@dataclass(frozen=True)
class _SourceData:
    """What a loader reads: images (uint8 or float in [0, 1]; or a table that makes the rows a tensor of rows asks
    for, with a ``shape``), labels and class names of the training and test sets, and ``rows``: for each training
    image, the row that names it (None: its position)."""

    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    classes: list[str] | None
    rows: Tensor | None = None
    paths: list[str] | None = None
    """Each row's file, relative to the source's folder (``CLASS/IMAGE.png``), for sources of files."""


@dataclass(frozen=True)
class _Source:
    loader: Callable[..., _SourceData]
    argument: str
    help: str


_SOURCES: Registry[_Source] = Registry("dataset source")


def dataset_sources() -> dict[str, str]:
    """The ``SOURCE:ARGUMENT`` forms :func:`load_dataset` accepts beside :func:`datasets`, with what each reads.

    >>> sorted(dataset_sources())
    ['imagefolder', 'text', 'torchvision']
    """
    sources = {name: f"{name}:{_SOURCES.get(name).argument}: {_SOURCES.get(name).help}" for name in _SOURCES.names()}
    for kind in _KINDS.values():
        sources.update(kind.sources())
    return dict(sorted(sources.items()))


@dataclass(frozen=True)
class _Kind:
    """Datasets of another kind than images, loaded by a module of their own that registers them in
    :data:`_KINDS` (text: :mod:`unlearn.data.text`): its named datasets, its ``SOURCE:ARGUMENT`` forms with what
    each reads, and ``load(name, *, val_fraction, test_fraction, train_size, seed, stream, num_workers, **options)``
    (``test_fraction`` None: its default)."""

    names: Callable[[], list[str]]
    sources: Callable[[], dict[str, str]]
    load: Callable[..., object]

    def takes(self, name: str) -> bool:
        kind, colon, _ = name.partition(":")
        return kind in self.sources() if colon else name in self.names()


_KINDS: Registry[_Kind] = Registry("kind of dataset")


def dataset_kind(name: str) -> str:
    """The kind of examples a dataset name reads, without reading them: ``"images"``, or the name of a kind of
    :data:`_KINDS` (``"text"`` for ``fortunes`` and ``text:PATH``).

    >>> dataset_kind("digits"), dataset_kind("fortunes"), dataset_kind("text:/data/mail.jsonl")
    ('images', 'text', 'text')
    """
    return next((kind for kind in _KINDS.names() if _KINDS.get(kind).takes(name)), "images")


def check_dataset_name(name: str) -> str:
    """``name`` if :func:`load_dataset` accepts it (before reading any file), else a ValueError saying what does.

    >>> check_dataset_name("imagefolder:/data/pets")
    'imagefolder:/data/pets'
    """
    kind, colon, argument = name.partition(":")
    if colon and kind in dataset_sources() and argument:
        return name
    if not colon and name in datasets():
        return name
    forms = ", ".join(form.split(": ")[0] for form in dataset_sources().values())
    raise ValueError(f"unknown dataset {name!r}; expected one of {datasets()} or {forms}")


def _default_model(shape: tuple[int, ...]) -> str:
    """The model for images of ``shape`` (C, H, W): ``cnn28`` for 1x28x28, ``digits_cnn`` for 1x8x8, else
    ``resnet18`` (any size and channel count; it was made for 32x32)."""
    return {(1, 28, 28): "cnn28", (1, 8, 8): "digits_cnn"}.get(shape, "resnet18")


def default_root() -> Path:
    """Where torchvision-format datasets are looked for: ``$UNLEARN_DATA`` or ``~/.cache/memunlearn``."""
    return Path(os.environ.get("UNLEARN_DATA", Path.home() / ".cache" / "memunlearn"))


def load_dataset(name: str, *, root: str | os.PathLike | None = None, download: bool = False,
                 val_fraction: float = 0.1, train_size: int | None = None, seed: int = 0,
                 test_fraction: float | None = None, stream: bool = False, num_workers: int = 0,
                 **text_options) -> Splits | Any:
    """Load a dataset as normalised, indexed train / validation / test splits, in memory or streamed.

    A text dataset (``fortunes``, ``text:PATH``) is token sequences for a causal language model instead:
    :func:`unlearn.data.text.load_text` makes its :class:`~unlearn.data.text.TextSplits` (not :class:`Splits`) from
    the same split arguments (``root`` and ``download`` do not apply) and the ``text_options`` it takes
    (``vocab_size``, ``max_tokens``, ``canaries``, ``canary_repeats``, ``references``).

    The validation split is a seeded random ``val_fraction`` of the official training set (digits has no official
    test set: a stratified 20% is held out as test first). ``train_size`` keeps a seeded random subset of the
    remaining training examples. The same arguments always give the same splits.

    ``imagefolder:PATH`` has no official test set either: the recipe of :func:`_load_image_folder` holds out a
    stratified ``test_fraction`` that depends on the files alone, not on ``seed``. Its normalisation, classes,
    channels and default model come from the data.

    Args:
        name: one of :func:`datasets`, or ``SOURCE:ARGUMENT`` for a source of :func:`dataset_sources`.
        root: folder in torchvision's layout (default :func:`default_root`).
        download: let torchvision fetch missing files (MNIST, Fashion-MNIST, CIFAR).
        val_fraction: fraction of the training set held out for validation, in ``[0, 1)``.
        train_size: keep only this many training examples.
        seed: seed of the splits.
        test_fraction: for ``imagefolder:``, the fraction of each class held out as the test set, in ``(0, 1)``
            (None: 0.2); for text, the fraction of the texts (None: 0.1).
        stream: make each split a :class:`Streamed` dataset whose items are read and normalised when asked for,
            instead of an in-memory :class:`IndexedDataset`: the same splits, items and indices. An
            ``imagefolder:`` is then never decoded whole: its files are opened a batch at a time (its normalisation
            comes from one pass over the training split, summed in float64, so it can differ from the in-memory
            one in the last bits); the other datasets stream from the arrays their loaders read.
        num_workers: with ``stream``, the worker processes that read the items (see :class:`Streamed`).
        text_options: options of text datasets, passed to :func:`unlearn.data.text.load_text`.

    Raises:
        ValueError: unknown name or bad fractions/sizes.
        TypeError: ``text_options`` for a dataset of images.
        DatasetNotFoundError: the files are missing and ``download`` is False.
    """
    other = next((kind for kind in _KINDS.values() if kind.takes(name)), None)
    if other is not None:
        return other.load(name, val_fraction=val_fraction, test_fraction=test_fraction, train_size=train_size,
                          seed=seed, stream=stream, num_workers=num_workers, **text_options)
    if text_options:
        raise TypeError(f"{sorted(text_options)} are options of text datasets (load_text), not of {name!r}")
    test_fraction = 0.2 if test_fraction is None else test_fraction
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    whole("num_workers", num_workers)
    root = Path(root) if root is not None else default_root()
    data, spec = _read_dataset(name, root=root, download=download, test_fraction=test_fraction, lazy=stream)
    train_ids, val_ids = _split_ids(name, len(data.y_train), val_fraction=val_fraction, train_size=train_size,
                                    seed=seed)
    mean, std, about = _normalisation_and_about(data, spec, train_ids, stream=stream)

    def split(x, y: Tensor, ids: Tensor | None) -> IndexedDataset | Streamed:
        return _split(x, y, ids, mean=mean, std=std, classes=data.classes, stream=stream, num_workers=num_workers)

    rows = train_ids if data.rows is None else data.rows[train_ids]
    paths = None if data.paths is None else [data.paths[int(r)] for r in rows]
    return Splits(name, split(data.x_train, data.y_train, train_ids), split(data.x_train, data.y_train, val_ids),
                  split(data.x_test, data.y_test, None), *about, train_rows=rows, train_paths=paths)


def _read_dataset(name: str, *, root: Path, download: bool, test_fraction: float,
                  lazy: bool) -> tuple[_SourceData, DatasetSpec | None]:
    """What :func:`load_dataset`'s ``name`` reads: a source's data (``SOURCE:ARGUMENT``; no spec: its statistics
    come from the data), or a registered dataset's with its spec."""
    kind, colon, argument = name.partition(":")
    if colon:
        source = _SOURCES.get(kind)
        if not argument:
            raise ValueError(f"dataset {name!r} names no {kind} argument: expected {kind}:{source.argument}")
        return source.loader(argument, root=root, download=download, test_fraction=test_fraction, lazy=lazy), None
    spec = get_dataset(name)
    return _SourceData(*spec.loader(root=root, download=download)), spec


def _split_ids(name: str, n: int, *, val_fraction: float, train_size: int | None,
               seed: int) -> tuple[Tensor, Tensor]:
    """The sorted rows of the ``n`` official training examples that make the training and the validation splits:
    one seeded permutation, the validation split its first ``val_fraction``, the training split the first
    ``train_size`` of the rest."""
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(n, generator=generator)
    n_val = int(round(val_fraction * len(order)))
    val_ids, train_ids = order[:n_val].sort().values, order[n_val:]
    if train_size is not None:
        if not 0 < train_size <= len(train_ids):
            raise ValueError(f"train_size must be in [1, {len(train_ids)}] for {name!r}, got {train_size}")
        train_ids = train_ids[:train_size]
    return train_ids.sort().values, val_ids


def _normalisation_and_about(data: _SourceData, spec: DatasetSpec | None, train_ids: Tensor, *,
                             stream: bool) -> tuple[Tensor, Tensor, tuple[int, int, str, tuple[str, ...]]]:
    """The per-channel mean and std ``[1, C, 1, 1]`` that normalise the images, and what :class:`Splits` says
    about them (``num_classes, in_channels, default_model, queries``): a registered dataset's spec's, else
    statistics of the data (the training split's normalisation, the images' shape)."""
    if spec is None:
        x_train = data.x_train
        if stream:
            mean, std = _channel_statistics(x_train, train_ids)
        else:
            pixels = x_train[train_ids].float().transpose(0, 1).flatten(1)
            mean, std = pixels.mean(1), pixels.std(1).clamp_min(1e-6)
        num_classes, in_channels = len(data.classes), x_train.shape[1]
        about = (num_classes, in_channels, _default_model(tuple(x_train.shape[1:])),
                 ("identity",) if in_channels == 1 else ("identity", "hflip"))
    else:
        mean, std = torch.tensor(spec.mean), torch.tensor(spec.std)
        about = (spec.num_classes, spec.in_channels, spec.default_model, spec.queries)
    return mean.view(1, -1, 1, 1), std.view(1, -1, 1, 1), about


def _split(x, y: Tensor, ids: Tensor | None, *, mean: Tensor, std: Tensor, classes: list[str] | None,
           stream: bool, num_workers: int) -> IndexedDataset | Streamed:
    """The examples ``ids`` of ``x, y`` (None: all of them), normalised with ``mean`` and ``std``: read when asked
    for (``stream``) or copied into memory."""
    if stream:
        items = _NormalisedImages(x, y, torch.arange(len(y)) if ids is None else ids, mean, std, classes)
        return Streamed(items, num_workers=num_workers, targets=items.labels)
    if ids is not None:
        x, y = x[ids], y[ids]
    return IndexedDataset(((x.float() - mean) / std).contiguous(), y.long(), classes)


def _channel_statistics(images, ids: Tensor, chunk: int = 1024) -> tuple[Tensor, Tensor]:
    """Per-channel mean and standard deviation of ``images[ids]`` (any table indexed by a tensor of rows), read
    ``chunk`` rows at a time and summed in float64."""
    total = squares = None
    count = 0
    for part in ids.split(chunk):
        x = images[part].double()
        sums, sums2 = x.sum(dim=(0, 2, 3)), x.square().sum(dim=(0, 2, 3))
        total, squares = (sums, sums2) if total is None else (total + sums, squares + sums2)
        count += x.numel() // x.shape[1]
    mean = total / count
    variance = (squares - count * mean.square()) / max(count - 1, 1)
    return mean.float(), variance.clamp_min(0).sqrt().float().clamp_min(1e-6)


class _NormalisedImages(Dataset):
    """Items ``(image, label)`` of the rows ``ids`` of an image table (a uint8 / float tensor ``[N, C, H, W]``, or
    anything indexed by a tensor of rows the same way) and its labels ``[N]``, each image read and normalised when
    asked for."""

    def __init__(self, images, labels: Tensor, ids: Tensor, mean: Tensor, std: Tensor,
                 classes: list[str] | None) -> None:
        self.images, self.ids, self.mean, self.std, self.classes = images, ids, mean, std, classes
        self.labels = labels[ids].long()

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int):
        i = range(len(self.ids))[i]  # an IndexError past either end
        x = self.images[self.ids[i:i + 1]]
        return ((x.float() - self.mean) / self.std)[0], int(self.labels[i])


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


def _train_and_test(cls, root: Path, download: bool, missing: Callable[[RuntimeError], str]):
    """A torchvision dataset class's training and test sets under ``root``; files it cannot find (and may not
    download) are a :class:`DatasetNotFoundError` with the message ``missing(error)``."""
    try:
        return cls(str(root), train=True, download=download), cls(str(root), train=False, download=download)
    except RuntimeError as err:
        if download:
            raise
        raise DatasetNotFoundError(missing(err)) from err


def _load_mnist_like(cls_name: str, root: Path, download: bool, sources: tuple[Path, ...], how_to_get: str):
    import torchvision

    cls = getattr(torchvision.datasets, cls_name)
    raw = root / cls_name / "raw"
    _extract_idx_gz(raw, list(sources))
    train, test = _train_and_test(cls, root, download, lambda err: f"{cls_name} not found under {raw}. {how_to_get}")
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


# ----------------------------------------------------------------------------------------------------- sources

_TEST_SEED = 0
"""Seed of the test split of an ``imagefolder:`` dataset: fixed, so that ``--seed`` reshuffles only train and val."""


class _ImageFiles:
    """The images of an ``ImageFolder`` as a table indexed by a tensor of rows: only those files are decoded."""

    def __init__(self, files: list[str], gray: bool, size: tuple[int, int]) -> None:
        self.files, self.gray, self.size = files, gray, size

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return len(self.files), 1 if self.gray else 3, self.size[1], self.size[0]

    def __len__(self) -> int:
        return len(self.files)

    def take(self, rows: Tensor) -> _ImageFiles:
        return _ImageFiles([self.files[r] for r in rows.tolist()], self.gray, self.size)

    def __getitem__(self, rows: Tensor) -> Tensor:
        from PIL import Image

        images = np.empty((len(rows), self.size[1], self.size[0], self.shape[1]), dtype=np.uint8)
        for k, r in enumerate(torch.as_tensor(rows).reshape(-1).tolist()):
            with Image.open(self.files[r]) as image:
                images[k] = np.asarray(image.convert("L" if self.gray else "RGB")).reshape(images.shape[1:])
        return torch.from_numpy(images).permute(0, 3, 1, 2)


def _load_image_folder(path: str, *, root: Path, download: bool, test_fraction: float,
                       lazy: bool = False) -> _SourceData:
    """``imagefolder:PATH``: every image of torchvision's ``ImageFolder(PATH)`` (a subfolder per class, classes
    and files in sorted order), decoded into memory (unless ``lazy``).

    The recipe: an image's row is its position in that sorted order (``ImageFolder.samples``). From each class a
    random ``round(test_fraction * n)`` of its images, drawn with the fixed seed :data:`_TEST_SEED`, is the test set;
    the rest, in row order, is the training set that :func:`load_dataset` splits into train and val with its
    ``seed``. So the test set and each training image's row (``Splits.train_rows``, how forget lists name images)
    depend on the files alone, never on ``seed``, ``val_fraction`` or ``train_size``. Images stay one channel when
    every one is grayscale (PIL mode ``L``), else all become RGB; all must share one size. ``lazy``: nothing is
    decoded here, the images are an :class:`_ImageFiles` table (opened when read; each file's header is read now).
    """
    from PIL import Image
    from torchvision.datasets import ImageFolder

    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise DatasetNotFoundError(f"imagefolder:{path}: {folder} is not a folder; expected one subfolder of images "
                                   "per class (PATH/CLASS/IMAGE.png)")
    try:
        found = ImageFolder(str(folder))
    except FileNotFoundError as err:
        raise ValueError(f"imagefolder:{path}: {err}; expected one subfolder of images per class "
                         "(PATH/CLASS/IMAGE.png)") from None
    samples, classes = found.samples, found.classes
    if len(classes) < 2:
        raise ValueError(f"imagefolder:{path}: found {len(classes)} class folder ({classes}); a classifier needs at "
                         "least two (PATH/CLASS/IMAGE.png, one subfolder per class)")
    size = None
    gray = True
    for file, _ in samples:
        try:
            image = Image.open(file)
        except OSError as err:  # PIL's UnidentifiedImageError among them
            raise ValueError(f"imagefolder:{path}: cannot read {file} as an image ({err.__class__.__name__}); "
                             "repair or remove it") from None
        with image:
            if size is None:
                size = image.size
            elif image.size != size:
                raise ValueError(f"imagefolder:{path}: {file} is {image.size[0]}x{image.size[1]} but {samples[0][0]} "
                                 f"is {size[0]}x{size[1]}; every image must have one size: resize them first "
                                 "(e.g. with PIL's Image.resize)")
            gray = gray and image.mode == "L"
    table = _ImageFiles([file for file, _ in samples], gray, size)
    y = torch.tensor([label for _, label in samples], dtype=torch.long)

    generator = torch.Generator().manual_seed(_TEST_SEED)
    test = torch.zeros(len(y), dtype=torch.bool)
    for label in range(len(classes)):
        members = (y == label).nonzero().flatten()
        n_test = int(round(test_fraction * len(members)))
        test[members[torch.randperm(len(members), generator=generator)[:n_test]]] = True
    train_rows, test_rows = (~test).nonzero().flatten(), test.nonzero().flatten()
    if lazy:
        x_train, x_test = table.take(train_rows), table.take(test_rows)
    else:
        x = table[torch.arange(len(table))].contiguous()
        x_train, x_test = x[train_rows], x[test_rows]
    paths = [Path(file).relative_to(folder).as_posix() for file, _ in samples]
    return _SourceData(x_train, y[train_rows], x_test, y[test_rows], list(classes), rows=train_rows, paths=paths)


_SOURCES.register("imagefolder", _Source(_load_image_folder, "PATH",
                                         "a folder with a subfolder of same-size images per class"))


_MNIST_SOURCES = {"FashionMNIST": (DEBIAN_FASHION_MNIST,)}
"""Where the ``*-ubyte.gz`` files of an MNIST-like torchvision class may already be (Debian's package)."""


def _torchvision_classes() -> list[str]:
    """torchvision dataset classes with the ``(root, train=, download=)`` signature ``torchvision:`` needs."""
    import inspect

    import torchvision

    names = []
    for name in dir(torchvision.datasets):
        cls = getattr(torchvision.datasets, name)
        if inspect.isclass(cls) and issubclass(cls, torchvision.datasets.VisionDataset):
            parameters = inspect.signature(cls.__init__).parameters
            if {"root", "train", "download"} <= set(parameters):
                names.append(name)
    return sorted(names)


def _as_images(dataset) -> tuple[Tensor, Tensor]:
    """The images ``[N, C, H, W]`` (uint8) and labels of a torchvision dataset: its ``data`` array when it has one
    (``[N, H, W]`` as MNIST, ``[N, H, W, C]`` as CIFAR), else item by item."""
    data = getattr(dataset, "data", None)
    targets = getattr(dataset, "targets", None)
    if isinstance(data, np.ndarray | Tensor) and data.ndim in (3, 4) and targets is not None:
        x = torch.as_tensor(data)
        x = x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2)
        return x.contiguous(), torch.as_tensor(np.asarray(targets)).long()
    images, labels = [], []
    for image, label in dataset:
        array = np.asarray(image)
        images.append(torch.from_numpy(array[..., None] if array.ndim == 2 else array).permute(2, 0, 1))
        labels.append(int(label))
    return torch.stack(images), torch.tensor(labels)


def _load_torchvision(name: str, *, root: Path, download: bool, test_fraction: float,
                      lazy: bool = False) -> _SourceData:
    """``torchvision:CLASS``: ``torchvision.datasets.CLASS(root, train=True/False, download=)``, its own train and
    test sets (an MNIST-like class finds Debian's files where :data:`DEBIAN_FASHION_MNIST` has them). The classes
    this form takes hold their arrays in memory: ``lazy`` streams from those."""
    import torchvision

    supported = _torchvision_classes()
    if name not in supported:
        raise ValueError(f"torchvision:{name}: torchvision.datasets has no class {name!r} taking (root, train=, "
                         f"download=); expected one of {supported}")
    cls = getattr(torchvision.datasets, name)
    if issubclass(cls, torchvision.datasets.MNIST):
        _extract_idx_gz(root / name / "raw", list(_MNIST_SOURCES.get(name, ())))
    train, test = _train_and_test(cls, root, download, lambda err: f"torchvision:{name} not found under {root}: "
                                                                   f"{err} (CLI: --root, --download)")
    (x_train, y_train), (x_test, y_test) = _as_images(train), _as_images(test)
    classes = list(getattr(train, "classes", None) or [str(c) for c in range(int(y_train.max()) + 1)])
    return _SourceData(x_train, y_train, x_test, y_test, classes)


_SOURCES.register("torchvision", _Source(_load_torchvision, "CLASS",
                                         "a torchvision.datasets class taking (root, train=, download=), read "
                                         "from --root"))


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
    data = examples(dataset)  # in memory already: as it is, or a subset's rows copied out
    if isinstance(data, IndexedDataset):
        return data
    parts = list(zip(*batches(data, batch_size), strict=True))
    if not parts:
        raise ValueError("cannot materialize an empty dataset")
    inputs, targets, indices = (torch.cat(p) for p in parts)
    result = IndexedDataset(inputs, targets, indices=indices)
    result.explicit_indices = False  # positions of a dataset that had no training indices stay positions
    return result
