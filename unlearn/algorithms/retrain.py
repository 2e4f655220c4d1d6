"""Retrain from scratch on the retain set: the gold standard every other method is measured against."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..registry import register_method
from .loop import SGDConfig, run_sgd, shuffled


@dataclass
class RetrainConfig(SGDConfig):
    """Set these as in the original training (the defaults are the library's CNN recipe)."""

    epochs: int = 20
    lr: float = 0.05
    batch_size: int = 128
    schedule: str = "cosine"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.target_accuracy is not None:
            raise ValueError("retrain cannot stop at a target_accuracy: it starts from scratch, where the forget "
                             "accuracy is already low")


def reinitialize(model: nn.Module, seed: int) -> nn.Module:
    """Reset every layer's parameters (``reset_parameters``) with a seeded generator; in place."""
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        for module in model.modules():
            if callable(getattr(module, "reset_parameters", None)):
                module.reset_parameters()
    return model


@register_method("retrain", config=RetrainConfig)
def retrain(model, forget, retain, config: RetrainConfig, *, seed, device):
    """Retrain a freshly initialised copy of the architecture on the retain set only."""
    reinitialize(model, seed)
    generator = torch.Generator().manual_seed(seed)

    def losses(epoch):
        for x, y in shuffled(retain, config.batch_size, generator, device):
            yield nn.functional.cross_entropy(model(x), y)

    return run_sgd(model, config, losses, seed=seed)
