"""Holdout retraining (Carlini et al. 2019): how much a model's prediction on an example moves when it is
fine-tuned on data it has never seen. Memorized examples move most.

The model is fine-tuned on held-out data (SGD lr 0.1, up to 30 epochs, stopped after 4 epochs without training-loss
improvement); the score is the symmetric KL divergence between the original and the fine-tuned softmax.

The fine-tuning is training, which is the engine's job, not the scoring layer's: the caller hands it in as
``fine_tune=``, any function with :func:`unlearn.train`'s keywords and return value (``unlearn.train`` itself is the
one to pass when ``unlearn`` is installed).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pandas as pd
import torch
from torch import nn
from torch.utils.data import Dataset

from .devices import model_device, model_on
from .kernels import symmetric_kl
from .predictions import predict
from .registry import register_proxy

__all__ = ["FineTune", "holdout_retraining"]

FineTune = Callable[..., tuple[nn.Module, Any]]
"""``fine_tune(model, data, *, epochs, lr, batch_size, momentum, weight_decay, schedule, patience, seed, device,
progress) -> (tuned copy of model, anything)``: SGD on ``data`` with the learning rate ``schedule`` (``"constant"``
here), shuffled by ``seed``, stopped once the training loss has not improved for ``patience`` epochs, leaving
``model`` unchanged. :func:`unlearn.train` is one."""


@register_proxy("holdout_retraining", higher_is_memorized=True, needs=("model", "data", "holdout", "fine_tune"),
                tasks=("classification",))
def holdout_retraining(model: nn.Module, data: Dataset, holdout: Dataset, *, fine_tune: FineTune, lr: float = 0.1,
                       max_epochs: int = 30, patience: int = 4, batch_size: int = 128, momentum: float = 0.9,
                       weight_decay: float = 5e-4, seed: int = 0, backend: str = "auto",
                       device: torch.device | str | None = None, progress: bool = True) -> pd.Series:
    """Symmetric KL between ``model`` and a copy fine-tuned on ``holdout``, per example of ``data``.

    Args:
        model: the trained model (left unchanged).
        data: the training examples to score.
        holdout: examples the model did not train on (e.g. the validation split).
        fine_tune: the training loop that fine-tunes a copy on ``holdout`` (see :data:`FineTune`), e.g.
            ``unlearn.train``.
        lr, max_epochs, patience, batch_size, momentum, weight_decay: the fine-tuning (constant learning rate).
        seed: seed of the fine-tuning.
        backend: scoring backend of :func:`proxies.symmetric_kl`.
        device: where to fine-tune and predict (default: where the model is; a model elsewhere is copied there).

    Returns:
        A Series indexed by the examples' training-set indices.
    """
    if not callable(fine_tune):
        raise TypeError(f"fine_tune must be a training function such as unlearn.train, got {fine_tune!r}")
    if len(holdout) == 0:
        raise ValueError("holdout must hold at least one example")
    model = model_on(model, device)  # the fine-tuning and both predictions run where this copy is
    device = model_device(model)
    tuned, _ = fine_tune(model, holdout, epochs=max_epochs, lr=lr, batch_size=batch_size, momentum=momentum,
                         weight_decay=weight_decay, schedule="constant", patience=patience, seed=seed, device=device,
                         progress=progress)
    before, _, index = predict(model, data, device=device)
    after, _, _ = predict(tuned, data, device=device)
    where = _scoring_device(device)  # the predictions come back on the CPU; a GPU scores them where it made them
    scores = symmetric_kl(before.to(where).double(), after.to(where).double(), backend=backend)
    return pd.Series(scores.cpu().numpy(), index=pd.Index(index.numpy(), name="index"))


def _scoring_device(device: torch.device) -> torch.device:
    """Where the symmetric KL of predictions made on ``device`` runs: that device when it is a CUDA device (the
    CUDA kernel of :func:`proxies.symmetric_kl`), else the CPU (a ``meta`` model's predictions have no values)."""
    return device if device.type == "cuda" else torch.device("cpu")
