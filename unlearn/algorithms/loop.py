"""The SGD loop the gradient-based unlearning methods share: each method says which losses to step on."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..data import IndexedDataset, tensor_batches
from ..training import lr_factor


@dataclass
class SGDConfig:
    """Optimizer settings every gradient-based method has (anchor defaults: batch 256, momentum 0.9, wd 5e-4)."""

    epochs: int = 10
    lr: float = 0.01
    batch_size: int = 256
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "constant"

    def __post_init__(self) -> None:
        if self.epochs < 0 or self.lr < 0 or self.batch_size < 1:
            raise ValueError(f"expected epochs >= 0, lr >= 0, batch_size >= 1; got {self.epochs}, {self.lr}, "
                             f"{self.batch_size}")
        lr_factor(self.schedule, 0, 1)  # rejects an unknown schedule now, not mid-run


def run_sgd(model: nn.Module, config: SGDConfig, losses: Callable[[int], Iterable[Tensor]], *, seed: int,
            grad_hook: Callable[[nn.Module], None] | None = None) -> nn.Module:
    """Step SGD on every loss ``losses(epoch)`` yields, for ``config.epochs`` epochs; returns ``model`` in eval mode.

    ``grad_hook(model)`` runs between ``backward`` and the step (SalUn masks gradients there).
    """
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                                weight_decay=config.weight_decay)
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        for epoch in range(config.epochs):
            for group in optimizer.param_groups:
                group["lr"] = config.lr * lr_factor(config.schedule, epoch, config.epochs)
            model.train()
            for loss in losses(epoch):
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if grad_hook is not None:
                    grad_hook(model)
                optimizer.step()
    model.eval()
    return model


def shuffled(data: IndexedDataset, batch_size: int, generator: torch.Generator,
             device: torch.device) -> Iterator[tuple[Tensor, Tensor]]:
    """``(x, y)`` batches of an in-memory dataset in a fresh random order, moved to ``device``."""
    for x, y in tensor_batches(data.inputs, data.targets, batch_size=batch_size, shuffle=True, generator=generator):
        yield x.to(device), y.to(device)


def num_classes(model: nn.Module, data: IndexedDataset, device: torch.device) -> int:
    """The number of logits ``model`` produces (an eval-mode pass: no BatchNorm statistics change)."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return int(model(data.inputs[:1].to(device)).shape[1])
    finally:
        model.train(was_training)


def wrong_labels(y: Tensor, classes: int, generator: torch.Generator) -> Tensor:
    """A uniformly random label different from ``y`` for every example."""
    shift = torch.randint(1, classes, y.shape, generator=generator).to(y.device)
    return (y + shift) % classes
