"""SGA and TAU (Barbulescu & Triantafillou, ICML 2024, "To Each (Textual Sequence) Its Own"; code
GeorgeOctavian/selective_unlearning): gradient ascent spent only on the forget examples the model still
memorizes, stopped once the forget set as a whole is no longer memorized.

The memorization ``g(x)`` of an example (:func:`memorization`) is, for a token sequence, the fraction of its scored
tokens that are the argmax of the model's next-token distribution given the true prefix (teacher-forced token
accuracy: the ``token_accuracy`` column of :func:`proxies.predictions.predict_signals`, the paper's greedy one-token
generation from the true prefix); for a task without that column, a classifier's, whether the model gets the
example right (1 or 0). So on a classifier SGA ascends on the forget examples it currently classifies correctly
and stops once the forget accuracy is below ``stop_below``. The choice of g is the one thing that depends on the
kind of data; everything else goes through the data's task.

- **SGA**, selective gradient ascent: for each batch of the forget set, ``g`` of its examples under the current
  model (eval mode, no grad), then one step of ascent on the mean loss of those with ``g >= select_above`` plus
  the single highest-``g`` example of the batch, so every batch ascends on something (:func:`select_memorized`).
  It stops once the forget set's mean ``g`` is below ``stop_below``, checked before the first step (a forget set
  already below it is left as it is: no step at all) and after every pass over the forget set (every
  ``ceil(len(forget) / batch_size)`` steps, as :func:`~unlearn.algorithms.sgd.run_sgd` checks a
  ``target_accuracy``); ``epochs`` caps the run.
- **TAU**, task-vector unlearning: SGA until the forget set's mean ``g`` is below ``snapshot_below``, weights
  ``theta'``; then gradient *descent* on the whole forget set (no selection) from ``theta'``, with a fresh
  optimizer of the same settings, weights ``theta``; the result is ``theta' + scale * (theta - theta')``, ``scale``
  -1: the fine-tuning task vector, negated, applied at ``theta'`` (:func:`apply_task_vector`). The descent stops
  once that edited model's mean ``g`` is below ``stop_below``, checked on it (a scratch copy) before the descent's
  first step and after every pass over the forget set, as SGA's; ``descent_epochs`` caps it
  (``stop_below=None``: it runs them all). Only the parameters take part in the arithmetic (a tied parameter
  once); every buffer is put back to ``theta'``'s: the non-float ones (a causal mask, a step counter) cannot be
  scaled, and a float one (BatchNorm's running statistics) is no weight that descent trained: extrapolated, a
  running variance can turn negative.

Where this differs from the authors' code: their g of an example comes from the last evaluation pass (once an
epoch), where here it is computed for each batch just before its step, as the paper describes; the loss is the
mean over sequences of each one's mean token NLL (:class:`~proxies.sequences.CausalLM`), where theirs averages
over the batch's tokens; g scores every labelled token (theirs: a 200-token suffix after a prefix; label the
prefix -100 to do the same). Their TAU keeps the same Adam through the switch to descent, and its state-dict
arithmetic covers every entry; here the descent has a fresh optimizer and the buffers stay ``theta'``'s.

A loss that turns non-finite, or weights that do, raise ``FloatingPointError`` (lower ``lr``): gradient ascent is
unbounded, and a NaN model is never returned.

>>> select_memorized(torch.tensor([0.2, 0.9, 0.5, 0.7]), 0.7).tolist()
[False, True, False, True]
>>> select_memorized(torch.tensor([0.2, 0.6, 0.6]), 0.7).tolist()  # none above: the first highest alone
[False, True, False]
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from proxies.predictions import eval_batches
from proxies.tasks import Task, task_of

from .._checks import real, whole
from .registry import register_method
from .sgd import SGDConfig, run_sgd, shuffled

__all__ = ["SGAConfig", "TAUConfig", "apply_task_vector", "batch_memorization", "forget_memorization",
           "memorization", "parameters_and_buffers", "select_memorized", "sga", "tau"]

TOKEN_ACCURACY = "token_accuracy"
"""The column of a task's signals that is g where the task records it (token sequences)."""


def memorization(task: Task, output: Tensor, targets: Tensor) -> Tensor:
    """``g`` of each example of a batch, ``[B]`` float32 (the module doc): a sequence's teacher-forced token
    accuracy where the task records a ``token_accuracy`` column (NaN for a sequence with no scored token), else
    the task's correctness as 0 or 1."""
    if TOKEN_ACCURACY in task.columns:
        signals = task.signals(task.record(output, targets), task.fingerprint(targets))
        return signals[:, task.columns.index(TOKEN_ACCURACY)].float()
    return task.correct(output, targets).float()


def select_memorized(g: Tensor, select_above: float) -> Tensor:
    """Which examples of a batch SGA ascends on, ``[B]`` bool: those with ``g >= select_above``, and the first of
    the highest ``g`` whatever it is (a NaN ``g``, a sequence with no scored token, counts as the lowest)."""
    known = torch.where(g.isnan(), torch.full_like(g, -math.inf), g)
    chosen = known >= select_above
    chosen[known.argmax()] = True  # argmax: the first of the highest
    return chosen


