"""Influence unlearning (the Fisher variant of Golatkar et al. / WoodFisher-style): one Newton-like step that
removes the forget set's pull on the weights, with the Hessian approximated by the diagonal empirical Fisher of
the retain set.

``theta <- theta + alpha / n_retain * (F + damping * mean(F))^-1 * sum_{z in forget} grad CE(z)``
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..data import tensor_batches
from ..registry import register_method


@dataclass
class InfluenceConfig:
    alpha: float = 1.0  # scales the step; the anchors sweep it
    damping: float = 0.1  # added to the Fisher diagonal, relative to its mean
    batch_size: int = 256

    def __post_init__(self) -> None:
        if self.damping <= 0 or self.batch_size < 1:
            raise ValueError(f"expected damping > 0 and batch_size >= 1, got {self.damping}, {self.batch_size}")


@register_method("influence", config=InfluenceConfig)
def influence(model, forget, retain, config: InfluenceConfig, *, seed, device):
    """One-shot update along the forget gradient, preconditioned by the inverse diagonal Fisher of retain."""
    from proxies.gradients import per_sample_gradients

    params = [p for p in model.parameters() if p.requires_grad]
    fisher = [torch.zeros_like(p) for p in params]
    for grads, _ in per_sample_gradients(model, retain, batch_size=config.batch_size, device=device):
        for total, g in zip(fisher, grads, strict=True):
            total += g.pow(2).sum(dim=0)
    fisher = [f / len(retain) for f in fisher]
    scale = torch.cat([f.flatten() for f in fisher]).mean()

    model.eval()
    forget_grad = [torch.zeros_like(p) for p in params]
    for x, y in tensor_batches(forget.inputs, forget.targets, batch_size=config.batch_size):
        loss = F.cross_entropy(model(x.to(device)), y.to(device), reduction="sum")
        for total, g in zip(forget_grad, torch.autograd.grad(loss, params), strict=True):
            total += g
    with torch.no_grad():
        for p, g, f in zip(params, forget_grad, fisher, strict=True):
            p += config.alpha / len(retain) * g / (f + config.damping * scale)
    return model
