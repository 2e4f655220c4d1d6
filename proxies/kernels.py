"""Scoring kernels with one signature on every backend.

``backend="auto"`` picks the fastest backend available for the tensor's device; ``"torch"`` is the pure-torch
reference that is always there. See :func:`proxies.backends` for what this machine has.

>>> logits = torch.tensor([[2.0, 0.0], [0.0, 3.0]])
>>> signals(logits, torch.tensor([0, 0]), backend="torch")[:, 4]
tensor([1., 0.])
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import _backends

__all__ = ["SIGNAL_COLUMNS", "learning_events", "signals", "symmetric_kl"]

SIGNAL_COLUMNS = ("confidence", "max_confidence", "entropy", "loss", "correct")
"""Columns of :func:`signals`: true-class probability, max probability, entropy (nats), cross-entropy, 0/1."""


def _check_logits(name: str, logits: Tensor, check_finite: bool) -> Tensor:
    if not isinstance(logits, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(logits).__name__}")
    if logits.ndim != 2:
        raise ValueError(f"{name} must be [N, C], got shape {tuple(logits.shape)}")
    if not logits.is_floating_point():
        raise TypeError(f"{name} must be floating point, got {logits.dtype}")
    if logits.shape[1] == 0:
        raise ValueError(f"{name} must have at least one class column, got shape {tuple(logits.shape)}")
    if logits.dtype not in (torch.float32, torch.float64):
        logits = logits.float()
    if check_finite and logits.numel() and not _all_finite(logits):
        raise ValueError(f"{name} contains NaN or infinite values")
    return logits


def _all_finite(logits: Tensor) -> bool:
    # min and max propagate NaN and are +-inf when any value is: two reductions, no [N, C] bool temporary
    # (25x faster than isfinite(logits).all() at N=1e6, C=100)
    low, high = torch.aminmax(logits)
    return bool(torch.isfinite(low) & torch.isfinite(high))


def signals(logits: Tensor, labels: Tensor, *, backend: str = "auto", check_finite: bool = True) -> Tensor:
    """Per-example softmax signals in one numerically stable pass.

    Args:
        logits: ``[N, C]`` float32 or float64 (half precision is computed in float32).
        labels: ``[N]`` integer class labels in ``[0, C)``.
        backend: ``"auto"`` or one of :func:`proxies.backends`.
        check_finite: raise on NaN/inf logits. The training recorder turns it off: then a row with a NaN or
            infinite logit gets NaN in every column, ``correct`` included, on every backend. Either way it costs
            one reduction over the logits (and one more pass when there are non-finite rows).

    Returns:
        ``[N, 5]`` in the logits' dtype (float32 for half precision), columns :data:`SIGNAL_COLUMNS`. Correctness
        compares the first maximal logit with the label, as ``argmax`` does.

    Raises:
        TypeError, ValueError: bad shapes, dtypes, labels out of range or non-finite logits.
    """
    logits = _check_logits("logits", logits, check_finite)
    if not isinstance(labels, Tensor) or labels.ndim != 1 or labels.is_floating_point() or labels.dtype == torch.bool:
        raise TypeError(f"labels must be an integer tensor [N], got {getattr(labels, 'dtype', type(labels).__name__)}")
    if labels.shape[0] != logits.shape[0]:
        raise ValueError(f"labels [{labels.shape[0]}] must match logits [{logits.shape[0]}, C]")
    if labels.device != logits.device:
        raise ValueError(f"labels are on {labels.device} but logits on {logits.device}")
    labels = labels.long()
    if labels.numel():
        low, high = (int(v) for v in torch.aminmax(labels))
        if low < 0 or high >= logits.shape[1]:
            raise ValueError(f"labels must lie in [0, {logits.shape[1]}), got [{low}, {high}]")
    kernels = _backends.resolve(backend, logits.device.type)
    if check_finite or not logits.numel() or _all_finite(logits):
        return kernels.signals(logits, labels)
    # non-finite rows: the kernels' fast exponentials assume finite input, so score zeros there and overwrite
    bad = ~torch.isfinite(logits).all(dim=1)
    out = kernels.signals(logits.masked_fill(bad[:, None], 0.0), labels)
    out[bad] = float("nan")
    return out


def learning_events(correct: Tensor, *, backend: str = "auto") -> dict[str, Tensor]:
    """Learning events from correctness per presentation (Toneva et al.).

    Args:
        correct: ``[E, N]`` bool (or 0/1) tensor, one row per presentation in order.

    Returns:
        int64 tensors ``[N]``: ``forgetting_events`` (1->0 transitions; ``E`` if never correct), ``first_learned``
        (first correct presentation; ``E`` if never) and ``presentations_needed`` (last incorrect presentation + 1;
        0 if always correct).

    >>> c = torch.tensor([[0, 1], [1, 1], [0, 1], [1, 1]], dtype=torch.bool)
    >>> {k: v.tolist() for k, v in learning_events(c, backend="torch").items()}
    {'forgetting_events': [1, 0], 'first_learned': [1, 0], 'presentations_needed': [3, 0]}
    """
    if not isinstance(correct, Tensor) or correct.ndim != 2:
        raise TypeError(f"correct must be a tensor [E, N], got {getattr(correct, 'shape', type(correct).__name__)}")
    if correct.is_floating_point():
        raise TypeError(f"correct must be bool or integer 0/1, got {correct.dtype}")
    return _backends.resolve(backend, correct.device.type).learning_events(correct.bool())


def symmetric_kl(logits_p: Tensor, logits_q: Tensor, *, backend: str = "auto") -> Tensor:
    """``0.5 (KL(p||q) + KL(q||p))`` per row of two logit matrices, probabilities clamped at 1e-10.

    >>> symmetric_kl(torch.zeros(1, 3), torch.zeros(1, 3), backend="torch")
    tensor([0.])
    """
    logits_p = _check_logits("logits_p", logits_p, True)
    logits_q = _check_logits("logits_q", logits_q, True)
    if logits_p.shape != logits_q.shape or logits_p.device != logits_q.device:
        raise ValueError(f"logits_p and logits_q must match, got {tuple(logits_p.shape)} on {logits_p.device} "
                         f"and {tuple(logits_q.shape)} on {logits_q.device}")
    dtype = torch.promote_types(logits_p.dtype, logits_q.dtype)
    return _backends.resolve(backend, logits_p.device.type).symmetric_kl(logits_p.to(dtype), logits_q.to(dtype))
