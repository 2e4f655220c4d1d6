"""CIFAR-shaped synthetic images, made on the fly: a training set of any size for timing and smoke tests on a GPU.

Item ``i`` of :class:`SyntheticCIFAR` is a ``3 x 32 x 32`` float image in ``[0, 1]`` and its label, computed from
``(seed, i)`` alone: nothing is stored per item, so a dataset of 10^7 examples costs no memory, and item ``i`` is the
same in every process. The label is a hash of ``(seed, i)`` modulo the classes; the image is its class's pattern
(an oriented grating over a tint of the class's colour) at a random phase and contrast, plus uniform noise: a
small CNN learns it within a few epochs.

>>> data = SyntheticCIFAR(10**7, seed=1)
>>> x, y = data[123_456_789 % len(data)]
>>> tuple(x.shape), x.dtype, 0 <= y < 10
((3, 32, 32), torch.float32, True)
>>> torch.equal(SyntheticCIFAR(5, seed=1)[3][0], SyntheticCIFAR(50, seed=1)[3][0])
True

``load_dataset("synthetic-cifar")`` gives in-memory splits of it like CIFAR-10's (a 50,000-example official
training set, of which only the validation split and the ``train_size`` examples are made, and a 10,000-example
test set drawn with another seed), with ResNet-18 as the default model. :func:`register_synthetic_cifar` registers
one of other sizes (e.g. a small test set for a quick CPU run).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.utils.data import Dataset

from .sources import register_dataset

__all__ = ["SyntheticCIFAR", "register_synthetic_cifar", "synthetic_images"]

SHAPE = (3, 32, 32)
_MASK = (1 << 31) - 1
_CHUNK = 2048


def _mix(x: Tensor) -> Tensor:
    """A 31-bit integer hash of each entry of an int64 tensor (products stay below 2^63: no overflow)."""
    x = x & _MASK
    for _ in range(2):
        x = (((x >> 16) ^ x) * 0x45D9F3B) & _MASK
    return (x >> 16) ^ x


def _keys(seed: int, index: Tensor) -> Tensor:
    """One 31-bit key per example, from the seed and its index (any index below 2^62)."""
    index = torch.as_tensor(index, dtype=torch.int64)
    return _mix(_mix(index) ^ _mix(index >> 31) * 31 ^ _mix(torch.full_like(index, seed)))


def _labels(seed: int, index: Tensor, num_classes: int) -> Tensor:
    return _mix(_keys(seed, index) ^ 0x5BD1E995) % num_classes


def _patterns(num_classes: int) -> tuple[Tensor, Tensor, Tensor]:
    """Per class: the grating's direction vector ``[C, 2]`` (cycles per image), its colour ``[C, 3]`` and offset."""
    k = torch.arange(num_classes, dtype=torch.float64)
    angle = math.pi * k / num_classes
    frequency = 1.5 + (k % 3)  # 1.5, 2.5 or 3.5 cycles across the image
    direction = torch.stack([torch.cos(angle), torch.sin(angle)], 1) * frequency[:, None]
    hue = 2 * math.pi * k / num_classes
    colour = torch.stack([torch.cos(hue + s) for s in (0.0, 2.1, 4.2)], 1) * 0.5 + 0.5
    return direction.float(), colour.float(), (0.3 + 0.4 * (k % 2)).float()


def synthetic_images(index: Tensor, *, seed: int = 0, num_classes: int = 10,
                     noise: float = 0.35) -> tuple[Tensor, Tensor]:
    """Images ``[B, 3, 32, 32]`` (float32 in ``[0, 1]``) and labels ``[B]`` of examples ``index`` of a
    :class:`SyntheticCIFAR`, made together (one vectorised pass, as fast as reading them from memory).

    >>> x, y = synthetic_images(torch.tensor([0, 7]), seed=3)
    >>> tuple(x.shape), y.tolist() == [SyntheticCIFAR(8, seed=3)[i][1] for i in (0, 7)]
    ((2, 3, 32, 32), True)
    """
    index = torch.as_tensor(index, dtype=torch.int64).reshape(-1)
    if len(index) > _CHUNK:  # the temporaries need a few times the images' memory: big requests in chunks
        parts = [synthetic_images(index[i:i + _CHUNK], seed=seed, num_classes=num_classes, noise=noise)
                 for i in range(0, len(index), _CHUNK)]
        return torch.cat([x for x, _ in parts]), torch.cat([y for _, y in parts])
    labels = _labels(seed, index, num_classes)
    keys = _keys(seed, index)
    direction, colour, offset = _patterns(num_classes)
    grid = torch.linspace(0, 1, SHAPE[1])
    # per example: a random phase and contrast of its class's grating
    phase = (_mix(keys ^ 0x27D4EB2F).float() / _MASK * 2 * math.pi)[:, None, None]
    contrast = (0.6 + 0.4 * _mix(keys ^ 0x165667B1).float() / _MASK)[:, None, None, None]
    d = direction[labels]
    rows, columns = grid[None, :, None], grid[None, None, :]
    wave = torch.sin(2 * math.pi * (d[:, 0, None, None] * rows + d[:, 1, None, None] * columns) + phase)  # [B, 32, 32]
    tint = colour[labels][:, :, None, None]  # the class's colour, over the whole image
    pattern = 0.5 + 0.4 * (tint - 0.5) + contrast * (0.15 + 0.1 * offset[labels][:, None, None, None]) * wave[:, None]
    # per pixel: uniform noise from a generator seeded by the example's key alone
    uniform = torch.empty(len(index), *SHAPE)
    generator = torch.Generator()
    for row, key in zip(uniform, keys.tolist(), strict=True):
        torch.rand(SHAPE, generator=generator.manual_seed(key), out=row)
    images = (pattern * (1 - noise) + uniform * noise).clamp_(0, 1)
    return images, labels


