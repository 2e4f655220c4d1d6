"""The one SGD epoch loop: :func:`unlearn.training.train` and every gradient-based unlearning method step through it.

What an epoch trains on is the caller's: ``steps(epoch)`` yields the losses to step on, each a loss tensor or a
:class:`BatchLoss` that also carries the batch's logits and labels (then the epoch's loss is weighed by examples and its
accuracy is known). The loop sets the epoch's learning rate from the schedule, steps on every loss
(``zero_grad``, ``backward``, ``grad_hook``, ``optimizer.step``, ``step_hook``), sums loss and accuracy on the
device (one host sync per epoch, not per batch) and reports one row per epoch.

>>> import torch
>>> model = torch.nn.Linear(2, 2)
>>> optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
>>> x, y = torch.randn(8, 2), torch.randint(0, 2, (8,))
>>> def steps(epoch):
...     logits = model(x)
...     yield BatchLoss(torch.nn.functional.cross_entropy(logits, y), logits, y)
>>> rows = run_epochs(model, optimizer, steps, lr=0.1, schedule="cosine", epochs=2)
>>> [(row["epoch"], row["lr"]) for row in rows]
[(1, 0.1), (2, 0.05)]
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import math
import os
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from typing import NamedTuple

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from proxies.tasks import CLASSIFICATION, Task

from .._checks import NonFiniteError, check_finite_weights

__all__ = ["CUBLAS_WORKSPACE", "SCHEDULES", "BatchLoss", "Schedule", "lr_factor", "run_epochs", "training_numerics",
           "warm_up"]

Schedule = str | Callable[[int, int], float]

SHOW_BARS: contextvars.ContextVar[bool] = contextvars.ContextVar("show_bars", default=True)
"""Whether :func:`run_epochs` shows its bars (``unlearn.pipeline.run(progress=False)`` turns them off for the
run's every stage, unlearning included)."""


def lr_factor(schedule: Schedule, epoch: int, epochs: int) -> float:
    """Multiplier of the base learning rate in ``epoch`` (0-based) of ``epochs``."""
    if callable(schedule):
        return float(schedule(epoch, epochs))
    if schedule == "constant":
        return 1.0
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * epoch / epochs))
    if schedule == "step":  # x0.1 at 1/2, 2/3 and 5/6 of training: 15/20/25 of 30 epochs, as the FZ anchor
        return 0.1 ** sum(epoch >= round(epochs * f) for f in (1 / 2, 2 / 3, 5 / 6))
    if schedule == "linear":
        return 1.0 - epoch / epochs
    if schedule == "warmup_cosine":  # a language model's: a linear warmup over the first tenth, then cosine
        warmup = max(1, round(0.1 * epochs))
        if epoch < warmup:
            return (epoch + 1) / (warmup + 1)
        return 0.5 * (1.0 + math.cos(math.pi * (epoch - warmup) / max(epochs - warmup, 1)))
    raise ValueError(f"unknown schedule {schedule!r}; expected one of {list(SCHEDULES)} or a callable")


SCHEDULES = ("constant", "cosine", "step", "linear", "warmup_cosine")
"""The named schedules of :func:`lr_factor`, each set per epoch: ``warmup_cosine`` rises linearly over the first
tenth of the epochs (at least one; ``(e + 1) / (w + 1)`` in epoch ``e < w``) and then follows a cosine from the
full rate, as language models are trained (per epoch here, where LM trainers warm up per step)."""


CUBLAS_WORKSPACE = ":4096:8"
"""The ``CUBLAS_WORKSPACE_CONFIG`` deterministic CUDA training sets when the environment does not: cuBLAS (10.2 and
later) is only deterministic with a fixed workspace. It is read when cuBLAS first runs in a process, so for
certain effect export it before starting Python (``CUBLAS_WORKSPACE_CONFIG=:4096:8``)."""


