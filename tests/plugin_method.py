"""A third-party unlearning method, loaded through the ``unlearn.methods`` entry-point group in the tests."""

from dataclasses import dataclass

import torch

from unlearn import register_method


@dataclass
class ShrinkConfig:
    factor: float = 0.5


@register_method("plugin_shrink", config=ShrinkConfig, force=True)
def shrink(model, forget, retain, config, *, seed, device):
    """Scale every weight (a stand-in for an outside method)."""
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(config.factor)
    return model
