"""What a kind of example is to the library: how a batch is shown to the model, and how its per-example loss,
correctness and random targets come out of the model's output. The one seam between the engine (training, every
unlearning method, rum, the recorder, the attacks) and a kind of data: everything above it is shared.

A :class:`Task` is attached to a dataset (``IndexedDataset(..., task=)``, ``Streamed(..., task=)``) and found by
:func:`task_of`; a dataset without one holds :data:`CLASSIFICATION` examples: inputs a model maps to logits
``[batch, classes]``, one integer label each. Token sequences for a causal language model are the second kind
(:class:`proxies.sequences.CausalLM`), with no method edited.

>>> logits, labels = torch.tensor([[2.0, 0.0], [0.0, 1.0]]), torch.tensor([0, 0])
>>> [round(v, 4) for v in CLASSIFICATION.loss(logits, labels, reduction="none").tolist()]
[0.1269, 1.3133]
>>> CLASSIFICATION.correct(logits, labels).tolist()
[True, False]
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import kernels

__all__ = ["CLASSIFICATION", "Classification", "Task", "same_task", "task_of"]


@runtime_checkable
class Task(Protocol):
    """The interface a kind of example implements (see the module doc). ``output`` is what the model returns for a
    batch (logits for classification); ``targets`` what the batch's items carry as their label."""

    name: str

    def forward(self, model: nn.Module, inputs: Tensor) -> Tensor:
        """The model's output on a batch of inputs."""

    def loss(self, output: Tensor, targets: Tensor, reduction: str = "mean") -> Tensor:
        """The loss training minimises: per example (``"none"``), summed or averaged over the batch."""

    def correct(self, output: Tensor, targets: Tensor) -> Tensor:
        """Whether the model gets each example right, ``[batch]`` bool."""

    def width(self, output: Tensor) -> int:
        """How many targets the output scores (the number of classes)."""

    def check(self, output: object, targets: Tensor, batch: int) -> int:
        """Refuse an output that cannot score these targets (a ``ValueError`` saying what was expected); else
        :meth:`width`."""

    def probe(self, model: nn.Module, examples: Callable[[], tuple[Tensor, Tensor]]) -> None:
        """Refuse, before any work, a model that cannot take the data's first examples or score their targets (a
        ``ValueError`` saying what was expected). ``examples()`` reads ``(inputs, targets)`` of a few of them, on
        the model's device, for a kind that needs to run the model (eval mode, no grad) to tell."""

    def wrong_targets(self, targets: Tensor, width: int, generator: torch.Generator) -> Tensor:
        """Targets drawn uniformly at random among the wrong ones, by ``generator`` (random-label unlearning)."""

    def divergence(self, student: Tensor, teacher: Tensor, temperature: float) -> Tensor:
        """How far a student's output is from a teacher's, averaged over the batch (distillation: SCRUB)."""

    columns: tuple[str, ...]
    """The names of the training recorder's columns for this kind of example."""

    def record(self, output: Tensor, targets: Tensor) -> Tensor:
        """What the training recorder keeps of a batch until its epoch ends, ``[batch, K]`` float32 (the logits
        of a classifier; the signals themselves where outputs are too big to keep)."""

    def signals(self, recorded: Tensor, fingerprints: Tensor, **options) -> Tensor:
        """The recorder's columns for each example (:attr:`columns`), ``[batch, columns]`` float32, from what
        :meth:`record` kept over an epoch and the examples' :meth:`fingerprint`."""

    def fingerprint(self, targets: Tensor) -> Tensor:
        """One non-negative integer per example that a recording keeps of its targets, ``[batch]`` int64 (the
        class label itself), to refuse another training set's examples."""

    def watch_input(self, model: nn.Module, inputs: Tensor) -> tuple[Tensor, Callable[[], Tensor | None]]:
        """``(inputs, gradient)``: the inputs to show the model and a function that, after the backward pass of
        one forward on them, returns each example's input gradient ``[batch, ...]`` (the ``csg`` proxy's)."""


