"""Record training dynamics during a Hugging Face ``transformers`` ``Trainer.train``: :class:`RecorderCallback`.

The callback feeds a :class:`proxies.TrainingRecorder` from a causal LM's training forward passes, as
:func:`unlearn.train` feeds it from its own loop; the recording then scores every recording proxy and schedules
``unlearn(..., method="rum", recording=...)``. Install the extra: ``pip install memunlearn[text]`` (``Trainer``
itself also needs ``accelerate>=1.1``).

**The contract.** Each training batch is a dict with ``input_ids``, ``labels`` (Hugging Face's: -100 where a token
is not scored, shifted inside the loss) and ``index``, each sequence's index in the training set. The library's
token datasets yield ``(input_ids, labels, index)``: :func:`as_hf_dataset` turns them into such dicts. ``Trainer``
drops every column its model's ``forward`` does not name unless told not to, so ``remove_unused_columns=False``::

    recorder = proxies.TrainingRecorder(len(splits.train))
    args = TrainingArguments(output_dir, num_train_epochs=3, remove_unused_columns=False, report_to=[])
    trainer = Trainer(model=model, args=args, train_dataset=as_hf_dataset(splits.train),
                      callbacks=[RecorderCallback(recorder)])
    trainer.train()
    scores = proxies.compute(proxies.RECORDING_PROXIES, recording=recorder)

**How it sees the batches.** A ``TrainerCallback``'s hooks are not shown the batch or the logits, so at
``on_train_begin`` the callback hooks the model itself (and unhooks it at ``on_train_end``: an evaluation after
training hands ``index`` to the model, which GPT-2 and most ``transformers`` models ignore among their keyword
arguments; evaluate on a dataset without it otherwise):

- a forward *pre*-hook takes ``index`` out of the batch's keyword arguments (the model would otherwise get it; in
  evaluation too) and, in a training forward (``model.training``), keeps ``index``, ``labels`` and
  ``num_items_in_batch``;
- a forward hook records that forward's train-mode ``output.logits`` against the labels and indices. An evaluation
  pass runs in eval mode and is not recorded. Under gradient accumulation every micro-batch is a forward of its
  own, recorded on its own with the weights it saw;
- ``on_epoch_begin`` opens an epoch; ``on_epoch_end`` closes it with the model's weight norm (the ``sgal`` proxy).

**Input gradients** (``recorder.input_gradients``, the ``csg`` proxy): a sequence's input gradient is taken at the
output of its token embeddings, ``[T, d]``, from the training backward pass itself. A forward hook on the
embedding module puts a gradient hook on that output (making it require grad if the embeddings are frozen), and a
gradient hook on ``output.loss`` catches the factor ``c`` that ``Trainer`` puts between the model's loss and the
backward pass (``1 / gradient_accumulation_steps`` or 1). What is recorded is the same quantity
:func:`unlearn.train` records: the squared norm of the gradient of the sequence's *own mean token loss*. Hugging
Face's loss is not that: it is the sum of the token losses of the batch divided by ``D``, the number of scored
tokens in the batch (``num_items_in_batch``: of all the micro-batches of one optimizer step, when ``Trainer``
passes it; else of the micro-batch, and then ``c = 1 / gradient_accumulation_steps``). Sequences of a causal LM do
not interact in a batch (no layer mixes its rows), so the embedding gradient of sequence ``b`` is ``c * n_b / D``
times its own, ``n_b`` its scored tokens; each row is multiplied by ``D / (c * n_b)`` before it is recorded. The
first training forward checks that the model's loss is that token mean (``loss * D`` equal to the summed token
losses of the logits) and refuses a model whose loss is something else, where the factor would be wrong.

**What else is refused.** Distributed training (``world_size > 1``) and ``DataParallel`` (``n_gpu > 1``): each
process or replica would see only its shard of an epoch. ``label_smoothing_factor`` (``Trainer`` then takes the
labels away from the model) and a ``compute_loss_func`` (the same): the model must compute its own loss on the
batch's labels. With input gradients, a ``compute_loss`` of one's own whose backward pass does not go through
``output.loss``, and ``fp16``: a step its loss scaler skips for overflow would record non-finite norms. ``bf16``
works (the logits are recorded in float32; the input-gradient norms came within 0.2% of float32 recomputations on
the tests' model); so does ``TrainingRecorder(..., input_gradients=False)``. Resuming from a checkpoint records
only the epochs run after it (save the recorder's ``state_dict`` yourself).
"""

from __future__ import annotations

import functools
from typing import Any

try:
    from transformers import TrainerCallback
except ImportError as error:  # pragma: no cover - exercised only without the extra
    raise ImportError("unlearn.training.transformers needs Hugging Face transformers: pip install memunlearn[text] "
                      "(or pip install 'transformers>=5' 'accelerate>=1.1')") from error
import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from proxies import TrainingRecorder
from proxies.sequences import input_embeddings, scored_lengths, token_log_probs

__all__ = ["RecorderCallback", "as_hf_dataset"]