class SyntheticCIFAR(Dataset):
    """``length`` CIFAR-shaped examples ``(image [3, 32, 32] float32 in [0, 1], label int)`` made from
    ``(seed, index)`` when asked for; nothing is stored per item.

    Args:
        length: the number of examples, any size (10^7 costs nothing until items are read).
        seed: which dataset: another seed gives other labels, phases and noise.
        num_classes: labels in ``[0, num_classes)``.
        noise: the weight of the per-pixel uniform noise against the class pattern, in ``[0, 1)``.
    """

    def __init__(self, length: int, *, seed: int = 0, num_classes: int = 10, noise: float = 0.35) -> None:
        for name, value, least in (("length", length, 0), ("num_classes", num_classes, 2), ("seed", seed, 0)):
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ValueError(f"{name} must be a whole number >= {least}, got {value!r}")
        if not 0 <= noise < 1:
            raise ValueError(f"noise must lie in [0, 1), got {noise!r}")
        self.length, self.seed, self.num_classes, self.noise = length, seed, num_classes, noise

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        if isinstance(i, bool) or not isinstance(i, int):
            i = int(i)
        if i < 0:
            i += self.length
        if not 0 <= i < self.length:
            raise IndexError(f"index {i} out of range for {self.length} examples")
        x, y = self.images(torch.tensor([i]))
        return x[0], int(y[0])

    def images(self, index: Tensor) -> tuple[Tensor, Tensor]:
        """Images ``[B, 3, 32, 32]`` and labels ``[B]`` of the examples at ``index``, in one vectorised pass."""
        return synthetic_images(index, seed=self.seed, num_classes=self.num_classes, noise=self.noise)

    def labels(self, index: Tensor | None = None) -> Tensor:
        """Labels ``[B]`` of the examples at ``index`` (default: all of them, ``8 * length`` bytes)."""
        index = torch.arange(self.length) if index is None else torch.as_tensor(index, dtype=torch.int64)
        return _labels(self.seed, index, self.num_classes)

    def __repr__(self) -> str:
        return f"SyntheticCIFAR({self.length}, seed={self.seed}, num_classes={self.num_classes})"


class LazyImages:
    """The images of a :class:`SyntheticCIFAR` as :func:`unlearn.data.load_dataset` reads a loader's: indexed by
    a tensor of rows (only those are made) or converted whole with ``.float()``."""

    def __init__(self, data: SyntheticCIFAR) -> None:
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: Tensor) -> Tensor:
        return self.data.images(index)[0]

    def float(self) -> Tensor:
        return self[torch.arange(len(self.data))]


def register_synthetic_cifar(name: str = "synthetic-cifar", *, train: int = 50_000, test: int = 10_000,
                             num_classes: int = 10, seed: int = 0, default_model: str = "resnet18",
                             force: bool = False) -> None:
    """Register a :class:`SyntheticCIFAR` of ``train`` training and ``test`` test examples as the dataset ``name``
    of :func:`unlearn.data.load_dataset` (the test set is drawn with seed ``seed + 1``). Only the examples a split
    keeps are ever made: the validation split and ``train_size`` of the training set, and the test set.

    >>> register_synthetic_cifar("synthetic-cifar-doc", train=100, test=20, force=True)
    >>> from unlearn.data import load_dataset
    >>> load_dataset("synthetic-cifar-doc", train_size=30)
    Splits('synthetic-cifar-doc', train=30, val=10, test=20, num_classes=10, in_channels=3)
    """
    def loader(root, download):  # nothing to read or download
        data, held_out = (SyntheticCIFAR(n, seed=s, num_classes=num_classes) for n, s in ((train, seed),
                                                                                          (test, seed + 1)))
        return (LazyImages(data), data.labels(), LazyImages(held_out), held_out.labels(),
                [f"pattern {k}" for k in range(num_classes)])

    register_dataset(name, num_classes=num_classes, in_channels=3, default_model=default_model,
                     queries=("identity", "hflip"), mean=(0.5, 0.5, 0.5), std=(0.2, 0.2, 0.2), force=force)(loader)
