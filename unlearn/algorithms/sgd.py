"""What the gradient-based unlearning methods share: their optimizer settings and :func:`run_sgd`, which steps
through the one epoch loop (:func:`unlearn.training.loop.run_epochs`) on the losses each method yields."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from numbers import Real

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from proxies.tasks import task_of

from .._checks import real, whole
from ..data.sources import batches, first_input
from ..training.loop import lr_factor, run_epochs, training_numerics
from ..training.trainer import check_optimizer, make_optimizer, top1_accuracy


@dataclass
class SGDConfig:
    """Optimizer settings every gradient-based method has (anchor defaults: batch 256, momentum 0.9, wd 5e-4).

    ``target_accuracy`` (a fraction, or ``None``) stops training early, at the first check (see :func:`run_sgd`)
    that finds the model's accuracy on the forget set (on token sequences, their mean token accuracy: see
    :func:`forget_accuracy`) at or below it. ``epochs`` then caps the run. A ``rum``
    policy step with ``"expected"`` sets it to the accuracy a model that never saw the group is expected to have
    (see :mod:`unlearn.algorithms.rum.policies`).
    """

    epochs: int = 10
    lr: float = 0.01
    batch_size: int = 256
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "constant"
    target_accuracy: float | None = None
    optimizer: str = "sgd"
    """``"sgd"`` (the anchors') or ``"adamw"`` (language models'; ``momentum`` unused), as :func:`unlearn.train`."""

    def __post_init__(self) -> None:
        whole("epochs", self.epochs)
        whole("batch_size", self.batch_size, minimum=1)
        real("lr", self.lr, low=0.0)
        real("momentum", self.momentum, low=0.0)
        real("weight_decay", self.weight_decay, low=0.0)
        lr_factor(self.schedule, 0, 1)  # rejects an unknown schedule now, not mid-run
        check_optimizer(self.optimizer)
        target = self.target_accuracy
        if target is not None and (isinstance(target, bool) or not isinstance(target, Real)
                                   or not 0.0 <= target <= 1.0):
            hint = " ('expected' is for steps of a rum policy)" if target == "expected" else ""
            raise ValueError(f"target_accuracy must be None or a fraction in [0, 1], got {target!r}{hint}")


def run_sgd(model: nn.Module, config: SGDConfig, losses: Callable[[int], Iterable[Tensor]], *, seed: int,
            grad_hook: Callable[[nn.Module], None] | None = None,
            step_hook: Callable[[torch.optim.Optimizer], None] | None = None,
            forget: Dataset | None = None, stop: Callable[[], bool] | None = None) -> nn.Module:
    """Step SGD on every loss ``losses(epoch)`` yields, for ``config.epochs`` epochs; returns ``model`` in eval mode.

    ``grad_hook(model)`` runs between ``backward`` and the step (SalUn masks gradients there);
    ``step_hook(optimizer)`` right after each step (SalUn puts back the weights it froze, which weight decay and
    momentum moved inside the step). With
    ``config.target_accuracy`` set, training stops once the accuracy on ``forget`` is at or below it, checked
    before the first step and then every ``ceil(len(forget) / batch_size)`` steps: each check is a forward pass
    over the forget set, which this spacing keeps to about one forward pass per example trained on, and the one
    place the loop reads the device back besides each epoch's end. A method's own stopping rule, ``stop()``
    (``True``: stop; SGA's forget-set memorization), is checked at the same points, after the target accuracy. On
    CUDA the loop runs with TF32 matmuls (:func:`unlearn.training.loop.training_numerics`).

    Raises:
        ValueError: ``config.target_accuracy`` or ``stop`` is set and no ``forget`` set was given (the method
            cannot stop on it, e.g. ``retrain``; the checks are spaced by the forget set's size).
    """
    target = config.target_accuracy
    if target is not None and forget is None:
        raise ValueError("this method cannot stop at a target_accuracy (it does not pass its forget set)")
    if stop is not None and forget is None:
        raise ValueError("a stopping rule is checked once per pass over the forget set: pass forget")
    checked = target is not None or stop is not None
    check_every = math.ceil(len(forget) / config.batch_size) if checked else 0
    device = next((p.device for p in model.parameters()), torch.device("cpu"))

    def reached() -> bool:
        if target is not None and forget_accuracy(model, forget, device) <= target:
            return True
        return stop is not None and stop()

    optimizer = make_optimizer(config.optimizer, model.parameters(), lr=config.lr, momentum=config.momentum,
                               weight_decay=config.weight_decay)
    steps = 0

    def stop_after_step() -> bool:
        nonlocal steps
        steps += 1
        if check_every and steps % check_every == 0:
            if reached():
                return True
            model.train()
        return False

    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), training_numerics(device):
        torch.manual_seed(seed)
        if not reached():
            run_epochs(model, optimizer, losses, lr=config.lr, schedule=config.schedule, epochs=config.epochs,
                       grad_hook=grad_hook, step_hook=step_hook, stop_after_step=stop_after_step,
                       progress="unlearning")
    model.eval()
    return model


@torch.no_grad()
def forget_accuracy(model: nn.Module, forget: Dataset, device: torch.device) -> float:
    """What ``target_accuracy`` is compared with: eval-mode top-1 accuracy on the forget set, where the model is
    (:func:`unlearn.training.top1_accuracy`); on token sequences, memorization in open-unlearning's terms, the
    forget set's mean token accuracy (each sequence's fraction of tokens whose argmax from the true prefix is right:
    ``proxies.exact_memorization``), not exact match, which a small model rarely reaches on any sequence."""
    if "token_accuracy" in task_of(forget).columns:
        from proxies.predictions import predict_signals

        signals, _, _ = predict_signals(model, forget, device=device)
        return float(signals[:, task_of(forget).columns.index("token_accuracy")].double().mean())
    return top1_accuracy(model, forget, device=device)


def shuffled(data: Dataset, batch_size: int, generator: torch.Generator,
             device: torch.device) -> Iterator[tuple[Tensor, Tensor]]:
    """``(x, y)`` batches of ``data`` in a fresh random order on ``device``: an in-memory dataset is copied there
    once per epoch and gathered there, a streamed one read a batch at a time (:func:`unlearn.data.batches`)."""
    for x, y, _ in batches(data, batch_size, shuffle=True, generator=generator, device=device):
        yield x, y


def num_classes(model: nn.Module, data: Dataset, device: torch.device) -> int:
    """How many targets ``model``'s output scores (the number of logits; an eval-mode pass: no BatchNorm statistics
    change)."""
    was_training = model.training
    model.eval()
    task = task_of(data)
    try:
        with torch.no_grad():
            return task.width(task.forward(model, first_input(data).to(device)))
    finally:
        model.train(was_training)
