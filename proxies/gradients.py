"""Per-example gradient norm: the norm of each training example's own parameter gradient, averaged over checkpoints.

Per-sample gradients come from opacus's ``GradSampleModule`` in one batched backward pass, not a loop over examples.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from .curvature import as_checkpoints
from .registry import register_proxy

__all__ = ["gradient_norm"]


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
    from opacus import GradSampleModule
    from opacus.validators import ModuleValidator

    from unlearn.data import batches

    checkpoints = as_checkpoints(model)
    total, index = None, None
    for checkpoint in checkpoints:
        dev = torch.device(device) if device is not None else next(checkpoint.parameters()).device
        # opacus records per-sample gradients only in train mode; with BatchNorm refused and dropout switched
        # off, train mode computes exactly what eval mode does
        clone = copy.deepcopy(checkpoint).to(dev).train()
        errors = ModuleValidator.validate(clone, strict=False)
        if errors:
            raise ValueError(f"gradient_norm needs layers opacus supports: {errors[0]} "
                             "(opacus.validators.ModuleValidator.fix(model) replaces BatchNorm with GroupNorm)")
        for module in clone.modules():
            if isinstance(module, nn.modules.dropout._DropoutNd):
                module.eval()
        wrapped = GradSampleModule(clone, loss_reduction="sum")
        values, indices = [], []
        for x, y, idx in batches(data, batch_size, device=dev):
            wrapped.zero_grad(set_to_none=True)
            with warnings.catch_warnings():  # inputs need no gradient here; opacus's hooks still fire correctly
                warnings.filterwarnings("ignore", message="Full backward hook is firing")
                F.cross_entropy(wrapped(x), y, reduction="sum").backward()
            squared = sum(p.grad_sample.flatten(1).pow(2).sum(dim=1) for p in wrapped.parameters()
                          if p.requires_grad and p.grad_sample is not None)
            values.append(squared.sqrt().detach().double().cpu())
            indices.append(idx)
        wrapped._close()
        values = torch.cat(values).numpy() if values else np.zeros(0)
        total = values if total is None else total + values
        index = torch.cat(indices).numpy() if indices else np.zeros(0, dtype=np.int64)
    return pd.Series(total / len(checkpoints), index=pd.Index(index, name="index"))
