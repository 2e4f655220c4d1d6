"""l1-sparse (Jia et al. 2023): fine-tune on the retain set with an l1 penalty that decays linearly to zero."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from proxies.tasks import task_of

from .._checks import real
from .registry import register_method
from .sgd import SGDConfig, run_sgd, shuffled


@dataclass
class L1SparseConfig(SGDConfig):
    alpha: float = 5e-4
    epochs: int = 10
    lr: float = 0.01

    def __post_init__(self) -> None:
        super().__post_init__()
        real("alpha", self.alpha, low=0.0)


@register_method("l1_sparse", config=L1SparseConfig, epoch="retain")
def l1_sparse(model, forget, retain, config: L1SparseConfig, *, seed, device):
    """``CE(retain) + alpha_t * ||theta||_1`` with ``alpha_t`` going linearly from ``alpha`` to 0.

    ``alpha_t = alpha * (1 - t / T)`` at step ``t`` of the ``T`` steps of training (the paper's code lowers it once
    per epoch instead, ``alpha * (1 - epoch / epochs)``).
    """
    generator = torch.Generator().manual_seed(seed)
    steps_per_epoch = math.ceil(len(retain) / config.batch_size)
    total = max(1, config.epochs * steps_per_epoch)

    task = task_of(retain)

    def losses(epoch):
        for step, (x, y) in enumerate(shuffled(retain, config.batch_size, generator, device)):
            alpha = config.alpha * (1 - (epoch * steps_per_epoch + step) / total)
            l1 = sum(p.abs().sum() for p in model.parameters() if p.requires_grad)
            yield task.loss(task.forward(model, x), y) + alpha * l1

    return run_sgd(model, config, losses, seed=seed, forget=forget)
