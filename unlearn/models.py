"""Models by name: a registry filled by ``@register_model``, and any model of the ecosystem's two model zoos as
``"timm:NAME"`` or ``"torchvision:NAME"``. Image classifiers take ``num_classes`` and ``in_channels`` (and
``img_size``, which a vision transformer needs and a convolutional net ignores); the causal language model
``tiny_gpt`` takes ``vocab_size``. Nothing is downloaded: pretrained weights come from a local file
(``weights=``).

>>> import torch
>>> model = create_model("digits_cnn", num_classes=10, in_channels=1)
>>> model(torch.zeros(2, 1, 8, 8)).shape
torch.Size([2, 10])
>>> vit = create_model("timm:vit_tiny_patch16_224", num_classes=10, in_channels=1, img_size=28, patch_size=7, depth=2)
>>> vit(torch.zeros(2, 1, 28, 28)).shape
torch.Size([2, 10])
"""

from __future__ import annotations

import difflib
import functools
import inspect
import os
import warnings
from collections.abc import Callable

import torch
from torch import nn

from proxies.registries import Registry

__all__ = ["ZOOS", "create_model", "get_model", "is_model", "load_weights", "models", "register_model"]

_MODELS: Registry[Callable[..., nn.Module]] = Registry("model")


def register_model(name: str, *, force: bool = False):
    """Register a model factory under ``name``: ``f(*, num_classes, in_channels) -> nn.Module`` for an image
    classifier, or a factory of its own keywords (``tiny_gpt``: ``vocab_size``)."""
    return _MODELS.register(name, force=force)


def models() -> list[str]:
    """Registered model names.

    >>> models()
    ['cnn28', 'digits_cnn', 'resnet18', 'tiny_gpt', 'vit_mini']
    """
    return _MODELS.names()


ZOOS = ("timm", "torchvision")
"""The model zoos a name can point into: ``"timm:vit_tiny_patch16_224"``, ``"torchvision:resnet50"``."""


def get_model(name: str) -> Callable[..., nn.Module]:
    """The factory registered as ``name``, or for ``"timm:ARCH"`` / ``"torchvision:ARCH"`` one that builds that
    architecture of the zoo (its keywords: ``num_classes``, ``in_channels``, ``img_size``, ``weights`` and the
    architecture's own, e.g. a timm ViT's ``patch_size`` and ``depth``).

    Raises:
        ValueError: an unknown name, with the names there are (for a zoo, the closest of its architectures).
        ModuleNotFoundError: ``timm:`` without timm installed (``pip install memunlearn[vision]``).
    """
    if not isinstance(name, str):
        raise TypeError(f"a model name must be a str, got {type(name).__name__}")
    zoo, colon, arch = name.partition(":")
    if not colon:
        return _MODELS.get(name)
    if zoo not in ZOOS:
        raise ValueError(f"unknown model zoo {zoo!r} in {name!r}; expected one of {[f'{z}:NAME' for z in ZOOS]} "
                         f"or a registered model {models()}")
    known = _zoo_architectures(zoo)
    if arch not in known:
        close = difflib.get_close_matches(arch, known, n=5, cutoff=0.5)
        raise ValueError(f"{zoo} has no architecture {arch!r}" + (f"; close: {close}" if close else ""))
    return functools.partial(_timm_model if zoo == "timm" else _torchvision_model, arch)


def is_model(name) -> bool:
    """Whether ``name`` names a model :func:`create_model` builds (a registered one or a zoo's architecture)."""
    try:
        get_model(name)
    except (ValueError, TypeError, ModuleNotFoundError):
        return False
    return True


_SIZES = ("num_classes", "in_channels", "vocab_size")


def create_model(name: str, *, weights: str | os.PathLike | None = None, **options) -> nn.Module:
    """Build a fresh model (seed it with ``torch.manual_seed`` first): an image classifier with ``num_classes=``
    and ``in_channels=``, a language model with ``vocab_size=``; each factory refuses a keyword it does not take
    (a TypeError naming it), except ``img_size``, the data's image size (an int, or ``(height, width)``), which is
    passed only to a factory that takes it (a vision transformer needs it, a convolutional net takes any size).

    ``weights``: a local file of the model's ``state_dict`` (``torch.load(..., weights_only=True)``; nothing is
    downloaded) to start from instead of the random initialisation. A timm model loads a file of its very shapes
    as it is, and any other through timm, which adapts it as its own pretrained weights (a new classifier head for
    another ``num_classes``, the stem summed over channels for another ``in_channels``, position embeddings
    resampled for another ``img_size``); any other model loads it through :func:`load_weights`.
    """
    factory = get_model(name)
    for key in _SIZES:
        value = options.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"{key} must be an int >= 1, got {value!r}")
    takes = _keywords(factory)
    if "img_size" in options and "img_size" not in takes and not takes.get("**"):
        options.pop("img_size")
    if weights is not None:
        weights = os.fspath(weights)
        if not os.path.isfile(weights):
            raise FileNotFoundError(f"weights file {weights!r} does not exist (weights come only from a local file)")
        if "weights" in takes:
            return factory(weights=weights, **options)
        return load_weights(factory(**options), weights)
    return factory(**options)


