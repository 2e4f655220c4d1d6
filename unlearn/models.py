"""Models by name: a registry filled by ``@register_model``. Image classifiers take ``num_classes`` and
``in_channels``; the causal language model ``tiny_gpt`` takes ``vocab_size``.

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
    """Register a model factory under ``name``: ``f(*, num_classes, in_channels) -> nn.Module`` for an image
    classifier, or a factory of its own keywords (``tiny_gpt``: ``vocab_size``)."""
    return _MODELS.register(name, force=force)


def models() -> list[str]:
    """Registered model names.

    >>> models()
    ['cnn28', 'digits_cnn', 'resnet18', 'tiny_gpt']
    """
    return _MODELS.names()


def get_model(name: str) -> Callable[..., nn.Module]:
    """The factory registered as ``name``.

    Raises:
        ValueError: an unknown name, with the names there are.
    """
    return _MODELS.get(name)


def create_model(name: str, **options) -> nn.Module:
    """Build a fresh, randomly initialised model (seed it with ``torch.manual_seed`` first): an image classifier
    with ``num_classes=`` and ``in_channels=``, a language model with ``vocab_size=``; each factory refuses a
    keyword it does not take (a TypeError naming it)."""
    factory = get_model(name)
    for key in ("num_classes", "in_channels", "vocab_size"):
        value = options.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"{key} must be an int >= 1, got {value!r}")
    return factory(**options)


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