class Classification:
    """Inputs a model maps to logits ``[batch, classes]``, one integer label per example; the loss is the
    cross-entropy."""

    name = "classification"

    def forward(self, model: nn.Module, inputs: Tensor) -> Tensor:
        return model(inputs)

    def loss(self, output: Tensor, targets: Tensor, reduction: str = "mean") -> Tensor:
        return F.cross_entropy(output, targets, reduction=reduction)

    def correct(self, output: Tensor, targets: Tensor) -> Tensor:
        return output.argmax(1) == targets

    def width(self, output: Tensor) -> int:
        return int(output.shape[1])

    def check(self, output: object, targets: Tensor, batch: int) -> int:
        if not isinstance(output, Tensor) or output.ndim != 2 or output.shape[0] != batch:
            shape = tuple(output.shape) if isinstance(output, Tensor) else type(output).__name__
            raise ValueError(f"model must return logits [batch, classes], got {shape}")
        if int(targets.max()) >= output.shape[1] or int(targets.min()) < 0:
            raise ValueError(f"model returns {output.shape[1]} logits but the labels span "
                             f"[{int(targets.min())}, {int(targets.max())}]")
        return self.width(output)

    def probe(self, model: nn.Module, examples: Callable[[], tuple[Tensor, Tensor]]) -> None:
        """Nothing (no example is read): a classifier that cannot take the inputs fails in its first forward pass,
        as it always has."""

    def wrong_targets(self, targets: Tensor, width: int, generator: torch.Generator) -> Tensor:
        """A uniformly random label other than each ``targets``' own, drawn on the CPU by ``generator`` (the same
        labels on every device); for labels on CUDA the draw goes through pinned memory, copied without a host
        sync."""
        pinned = targets.device.type == "cuda"
        shift = (torch.randint(1, width, targets.shape, generator=generator, pin_memory=True) if pinned
                 else torch.randint(1, width, targets.shape, generator=generator))
        return (targets + shift.to(targets.device, non_blocking=pinned)) % width

    def divergence(self, student: Tensor, teacher: Tensor, temperature: float) -> Tensor:
        """``T^2 * KL(softmax(teacher/T) || softmax(student/T))``, averaged over the batch."""
        log_student = F.log_softmax(student / temperature, dim=1)
        target = F.softmax(teacher / temperature, dim=1)
        return F.kl_div(log_student, target, reduction="batchmean") * temperature**2

    columns = kernels.SIGNAL_COLUMNS

    def record(self, output: Tensor, targets: Tensor) -> Tensor:
        """The logits: the softmax signals are computed once an epoch, over all of them."""
        return output.detach().float()

    def signals(self, recorded: Tensor, fingerprints: Tensor, **options) -> Tensor:
        """The softmax signals of :func:`proxies.kernels.signals` (its fast kernels; ``options`` go to it) of the
        logits :meth:`record` kept and the labels (their own fingerprint)."""
        return kernels.signals(recorded, fingerprints, **options)

    def fingerprint(self, targets: Tensor) -> Tensor:
        """The label."""
        return targets.long()

    def watch_input(self, model: nn.Module, inputs: Tensor) -> tuple[Tensor, Callable[[], Tensor | None]]:
        """The inputs made to require grad; their ``.grad``."""
        inputs = inputs.detach().requires_grad_()
        return inputs, lambda: inputs.grad

    def __repr__(self) -> str:
        return "Classification()"


CLASSIFICATION = Classification()
"""The task of a dataset that names none."""


def task_of(dataset) -> Task:
    """The :class:`Task` of a dataset's examples: the one its root (under any ``Subset``) carries as ``task``,
    else :data:`CLASSIFICATION`."""
    from torch.utils.data import Subset

    while isinstance(dataset, Subset):
        dataset = dataset.dataset
    return getattr(dataset, "task", None) or CLASSIFICATION


def same_task(first: Task, second: Task) -> bool:
    """Whether two tasks are one kind of example (equal, or the same object)."""
    return first is second or first == second
