"""Classifiers by name: a registry filled by ``@register_model``.

>>> import torch
>>> model = create_model("digits_cnn", num_classes=10, in_channels=1)
>>> model(torch.zeros(2, 1, 8, 8)).shape
torch.Size([2, 10])
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from proxies.registries import Registry

__all__ = ["create_model", "get_model", "models", "register_model"]

_MODELS: Registry[Callable[..., nn.Module]] = Registry("model")


def register_model(name: str, *, force: bool = False):
    """Register a model factory ``f(*, num_classes, in_channels) -> nn.Module`` under ``name``."""
    return _MODELS.register(name, force=force)


def models() -> list[str]:
    """Registered model names.

    >>> models()
    ['cnn28', 'digits_cnn', 'resnet18']
    """
    return _MODELS.names()


def get_model(name: str) -> Callable[..., nn.Module]:
    """The factory registered as ``name``: ``f(*, num_classes, in_channels) -> nn.Module``.

    Raises:
        ValueError: an unknown name, with the names there are.
    """
    return _MODELS.get(name)


def create_model(name: str, *, num_classes: int, in_channels: int) -> nn.Module:
    """Build a fresh, randomly initialised model (seed it with ``torch.manual_seed`` first)."""
    factory = get_model(name)
    if num_classes < 1 or in_channels < 1:
        raise ValueError(f"num_classes and in_channels must be >= 1, got {num_classes}, {in_channels}")
    return factory(num_classes=num_classes, in_channels=in_channels)


@register_model("digits_cnn")
class DigitsCNN(nn.Sequential):
    """Two 3x3 convolutions and a max-pool for 8x8 inputs (scikit-learn digits)."""

    def __init__(self, *, num_classes: int, in_channels: int = 1) -> None:
        super().__init__(
            nn.Conv2d(in_channels, 32, 3, padding=1), nn.ReLU(),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(64 * 4 * 4, 128), nn.ReLU(), nn.Linear(128, num_classes),
        )


@register_model("cnn28")
class CNN28(nn.Sequential):
    """Two conv + max-pool blocks for 28x28 inputs (MNIST, Fashion-MNIST)."""

    def __init__(self, *, num_classes: int, in_channels: int = 1) -> None:
        super().__init__(
            nn.Conv2d(in_channels, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(64 * 7 * 7, 128), nn.ReLU(), nn.Linear(128, num_classes),
        )


@register_model("resnet18")
def resnet18(*, num_classes: int, in_channels: int = 3) -> nn.Module:
    """torchvision's ResNet-18 adapted to 32x32 inputs: a 3x3 stride-1 stem and no max-pool (the CIFAR variant)."""
    import torchvision

    model = torchvision.models.resnet18(num_classes=num_classes)
    model.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    return model