@contextlib.contextmanager
def training_numerics(device: torch.device | str, *, deterministic: bool = False) -> Iterator[None]:
    """The arithmetic a training (or unlearning) loop runs with on ``device``, restored when the block ends.

    On CUDA, float32 matmuls and convolutions use TF32 tensor cores (``torch.backends.cuda.matmul.allow_tf32`` and
    ``torch.backends.cudnn.allow_tf32``): several times the fp32 throughput for a 10-bit mantissa in the products,
    which SGD does not notice. The flags are set here, for the duration of the loop, and put back afterwards,
    rather than process-wide at import: evaluation, the proxies and a user's own code keep the precision they
    chose. On the CPU (and other devices) nothing changes.

    ``deterministic``: bitwise-reproducible runs on CUDA: ``torch.use_deterministic_algorithms(True)`` (an op
    without a deterministic kernel raises instead of running), ``torch.backends.cudnn.deterministic = True`` and
    ``benchmark = False``, and :data:`CUBLAS_WORKSPACE` when ``CUBLAS_WORKSPACE_CONFIG`` is unset. The cost falls
    on CUDA only: cuDNN gives up its fastest (non-deterministic) convolution algorithms and index/scatter
    backwards serialise their atomic adds; reports for ResNets put it at roughly 10-30% of an epoch. It could not
    be measured here (no GPU on the machine this was written on); ``make check-gpu`` is where to measure it. CPU
    training is deterministic for a seed already: the setting changes nothing there (same bits, same speed).

    >>> with training_numerics("cpu", deterministic=True):
    ...     torch.are_deterministic_algorithms_enabled()
    True
    >>> torch.are_deterministic_algorithms_enabled()
    False
    """
    device = torch.device(device)
    cudnn = torch.backends.cudnn
    saved = (torch.backends.cuda.matmul.allow_tf32, cudnn.allow_tf32, cudnn.deterministic, cudnn.benchmark,
             torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())
    workspace = os.environ.get("CUBLAS_WORKSPACE_CONFIG")
    try:
        if device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
            cudnn.allow_tf32 = True
        if deterministic:
            if device.type == "cuda" and workspace is None:
                os.environ["CUBLAS_WORKSPACE_CONFIG"] = CUBLAS_WORKSPACE
            torch.use_deterministic_algorithms(True)
            cudnn.deterministic, cudnn.benchmark = True, False
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, cudnn.allow_tf32, cudnn.deterministic, cudnn.benchmark = saved[:4]
        torch.use_deterministic_algorithms(saved[4], warn_only=saved[5])
        if workspace is None:
            os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)


class BatchLoss(NamedTuple):
    """A loss to step on, with the logits and labels of its batch when it has them."""

    loss: Tensor
    logits: Tensor | None = None
    targets: Tensor | None = None