class _AsDicts(Dataset):
    """A dataset of ``(input_ids, labels, index)`` items seen as ``{"input_ids", "labels", "index"}`` dicts."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> dict[str, Any]:
        item = self.dataset[i]
        if not isinstance(item, tuple | list) or len(item) != 3:
            raise ValueError("as_hf_dataset expects items (input_ids, labels, index) (the library's token "
                             f"datasets), got {type(item).__name__} of length "
                             f"{len(item) if hasattr(item, '__len__') else '?'}")
        input_ids, labels, index = item
        return {"input_ids": torch.as_tensor(input_ids), "labels": torch.as_tensor(labels), "index": int(index)}


def as_hf_dataset(dataset: Dataset) -> Dataset:
    """``dataset``'s ``(input_ids [T], labels [T], index)`` items as the dicts ``Trainer`` batches:
    ``{"input_ids": ..., "labels": ..., "index": int}`` (the sequences must be padded to one length, as the
    library's are, for the default collator to stack them).

    >>> items = as_hf_dataset([(torch.tensor([5, 6, 7]), torch.tensor([5, 6, -100]), 4)])
    >>> items[0]["labels"].tolist(), items[0]["index"], len(items)
    ([5, 6, -100], 4, 1)
    """
    return _AsDicts(dataset)


class _Presentation:
    """One training forward: what the recorder needs of it, filled in as the forward and backward passes go."""

    __slots__ = ("index", "labels", "num_items", "loss_gradient")

    def __init__(self, index: Tensor, labels: Tensor, num_items: Tensor | int | None) -> None:
        self.index, self.labels, self.num_items = index, labels, num_items
        self.loss_gradient: Tensor | None = None  # c: d(what Trainer backpropagates) / d(the model's loss)

    def keep_loss_gradient(self, gradient: Tensor) -> None:
        self.loss_gradient = gradient.detach()

    def scored_tokens(self) -> Tensor | int:
        """``D``: what Hugging Face's loss divides the summed token losses by."""
        if self.num_items is not None:
            return self.num_items
        return scored_lengths(self.labels).sum()


class RecorderCallback(TrainerCallback):
    """Feed ``recorder`` from a :class:`transformers.Trainer`'s training loop (see the module docstring).

    Args:
        recorder: the :class:`proxies.TrainingRecorder` to fill, sized to the training set.

    Raises:
        TypeError: at construction, something other than a recorder.
        ValueError / RuntimeError: during ``train``, arguments it cannot record under (``world_size > 1``,
            ``n_gpu > 1``, ``remove_unused_columns=True``, label smoothing, ``fp16`` with input gradients), a
            batch without ``index`` or ``labels``, a model whose loss is not Hugging Face's token mean or that
            the backward pass does not go through.
    """

    def __init__(self, recorder: TrainingRecorder) -> None:
        if not isinstance(recorder, TrainingRecorder):
            raise TypeError(f"recorder must be a proxies.TrainingRecorder, got {type(recorder).__name__}")
        self.recorder = recorder
        self._handles: list = []
        self._current: _Presentation | None = None  # the training forward under way
        self._loss_checked = False

    # ----------------------------------------------------------------------------------- Trainer's events
    def on_train_begin(self, args, state, control, model: nn.Module | None = None, **kwargs) -> None:
        self._check_arguments(args)
        if model is None:
            raise RuntimeError("RecorderCallback needs the model at on_train_begin (Trainer passes it)")
        self._detach()  # a training that raised earlier left its hooks on
        self._loss_checked = False
        self._handles = [model.register_forward_pre_hook(self._take_index, with_kwargs=True),
                         model.register_forward_hook(self._record, with_kwargs=True)]
        if self.recorder.input_gradients:
            self._handles.append(input_embeddings(model).register_forward_hook(self._watch_embeddings))

    def on_epoch_begin(self, args, state, control, **kwargs) -> None:
        self.recorder.start_epoch()

    def on_epoch_end(self, args, state, control, model: nn.Module | None = None, **kwargs) -> None:
        self.recorder.end_epoch(model)

    def on_train_end(self, args, state, control, **kwargs) -> None:
        self._detach()

    def _detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles, self._current = [], None

    def _refuse(self, error: Exception) -> Exception:
        """``error``, raised from a hook: the model is unhooked first (the failed training leaves it as it was)."""
        self._detach()
        return error

    def _check_arguments(self, args) -> None:
        """Refuse the ``TrainingArguments`` the recording would be wrong or impossible under."""
        if getattr(args, "world_size", 1) > 1 or getattr(args, "n_gpu", 1) > 1:
            raise RuntimeError(f"RecorderCallback does not support distributed or DataParallel training yet "
                               f"(world_size={args.world_size}, n_gpu={args.n_gpu}): each process or replica sees "
                               "only its shard of an epoch")
        if getattr(args, "remove_unused_columns", False):
            raise ValueError("RecorderCallback needs each batch's 'index', which Trainer drops with "
                             "remove_unused_columns=True (the default): pass TrainingArguments(..., "
                             "remove_unused_columns=False)")
        if getattr(args, "label_smoothing_factor", 0):
            raise ValueError("RecorderCallback needs the model to compute its loss on the batch's labels, which "
                             f"label_smoothing_factor={args.label_smoothing_factor} takes away from it")
        if self.recorder.input_gradients and getattr(args, "fp16", False):
            raise ValueError("RecorderCallback cannot record input gradients under fp16's loss scaler (a skipped "
                             "step records non-finite norms): use bf16=True or "
                             "TrainingRecorder(..., input_gradients=False)")

    # -------------------------------------------------------------------------------------- model hooks
    def _take_index(self, model: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        """Forward pre-hook: take ``index`` out of the batch; in a training forward, keep what to record."""
        self._current = None  # one left by a forward that raised is not this one's
        kwargs = dict(kwargs)
        index = kwargs.pop("index", None)
        if not model.training:  # evaluation: not recorded, but the model must not get the index either
            return args, kwargs
        if index is None:
            raise self._refuse(ValueError(
                "RecorderCallback got a training batch without 'index' (each sequence's index in the training set; "
                f"the batch has {sorted(kwargs)}): wrap the dataset in unlearn.training.transformers.as_hf_dataset "
                "and pass TrainingArguments(remove_unused_columns=False)"))
        labels = kwargs.get("labels")
        if not isinstance(labels, Tensor):
            raise self._refuse(ValueError(
                "RecorderCallback got a training batch whose 'labels' did not reach the model (label smoothing and a "
                "compute_loss_func take them away): the model must compute its own loss on the batch's labels"))
        self._current = _Presentation(torch.as_tensor(index), labels, kwargs.get("num_items_in_batch"))
        return args, kwargs

    def _watch_embeddings(self, module: nn.Module, args: tuple, embedded: Tensor) -> None:
        """Embedding forward hook: put a gradient hook on the token embeddings of a training forward."""
        presentation = self._current
        if presentation is None or not torch.is_grad_enabled():
            return
        if not embedded.requires_grad:  # frozen embeddings (an adapter's fine-tuning): the gradient must reach here
            embedded.requires_grad_()
        embedded.register_hook(functools.partial(self._input_gradient, presentation))

    def _record(self, model: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        """Model forward hook: record the training forward's logits; watch its loss for the backward pass."""
        presentation, self._current = self._current, None
        if presentation is None:
            return
        logits = getattr(output, "logits", None)
        if not isinstance(logits, Tensor):
            raise self._refuse(ValueError("RecorderCallback needs the model's output to have .logits (a "
                                          f"transformers causal LM), got {type(output).__name__}"))
        self.recorder.record(logits, presentation.labels, presentation.index)
        loss = getattr(output, "loss", None)
        if not self.recorder.input_gradients or not torch.is_grad_enabled():
            return
        if not isinstance(loss, Tensor) or not loss.requires_grad:
            raise self._refuse(ValueError("input gradients need the model to return the loss of the batch's "
                                          "labels (output.loss), got none; or use "
                                          "TrainingRecorder(..., input_gradients=False)"))
        if not self._loss_checked:
            try:
                _check_token_mean(logits, presentation, loss)
            except ValueError as error:
                raise self._refuse(error) from None
            self._loss_checked = True
        loss.register_hook(presentation.keep_loss_gradient)

    def _input_gradient(self, presentation: _Presentation, gradient: Tensor) -> None:
        """Gradient hook on the token embeddings: record each sequence's own input gradient (module docstring)."""
        c = presentation.loss_gradient
        if c is None:
            raise self._refuse(RuntimeError("input gradients are taken of the model's own loss, but the backward "
                                            "pass did not go through output.loss (a compute_loss of your own?): "
                                            "use TrainingRecorder(..., input_gradients=False)"))
        scored = scored_lengths(presentation.labels).to(gradient.device, torch.float32)
        total = torch.as_tensor(presentation.scored_tokens(), device=gradient.device, dtype=torch.float32)
        # a sequence with no scored token has no own loss: NaN, as its recorded signals are
        factor = torch.where(scored > 0, total / (c.float() * scored), torch.full_like(scored, float("nan")))
        own = gradient.detach().float() * factor.view(-1, *([1] * (gradient.ndim - 1)))
        self.recorder.record_input_gradients(own, presentation.index, scale=1.0)


def _check_token_mean(logits: Tensor, presentation: _Presentation, loss: Tensor) -> None:
    """Refuse a model whose loss is not Hugging Face's token mean ``sum of token NLLs / D`` of these logits: the
    factor that turns its embedding gradients into each sequence's own would be wrong."""
    with torch.no_grad():
        log_probs, _ = token_log_probs(logits.detach(), presentation.labels)
        total = torch.as_tensor(presentation.scored_tokens(), dtype=torch.float32, device=log_probs.device)
        expected = -log_probs.sum() / total
        if not torch.isclose(loss.detach().float(), expected, rtol=1e-3, atol=1e-6):
            raise ValueError(f"input gradients need the model's loss to be Hugging Face's causal-LM loss, the mean "
                             f"over the batch's scored tokens ({float(expected):.6g} for these logits and labels), "
                             f"got {float(loss):.6g}: use TrainingRecorder(..., input_gradients=False)")
