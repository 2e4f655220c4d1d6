"""Per-example parameter gradients with opacus, and the gradient-norm proxy built on them.

Per-sample gradients come from opacus's ``GradSampleModule`` in one batched backward pass, not a loop over examples.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Iterator, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset

from .batching import batches
from .checkpoints import average_over_checkpoints
from .registry import register_proxy

__all__ = ["gradient_norm", "per_sample_gradients"]


def per_sample_gradients(model: nn.Module, data: Dataset, *, batch_size: int = 256,
                         device: torch.device | str | None = None) -> Iterator[tuple[list[Tensor], Tensor]]:
    """Yield, batch by batch, ``([grad of each parameter, shape [B, *param.shape]], training indices [B])``.

    The gradient is of each example's own cross-entropy, with dropout off. ``model`` is not changed (a copy is
    wrapped). Layers must be ones opacus supports: BatchNorm is refused (``ModuleValidator.fix`` swaps it).
    """
    from opacus import GradSampleModule
    from opacus.validators import ModuleValidator

    dev = torch.device(device) if device is not None else next(model.parameters()).device
    # opacus records per-sample gradients only in train mode; with BatchNorm refused and dropout switched off,
    # train mode computes exactly what eval mode does
    clone = copy.deepcopy(model).to(dev).train()
    errors = ModuleValidator.validate(clone, strict=False)
    if errors:
        raise ValueError(f"per-sample gradients need layers opacus supports: {errors[0]} "
                         "(opacus.validators.ModuleValidator.fix(model) replaces BatchNorm with GroupNorm)")
    for module in clone.modules():
        if isinstance(module, nn.modules.dropout._DropoutNd):
            module.eval()
    wrapped = GradSampleModule(clone, loss_reduction="sum")
    params = [p for p in wrapped.parameters() if p.requires_grad]
    try:
        for x, y, idx in batches(data, batch_size, device=dev):
            wrapped.zero_grad(set_to_none=True)
            with warnings.catch_warnings():  # inputs need no gradient here; opacus's hooks still fire correctly
                warnings.filterwarnings("ignore", message="Full backward hook is firing")
                F.cross_entropy(wrapped(x), y, reduction="sum").backward()
            yield [p.grad_sample.detach() for p in params], idx
    finally:
        wrapped._close()


@register_proxy("gradient_norm", higher_is_memorized=True, needs=("model", "data"))
def gradient_norm(model: nn.Module | Sequence[nn.Module], data: Dataset, *, batch_size: int = 256,
                  device: torch.device | str | None = None) -> pd.Series:
    """L2 norm of ``grad_theta CE(f(x), y)`` per example (dropout off), averaged over checkpoints.

    Args:
        model: the trained model or a list of checkpoints; layers must be ones opacus computes per-sample
            gradients for (no BatchNorm: ``opacus.validators.ModuleValidator.fix`` swaps it for GroupNorm).
        data: the examples to score.
        batch_size: examples per batched backward pass.

    Returns:
        A Series indexed by the examples' training-set indices.
    """
    def score(checkpoint: nn.Module) -> tuple[np.ndarray, np.ndarray]:
        values, indices = [], []
        for grads, idx in per_sample_gradients(checkpoint, data, batch_size=batch_size, device=device):
            squared = sum(g.flatten(1).pow(2).sum(dim=1) for g in grads)
            values.append(squared.sqrt().double().cpu())
            indices.append(idx)
        return (torch.cat(values).numpy() if values else np.zeros(0),
                torch.cat(indices).numpy() if indices else np.zeros(0, dtype=np.int64))

    return average_over_checkpoints(model, score)
