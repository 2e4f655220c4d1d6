"""Per-example parameter gradients, and the gradient-norm proxy built on them.

Two engines compute them, both in batched passes rather than a loop over examples:

* ``"torch_func"`` (the default): ``torch.func.vmap`` of ``torch.func.grad`` over a ``functional_call`` of the
  model **in eval mode**. Any layer works, BatchNorm included: in eval mode it normalises with its running
  statistics, so each example's output (and gradient) depends on that example alone.
* ``"opacus"``: opacus's ``GradSampleModule`` (one backward pass with per-layer hooks). It refuses BatchNorm
  (``opacus.validators.ModuleValidator.fix`` swaps it for GroupNorm); it stays as the engine DP-SGD uses and as a
  cross-check.

Memory is bounded by ``chunk_size``: the per-sample gradients of at most ``chunk_size`` examples exist at once, a
tensor of ``chunk_size x (trainable parameters)`` numbers. By default the chunk is as many examples as fit in
:data:`CHUNK_BYTES` (512 MiB), capped at ``batch_size``: the whole batch for the small CNNs (a digits CNN example
is 0.6 MB of gradient), 12 examples for a ResNet-18 (45 MB each).

>>> import torch
>>> from torch import nn
>>> from proxies.batching import IndexedDataset
>>> data = IndexedDataset(torch.randn(5, 3), torch.tensor([0, 1, 0, 1, 1]))
>>> [(len(g), tuple(g[0].shape), idx.tolist()) for g, idx in per_sample_gradients(nn.Linear(3, 2), data,
...                                                                                  chunk_size=3)]
[(2, (3, 2, 3), [0, 1, 2]), (2, (2, 2, 3), [3, 4])]
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable, Iterator, Sequence
from numbers import Integral

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from .batching import batches
from .checkpoints import average_over_checkpoints
from .devices import model_device, model_on
from .registries import Registry
from .registry import register_proxy
from .tasks import task_of

__all__ = ["CHUNK_BYTES", "ENGINES", "engines", "get_engine", "gradient_norm", "per_sample_chunk_size",
           "per_sample_gradients", "register_engine"]

CHUNK_BYTES = 512 * 2**20
"""Default bound on the bytes of per-sample gradients held at once (one chunk): 512 MiB."""

Engine = Callable[[nn.Module, Dataset, int, int], Iterator[tuple[list[Tensor], Tensor]]]
ENGINES: Registry[Engine] = Registry("per-sample gradient engine")
"""The per-sample gradient engines by name: ``f(private model copy, data, batch_size, chunk_size)`` yielding
``([grad of each trainable parameter, [C, *param.shape]], training indices [C])`` chunk by chunk."""


def engines() -> list[str]:
    """The names of the per-sample gradient engines.

    >>> engines()
    ['opacus', 'torch_func']
    """
    return ENGINES.names()


def get_engine(name: str) -> Engine:
    """The per-sample gradient engine registered as ``name``.

    Raises:
        ValueError: an unknown name, with the names there are.
    """
    return ENGINES.get(name)


def register_engine(name: str, engine: Engine | None = None, *, force: bool = False):
    """Register a per-sample gradient engine (a call, or a decorator without ``engine``); a taken name is refused
    unless ``force``."""
    if engine is None:
        return ENGINES.register(name, force=force)
    return ENGINES.register(name, engine, force=force)


def per_sample_chunk_size(model: nn.Module, *, batch_size: int = 256, chunk_bytes: int = CHUNK_BYTES) -> int:
    """Examples per chunk so that their per-sample gradients take at most ``chunk_bytes`` (at least 1, at most
    ``batch_size``).

    >>> from torch import nn
    >>> per_sample_chunk_size(nn.Linear(1000, 1000), chunk_bytes=40_040_000)  # 4,004,000 bytes per example
    10
    >>> per_sample_chunk_size(nn.Linear(2, 2), batch_size=64)
    64
    """
    per_example = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    return max(1, min(batch_size, chunk_bytes // max(per_example, 1)))


def per_sample_gradients(model: nn.Module, data: Dataset, *, batch_size: int = 256,
                         device: torch.device | str | None = None, engine: str = "torch_func",
                         chunk_size: int | None = None) -> Iterator[tuple[list[Tensor], Tensor]]:
    """Per-example gradients of each example's own cross-entropy, chunk by chunk.

    Yields ``([grad of each trainable parameter, shape [C, *param.shape]], training indices [C])`` with
    ``C <= chunk_size``, in the order of ``data``. Only parameters with ``requires_grad`` get a gradient, in the
    order of ``[p for p in model.parameters() if p.requires_grad]``; the others (and buffers, e.g. BatchNorm's
    running statistics) are held fixed. Dropout is off. ``model`` itself is never changed or moved: the engines
    work on a private copy (on ``device``, via :func:`~proxies.devices.model_on`).

    Args:
        model: the classifier (logits out). With ``engine="opacus"`` its layers must be ones opacus supports.
        data: a dataset of ``(x, y)`` or ``(x, y, index)`` items (see :func:`~proxies.batching.batches`).
        batch_size: examples moved to the device at once.
        device: where to compute (default: where the model is).
        engine: one of :func:`engines`: ``"torch_func"`` (eval mode, BatchNorm with its running statistics) or
            ``"opacus"`` (no BatchNorm).
        chunk_size: examples whose per-sample gradients are computed together (the memory bound: one chunk is
            ``chunk_size x parameters`` numbers); default :func:`per_sample_chunk_size`, i.e. what fits in
            :data:`CHUNK_BYTES`, at most ``batch_size``.

    Raises:
        ValueError: an unknown engine, a batch or chunk size below 1, a model without trainable parameters, or
            (opacus, on the first chunk) a layer opacus does not support.
        TypeError: a chunk size that is not a whole number.
    """
    run = get_engine(engine)
    if chunk_size is not None:
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, Integral):
            raise TypeError(f"chunk_size must be a whole number or None, got {type(chunk_size).__name__} "
                            f"{chunk_size!r}")
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if not any(p.requires_grad for p in model.parameters()):
        raise ValueError("per-sample gradients need a model with at least one parameter that requires grad")
    clone = model_on(model, device)
    if clone is model:
        clone = copy.deepcopy(model)
    chunk = int(chunk_size) if chunk_size is not None else per_sample_chunk_size(clone, batch_size=batch_size)
    return run(clone, data, batch_size, chunk)


def _chunks(data: Dataset, batch_size: int, chunk_size: int,
            device: torch.device) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
    """``(x, y, index)`` slices of at most ``chunk_size`` examples of the ``batch_size`` batches of ``data``."""
    for x, y, idx in batches(data, batch_size, device=device):
        for start in range(0, len(idx), chunk_size):
            stop = start + chunk_size
            yield x[start:stop], y[start:stop], idx[start:stop]


@register_engine("torch_func")
def _torch_func_engine(clone: nn.Module, data: Dataset, batch_size: int,
                       chunk_size: int) -> Iterator[tuple[list[Tensor], Tensor]]:
    """``vmap(grad(loss of one example))`` over each chunk, ``clone`` in eval mode."""
    from torch.func import functional_call, grad, vmap

    clone.eval()
    trainable = {name: p.detach() for name, p in clone.named_parameters() if p.requires_grad}
    fixed = {name: p.detach() for name, p in clone.named_parameters() if not p.requires_grad}
    fixed.update({name: b.detach() for name, b in clone.named_buffers()})

    task = task_of(data)

    def loss(params: dict[str, Tensor], x: Tensor, y: Tensor) -> Tensor:
        output = task.forward(lambda inputs: functional_call(clone, (params, fixed), (inputs,)), x.unsqueeze(0))
        return task.loss(output, y.unsqueeze(0))

    per_example = vmap(grad(loss), in_dims=(None, 0, 0))
    for x, y, idx in _chunks(data, batch_size, chunk_size, model_device(clone)):
        grads = per_example(trainable, x, y)
        yield [grads[name] for name in trainable], idx


@register_engine("opacus")
def _opacus_engine(clone: nn.Module, data: Dataset, batch_size: int,
                   chunk_size: int) -> Iterator[tuple[list[Tensor], Tensor]]:
    """opacus's ``GradSampleModule`` over each chunk (train mode, dropout off); BatchNorm refused."""
    from opacus import GradSampleModule
    from opacus.validators import ModuleValidator

    # opacus records per-sample gradients only in train mode; with BatchNorm refused and dropout switched off,
    # train mode computes exactly what eval mode does
    clone.train()
    errors = ModuleValidator.validate(clone, strict=False)
    if errors:
        raise ValueError(f"per-sample gradients need layers opacus supports: {errors[0]} "
                         "(opacus.validators.ModuleValidator.fix(model) replaces BatchNorm with GroupNorm; "
                         "engine='torch_func' takes BatchNorm in eval mode)")
    for module in clone.modules():
        if isinstance(module, nn.modules.dropout._DropoutNd):
            module.eval()
    wrapped = GradSampleModule(clone, loss_reduction="sum")
    params = [p for p in wrapped.parameters() if p.requires_grad]
    task = task_of(data)
    try:
        for x, y, idx in _chunks(data, batch_size, chunk_size, model_device(clone)):
            wrapped.zero_grad(set_to_none=True)
            with warnings.catch_warnings():  # inputs need no gradient here; opacus's hooks still fire correctly
                warnings.filterwarnings("ignore", message="Full backward hook is firing")
                task.loss(task.forward(wrapped, x), y, reduction="sum").backward()
            yield [p.grad_sample.detach() for p in params], idx
    finally:
        wrapped._close()


