"""SalUn (Fan et al., ICLR 2024): random-label unlearning restricted to the weights most salient for the forget set.

The saliency of a weight is ``|grad CE(forget)|``, accumulated over the whole forget set without any optimizer step;
the mask keeps the LARGEST ``mask_ratio`` of them over all parameters. (A widely copied implementation keeps the
smallest and steps the optimizer while accumulating; both are bugs.) The mask zeroes the gradients of the other
weights; SGD's weight decay, applied inside the step as in the paper's code, still shrinks them slightly (set
``weight_decay=0`` to leave them exactly as they were).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._checks import real
from ..data import IndexedDataset, tensor_batches
from ..registry import register_method
from .loop import SGDConfig, num_classes, run_sgd
from .random_label import relabelled_losses


@dataclass
class SalUnConfig(SGDConfig):
    mask_ratio: float = 0.5
    epochs: int = 10
    lr: float = 0.013

    def __post_init__(self) -> None:
        super().__post_init__()
        real("mask_ratio", self.mask_ratio, low=0.0, high=1.0, low_open=True)


def saliency_mask(model: nn.Module, forget: IndexedDataset, ratio: float, batch_size: int,
                  device: torch.device) -> dict[str, Tensor]:
    """Per parameter, 1 where ``|grad|`` of the forget loss is among the largest ``ratio`` of all weights."""
    params = {name: p for name, p in model.named_parameters() if p.requires_grad}
    saliency = {name: torch.zeros_like(p) for name, p in params.items()}
    model.eval()
    for x, y in tensor_batches(forget.inputs, forget.targets, batch_size=batch_size):
        loss = F.cross_entropy(model(x.to(device)), y.to(device), reduction="sum")
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
    """Random-label unlearning on the weights most salient for the forget loss."""
    mask = saliency_mask(model, forget, config.mask_ratio, config.batch_size, device)
    params = dict(model.named_parameters())

    def apply_mask(m: nn.Module) -> None:
        for name, keep in mask.items():
            if params[name].grad is not None:
                params[name].grad.mul_(keep)

    generator = torch.Generator().manual_seed(seed)
    classes = num_classes(model, forget, device)
    return run_sgd(model, config, lambda epoch: relabelled_losses(model, forget, retain, config.batch_size, classes,
                                                                  generator, device), seed=seed, grad_hook=apply_mask,
                   forget=forget)
