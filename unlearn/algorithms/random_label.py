"""Random labels: train on the retain set together with the forget set relabelled at random (wrong) classes."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from proxies.tasks import task_of

from ..data.sources import batches, join
from .registry import register_method
from .sgd import SGDConfig, num_classes, run_sgd


@dataclass
class RandomLabelConfig(SGDConfig):
    epochs: int = 10
    lr: float = 0.1


def relabelled_losses(model: nn.Module, forget: Dataset, retain: Dataset, batch_size: int, classes: int,
                      generator: torch.Generator, device: torch.device) -> Iterator[Tensor]:
    """One epoch of the task's loss (cross-entropy) over retain and forget shuffled together; forget examples get a
    fresh wrong label out of ``classes`` in every batch. Each batch is moved to ``device`` before its labels are
    combined, so the data may live on any device (the shuffling and the random labels are drawn on the CPU by
    ``generator``)."""
    both = join(retain, forget, positions=True)  # an item's index is its position: past the retain set is forget
    task = task_of(both)
    for x, y, position in batches(both, batch_size, shuffle=True, generator=generator, device=device,
                                  moved=("x", "y", "index")):  # in memory: moved once, gathered there
        forget_rows = (position >= len(retain)).view(-1, *[1] * (y.ndim - 1))  # a row of labels per sequence
        y = torch.where(forget_rows, task.wrong_targets(y, classes, generator), y)
        yield task.loss(task.forward(model, x), y)


@register_method("random_label", config=RandomLabelConfig)
def random_label(model, forget, retain, config: RandomLabelConfig, *, seed, device):
    """Train on retain plus the forget set under random wrong labels."""
    generator = torch.Generator().manual_seed(seed)
    classes = num_classes(model, forget, device)
    return run_sgd(model, config, lambda epoch: relabelled_losses(model, forget, retain, config.batch_size, classes,
                                                                  generator, device), seed=seed, forget=forget)