@register_proxy("gradient_norm", higher_is_memorized=True, needs=("model", "data"),
                tasks=("classification",))
def gradient_norm(model: nn.Module | Sequence[nn.Module], data: Dataset, *, batch_size: int = 256,
                  device: torch.device | str | None = None, engine: str = "torch_func",
                  chunk_size: int | None = None) -> pd.Series:
    """L2 norm of ``grad_theta CE(f(x), y)`` per example (eval mode: dropout off), averaged over checkpoints.

    Only parameters with ``requires_grad`` count. The norms stay on the device until the last chunk (one copy
    to the host per checkpoint).

    Args:
        model: the trained model or a list of checkpoints (not changed).
        data: the examples to score.
        batch_size: examples moved to the device at once.
        device: where to compute (default: where each checkpoint is).
        engine: ``"torch_func"`` (default; eval mode, any layer, BatchNorm with its running statistics) or
            ``"opacus"`` (no BatchNorm: ``opacus.validators.ModuleValidator.fix`` swaps it for GroupNorm).
        chunk_size: examples whose per-sample gradients exist at once (default: what fits in
            :data:`CHUNK_BYTES`, at most ``batch_size``); see :func:`per_sample_gradients`.

    Returns:
        A Series indexed by the examples' training-set indices.

    Raises:
        ValueError: an unknown engine, with the engines there are.

    >>> import torch
    >>> from torch import nn
    >>> from proxies.batching import IndexedDataset
    >>> model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    >>> data = IndexedDataset(torch.randn(6, 3), torch.tensor([0, 1, 0, 1, 1, 0]))
    >>> scores = gradient_norm(model, data, chunk_size=4)
    >>> scores.index.tolist(), bool((scores > 0).all())
    ([0, 1, 2, 3, 4, 5], True)
    >>> gradient_norm(model, data, engine="jax")
    Traceback (most recent call last):
    ...
    ValueError: unknown per-sample gradient engine 'jax'; expected one of ['opacus', 'torch_func']
    """
    get_engine(engine)  # refuse an unknown engine before any work

    def score(checkpoint: nn.Module) -> tuple[np.ndarray, np.ndarray]:
        values, indices = [], []
        for grads, idx in per_sample_gradients(checkpoint, data, batch_size=batch_size, device=device,
                                               engine=engine, chunk_size=chunk_size):
            values.append(sum(g.flatten(1).pow(2).sum(dim=1) for g in grads).sqrt())
            indices.append(idx)
        if not values:
            return np.zeros(0), np.zeros(0, dtype=np.int64)
        return torch.cat(values).cpu().double().numpy(), torch.cat(indices).numpy()

    return average_over_checkpoints(model, score)
