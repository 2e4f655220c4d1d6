"""NegGrad+: descend on the retain set while ascending on the forget set."""

from __future__ import annotations

from dataclasses import dataclass
from itertools import cycle

import torch

from proxies.tasks import task_of

from .._checks import real
from .registry import register_method
from .sgd import SGDConfig, run_sgd, shuffled


@dataclass
class NegGradPlusConfig(SGDConfig):
    alpha: float = 0.99
    epochs: int = 5
    lr: float = 0.01

    def __post_init__(self) -> None:
        super().__post_init__()
        real("alpha", self.alpha, low=0.0, high=1.0)


@register_method("neggrad_plus", config=NegGradPlusConfig, epoch="retain")
def neggrad_plus(model, forget, retain, config: NegGradPlusConfig, *, seed, device):
    """``alpha * CE(retain) - (1 - alpha) * CE(forget)`` over retain batches, cycling through the forget set."""
    generator = torch.Generator().manual_seed(seed)

    task = task_of(forget)

    def losses(epoch):
        forget_batches = cycle(list(shuffled(forget, config.batch_size, generator, device)))
        retain_batches = shuffled(retain, config.batch_size, generator, device)
        for (xr, yr), (xf, yf) in zip(retain_batches, forget_batches, strict=False):  # cycle never ends
            retain_loss = task.loss(task.forward(model, xr), yr)
            yield config.alpha * retain_loss - (1 - config.alpha) * task.loss(task.forward(model, xf), yf)

    return run_sgd(model, config, losses, seed=seed, forget=forget)
