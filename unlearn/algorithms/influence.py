"""Influence unlearning (the Fisher / WoodFisher variant of the unlearning literature): one Newton-like step that
removes the forget set's pull on the weights, the Hessian approximated by the diagonal empirical Fisher of the
retain set.

``theta <- theta + alpha * (F + damping)^-1 (mean grad CE(forget) - mean grad CE(retain))``

The defaults were chosen on the digits CNN (a random forget set ends near test accuracy, retain accuracy kept);
like the anchors, sweep ``alpha`` for a new model: the step grows quickly with it. The retain set's per-sample
gradients come from :func:`proxies.gradients.per_sample_gradients` (``torch.func``, the model in eval mode, in
chunks of bounded memory), so any layer works, BatchNorm included (e.g. ``resnet18``): it uses its running
statistics, as do the forget set's gradients, which are taken in eval mode too.

>>> import torch
>>> from torch import nn
>>> from torch.utils.data import Subset
>>> from unlearn import unlearn
>>> from unlearn.data import IndexedDataset
>>> _ = torch.manual_seed(0)
>>> model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(16, 2)).eval()
>>> data = IndexedDataset(torch.randn(8, 1, 4, 4), torch.tensor([0, 1] * 4))
>>> new = unlearn(model, forget=Subset(data, [0, 1]), retain=Subset(data, range(2, 8)), method="influence").model
>>> bool((new[3].weight != model[3].weight).any()), torch.equal(new[1].running_mean, model[1].running_mean)
(True, True)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from proxies.tasks import task_of

from .._checks import real, whole
from ..data.sources import batches
from .registry import register_method


@dataclass
class InfluenceConfig:
    alpha: float = 0.01  # step size along the preconditioned direction
    damping: float = 1e-3  # added to the Fisher diagonal (absolute)
    batch_size: int = 256

    def __post_init__(self) -> None:
        real("alpha", self.alpha)
        real("damping", self.damping, low=0.0, low_open=True)
        whole("batch_size", self.batch_size, minimum=1)


@register_method("influence", config=InfluenceConfig)
def influence(model, forget, retain, config: InfluenceConfig, *, seed, device):
    """One-shot step along (forget gradient - retain gradient), preconditioned by the inverse diagonal Fisher.

    Every gradient is taken in eval mode (BatchNorm normalises with its running statistics); only parameters that
    require grad move. The sums stay on ``device``.
    """
    from proxies.gradients import per_sample_gradients

    params = [p for p in model.parameters() if p.requires_grad]
    fisher = [torch.zeros_like(p) for p in params]
    retain_grad = [torch.zeros_like(p) for p in params]
    for grads, _ in per_sample_gradients(model, retain, batch_size=config.batch_size, device=device,
                                         engine="torch_func"):
        for f, r, g in zip(fisher, retain_grad, grads, strict=True):
            f += g.pow(2).sum(dim=0)
            r += g.sum(dim=0)

    model.eval()
    forget_grad = [torch.zeros_like(p) for p in params]
    task = task_of(forget)
    for x, y, _ in batches(forget, config.batch_size, device=device):
        loss = task.loss(task.forward(model, x), y, reduction="sum")
        for total, g in zip(forget_grad, torch.autograd.grad(loss, params), strict=True):
            total += g
    with torch.no_grad():
        for p, f, r, g in zip(params, fisher, retain_grad, forget_grad, strict=True):
            direction = g / len(forget) - r / len(retain)
            p += config.alpha * direction / (f / len(retain) + config.damping)
    return model