@torch.no_grad()
def batch_memorization(model: nn.Module, task: Task, inputs: Tensor, targets: Tensor) -> Tensor:
    """``g`` of a batch under ``model`` in eval mode (its mode restored), without gradients."""
    was_training = model.training
    model.eval()
    try:
        return memorization(task, task.forward(model, inputs), targets)
    finally:
        model.train(was_training)


@torch.no_grad()
def forget_memorization(model: nn.Module, forget: Dataset, batch_size: int) -> Tensor:
    """``g`` of every example of ``forget`` in its order, ``[N]`` float32 on the CPU (eval mode, where the model
    is)."""
    task = task_of(forget)
    parts = [memorization(task, task.forward(net, x), y).cpu() for net, x, y, _ in
             eval_batches(model, forget, batch_size)]
    return torch.cat(parts) if parts else torch.zeros(0)


def _mean_memorization(model: nn.Module, forget: Dataset, batch_size: int) -> float:
    """The forget set's mean ``g`` over the examples that have one (a sequence with no scored token has none)."""
    mean = float(forget_memorization(model, forget, batch_size).nanmean())
    if math.isnan(mean):
        raise FloatingPointError("the forget set's memorization is NaN: the model's logits are not finite (lower "
                                 "lr), or no example has a scored token")
    return mean


def _finite(loss: Tensor, what: str) -> Tensor:
    if not bool(torch.isfinite(loss.detach())):
        raise FloatingPointError(f"{what} became {float(loss.detach())}: the weights diverged; lower lr")
    return loss


def _check_finite_weights(model: nn.Module, method: str) -> None:
    bad = [name for name, p in model.named_parameters() if not bool(torch.isfinite(p).all())]
    if bad:
        raise FloatingPointError(f"{method} left non-finite weights in {bad[:3]}: lower lr")


def _check_fractions(config, names: tuple[str, ...]) -> None:
    """Refuse settings ``names`` that are not fractions in [0, 1] in ascending order (``None`` skipped)."""
    values = [(name, getattr(config, name)) for name in names if getattr(config, name) is not None]
    for name, value in values:
        real(name, value, low=0.0, high=1.0)
    for (low, a), (high, b) in itertools.pairwise(values):
        if a > b:
            raise ValueError(f"{low} must be <= {high}, got {low}={a} and {high}={b}")


@dataclass
class SGAConfig(SGDConfig):
    """SGA's settings. ``select_above`` 0.70 and ``stop_below`` 0.33 are the paper's (its code's ``mem_threshold``
    and ``ma_threshold``), and so is the batch of 8; the cap of 150 epochs is its code's ``num_train_epochs``. The
    paper ran Adam (betas 0.9, 0.98) at lr 5e-5 on GPT-Neo 2.7B. The optimizer here, AdamW (betas 0.9, 0.999) at lr
    1e-3 without weight decay, was chosen on ``tiny_gpt`` (1 layer, width 32) trained on 300 fortunes and 4 canaries
    of 10 copies each (as :class:`~unlearn.algorithms.npo.NPOConfig`): it takes the 40 copies' mean token accuracy
    from 0.95 to 0.29 in two passes (under a second) and their mean token NLL from 0.25 to 3.4, past the 1.8 of
    secrets never inserted, while the retain set's goes from 3.13 to 3.28. lr 1e-4 takes 14 passes there (retain
    NLL 3.22) but on 8 fortunes seen 20 times as often as 40 others, 140 steps where lr 1e-3 takes 24, and harms
    the retain set more (its NLL from 4.05 to 5.8, against 5.3); plain SGD at lr 0.01 overshoots (token accuracy
    0.05, retain NLL 4.8).

    On a classifier ``g`` is 0 or 1: the thresholds select the examples it gets right and stop below a forget
    accuracy of 0.33, far below what a model that never saw them scores (about its test accuracy), so set
    ``stop_below`` (or ``target_accuracy``) near that there: with these defaults the digits CNN falls from a test
    accuracy of 0.85 to 0.10 (forget 0.92 to 0.08)."""

    select_above: float = 0.70
    stop_below: float = 0.33
    epochs: int = 150
    lr: float = 1e-3
    batch_size: int = 8
    momentum: float = 0.0
    weight_decay: float = 0.0
    optimizer: str = "adamw"

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_fractions(self, ("stop_below", "select_above"))


