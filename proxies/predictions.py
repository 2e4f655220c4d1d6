"""A model's eval-mode logits on a dataset, batch by batch, where the model is: what model-based proxies score.

>>> from torch import nn
>>> from proxies import IndexedDataset
>>> ds = IndexedDataset(torch.randn(5, 3), torch.tensor([0, 1, 1, 0, 1]))
>>> logits, labels, index = predict(nn.Linear(3, 2), ds, batch_size=2)
>>> tuple(logits.shape), labels.tolist(), index.tolist()
((5, 2), [0, 1, 1, 0, 1], [0, 1, 2, 3, 4])
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from .batching import batches
from .devices import model_device, model_on
from .tasks import task_of

__all__ = ["eval_batches", "predict", "predict_signals"]


@torch.no_grad()
def predict(model: nn.Module, dataset: Dataset, *, batch_size: int = 1024,
            views: Sequence[Callable[[Tensor], Tensor]] | None = None,
            device: torch.device | str | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Eval-mode logits ``[N, C]`` (float32, on the CPU), labels ``[N]`` and training indices ``[N]`` of a dataset,
    in its order. On a device the logits are gathered there and copied back once, at the end (they need
    ``N x C x 4`` bytes of its memory).

    Args:
        model: a classifier returning logits ``[B, C]``; its train/eval mode is restored afterwards.
        dataset: items ``(x, y)`` or ``(x, y, index)``.
        batch_size: examples per forward pass.
        device: where to predict (default: where the model is); a model elsewhere is copied there, never moved.
        views: functions of a batch of inputs (e.g. a horizontal flip, as membership attacks query); the logits
            are then ``[N, len(views), C]``, one slice per view.
    """
    task = task_of(dataset)
    outputs, labels, indices = [], [], []
    # the inputs go to the device (an in-memory dataset once per call); labels and indices stay on the CPU, where
    # they are returned. The logits stay on the device until the end: one copy back, not one per batch
    for net, x, y, index in eval_batches(model, dataset, batch_size, device=device, moved=("x",)):
        outputs.append(task.forward(net, x).float() if views is None
                       else torch.stack([task.forward(net, view(x)).float() for view in views], dim=1))
        labels.append(y)
        indices.append(index)
    if not outputs:
        return torch.zeros(0, 0), torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long)
    return _on_cpu(outputs), torch.cat(labels), torch.cat(indices)


def eval_batches(model: nn.Module, dataset: Dataset, batch_size: int, *, device: torch.device | str | None = None,
                 moved: tuple[str, ...] = ("x", "y"), progress: bool = False,
                 desc: str | None = None) -> Iterator[tuple[nn.Module, Tensor, Tensor, Tensor]]:
    """``(model, x, y, index)`` for each batch of ``dataset`` (the parts in ``moved`` on the model's device), the
    model (copied to ``device`` if it is elsewhere, never moved) in eval mode while the batches are read, its mode
    restored after the last or on an error; ``progress``: a tqdm bar named ``desc``. The pass every model-based
    score makes; callers run it under ``torch.no_grad()`` where they need (a grad mode set inside a generator would
    leak into its caller between batches)."""
    model = model_on(model, device)
    was_training = model.training
    model.eval()
    try:
        for x, y, index in tqdm(batches(dataset, batch_size, device=model_device(model), moved=moved), desc=desc,
                                unit="batch", total=math.ceil(len(dataset) / batch_size), disable=not progress,
                                leave=False):
            yield model, x, y, index
    finally:
        model.train(was_training)


def _on_cpu(outputs: list[Tensor]) -> Tensor:
    """The batches' outputs as one CPU tensor: concatenated where they are, then copied back once (the one host
    sync of a prediction). Outputs a probe model already hands back on the CPU are concatenated there."""
    devices = {t.device for t in outputs}
    if len(devices) > 1:
        return torch.cat([t.cpu() for t in outputs])
    return torch.cat(outputs).cpu()


@torch.no_grad()
def predict_signals(model: nn.Module, dataset: Dataset, *, batch_size: int = 256,
                    device: torch.device | str | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Eval-mode per-example signals ``[N, columns]`` (float32, on the CPU; the columns the dataset's task records:
    :data:`proxies.kernels.SIGNAL_COLUMNS`, or :data:`proxies.sequences.SEQUENCE_COLUMNS` for token sequences),
    labels and training indices, in the dataset's order. Each batch is reduced where it is computed, so a language
    model's ``[B, T, V]`` logits never pile up.

    >>> from torch import nn
    >>> from proxies import IndexedDataset
    >>> ds = IndexedDataset(torch.zeros(2, 3), torch.tensor([0, 1]))
    >>> predict_signals(nn.Linear(3, 2), ds)[0].shape
    torch.Size([2, 5])
    """
    task = task_of(dataset)
    rows, labels, indices = [], [], []
    for net, x, y, index in eval_batches(model, dataset, batch_size, device=device):
        output = task.forward(net, x)
        rows.append(task.signals(task.record(output, y), task.fingerprint(y)).float())
        labels.append(y.cpu())
        indices.append(index)
    if not rows:
        return torch.zeros(0, len(task.columns)), torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long)
    return _on_cpu(rows), torch.cat(labels), torch.cat(indices)
