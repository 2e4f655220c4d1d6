"""Fine-tune on the retain set only: the forget set fades through catastrophic forgetting."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from proxies.tasks import task_of

from .registry import register_method
from .sgd import SGDConfig, run_sgd, shuffled


@dataclass
class FinetuneConfig(SGDConfig):
    epochs: int = 10
    lr: float = 0.01


@register_method("finetune", config=FinetuneConfig, epoch="retain")
def finetune(model, forget, retain, config: FinetuneConfig, *, seed, device):
    """Keep training on the retain set only."""
    generator = torch.Generator().manual_seed(seed)

    task = task_of(retain)

    def losses(epoch):
        for x, y in shuffled(retain, config.batch_size, generator, device):
            yield task.loss(task.forward(model, x), y)

    return run_sgd(model, config, losses, seed=seed, forget=forget)
