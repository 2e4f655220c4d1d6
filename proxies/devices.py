"""Where a model's computation runs: the one rule every public ``device=`` argument follows.

``device=None`` means "where the model is"; any other device gets a copy of the model moved there, so the
caller's model never changes place.

>>> from torch import nn
>>> model = nn.Linear(4, 2)
>>> moved = model_on(model, "meta")
>>> model_device(moved).type, model_device(model).type
('meta', 'cpu')
>>> model_on(model, None) is model
True
"""

from __future__ import annotations

import contextlib
import copy

import torch
from torch import nn

__all__ = ["keep_torch_threads", "model_device", "model_on"]


def model_device(model: nn.Module) -> torch.device:
    """The device of ``model``'s first parameter (or buffer); CPU for a model with neither."""
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return torch.device("cpu")


def model_on(model: nn.Module, device: torch.device | str | None) -> nn.Module:
    """``model`` itself when ``device`` is None or every parameter and buffer is already there, else a copy of
    it on ``device`` (the caller's model is never moved)."""
    if device is None:
        return model
    device = torch.device(device)
    tensors = (*model.parameters(), *model.buffers())
    if all(_same_device(t.device, device) for t in tensors):
        return model
    return copy.deepcopy(model).to(device)


def _same_device(a: torch.device, b: torch.device) -> bool:
    """``cuda`` and ``cuda:0`` are the same place when device 0 is the current one."""
    if a.type != b.type:
        return False
    if a.index is None or b.index is None:
        current = torch.cuda.current_device() if a.type == "cuda" and torch.cuda.is_available() else 0
        return (a.index if a.index is not None else current) == (b.index if b.index is not None else current)
    return a.index == b.index


@contextlib.contextmanager
def keep_torch_threads():
    """Run a numba parallel kernel without changing torch's thread count.

    numba's OpenMP threading layer, when it starts, sets the OpenMP thread count of the whole process to the
    machine's cores, and torch reads its own intra-op count from the same OpenMP runtime. A process that ran with one
    thread (``OMP_NUM_THREADS=1``, ``torch.set_num_threads(1)``) would train with two after its first LiRA fit or
    numba-scored proxy, and its floating-point sums would no longer match a fresh process's. The count torch had is
    put back on the way out.

    >>> before = torch.get_num_threads()
    >>> with keep_torch_threads():
    ...     torch.set_num_threads(before + 1)
    >>> torch.get_num_threads() == before
    True
    """
    threads = torch.get_num_threads()
    try:
        yield
    finally:
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
