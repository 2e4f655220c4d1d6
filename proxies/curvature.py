"""Input loss curvature (Garg et al., ICML 2024): how sharply the loss bends around each training example.

``curv(x) = 1/n sum_i || grad_x L(x + h v_i) - grad_x L(x) ||_2`` with Rademacher probes ``v_i``, in eval mode,
averaged over checkpoints. Each probe is one batched forward/backward over many examples at once: the per-example
input gradients come from one ``backward`` of the summed loss, since in eval mode examples do not interact.

On a GPU the data is moved there once per checkpoint (:func:`~proxies.batching.batches`), the probes are copied
from pinned memory without a host sync, and the scores stay there until the checkpoint is done: one host sync per
checkpoint, not one per batch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from numbers import Real

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from .batching import batches
from .checkpoints import as_checkpoints, average_over_checkpoints
from .devices import model_device, model_on
from .registry import register_proxy
from .tasks import CLASSIFICATION, Task, task_of

__all__ = ["as_checkpoints", "input_gradients", "loss_curvature"]  # as_checkpoints: from .checkpoints


def input_gradients(model: nn.Module, x: Tensor, y: Tensor, task: Task = CLASSIFICATION) -> Tensor:
    """Per-example ``grad_x loss(model(x), y)`` for a batch, the task's loss (cross-entropy; the model must treat
    examples independently)."""
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        loss = task.loss(task.forward(model, x), y, reduction="sum")
        (grad,) = torch.autograd.grad(loss, x)
    return grad


def _probe(shape: torch.Size, dtype: torch.dtype, generator: torch.Generator, pinned: bool) -> Tensor:
    """A draw of 0/1 of ``shape`` from the CPU ``generator``, in page-locked memory when ``pinned`` (then its copy
    to the GPU is asynchronous: the caching host allocator keeps the pages until the copy is done)."""
    if pinned:
        return torch.randint(0, 2, shape, generator=generator, dtype=dtype, pin_memory=True)
    return torch.randint(0, 2, shape, generator=generator, dtype=dtype)


@register_proxy("loss_curvature", higher_is_memorized=True, needs=("model", "data"),
                tasks=("classification",))
def loss_curvature(model: nn.Module | Sequence[nn.Module], data: Dataset, *, h: float | None = None,
                   n_probes: int = 10, variant: str = "rademacher", batch_size: int = 256, seed: int = 0,
                   device: torch.device | str | None = None, progress: bool = True) -> pd.Series:
    """Input loss curvature per example, averaged over checkpoints.

    Args:
        model: the trained model or a list of checkpoints (e.g. one per epoch).
        data: the examples to score; items ``(x, y)`` or ``(x, y, index)``.
        h: probe size; default 1e-3 for ``"rademacher"`` and 0.01 for ``"cure"``.
        n_probes: Rademacher probes per example (``"cure"`` uses one direction).
        variant: ``"rademacher"`` (Garg et al.) or ``"cure"``: one probe along
            ``z = h sign(g) / ||sign(g)||`` with ``g = grad_x L`` (the CURE-style variant of the RUM code).
        batch_size: examples per batched forward/backward.
        seed: seed of the probes (drawn on the CPU, the same on every device).
        device: where to compute (default: where each checkpoint is; one elsewhere is copied there).

    Returns:
        A Series indexed by the examples' training-set indices.
    """
    if variant not in ("rademacher", "cure"):
        raise ValueError(f"variant must be 'rademacher' or 'cure', got {variant!r}")
    if n_probes < 1:
        raise ValueError(f"n_probes must be >= 1, got {n_probes}")
    h = (1e-3 if variant == "rademacher" else 0.01) if h is None else h
    if isinstance(h, bool) or not isinstance(h, Real) or not (math.isfinite(h) and h > 0):
        raise ValueError(f"h must be a positive finite probe size, got {h!r}")
    task = task_of(data)

    def score(checkpoint: nn.Module) -> tuple[np.ndarray, np.ndarray]:
        checkpoint = model_on(checkpoint, device)
        dev = model_device(checkpoint)
        was_training = checkpoint.training
        checkpoint.eval()
        # the probes come from a CPU generator whatever the device, so a GPU run scores what a CPU run does
        generator = torch.Generator().manual_seed(seed)
        pinned = dev.type == "cuda"  # probes drawn into pinned memory are copied without a host sync
        values, indices = [], []
        try:
            for x, y, idx in batches(data, batch_size, device=dev):
                grad = input_gradients(checkpoint, x, y, task)
                if variant == "cure":
                    direction = torch.sign(grad)
                    norms = direction.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *[1] * (x.ndim - 1))
                    probed = input_gradients(checkpoint, x + h * direction / norms, y, task)
                    curvature = (probed - grad).flatten(1).norm(dim=1)
                else:
                    curvature = torch.zeros(len(y), device=dev, dtype=grad.dtype)
                    for _ in range(n_probes):
                        v = (_probe(x.shape, x.dtype, generator, pinned) * 2 - 1).to(dev, non_blocking=pinned)
                        probed = input_gradients(checkpoint, x + h * v, y, task)
                        curvature += (probed - grad).flatten(1).norm(dim=1)
                    curvature /= n_probes
                values.append(curvature.detach())  # stays on the device: one copy back per checkpoint
                indices.append(idx)
        finally:
            checkpoint.train(was_training)
        return (torch.cat(values).cpu().double().numpy() if values else np.zeros(0),
                torch.cat(indices).numpy() if indices else np.zeros(0, dtype=np.int64))

    return average_over_checkpoints(model, score, desc="loss curvature", progress=progress)