@dataclass
class TAUConfig(SGAConfig):
    """TAU's settings. ``select_above`` 0.70, ``snapshot_below`` 0.5 (its code's ``first_threshold``),
    ``stop_below`` 0.33 (``ma_threshold``) and ``scale`` -1 (``first_coef``) are the paper's TAU configuration, and
    so is the batch of 8; ``epochs`` caps the SGA phase and ``descent_epochs`` the descent, each at the 150 of its
    code's ``num_train_epochs`` (a cap on both phases together there). The optimizer's settings are
    :class:`SGAConfig`'s. On the 8 fortunes of :class:`SGAConfig` the snapshot comes at a mean token accuracy of
    0.47 and five epochs of descent take the edited model to 0.32 (retain NLL 4.05 to 5.3, as SGA's); where SGA
    overshoots past ``stop_below`` (the canaries: 0.29 after two passes) the result is the snapshot itself."""

    stop_below: float | None = 0.33
    snapshot_below: float = 0.5
    descent_epochs: int = 150
    scale: float = -1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_fractions(self, ("stop_below", "snapshot_below", "select_above"))
        whole("descent_epochs", self.descent_epochs)
        real("scale", self.scale)


def _selective_ascent(model: nn.Module, forget: Dataset, config, below: float, generator: torch.Generator, *,
                      seed: int, device: torch.device) -> nn.Module:
    """SGA on ``model`` in place until the forget set's mean ``g`` is below ``below`` (or ``config.epochs``)."""
    task = task_of(forget)

    def losses(epoch: int) -> Iterable[Tensor]:
        for x, y in shuffled(forget, config.batch_size, generator, device):
            chosen = select_memorized(batch_memorization(model, task, x, y), config.select_above)
            yield _finite(-task.loss(task.forward(model, x[chosen]), y[chosen]), "the forget loss")

    def unmemorized() -> bool:
        return _mean_memorization(model, forget, config.batch_size) < below

    run_sgd(model, config, losses, seed=seed, forget=forget, stop=unmemorized)
    return model


@register_method("sga", config=SGAConfig, epoch="forget")
def sga(model, forget, retain, config: SGAConfig, *, seed, device):
    """Selective gradient ascent: ascend only on the forget examples still memorized, until the forget set is not."""
    generator = torch.Generator().manual_seed(seed)
    _selective_ascent(model, forget, config, config.stop_below, generator, seed=seed, device=device)
    _check_finite_weights(model, "sga")
    return model


def parameters_and_buffers(model: nn.Module) -> dict[str, Tensor]:
    """A detached copy of every parameter and buffer of ``model`` by name (a tied one once)."""
    return {name: t.detach().clone() for name, t in itertools.chain(model.named_parameters(),
                                                                    model.named_buffers())}


@torch.no_grad()
def apply_task_vector(model: nn.Module, start: dict[str, Tensor], scale: float) -> nn.Module:
    """Move ``model`` in place to ``start + scale * (model - start)`` in every parameter (a tied one once) and put
    every buffer back to ``start``'s; ``start`` as :func:`parameters_and_buffers` copies it.

    >>> layer = nn.Linear(1, 1)
    >>> start = parameters_and_buffers(layer)
    >>> with torch.no_grad():
    ...     _ = layer.weight.add_(2.0)  # a step of +2 from the start
    >>> float(apply_task_vector(layer, start, -1.0).weight.detach() - start["weight"])  # negated: -2 from it
    -2.0
    """
    for name, p in model.named_parameters():
        p.copy_(start[name] + scale * (p - start[name]))
    for name, b in model.named_buffers():
        b.copy_(start[name])
    return model


def _descend(model: nn.Module, forget: Dataset, config: TAUConfig, start: dict[str, Tensor],
             generator: torch.Generator, *, seed: int, device: torch.device) -> nn.Module:
    """Gradient descent on the forget set, on ``model`` in place (theta), for ``config.descent_epochs`` or until
    the edited model ``start + scale * (theta - start)`` has a mean ``g`` below ``config.stop_below``."""
    task = task_of(forget)

    def losses(epoch: int) -> Iterable[Tensor]:
        for x, y in shuffled(forget, config.batch_size, generator, device):
            yield _finite(task.loss(task.forward(model, x), y), "the forget loss")

    stop = None
    if config.stop_below is not None:
        edited = copy.deepcopy(model).requires_grad_(False)  # a scratch copy to measure the edited model on
        edited.zero_grad(set_to_none=True)

        def stop() -> bool:
            edited.load_state_dict(model.state_dict())
            apply_task_vector(edited, start, config.scale)
            return _mean_memorization(edited, forget, config.batch_size) < config.stop_below

    descent = dataclasses.replace(config, epochs=config.descent_epochs, target_accuracy=None)
    return run_sgd(model, descent, losses, seed=seed, forget=forget, stop=stop)


@register_method("tau", config=TAUConfig, epoch="forget")
def tau(model, forget, retain, config: TAUConfig, *, seed, device):
    """SGA to a snapshot, then the negated task vector of fine-tuning on the forget set from it, applied there."""
    generator = torch.Generator().manual_seed(seed)
    _selective_ascent(model, forget, config, config.snapshot_below, generator, seed=seed, device=device)
    _check_finite_weights(model, "tau's selective ascent")
    start = parameters_and_buffers(model)  # theta'
    _descend(model, forget, config, start, generator, seed=seed, device=device)  # theta
    apply_task_vector(model, start, config.scale)
    _check_finite_weights(model, "tau")
    return model.eval()
