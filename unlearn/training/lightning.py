"""Record training dynamics during a PyTorch Lightning ``Trainer.fit``: :class:`RecorderCallback`.

The callback feeds a :class:`proxies.TrainingRecorder` from Lightning's hooks, as :func:`unlearn.train` feeds it
from its own loop; the recording then scores every recording proxy and schedules ``unlearn(..., method="rum",
recording=...)``. Install the extra: ``pip install memunlearn[lightning]``.

**The contract.** Each training batch is ``(x, y, index)``: the inputs, the labels and each example's index in the
training set (the library's datasets yield that; wrap another dataset in :class:`proxies.batching.WithIndex`), or
whatever ``batch_to_xyi`` turns the batch into. ``training_step`` returns a dict with ``"loss"`` (the batch's
*mean* cross-entropy, as usual) and ``"logits"`` (the train-mode logits ``[B, C]`` of this forward pass, best
``.detach()``-ed) under ``logits_key``::

    class Classifier(lightning.LightningModule):
        def training_step(self, batch, batch_idx):
            x, y, index = batch
            logits = self.net(x)
            return {"loss": F.cross_entropy(logits, y), "logits": logits.detach()}

    recorder = proxies.TrainingRecorder(len(train_set))
    trainer = lightning.Trainer(max_epochs=30, callbacks=[RecorderCallback(recorder)])
    trainer.fit(Classifier(), DataLoader(train_set, batch_size=64, shuffle=True))
    scores = proxies.compute(proxies.RECORDING_PROXIES, recording=recorder)

What each hook does: ``on_train_epoch_start`` opens an epoch; ``on_train_batch_start`` makes ``x`` require grad
in place when the recorder asks for input gradients (``x`` must then be a floating-point leaf tensor, the batch
object ``training_step`` receives); ``on_train_batch_end`` records the returned logits (Lightning calls it after the
optimizer step, but the logits were computed before it, which is what the recorder wants) and ``x.grad`` (after
the backward pass); ``on_train_epoch_end`` closes the epoch with the module's weight norm (the ``sgal`` proxy).

**What else is handled.** Mixed precision (``"bf16-mixed"``, ``"16-mixed"``): the recorder casts the logits to
float32; the input gradients of ``"16-mixed"`` carry the loss scaler's factor, so that precision is refused with
input gradients on (use ``"bf16-mixed"`` or ``TrainingRecorder(..., input_gradients=False)``). Gradient
accumulation: each batch is recorded on its own; Lightning divides the loss by ``accumulate_grad_batches`` before the
backward pass, and the input gradients are scaled back. Manual optimization (``automatic_optimization = False``,
also how Lightning runs several optimizers): recorded the same way, on the contract that ``training_step`` still
returns the logits of its forward pass from before its optimizer steps and calls ``manual_backward`` on the mean
loss once (several backward passes through ``x`` add up in ``x.grad``). Distributed training (``world_size > 1``)
is refused for now: each process would see only its shard of the epoch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

try:
    import lightning.pytorch as pl
except ImportError as error:  # pragma: no cover - exercised only without the extra
    raise ImportError("unlearn.training.lightning needs PyTorch Lightning: pip install memunlearn[lightning] "
                      "(or pip install 'lightning>=2.4')") from error
import torch

from proxies import TrainingRecorder

__all__ = ["RecorderCallback"]


def _default_batch_to_xyi(batch: Any):
    if not isinstance(batch, list | tuple) or len(batch) != 3:
        raise ValueError("RecorderCallback expects each training batch to be (x, y, index) (wrap the dataset in "
                         "proxies.batching.WithIndex, or pass batch_to_xyi=), got "
                         f"{type(batch).__name__} of length {len(batch) if hasattr(batch, '__len__') else '?'}")
    return batch


class RecorderCallback(pl.Callback):
    """Feed ``recorder`` from a :class:`lightning.pytorch.Trainer`'s training loop (see the module docstring).

    Args:
        recorder: the :class:`proxies.TrainingRecorder` to fill, sized to the training set.
        batch_to_xyi: turns a training batch into ``(x, y, index)``; ``x`` must be the very tensor object
            ``training_step`` runs the model on when input gradients are recorded. Default: the batch itself.
        logits_key: where the logits are in ``training_step``'s returned dict.
        loss_reduction: ``"mean"`` (the loss is a mean over the batch) or ``"sum"``; says how to undo it in
            ``x.grad``.

    Raises:
        TypeError / ValueError: at construction, a wrong argument; during ``fit``, ``world_size > 1``,
            ``"16-mixed"`` with input gradients, a batch or output that breaks the contract.
    """

    def __init__(self, recorder: TrainingRecorder, *, batch_to_xyi: Callable[[Any], tuple] | None = None,
                 logits_key: str = "logits", loss_reduction: str = "mean") -> None:
        if not isinstance(recorder, TrainingRecorder):
            raise TypeError(f"recorder must be a proxies.TrainingRecorder, got {type(recorder).__name__}")
        if batch_to_xyi is not None and not callable(batch_to_xyi):
            raise TypeError(f"batch_to_xyi must be callable, got {type(batch_to_xyi).__name__}")
        if loss_reduction not in ("mean", "sum"):
            raise ValueError(f"loss_reduction must be 'mean' or 'sum', got {loss_reduction!r}")
        self.recorder = recorder
        self.batch_to_xyi = batch_to_xyi or _default_batch_to_xyi
        self.logits_key = logits_key
        self.loss_reduction = loss_reduction

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        if trainer.world_size > 1:
            raise RuntimeError(f"RecorderCallback does not support distributed training yet (world_size="
                               f"{trainer.world_size}): each process sees only its shard of an epoch")
        if self.recorder.input_gradients and getattr(trainer.precision_plugin, "scaler", None) is not None:
            raise ValueError("RecorderCallback cannot record input gradients under a loss scaler (precision="
                             f"{trainer.precision!r}): use precision='bf16-mixed' or "
                             "TrainingRecorder(..., input_gradients=False)")

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.recorder.start_epoch()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if not self.recorder.input_gradients:
            return
        x = self.batch_to_xyi(batch)[0]
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            raise TypeError("input gradients need floating-point input tensors, got "
                            f"{getattr(x, 'dtype', type(x).__name__)}; convert the inputs in the dataset or use "
                            "TrainingRecorder(..., input_gradients=False)")
        if not x.is_leaf:
            raise ValueError("input gradients need the batch's x to be a leaf tensor (not the output of an "
                             "autograd operation)")
        x.requires_grad_()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        x, y, index = self.batch_to_xyi(batch)
        if not isinstance(outputs, dict) or self.logits_key not in outputs:
            got = sorted(outputs) if isinstance(outputs, dict) else type(outputs).__name__
            raise ValueError(f"RecorderCallback needs training_step to return a dict with {self.logits_key!r} (the "
                             f"batch's train-mode logits [B, C]) and 'loss', got {got}")
        self.recorder.record(outputs[self.logits_key], y, index)
        if not self.recorder.input_gradients:
            return
        if x.grad is None:
            raise RuntimeError("input gradients were asked for but x.grad is None after the backward pass: "
                               "training_step must run the model on the batch's x itself (no .detach() or "
                               "copy), or use TrainingRecorder(..., input_gradients=False)")
        scale = float(len(x)) if self.loss_reduction == "mean" else 1.0
        if pl_module.automatic_optimization:  # Lightning divided the loss by it before the backward pass
            scale *= trainer.accumulate_grad_batches
        self.recorder.record_input_gradients(x.grad, index, scale=scale)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.recorder.end_epoch(pl_module)
