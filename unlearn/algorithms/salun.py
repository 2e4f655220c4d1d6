"""SalUn (Fan et al., ICLR 2024): random-label unlearning restricted to the weights most salient for the forget set.

The saliency of a weight is ``|grad CE(forget)|``, accumulated over the whole forget set without any optimizer step;
the mask keeps the LARGEST ``mask_ratio`` of them over all parameters. (A widely copied implementation keeps the
smallest and steps the optimizer while accumulating; both are bugs.) Only the weights in the mask train: every other
weight stays bit for bit as it was, whatever ``weight_decay`` and ``momentum`` are. Masking their gradients is not
enough, since SGD adds the weight decay inside the step (and momentum carries it on), so after every step they are
put back to their starting values and their momentum is cleared, as the paper's code does since its "Fix weight
decay" commit (before it, weight decay shrank them)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from proxies.tasks import task_of

from .._checks import real
from ..data.sources import batches
from .random_label import relabelled_losses
from .registry import register_method
from .sgd import SGDConfig, num_classes, run_sgd


@dataclass
class SalUnConfig(SGDConfig):
    mask_ratio: float = 0.5
    epochs: int = 10
    lr: float = 0.013

    def __post_init__(self) -> None:
        super().__post_init__()
        real("mask_ratio", self.mask_ratio, low=0.0, high=1.0, low_open=True)


def saliency_mask(model: nn.Module, forget: Dataset, ratio: float, batch_size: int,
                  device: torch.device) -> dict[str, Tensor]:
    """Per parameter, 1 where ``|grad|`` of the forget loss is among the largest ``ratio`` of all weights."""
    params = {name: p for name, p in model.named_parameters() if p.requires_grad}
    saliency = {name: torch.zeros_like(p) for name, p in params.items()}
    model.eval()
    task = task_of(forget)
    for x, y, _ in batches(forget, batch_size, device=device):
        loss = task.loss(task.forward(model, x), y, reduction="sum")
        grads = torch.autograd.grad(loss, list(params.values()))
        for name, g in zip(params, grads, strict=True):
            saliency[name] += g
    magnitudes = torch.cat([s.abs().flatten() for s in saliency.values()])
    keep = max(1, round(ratio * magnitudes.numel()))
    flat = torch.zeros_like(magnitudes)
    flat[torch.topk(magnitudes, keep, sorted=False).indices] = 1  # exactly `keep` weights, even when many tie at 0
    masks, start = {}, 0
    for name, s in saliency.items():
        masks[name] = flat[start:start + s.numel()].view_as(s)
        start += s.numel()
    return masks


@register_method("salun", config=SalUnConfig)
def salun(model, forget, retain, config: SalUnConfig, *, seed, device):
    """Random-label unlearning on the weights most salient for the forget loss; the others stay fixed."""
    mask = saliency_mask(model, forget, config.mask_ratio, config.batch_size, device)
    params = dict(model.named_parameters())
    kept = {name: keep.bool() for name, keep in mask.items()}
    start = {name: params[name].detach().clone() for name in mask}

    def mask_gradients(m: nn.Module) -> None:
        for name, keep in mask.items():
            if params[name].grad is not None:
                params[name].grad.mul_(keep)

    @torch.no_grad()
    def freeze(optimizer: torch.optim.Optimizer) -> None:
        for name, keep in kept.items():
            p = params[name]
            p.copy_(torch.where(keep, p, start[name]))  # bit for bit: no arithmetic touches a frozen weight
            momentum = optimizer.state.get(p, {}).get("momentum_buffer")
            if momentum is not None:
                momentum.mul_(mask[name])

    generator = torch.Generator().manual_seed(seed)
    classes = num_classes(model, forget, device)
    return run_sgd(model, config, lambda epoch: relabelled_losses(model, forget, retain, config.batch_size, classes,
                                                                  generator, device), seed=seed,
                   grad_hook=mask_gradients, step_hook=freeze, forget=forget)