def run_epochs(model: nn.Module, optimizer: torch.optim.Optimizer,
               steps: Callable[[int], Iterable[Tensor | BatchLoss]], *, lr: float, schedule: Schedule, epochs: int,
               first: int = 0, grad_hook: Callable[[nn.Module], None] | None = None,
               step_hook: Callable[[torch.optim.Optimizer], None] | None = None,
               stop_after_step: Callable[[], bool] | None = None,
               on_epoch_end: Callable[[int, dict], bool | None] | None = None,
               progress: str | None = None, task: Task = CLASSIFICATION) -> list[dict]:
    """Train epochs ``first .. epochs - 1`` (0-based) of an ``epochs``-long schedule; returns their rows.

    Args:
        model: put in train mode at the start of every epoch.
        optimizer: its learning rate is set to ``lr * lr_factor(schedule, epoch, epochs)`` per epoch.
        steps: ``steps(epoch)`` yields the epoch's losses (tensors or :class:`BatchLoss`), computed when asked for,
            so a generator can run code around them (e.g. start and end a recorder's epoch).
        grad_hook: ``grad_hook(model)`` between ``backward`` and the step (e.g. masking gradients).
        step_hook: ``step_hook(optimizer)`` right after each step (e.g. putting frozen weights back).
        stop_after_step: called after each step; ``True`` ends training there (the epoch's row is still reported,
            ``on_epoch_end`` is not called).
        on_epoch_end: ``on_epoch_end(epoch, row)`` (0-based epoch) after each full epoch; it may add to ``row``;
            ``True`` ends training.
        progress: a tqdm bar's description, shown once training has lasted a second; ``None``: no bar.
        task: the kind of example, which says whether a :class:`BatchLoss`'s logits get its examples right.

    Returns:
        One row per epoch trained: ``epoch`` (1-based), ``lr``, ``loss`` (mean per example over :class:`BatchLoss`\\ s,
        per step over bare losses), ``accuracy`` (NaN unless every step is a :class:`BatchLoss` with logits) and
        ``seconds``.
    """
    rows = []
    bar = tqdm(range(first, epochs), desc=progress, unit="epoch", disable=progress is None or not SHOW_BARS.get(),
               delay=1.0, leave=False,
               initial=first, total=epochs)
    for epoch in bar:
        start = time.perf_counter()
        epoch_lr = lr * lr_factor(schedule, epoch, epochs)
        for group in optimizer.param_groups:
            group["lr"] = epoch_lr
        model.train()
        total_loss, correct, seen, scored, stopped = 0.0, 0, 0, 0, False
        first_bad = None  # the epoch's first step whose loss was not finite, kept on the device (no sync per step)
        for number, step in enumerate(steps(epoch)):
            loss, logits, targets = step if isinstance(step, BatchLoss) else (step, None, None)
            if not loss.is_meta:
                bad = ~torch.isfinite(loss.detach())
                first_bad = (torch.where(bad, number, -1) if first_bad is None
                             else torch.where((first_bad < 0) & bad, number, first_bad))
            optimizer.zero_grad(set_to_none=True)
            with warnings.catch_warnings():  # opacus's hooks fire correctly without input gradients
                warnings.filterwarnings("ignore", message="Full backward hook is firing")
                loss.backward()
            if grad_hook is not None:
                grad_hook(model)
            optimizer.step()
            if step_hook is not None:
                step_hook(optimizer)
            size = 1 if targets is None else len(targets)
            total_loss += loss.detach() * size
            if logits is not None:
                correct += task.correct(logits.detach(), targets).sum()
                scored += size
            seen += size
            if stop_after_step is not None and stop_after_step():
                stopped = True
                break
        accuracy = _value(correct) / max(seen, 1) if scored == seen else float("nan")  # known for every example
        rows.append({"epoch": epoch + 1, "lr": epoch_lr, "loss": _value(total_loss) / max(seen, 1),
                     "accuracy": accuracy, "seconds": time.perf_counter() - start})
        check_finite_training(model, epoch, first_bad)
        # (no refresh: a bar drawn before its delay is over is not cleared when it closes, and the next line of
        # output would start after it)
        bar.set_postfix(loss=f"{rows[-1]['loss']:.3f}", acc=f"{rows[-1]['accuracy']:.3f}", refresh=False)
        if stopped or (on_epoch_end is not None and on_epoch_end(epoch, rows[-1])):
            break
    return rows


@functools.cache
def warm_up() -> None:
    """Pay the process's one-off costs before a clock starts: the first optimizer step of a process makes torch
    import its compiler (``torch._dynamo``, about 1.3 s on two cores), which a timed unlearning or retraining would
    otherwise count, once, in whichever ran first (a rerun that reuses the trained model: its unlearning). Once per
    process; touches no random state."""
    weight = torch.zeros(1, requires_grad=True)
    for optimizer in (torch.optim.SGD([weight], lr=0.1, momentum=0.9), torch.optim.AdamW([weight], lr=0.1)):
        weight.grad = torch.zeros(1)
        optimizer.step()


def check_finite_training(model: nn.Module, epoch: int, first_bad: Tensor | None) -> None:
    """After an epoch (0-based): a :class:`unlearn.NonFiniteError` naming the epoch and the first step
    whose loss was NaN or infinite (``first_bad``, -1 for none), or the weights that are, if any; one host read."""
    step = -1 if first_bad is None else int(first_bad)
    if step >= 0:
        raise NonFiniteError(f"the loss became NaN or infinite at epoch {epoch + 1}, step {step + 1}: check the data "
                             "for non-finite inputs or labels out of range, or lower the learning rate")
    check_finite_weights(model, f"after epoch {epoch + 1}")


def _value(total: Tensor | float) -> float:
    """A sum as a Python float (the epoch's one host sync); NaN on the ``meta`` device, which holds no values."""
    return float("nan") if isinstance(total, Tensor) and total.is_meta else float(total)
