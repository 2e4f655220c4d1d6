"""SCRUB (Kurmanji et al., NeurIPS 2023): a student that starts as the model moves away from its frozen teacher on
the forget set (max steps) and stays close to it, and to the labels, on the retain set (min steps)."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from proxies.tasks import task_of

from .._checks import real, whole
from .registry import register_method
from .sgd import SGDConfig, run_sgd, shuffled


@dataclass
class ScrubConfig(SGDConfig):
    msteps: int = 4  # epochs that start with a max step over the forget set
    temperature: float = 4.0
    kl_weight: float = 0.001  # alpha of the reference code: weight of KL(teacher || student) on retain
    ce_weight: float = 0.99  # gamma: weight of the retain cross-entropy
    epochs: int = 5
    lr: float = 5e-3

    def __post_init__(self) -> None:
        super().__post_init__()
        whole("msteps", self.msteps)
        real("temperature", self.temperature, low=0.0, low_open=True)
        real("kl_weight", self.kl_weight, low=0.0)
        real("ce_weight", self.ce_weight, low=0.0)


@register_method("scrub", config=ScrubConfig)
def scrub(model, forget, retain, config: ScrubConfig, *, seed, device):
    """Alternate max steps (diverge from the teacher on forget) and min steps (match it on retain)."""
    teacher = copy.deepcopy(model).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    generator = torch.Generator().manual_seed(seed)
    task = task_of(forget)

    def losses(epoch):
        if epoch < config.msteps:
            for x, _ in shuffled(forget, config.batch_size, generator, device):
                with torch.no_grad():
                    target = task.forward(teacher, x)
                yield -task.divergence(task.forward(model, x), target, config.temperature)
        for x, y in shuffled(retain, config.batch_size, generator, device):
            with torch.no_grad():
                target = task.forward(teacher, x)
            output = task.forward(model, x)
            yield config.ce_weight * task.loss(output, y) + config.kl_weight * task.divergence(
                output, target, config.temperature)

    return run_sgd(model, config, losses, seed=seed, forget=forget)