def _keywords(factory: Callable) -> dict:
    """The keyword parameters ``factory`` takes by name, with ``"**"`` set when it takes any."""
    parameters = inspect.signature(factory).parameters.values()
    named = {p.name: True for p in parameters if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)}
    return {**named, "**": any(p.kind is p.VAR_KEYWORD for p in parameters)}


def load_weights(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Load a ``state_dict`` file (``torch.load(..., weights_only=True)``; a dict holding it under
    ``"state_dict"`` or ``"model"`` too) into ``model``, in place, and return it. A tensor whose shape differs
    from the model's (a classifier head for another number of classes, a stem for other channels) keeps the
    model's fresh initialisation, with a warning naming it.

    Raises:
        ValueError: the file holds no tensors of the model's, or the model has parameters the file lacks (or the
            file names parameters the model lacks): it was saved from another architecture.
    """
    state, own = _state_dict(path), model.state_dict()
    reshaped = sorted(k for k, v in state.items() if k in own and own[k].shape != v.shape)
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise ValueError(f"{os.fspath(path)} was saved from another architecture: the model's parameters it lacks "
                         f"{missing[:5]}, its entries the model lacks {unexpected[:5]}")
    if reshaped:
        warnings.warn(f"{os.fspath(path)}: {reshaped} have other shapes than the model's "
                      f"({[tuple(state[k].shape) for k in reshaped]} vs {[tuple(own[k].shape) for k in reshaped]}) "
                      "and keep their fresh initialisation", stacklevel=2)
    model.load_state_dict({k: v for k, v in state.items() if k not in reshaped}, strict=False)
    return model


def _state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The ``state_dict`` in a file (``weights_only``), also under a ``"state_dict"`` or ``"model"`` key."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{os.fspath(path)} holds no state_dict (a dict of parameter names to tensors)")
    return state


@functools.cache
def _zoo_architectures(zoo: str) -> tuple[str, ...]:
    if zoo == "torchvision":
        import torchvision

        return tuple(torchvision.models.list_models(module=torchvision.models))
    try:
        import timm
    except ImportError as error:
        raise ModuleNotFoundError("timm: models need timm: pip install memunlearn[vision]") from error
    return tuple(timm.list_models())


def _timm_model(arch: str, *, num_classes: int, in_channels: int = 3, img_size: int | tuple[int, int] | None = None,
                weights: str | None = None, **options) -> nn.Module:
    """timm's ``arch`` with a fresh head of ``num_classes`` and a stem for ``in_channels``; ``img_size`` goes to
    the architectures that take it (vision transformers). ``weights``, a local file: a ``state_dict`` of this very
    model is loaded as it is; any other timm loads as the architecture's pretrained weights, adapting them (see
    :func:`create_model`)."""
    import timm

    options = {"num_classes": num_classes, "in_chans": in_channels, **options}
    model = None
    if img_size is not None:
        try:
            model = timm.create_model(arch, pretrained=False, img_size=img_size, **options)
            options["img_size"] = img_size
        except TypeError as error:  # a convolutional net: its class takes no image size, and needs none
            if "img_size" not in str(error):
                raise
    if model is None:
        model = timm.create_model(arch, pretrained=False, **options)
    if weights is None:
        return model
    state, own = _state_dict(weights), model.state_dict()
    if state.keys() == own.keys() and all(state[k].shape == own[k].shape for k in own):
        model.load_state_dict(state)
        return model
    return timm.create_model(arch, pretrained=True, pretrained_cfg_overlay={"file": os.fspath(weights)}, **options)


def _torchvision_model(arch: str, *, num_classes: int, in_channels: int = 3,
                       img_size: int | tuple[int, int] | None = None, weights: str | None = None,
                       **options) -> nn.Module:
    """torchvision's ``arch`` with ``num_classes`` logits; for ``in_channels`` other than 3 its first convolution
    is rebuilt for them; ``img_size`` goes to the architectures that take an ``image_size`` (its vision
    transformers); ``weights`` is a local file loaded by :func:`load_weights`."""
    import torchvision

    if img_size is not None:
        try:
            model = torchvision.models.get_model(arch, weights=None, num_classes=num_classes, image_size=img_size,
                                                 **options)
        except TypeError as error:
            if "image_size" not in str(error):
                raise
            img_size = None
    if img_size is None:
        model = torchvision.models.get_model(arch, weights=None, num_classes=num_classes, **options)
    if in_channels != 3:
        _rebuild_stem(model, arch, in_channels)
    return model if weights is None else load_weights(model, weights)


def _rebuild_stem(model: nn.Module, arch: str, in_channels: int) -> None:
    """Replace the first convolution by one of the same shape that takes ``in_channels`` channels."""
    first = next((name for name, m in model.named_modules() if isinstance(m, nn.Conv2d)), None)
    if first is not None:
        parent_name, _, child_name = first.rpartition(".")
        child = model.get_submodule(first)
        setattr(model.get_submodule(parent_name), child_name, nn.Conv2d(
            in_channels, child.out_channels, child.kernel_size, stride=child.stride, padding=child.padding,
            dilation=child.dilation, bias=child.bias is not None, padding_mode=child.padding_mode))
        return
    raise ValueError(f"torchvision:{arch} has no convolution to take in_channels={in_channels}")


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


@register_model("vit_mini")
def vit_mini(*, num_classes: int, in_channels: int = 3, img_size: int | tuple[int, int] = 28, depth: int = 4,
             grid: int = 4) -> nn.Module:
    """timm's ViT-Tiny (width 192, 3 heads, a class token, pre-norm blocks with LayerNorm) sized for small images:
    ``depth`` blocks instead of 12, and a ``grid x grid`` of patches (7x7 pixels on 28x28: 16 tokens). 1.8M
    parameters; on 2 CPU cores it trains on 4,000 Fashion-MNIST images in ~6 s an epoch and reaches ~80% test
    accuracy in 10 epochs of the ``fashion-mnist-vit`` recipe (benchmarks/README.md). Needs the ``vision`` extra.
    """
    height, width = (img_size, img_size) if isinstance(img_size, int) else img_size
    if height % grid or width % grid:
        raise ValueError(f"vit_mini cuts the image into a {grid}x{grid} grid of patches: img_size {img_size} is "
                         f"not divisible by {grid}")
    return _timm_model("vit_tiny_patch16_224", num_classes=num_classes, in_channels=in_channels,
                       img_size=(height, width), patch_size=(height // grid, width // grid), depth=depth)


@register_model("tiny_gpt")
def tiny_gpt(*, vocab_size: int, n_positions: int = 128, n_embd: int = 128, n_layer: int = 2, n_head: int = 4,
             bos_token_id: int = 0, eos_token_id: int = 0, pad_token_id: int | None = None) -> nn.Module:
    """A small ``transformers`` GPT-2 causal LM built from a config (nothing is downloaded): 2 layers, width 128,
    4 heads (TinyMem's shape, Sakarvadia et al. 2025): 0.41M parameters plus 128 per token of the vocabulary
    (0.68M for 2,048 tokens; the input and output embeddings are tied). On 2 CPU cores it trains ~18k tokens/s and
    memorizes repeated canaries of a few thousand fortunes in minutes. Needs the ``text`` extra.

    Args:
        vocab_size: the tokenizer's vocabulary size (``splits.vocab_size``).
        n_positions: the longest sequence it takes.
        n_embd, n_layer, n_head: width, depth and heads.
        bos_token_id, eos_token_id, pad_token_id: the special tokens' ids, inside the vocabulary.

    >>> import torch
    >>> model = create_model("tiny_gpt", vocab_size=64, n_positions=16, n_embd=32, n_layer=1, n_head=2)
    >>> model(torch.zeros(2, 5, dtype=torch.long)).logits.shape
    torch.Size([2, 5, 64])
    """
    try:
        from transformers import GPT2Config, GPT2LMHeadModel
    except ImportError as error:  # pragma: no cover - exercised only without the extra
        raise ModuleNotFoundError("tiny_gpt needs transformers: pip install memunlearn[text]") from error
    for name, token in (("bos_token_id", bos_token_id), ("eos_token_id", eos_token_id),
                        ("pad_token_id", pad_token_id)):
        if token is not None and not 0 <= token < vocab_size:
            raise ValueError(f"{name}={token} lies outside the vocabulary [0, {vocab_size})")
    config = GPT2Config(vocab_size=vocab_size, n_positions=n_positions, n_embd=n_embd, n_layer=n_layer,
                        n_head=n_head, bos_token_id=bos_token_id, eos_token_id=eos_token_id,
                        pad_token_id=pad_token_id)
    return GPT2LMHeadModel(config)
