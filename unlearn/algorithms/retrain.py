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
    """Reset every layer's parameters (``reset_parameters``, or ``_reset_parameters`` as attention layers have it)
    with a seeded generator, in place; the CPU's random state and the model's GPU's are left as they were.

    Raises:
        ValueError: a module holds parameters of its own but has no reset method: retraining would start from
            those trained values, so it is refused.
    """
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    stale = []
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), torch.no_grad():
        torch.manual_seed(seed)
        for name, module in model.named_modules():
            reset = getattr(module, "reset_parameters", None) or getattr(module, "_reset_parameters", None)
            if callable(reset):
                reset()
            else:
                stale += [f"{name}.{p}" if name else p for p, _ in module.named_parameters(recurse=False)]
    if stale:
        raise ValueError(f"retrain cannot re-initialise parameters {stale}: their modules have no "
                         "reset_parameters(); add one, or retrain a freshly built model yourself")
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
