"""NegGrad: gradient ascent on the forget set."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from proxies.tasks import task_of

from .registry import register_method
from .sgd import SGDConfig, run_sgd, shuffled


@dataclass
class NegGradConfig(SGDConfig):
    epochs: int = 5
    lr: float = 1e-4


@register_method("neggrad", config=NegGradConfig, epoch="forget")
def neggrad(model, forget, retain, config: NegGradConfig, *, seed, device):
    """Ascend the cross-entropy of the forget set."""
    generator = torch.Generator().manual_seed(seed)

    task = task_of(forget)

    def losses(epoch):
        for x, y in shuffled(forget, config.batch_size, generator, device):
            yield -task.loss(task.forward(model, x), y)

    return run_sgd(model, config, losses, seed=seed, forget=forget)
