"""A recording rebuilt after the fact: the training set replayed through the checkpoints of a training that had no
:class:`~proxies.TrainingRecorder`.

:func:`replay` makes one "epoch" of a recording per checkpoint (e.g. one saved after every epoch): every training
example's logits under that checkpoint, the input-gradient norm of each example's own loss and the checkpoint's
weight norm, all stored by the recorder's own ``start_epoch`` / ``record`` / ``record_input_gradients`` /
``end_epoch``. Every recording proxy (the confidence family, learning events, ``csl``, ``csg``, ``sgal``,
``loss_iqr``, ``memorization_estimate``) reads the result, and so does ``unlearn(..., method="rum",
recording=...)``.

How it approximates a recording. A recording sees each example once per epoch, at its own step: a train-mode
forward pass (batch statistics, dropout, augmentation), with the weights moving within the epoch, before the step
that learns from the example. The replay sees every example under the end-of-epoch weights, in eval mode by
default, with the inputs the dataset gives. So:

- confidence, max-confidence, negative entropy and accuracy are measured *after* the epoch's steps, including the
  step that learned from the example: higher than recorded, most of all in the early epochs, where a recorded
  value depends largely on when in the epoch the example came. The replay's ranking is about as close to the
  recording's as a second recording of the same training with another batch order is (digits, 15 epochs,
  confidence Spearman: 0.71 against 0.65 for the second recording; with 10% of the labels flipped, 0.94 against
  0.92; ``tests/test_replay.py``).
- learning events are counted on checkpoint-to-checkpoint transitions: a forgetting event between two checkpoints
  is missed, and with sparse checkpoints there are fewer presentations to count (``first_learned`` and
  ``presentations_needed`` are then in checkpoints, not epochs).
- ``csl`` sums the losses at the checkpoints: with one checkpoint every ``k`` epochs, multiply by ``k`` for the
  scale of the recorded total (the ranking does not change). ``sgal`` sums them up to the checkpoint with the
  largest weight norm, which is the recorded peak when there is a checkpoint per epoch (the recording also takes
  its weight norm at the epoch's end). ``loss_iqr`` is the spread of the checkpoints' losses.
- ``csg`` sums the squared input-gradient norms at the checkpoints, the same way.

``mode="train"`` replays in train mode (batch statistics, dropout on) on a copy of each checkpoint, so that its
running statistics stay as they were; no parameter is ever updated. Batches then take the dataset's order, not
the training's shuffled one.

Input gradients: in eval mode the examples of a batch do not interact, so ``x.grad`` of the batch-mean loss times
the batch size is each example's own input gradient, exactly. In train mode with BatchNorm an example's input also
moves the batch's statistics, and ``x.grad`` holds a small share of the other examples' losses too, as the
recording's training-time measurement does.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable

import torch
from torch import nn
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from .batching import batches
from .checkpoints import as_checkpoints
from .devices import model_device, model_on
from .recording import TrainingRecorder
from .tasks import task_of

__all__ = ["MODES", "replay"]

MODES = ("eval", "train")
"""How :func:`replay` runs each checkpoint: ``"eval"`` (running statistics, no dropout) or ``"train"``."""


def replay(checkpoints: nn.Module | Iterable[nn.Module], dataset: Dataset, *, batch_size: int = 1024,
           mode: str = "eval", input_gradients: bool = True, device: torch.device | str | None = None,
           num_examples: int | None = None, progress: bool = False) -> TrainingRecorder:
    """A :class:`~proxies.TrainingRecorder` with one epoch per checkpoint, made by replaying ``dataset`` through it
    (see the module doc for how it differs from a recording made during training).

    Args:
        checkpoints: a model, or the checkpoints of one training in order (any iterable of models, e.g. one
            saved after each epoch). They are never modified: their parameters, buffers, place and train/eval
            mode (of every submodule) stay as they were.
        dataset: the training set, items ``(x, y)`` or ``(x, y, index)``; ``index`` (default: the position in the
            dataset under any ``Subset``) is the training index the recording is keyed by.
        batch_size: examples per forward pass.
        mode: ``"eval"`` or ``"train"`` (batch statistics and dropout, on a copy of each checkpoint).
        input_gradients: also record each example's squared input-gradient norm (for ``csg``); costs one backward
            pass through the model per batch.
        device: where to run (default: where each checkpoint is); a checkpoint elsewhere is copied there.
        num_examples: the size of the recording (default ``len(dataset)``): the training set's size when
            ``dataset`` is a part of it that carries training indices.
        progress: show a bar over the checkpoints.

    Returns:
        The recording: ``num_epochs == len(checkpoints)``, with labels, number of classes, input-gradient norms
        (when asked for) and weight norms.

    Raises:
        TypeError: ``checkpoints`` not a model or a sequence of models; ``input_gradients`` not a bool.
        ValueError: no checkpoint, an empty dataset, a ``batch_size`` below 1, an unknown ``mode``, or a training
            index at or past ``num_examples``.

    >>> from torch import nn
    >>> from proxies import IndexedDataset, compute
    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <torch._C.Generator object at ...>
    >>> data = IndexedDataset(torch.randn(6, 3), torch.tensor([0, 1, 2, 0, 1, 2]))
    >>> checkpoints = [nn.Linear(3, 3), nn.Linear(3, 3)]
    >>> recording = replay(checkpoints, data, batch_size=4)
    >>> recording.num_epochs, recording.values.shape, recording.input_gradient_norms.shape
    (2, (2, 6, 5), (2, 6))
    >>> compute("confidence", recording=recording).shape
    (6,)
    """
    models = _checkpoints(checkpoints)
    if mode not in MODES:
        raise ValueError(f"mode must be one of {list(MODES)}, got {mode!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    if not isinstance(input_gradients, bool):
        raise TypeError(f"input_gradients must be True or False, got {input_gradients!r}")
    if len(dataset) == 0:
        raise ValueError("cannot replay an empty dataset")
    size = len(dataset) if num_examples is None else num_examples
    recorder = TrainingRecorder(size, input_gradients=input_gradients)
    for checkpoint in tqdm(models, desc="replay", unit="checkpoint", disable=not progress, leave=False):
        model = model_on(checkpoint, device)
        if mode == "train" and model is checkpoint:  # batch statistics would move the caller's running ones
            model = copy.deepcopy(checkpoint)
        modes = [(module, module.training) for module in model.modules()]
        model.train(mode == "train")
        try:
            _replay_one(model, dataset, recorder, batch_size=batch_size, input_gradients=input_gradients)
        finally:
            for module, training in modes:
                module.training = training
    return recorder


def _checkpoints(checkpoints) -> list[nn.Module]:
    """The checkpoints as a non-empty list of models, refused with what was expected and what came."""
    if isinstance(checkpoints, nn.Module):
        return as_checkpoints(checkpoints)
    if isinstance(checkpoints, str | bytes) or not isinstance(checkpoints, Iterable):
        raise TypeError("checkpoints must be an nn.Module or a sequence of nn.Module checkpoints, got "
                        f"{type(checkpoints).__name__}")
    checkpoints = list(checkpoints)
    if not checkpoints:
        raise ValueError("checkpoints must hold at least one nn.Module, got an empty sequence")
    wrong = [(i, type(m).__name__) for i, m in enumerate(checkpoints) if not isinstance(m, nn.Module)]
    if wrong:
        raise TypeError(f"checkpoints must all be nn.Module, got {wrong[0][1]} at position {wrong[0][0]}")
    return as_checkpoints(checkpoints)


def _replay_one(model: nn.Module, dataset: Dataset, recorder: TrainingRecorder, *, batch_size: int,
                input_gradients: bool) -> None:
    """One epoch of ``recorder``: every batch's logits (and input gradients) under ``model``, its weight norm."""
    recorder.start_epoch()
    task = task_of(dataset)
    for x, y, index in batches(dataset, batch_size, device=model_device(model), moved=("x", "y")):
        if not input_gradients:
            with torch.no_grad():
                recorder.record(task.forward(model, x), y, index)
            continue
        with torch.enable_grad():
            x = x.detach().requires_grad_()
            logits = task.forward(model, x)
            # only the inputs' gradient: no parameter's .grad is touched
            (gradient,) = torch.autograd.grad(task.loss(logits.float(), y), x)
        recorder.record(logits.detach(), y, index)
        recorder.record_input_gradients(gradient, index, scale=len(y))  # a mean loss: 1/B of each example's own
    recorder.end_epoch(model)
