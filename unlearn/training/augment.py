"""Training-time augmentation of image batches ``[B, C, H, W]``: batched, seeded, on the batch's device.

An augmentation is a function ``f(x, generator) -> x`` over a whole batch. Its random numbers (one crop offset pair
and one coin per image) are drawn from ``generator``, a CPU :class:`torch.Generator`, and copied to the batch's device
once per batch, so a seed gives the same presentations on every device and CPU training stays bit-reproducible. The
images themselves never leave the device and are never looped over in Python: a crop is one gather from the
zero-padded batch, a flip one ``torch.where``. The input batch is left unchanged.

:func:`unlearn.train` applies one by name (``augment="crop_flip"``) to every training batch, before the forward pass
(the recorder records the augmented presentations). Evaluation, prediction, the proxies computed from a model, the
attacks and the unlearning methods present un-augmented inputs.

Named augmentations (:func:`augmentations`): ``none`` (the inputs as they are), ``flip`` (horizontal flip with
probability 1/2), ``crop`` (random HxW crop of the batch zero-padded by 4 pixels a side), ``crop_flip`` (that crop,
then the flip: the CIFAR anchors' ``RandomCrop(32, padding=4)`` + ``RandomHorizontalFlip()``) and ``crop2_flip``
(padding 2, for 28x28 images). The padding is zeros of the *normalised* inputs, i.e. the dataset's mean colour;
torchvision pads the raw image with black before normalising.

>>> x = torch.arange(2 * 1 * 3 * 3, dtype=torch.float32).view(2, 1, 3, 3)
>>> y = get_augmentation("crop_flip")(x, torch.Generator().manual_seed(0))
>>> y.shape == x.shape, torch.equal(get_augmentation("none")(x, None), x)
(True, True)
>>> get_augmentation("rotate")
Traceback (most recent call last):
...
ValueError: unknown augmentation 'rotate'; expected one of ['crop', 'crop2_flip', 'crop_flip', 'flip', 'none']
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from proxies.registries import Registry

__all__ = ["Augmentation", "augmentation_generator", "augmentations", "check_images", "crop", "flip",
           "get_augmentation", "horizontal_flip", "random_crop", "random_crop_flip", "register_augmentation"]

Augmentation = Callable[[Tensor, torch.Generator], Tensor]
"""``f(x, generator) -> x``: a batch ``[B, C, H, W]`` and a CPU generator to a batch of the same shape."""

_AUGMENTATIONS: Registry[Augmentation] = Registry("augmentation")


def register_augmentation(name: str, fn: Augmentation | None = None, *, force: bool = False):
    """Register an augmentation under ``name`` (a call, or a decorator without ``fn``); a taken name is refused
    unless ``force``."""
    if fn is None:
        return _AUGMENTATIONS.register(name, force=force)
    return _AUGMENTATIONS.register(name, fn, force=force)


def augmentations() -> list[str]:
    """The names :func:`get_augmentation` (and ``train(augment=...)``) accept, sorted."""
    return _AUGMENTATIONS.names()


def get_augmentation(name: str) -> Augmentation:
    """The augmentation registered as ``name``.

    Raises:
        ValueError: an unknown name, with the names there are.
    """
    if not isinstance(name, str):
        raise TypeError(f"augment must be an augmentation's name, one of {augmentations()}, got "
                        f"{type(name).__name__} {name!r}")
    return _AUGMENTATIONS.get(name)


def augmentation_generator(seed: int) -> torch.Generator:
    """The CPU generator :func:`unlearn.train` draws a run's augmentations from: seeded from ``seed`` through
    NumPy's ``SeedSequence``, a stream apart from the shuffling generator's (seeded with ``seed`` itself), so that
    augmenting leaves the order of the batches as it is."""
    state = np.random.SeedSequence([int(seed) % 2**64, 0xA06]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state))


def check_images(x: Tensor, name: str = "augmentation") -> None:
    """Refuse what is not a batch of images ``[B, C, H, W]``."""
    if x.ndim != 4:
        raise ValueError(f"{name} needs image batches [B, C, H, W], got a batch of shape {list(x.shape)}")


# ------------------------------------------------------------------------------------ the functional core

def crop(x: Tensor, offsets: Tensor, pad: int) -> Tensor:
    """Each image of ``x`` zero-padded by ``pad`` pixels a side and cropped back to ``H x W`` at its ``offsets``
    (``[B, 2]`` integers in ``[0, 2 pad]``: the crop's top row and left column in the padded image), as one gather.
    """
    b, c, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    offsets = offsets.to(x.device)
    rows = (offsets[:, 0, None] + torch.arange(h, device=x.device))[:, None, :, None]  # [B, 1, H, 1]
    cols = (offsets[:, 1, None] + torch.arange(w, device=x.device))[:, None, None, :]  # [B, 1, 1, W]
    images = torch.arange(b, device=x.device)[:, None, None, None]
    channels = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[images, channels, rows, cols]


def flip(x: Tensor, flips: Tensor) -> Tensor:
    """``x`` with the images where ``flips`` (``[B]`` bools) is set mirrored left to right."""
    return torch.where(flips.to(x.device)[:, None, None, None], x.flip(3), x)


def _offsets(batch: int, pad: int, generator: torch.Generator) -> Tensor:
    return torch.randint(0, 2 * pad + 1, (batch, 2), generator=generator)


def _coins(batch: int, p: float, generator: torch.Generator) -> Tensor:
    return torch.rand(batch, generator=generator) < p


# ------------------------------------------------------------------------------------ the augmentations

def random_crop(x: Tensor, generator: torch.Generator, *, pad: int = 4) -> Tensor:
    """A random ``H x W`` crop of each image zero-padded by ``pad`` a side; the offsets are drawn as
    ``torch.randint(0, 2 pad + 1, (B, 2), generator=generator)`` (row, column)."""
    check_images(x, "random_crop")
    return crop(x, _offsets(len(x), pad, generator), pad)


def horizontal_flip(x: Tensor, generator: torch.Generator, *, p: float = 0.5) -> Tensor:
    """Each image mirrored left to right with probability ``p``: where ``torch.rand(B, generator=generator) < p``."""
    check_images(x, "horizontal_flip")
    return flip(x, _coins(len(x), p, generator))


def random_crop_flip(x: Tensor, generator: torch.Generator, *, pad: int = 4, p: float = 0.5) -> Tensor:
    """:func:`random_crop`, then :func:`horizontal_flip`, drawn in that order (the offsets, then the coins) and
    copied to the device together."""
    check_images(x, "random_crop_flip")
    draws = torch.cat([_offsets(len(x), pad, generator), _coins(len(x), p, generator)[:, None].long()], 1)
    draws = draws.to(x.device)
    return flip(crop(x, draws[:, :2], pad), draws[:, 2].bool())


def _identity(x: Tensor, generator: torch.Generator | None) -> Tensor:
    return x


register_augmentation("none", _identity)
register_augmentation("flip", horizontal_flip)
register_augmentation("crop", random_crop)
register_augmentation("crop_flip", random_crop_flip)
register_augmentation("crop2_flip", functools.partial(random_crop_flip, pad=2))
