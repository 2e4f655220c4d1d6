"""Pure-torch kernels: the reference every other backend is tested against. Runs on any device."""

from __future__ import annotations

import torch
from torch import Tensor

CLAMP = 1e-10


def signals(logits: Tensor, labels: Tensor) -> Tensor:
    """``[N, 5]``: true-class probability, max probability, entropy, cross-entropy, correctness."""
    log_p = torch.log_softmax(logits, dim=1)
    p = log_p.exp()
    log_p_true = log_p.gather(1, labels.unsqueeze(1)).squeeze(1)
    p_max = p.max(dim=1).values
    prediction = logits.argmax(dim=1)  # the first maximal logit, as torch.argmax documents
    entropy = -(p * log_p).sum(dim=1)
    correct = (prediction == labels).to(logits.dtype)
    return torch.stack([log_p_true.exp(), p_max, entropy, -log_p_true, correct], dim=1)


def learning_events(correct: Tensor) -> dict[str, Tensor]:
    """Forgetting events, first learned and presentations needed from ``correct[E, N]``."""
    epochs, n = correct.shape
    if epochs == 0:
        zeros = torch.zeros(n, dtype=torch.int64, device=correct.device)
        return {"forgetting_events": zeros, "first_learned": zeros.clone(), "presentations_needed": zeros.clone()}
    c = correct.bool()
    step = torch.arange(epochs, device=c.device).unsqueeze(1).expand(epochs, n)
    ever = c.any(dim=0)
    forgetting = (c[:-1] & ~c[1:]).sum(dim=0)
    forgetting = torch.where(ever, forgetting, torch.full_like(forgetting, epochs))
    first = torch.where(c, step, torch.full_like(step, epochs)).min(dim=0).values
    last_wrong = torch.where(~c, step, torch.full_like(step, -1)).max(dim=0).values
    return {"forgetting_events": forgetting.long(), "first_learned": first.long(),
            "presentations_needed": (last_wrong + 1).long()}


def symmetric_kl(logits_p: Tensor, logits_q: Tensor) -> Tensor:
    """``0.5 (KL(p||q) + KL(q||p)) = 0.5 sum (p - q)(log p - log q)``, probabilities clamped at 1e-10."""
    p = torch.softmax(logits_p, dim=1).clamp_min(CLAMP)
    q = torch.softmax(logits_q, dim=1).clamp_min(CLAMP)
    return 0.5 * ((p - q) * (p.log() - q.log())).sum(dim=1)
