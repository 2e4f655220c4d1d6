"""Record every example's softmax signals at every presentation during training, at almost no cost.

The training loop calls :meth:`TrainingRecorder.record` with the train-mode logits of each batch *before* the
optimizer step; the recorder keeps, per epoch and example, the columns of :func:`proxies.kernels.signals`. An example
not presented in an epoch (``drop_last``) stays NaN there.

A recording also carries what it was made on, so that a reader can refuse a recording of another training set:
``num_examples``, ``num_classes`` (the logits' width) and ``labels``, each example's label as last presented (-1
where never presented). :meth:`TrainingRecorder.check_matches` compares them with a dataset's labels at its training
indices; :func:`unlearn.unlearn` calls it on the forget and retain sets.

>>> rec = TrainingRecorder(num_examples=3)
>>> rec.start_epoch()
>>> rec.record(torch.tensor([[3.0, 0.0], [0.0, 3.0]]), torch.tensor([0, 0]), torch.tensor([2, 0]))
>>> rec.end_epoch()
>>> rec["correct"]
array([[ 0., nan,  1.]], dtype=float32)

Beyond the softmax signals a recording can hold two more things, which the ``csg`` and ``sgal`` proxies read:

- **Input gradients** (``input_gradients=True``, the default): each presentation's squared input-gradient norm
  ``||grad_x loss(x, y)||^2``, taken from the training backward pass itself. :func:`unlearn.train` makes the
  batch's inputs require grad and hands ``x.grad`` over after each backward. A manual loop does the same:

  >>> model = torch.nn.Linear(3, 2)
  >>> optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
  >>> x, y, index = torch.randn(4, 3), torch.tensor([0, 1, 1, 0]), torch.arange(4)
  >>> rec = TrainingRecorder(num_examples=4)
  >>> rec.start_epoch()
  >>> x = x.requires_grad_()                   # 1. the batch's inputs require grad
  >>> logits = model(x)
  >>> loss = torch.nn.functional.cross_entropy(logits, y)   # mean over the batch
  >>> rec.record(logits, y, index)
  >>> optimizer.zero_grad(); loss.backward(); optimizer.step()
  >>> rec.record_input_gradients(x.grad, index, scale=len(x))  # 2. x.grad of a mean loss is 1/B of each example's
  >>> rec.end_epoch(model)                      # 3. the model: its weight norm at the epoch's end, for sgal
  >>> rec.input_gradient_norms.shape, rec.weight_norms.shape
  ((1, 4), (1,))

  With a sum-reduced loss, ``scale=1``. With BatchNorm in train mode an example's input also moves the batch's
  statistics, so ``x.grad`` holds a (small) share of the other examples' losses too; the recording keeps what the
  backward pass gave, as the CSG paper's training-time measurement does.
- **Weight norms**: the L2 norm of all trainable parameters at the end of each epoch, when ``end_epoch`` is given
  the model.
"""

from __future__ import annotations

import math
import numbers
import os

import numpy as np
import torch
from torch import Tensor

from .files import written
from .kernels import SIGNAL_COLUMNS
from .sequences import CAUSAL_LM, SEQUENCE_COLUMNS, sequence_fingerprint
from .tasks import CLASSIFICATION, Task

__all__ = ["COLUMN_SETS", "TrainingRecorder"]

COLUMN_SETS: dict[tuple[str, ...], Task] = {SIGNAL_COLUMNS: CLASSIFICATION, SEQUENCE_COLUMNS: CAUSAL_LM}
"""The columns a recording can have, and the kind of example that records them."""


class TrainingRecorder:
    """Per-presentation training dynamics, stored as ``epochs x examples`` float32 arrays.

    Args:
        num_examples: size of the training set; ``record`` takes indices in ``[0, num_examples)``.
        input_gradients: ask the training loop for each presentation's input-gradient norm (the ``csg`` proxy).
            :func:`unlearn.train` reads this flag; it costs one more backward step through the first layer to the
            input: +6% of a digits epoch and +20% of a Fashion-MNIST one on a CPU, where oneDNN's backward for a
            1-channel convolution is slow (``benchmarks/README.md``). A manual loop records them with
            :meth:`record_input_gradients`.
        task: the kind of example (:class:`proxies.tasks.Task`), which turns the outputs an epoch buffered into
            each example's columns. None: told by the first batch, logits ``[B, C]`` (classification) or ``[B, T,
            V]`` (token sequences, :class:`proxies.sequences.CausalLM`).
    """

    def __init__(self, num_examples: int, *, input_gradients: bool = True, task: Task | None = None) -> None:
        if isinstance(num_examples, bool) or not isinstance(num_examples, int) or num_examples < 0:
            raise ValueError(f"num_examples must be a non-negative int, got {num_examples!r}")
        if not isinstance(input_gradients, bool):
            raise TypeError(f"input_gradients must be True or False, got {input_gradients!r}")
        self.num_examples = num_examples
        self.input_gradients = input_gradients
        # what turns the epoch's outputs into its columns; None: told by the first batch's shape
        self.task: Task | None = task
        self._width: int | None = None  # the logits' width of the last batch (classes, or the vocabulary)
        self._epochs: list[Tensor] = []
        # per finished epoch: squared input-gradient norms [N] (None: the epoch recorded none) and the weight norm
        self._gradient_epochs: list[Tensor | None] = []
        self._weight_norms: list[float] = []
        self._gradients: Tensor | None = None  # [N] squared input-gradient norms of the open epoch
        # the fingerprint of the training set: each example's label as last presented (-1: never), the logits'
        # width; None for both when unknown (a file written before recordings carried them)
        self._last_labels: np.ndarray | None = np.full(num_examples, -1, dtype=np.int64)
        self._num_classes: int | None = None
        self._current: Tensor | None = None  # presented-this-epoch mask while an epoch is open
        self._epoch_has_rows = False
        self._logits: Tensor | None = None  # [N, C] logits of the open epoch's presentations
        self._labels: Tensor | None = None
        self._stacked: np.ndarray | None = None

    @property
    def columns(self) -> tuple[str, ...]:
        """The names of the recorded columns: the task's (:data:`proxies.kernels.SIGNAL_COLUMNS` for classification,
        :data:`proxies.sequences.SEQUENCE_COLUMNS` for token sequences)."""
        return tuple((self.task or CLASSIFICATION).columns)

    # --------------------------------------------------------------------------------------- during training
    # A batch only copies its logits into an epoch buffer; the signals are computed once per epoch over the whole
    # buffer. That keeps the cost per batch to one small copy, where computing them per batch cost ~2% of an epoch.
    # (Token sequences are reduced in the batch instead, the task's record(): an epoch's [N, T, V] logits would not
    # fit in memory; benchmarks/README.md has the cost, +2.4% of a tiny_gpt epoch.)
    def start_epoch(self) -> None:
        """Open a new epoch (closing one left open)."""
        if self._current is not None:
            self.end_epoch()
        # presented this epoch; the last row is where indices out of range on a device land (see record)
        self._current = torch.zeros(self.num_examples + 1, dtype=torch.bool)
        self._epoch_has_rows = False  # kept on the host: asking the mask would sync with the device
        self._gradients = None
        if self._logits is not None:
            self._current = self._current.to(self._logits.device)

    def record(self, logits: Tensor, labels: Tensor, index: Tensor) -> None:
        """Store one batch: train-mode ``logits [B, C]``, ``labels [B]``, training-set ``index [B]`` (token
        sequences: ``logits [B, T, V]`` and ``labels [B, T]`` with -100 where a token is not scored, shifted as the
        model's loss shifts them; see :mod:`proxies.sequences`).

        Nothing here waits for the device: the batch is copied into the epoch's buffers where they are. An ``index``
        on the CPU is range-checked at once (a ValueError); one on a device is checked at :meth:`end_epoch`, in the
        epoch's one read of the device (a row out of range is written to a spare row of the buffers, and the
        epoch's end raises the ValueError), since comparing it here would wait for the device at every batch.
        """
        if self._current is None:
            raise RuntimeError("call start_epoch() before record()")
        index, labels = torch.as_tensor(index), torch.as_tensor(labels)
        if self.task is None:  # no task named: the first batch's logits say which
            self.task = CAUSAL_LM if getattr(logits, "ndim", 0) == 3 else CLASSIFICATION
        self._check_batch(logits, labels, index)
        self._check_host_index(index)
        rows = self.task.record(logits.detach(), labels)  # what the epoch keeps: logits, or the signals themselves
        if self._logits is not None and self._logits.shape[1] != rows.shape[1] and self._epoch_has_rows:
            raise ValueError(f"logits have {rows.shape[1]} classes, earlier batches of this epoch had "
                             f"{self._logits.shape[1]}")
        if self._logits is None or self._logits.shape[1] != rows.shape[1] or (
                self._logits.device != rows.device and not self._epoch_has_rows):
            # the buffers live where the logits are: no device sync per batch
            size = self.num_examples + 1  # the last row: where out-of-range device indices land
            self._logits = torch.zeros(size, rows.shape[1], dtype=torch.float32, device=rows.device)
            self._labels = torch.zeros(size, dtype=torch.long, device=rows.device)
            self._current = self._current.to(rows.device)
        self._width = self.task.width(logits)
        # a batch from another device in the middle of an epoch joins the epoch's buffers, which keep its rows
        device = self._logits.device
        index = index.to(device)
        index = self._spare_row_for_out_of_range(index)
        self._logits[index] = rows.to(device=device, dtype=torch.float32)
        self._labels[index] = self.task.fingerprint(labels).to(device)
        self._current[index] = True
        self._epoch_has_rows = self._epoch_has_rows or bool(len(index))

    def _check_batch(self, logits: Tensor, labels: Tensor, index: Tensor) -> None:
        """Refuse a batch whose shapes or dtypes are not the task's."""
        sequences = self.task.columns != SIGNAL_COLUMNS
        dims, expected = (3, "[B, T, V] (token sequences)") if sequences else (2, "[B, C]")
        if not isinstance(logits, torch.Tensor) or logits.ndim != dims:
            raise ValueError(f"logits must be a tensor {expected}, got "
                             f"{getattr(logits, 'shape', type(logits).__name__)}")
        label_shape = tuple(logits.shape[:2]) if sequences else (len(logits),)
        if (labels.shape[:1] != label_shape[:1] or labels.ndim != len(label_shape)
                or (sequences and labels.shape[1] < logits.shape[1])) or index.shape != (len(logits),):
            wanted = (f"labels [B, T] = {list(label_shape)} (or longer) and index [B] = [{len(logits)}]" if sequences
                      else f"labels and index must be [B] = [{len(logits)}]")
            raise ValueError(f"{wanted} like the logits' rows, got {list(labels.shape)} and {list(index.shape)}")
        for name, value in (("labels", labels), ("index", index)):
            if value.is_floating_point() or value.dtype == torch.bool:
                raise TypeError(f"{name} must be integers, got {value.dtype}")

    def record_input_gradients(self, gradients: Tensor, index: Tensor, *, scale: float = 1.0) -> None:
        """Store one batch's input gradients: ``gradients [B, ...]`` (``x.grad`` after the backward pass), keyed by
        training-set ``index [B]``. Each example keeps ``(scale * ||gradients[b]||)^2``: ``scale`` is the batch
        size when the loss was a mean over the batch (each row of ``x.grad`` is then 1/B of the example's own
        input gradient), 1 for a summed loss. The norms stay on the gradients' device until :meth:`end_epoch`.

        Raises:
            RuntimeError: no open epoch.
            ValueError: shapes that do not match, an index out of range, or a scale that is not finite and > 0.
        """
        if self._current is None:
            raise RuntimeError("call start_epoch() before record_input_gradients()")
        if not isinstance(gradients, torch.Tensor) or gradients.ndim < 1:
            raise ValueError("gradients must be a tensor [B, ...] (x.grad of the batch's inputs; None means the "
                             f"inputs did not require grad), got {type(gradients).__name__}")
        index = torch.as_tensor(index)
        if index.shape != (len(gradients),) or index.is_floating_point() or index.dtype == torch.bool:
            raise ValueError(f"index must be [B] = [{len(gradients)}] integers, got {index.dtype} {list(index.shape)}")
        if isinstance(scale, bool) or not isinstance(scale, numbers.Real) or not math.isfinite(scale) or scale <= 0:
            raise ValueError(f"scale must be a finite number > 0 (the batch size for a mean loss), got {scale!r}")
        self._check_host_index(index)
        squared = gradients.detach().flatten(1).float().pow(2).sum(1) * float(scale) ** 2
        n = self.num_examples
        if self._gradients is None or self._gradients.device != squared.device:
            buffer = torch.full((n + 1,), float("nan"), device=squared.device)  # + the spare row, as in record()
            if self._gradients is not None:  # a batch from another device joins the rows already there
                buffer.copy_(self._gradients.to(squared.device))
            self._gradients = buffer
        index = index.to(squared.device)
        index = self._spare_row_for_out_of_range(index)
        if index.device.type != "cpu" and self._current.device == index.device:
            self._current[n] |= (index == n).any()  # end_epoch reports it, as for record()
        self._gradients[index] = squared

    def _check_host_index(self, index: Tensor) -> None:
        """Refuse an index on the CPU outside ``[0, num_examples)`` at once (one on a device: see record())."""
        if index.device.type == "cpu" and index.numel() and (int(index.min()) < 0
                                                             or int(index.max()) >= self.num_examples):
            raise ValueError(f"index must lie in [0, {self.num_examples}), "
                             f"got [{int(index.min())}, {int(index.max())}]")

    def _spare_row_for_out_of_range(self, index: Tensor) -> Tensor:
        """A device index with its out-of-range entries sent to the spare row ``num_examples``, without waiting for
        the device; a CPU index (checked already) as it is."""
        if index.device.type == "cpu":
            return index
        return torch.where((index >= 0) & (index < self.num_examples), index, self.num_examples)

    def end_epoch(self, model: torch.nn.Module | None = None) -> None:
        """Close the current epoch: score every presented example's logits in one pass. Given the ``model``, also
        keep the L2 norm of its trainable parameters (all of them, as one vector) as the epoch's weight norm."""
        if self._current is None:
            raise RuntimeError("end_epoch() without start_epoch()")
        if model is not None and not isinstance(model, torch.nn.Module):
            raise TypeError(f"model must be a torch.nn.Module or None, got {type(model).__name__}")
        n = self.num_examples
        values = torch.full((n, len(self.columns)), float("nan"))
        presented = self._current[:n]
        any_presented, out_of_range = (bool(v) for v in torch.stack([presented.any(), self._current[n]]).cpu())
        if out_of_range:
            self._current, self._gradients = None, None
            raise ValueError(f"index must lie in [0, {n}): a batch of this epoch held one outside it (indices on "
                             f"{self._logits.device} are checked when the epoch ends); the epoch is discarded")
        if any_presented:
            # a diverged model's NaN/inf rows come back NaN, as if not presented
            logits, labels = self._logits[:n][presented], self._labels[:n][presented]
            scored = self.task.signals(logits, labels, check_finite=False)
            on_host = presented.cpu()
            values[on_host] = scored.cpu()
            if self._last_labels is not None:
                self._last_labels[on_host.numpy()] = labels.cpu().numpy()
            self._num_classes = self._width
        self._epochs.append(values)
        self._gradient_epochs.append(None if self._gradients is None else self._gradients[:n].float().cpu())
        self._weight_norms.append(_weight_norm(model) if model is not None else float("nan"))
        self._current = None
        self._gradients = None
        self._stacked = None

    # --------------------------------------------------------------------------------------------- reading
    @property
    def num_epochs(self) -> int:
        return len(self._epochs)

    @property
    def values(self) -> np.ndarray:
        """All signals, ``[epochs, examples, columns]`` float32 (:attr:`columns`), read-only."""
        if self._stacked is None:
            self._stacked = (torch.stack(self._epochs).numpy() if self._epochs
                             else np.zeros((0, self.num_examples, len(self.columns)), dtype=np.float32))
            self._stacked.flags.writeable = False
        return self._stacked

    def __getitem__(self, column: str) -> np.ndarray:
        """One signal as ``[epochs, examples]`` (NaN where an example was not presented)."""
        if column not in self.columns:
            raise KeyError(f"unknown column {column!r}; expected one of {list(self.columns)}")
        return np.ascontiguousarray(self.values[:, :, self.columns.index(column)])

    @property
    def presented(self) -> np.ndarray:
        """``[epochs, examples]`` bool: was the example in a batch that epoch."""
        return ~np.isnan(self.values[:, :, 0])

    @property
    def input_gradient_norms(self) -> np.ndarray | None:
        """Squared input-gradient norms ``[epochs, examples]`` float32 (NaN where an example was not presented or
        an epoch recorded none); None when no epoch recorded any."""
        if all(g is None for g in self._gradient_epochs):
            return None
        nan = torch.full((self.num_examples,), float("nan"))
        return torch.stack([nan if g is None else g for g in self._gradient_epochs]).numpy()

    @property
    def weight_norms(self) -> np.ndarray:
        """The L2 norm of the trainable parameters at the end of each epoch ``[epochs]`` float64 (NaN for an
        epoch closed without the model)."""
        return np.array(self._weight_norms, dtype=np.float64)

    @property
    def labels(self) -> np.ndarray | None:
        """Each example's label as last presented (a token sequence's: the hash of its labels,
        :func:`proxies.sequences.sequence_fingerprint`), ``int64 [num_examples]`` (-1: never presented), read-only; None
        for a recording that does not carry them (loaded from a file written before they were saved, or built by
        :meth:`from_values` without ``labels``)."""
        if self._last_labels is None:
            return None
        view = self._last_labels.view()
        view.flags.writeable = False
        return view

    @property
    def num_classes(self) -> int | None:
        """The width of the recorded logits; None before the first epoch with a presentation, or when unknown."""
        return self._num_classes

    def check_matches(self, indices, labels, *, num_classes: int | None = None, what: str = "the data") -> None:
        """Refuse data the recording was not made on: a training index at or past :attr:`num_examples`, a label
        that differs from the one recorded for its index, or (given ``num_classes``, e.g. the model's output width)
        another number of classes. What the recording does not carry (:attr:`labels` or :attr:`num_classes` None,
        an example never presented) is not checked.

        Args:
            indices: training-set indices ``[M]``.
            labels: their labels ``[M]``.
            num_classes: the number of classes the data is scored with.
            what: names the data in the message.

        Raises:
            ValueError: naming what differs.

        >>> rec = TrainingRecorder.from_values(np.zeros((1, 2, 5)), labels=np.array([0, 1]), num_classes=2)
        >>> rec.check_matches([0, 1], [0, 1], num_classes=2)
        >>> rec.check_matches([0, 1], [1, 1])  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: recording= was made on another training set: the labels of 1 of 2 examples of the data ...
        """
        indices = np.asarray(torch.as_tensor(indices).cpu(), dtype=np.int64).ravel()
        labels = torch.as_tensor(labels).cpu()
        if labels.ndim == 2:  # token sequences: a recording keeps each one's fingerprint
            labels = sequence_fingerprint(labels)
        labels = np.asarray(labels, dtype=np.int64).ravel()
        if indices.shape != labels.shape:
            raise ValueError(f"indices and labels must have the same length, got {len(indices)} and {len(labels)}")
        if len(indices) and (int(indices.max()) >= self.num_examples or int(indices.min()) < 0):
            raise ValueError(f"recording= holds {self.num_examples} examples but {what} has training index "
                             f"{int(indices.max()) if indices.max() >= self.num_examples else int(indices.min())}: "
                             "a recording of another (smaller) training set?")
        if num_classes is not None and self._num_classes is not None and num_classes != self._num_classes:
            raise ValueError(f"recording= was made with {self._num_classes} classes but the model returns "
                             f"{num_classes} logits: a recording of another dataset or model?")
        if self._last_labels is None or not len(indices):
            return
        recorded = self._last_labels[indices]
        differ = np.flatnonzero((recorded >= 0) & (recorded != labels))
        if len(differ):
            first = differ[0]
            raise ValueError(f"recording= was made on another training set: the labels of {len(differ)} of "
                             f"{len(indices)} examples of {what} differ from the recorded ones (e.g. training "
                             f"index {int(indices[first])}: {int(labels[first])}, recorded {int(recorded[first])})")

    def __repr__(self) -> str:
        return f"TrainingRecorder(num_examples={self.num_examples}, epochs={self.num_epochs})"

    # ------------------------------------------------------------------------------------------------- I/O
    def state_dict(self) -> dict[str, Tensor]:
        """The finished epochs and the fingerprint as tensors (for a training's resume file; ``torch.load`` with
        ``weights_only=True`` reads it back). An open epoch is not part of it."""
        state = {"values": torch.from_numpy(self.values.copy()),
                 "weight_norms": torch.from_numpy(self.weight_norms)}
        gradients = self.input_gradient_norms
        if gradients is not None:
            state["input_gradient_norms"] = torch.from_numpy(gradients)
        if self._last_labels is not None:
            state["labels"] = torch.from_numpy(self._last_labels.copy())
        if self._num_classes is not None:
            state["num_classes"] = torch.tensor(self._num_classes)
        return state

    def load_state_dict(self, state: dict) -> None:
        """Replace the recording by one :meth:`state_dict` made (of a recorder of the same size), e.g. to resume a
        training after its last finished epoch."""
        values = torch.as_tensor(state["values"]).cpu().numpy()
        def array(key):
            return None if state.get(key) is None else torch.as_tensor(state[key]).cpu().numpy()

        num_classes = state.get("num_classes")
        restored = TrainingRecorder.from_values(
            values, labels=array("labels"), num_classes=None if num_classes is None else int(num_classes),
            input_gradient_norms=array("input_gradient_norms"), weight_norms=array("weight_norms"),
            columns=next((c for c in COLUMN_SETS if len(c) == values.shape[-1]), self.columns))
        if self.task is None or self.task.columns != restored.columns:
            self.task = restored.task  # the kind of example the state was recorded on
        if restored.num_examples != self.num_examples:
            raise ValueError(f"the state holds {restored.num_examples} examples, this recorder {self.num_examples}")
        self._epochs, self._last_labels, self._num_classes = restored._epochs, restored._last_labels, \
            restored._num_classes
        self._gradient_epochs, self._weight_norms = restored._gradient_epochs, restored._weight_norms
        self._gradients = None
        self._current, self._epoch_has_rows, self._stacked = None, False, None

    def save(self, path: str | os.PathLike) -> None:
        """Write a compressed ``.npz`` (no pickled objects) to ``path`` exactly, whatever its suffix: the signals,
        their columns, the weight norms, the input-gradient norms when recorded and, where known, the fingerprint
        (``labels``, ``num_classes``)."""
        arrays = {"signals": self.values, "columns": np.array(self.columns), "weight_norms": self.weight_norms}
        gradients = self.input_gradient_norms
        if gradients is not None:
            arrays["input_gradient_norms"] = gradients
        if self._last_labels is not None:
            arrays["labels"] = self._last_labels
        if self._num_classes is not None:
            arrays["num_classes"] = np.array(self._num_classes, dtype=np.int64)
        with written(path) as tmp, open(tmp, "wb") as file:  # (a path, not a file, would get ".npz" appended)
            np.savez_compressed(file, **arrays)

    @classmethod
    def load(cls, path: str | os.PathLike) -> TrainingRecorder:
        """Read a recording written by :meth:`save`.

        A file written before recordings carried their fingerprint (only ``signals`` and ``columns``) still loads,
        with :attr:`labels` and :attr:`num_classes` None: :meth:`check_matches` then checks only the number of
        examples, and a recording of another training set of at least as many examples goes unnoticed. One written
        before recordings held input-gradient and weight norms loads without them (``csg`` and ``sgal`` then refuse
        it).
        """
        with np.load(path, allow_pickle=False) as f:
            if "signals" not in f or "columns" not in f:
                raise ValueError(f"{os.fspath(path)} is not a training recording (expected 'signals' and 'columns')")
            columns, values = tuple(f["columns"].tolist()), f["signals"]
            optional = {key: f[key] if key in f else None
                        for key in ("labels", "input_gradient_norms", "weight_norms")}
            num_classes = int(f["num_classes"]) if "num_classes" in f else None
        if columns not in COLUMN_SETS:
            raise ValueError(f"{os.fspath(path)}: expected the columns of one of {list(COLUMN_SETS)}, got {columns}")
        return cls.from_values(values, num_classes=num_classes, columns=columns, **optional)

    @classmethod
    def from_values(cls, values: np.ndarray, *, labels: np.ndarray | None = None, num_classes: int | None = None,
                    input_gradient_norms: np.ndarray | None = None, weight_norms: np.ndarray | None = None,
                    columns: tuple[str, ...] = SIGNAL_COLUMNS) -> TrainingRecorder:
        """A recording holding ``values [epochs, examples, 5]`` (columns :attr:`columns`, NaN = not presented) and,
        where given, its fingerprint: ``labels [examples]`` (-1: never presented) and ``num_classes``. Without
        them the recording carries none (:attr:`labels` / :attr:`num_classes` None) and is not checked against a
        dataset's labels or a model's width. ``input_gradient_norms [epochs, examples]`` (squared; an all-NaN
        epoch recorded none) and ``weight_norms [epochs]`` feed the ``csg`` and ``sgal`` proxies."""
        values = np.asarray(values, dtype=np.float32)
        columns = tuple(columns)
        if columns not in COLUMN_SETS:
            raise ValueError(f"columns must be those of one of {list(COLUMN_SETS)}, got {columns}")
        if values.ndim != 3 or values.shape[2] != len(columns):
            raise ValueError(f"expected values [epochs, examples, {len(columns)}], got {values.shape}")
        epochs, n = int(values.shape[0]), int(values.shape[1])
        recorder = cls(n, task=COLUMN_SETS[columns])
        recorder._epochs = [torch.from_numpy(v.copy()) for v in values]
        recorder._gradient_epochs = [None] * epochs
        if input_gradient_norms is not None:
            gradients = np.asarray(input_gradient_norms, dtype=np.float32)
            if gradients.shape != (epochs, n):
                raise ValueError(f"input_gradient_norms must be [epochs, examples] = [{epochs}, {n}] like values, "
                                 f"got {list(gradients.shape)}")
            recorder._gradient_epochs = [None if np.isnan(g).all() else torch.from_numpy(g.copy())
                                         for g in gradients]
        recorder._weight_norms = [float("nan")] * epochs
        if weight_norms is not None:
            norms = np.asarray(weight_norms, dtype=np.float64)
            if norms.shape != (epochs,):
                raise ValueError(f"weight_norms must be [epochs] = [{epochs}], got {list(norms.shape)}")
            recorder._weight_norms = [float(v) for v in norms]
        if labels is None:
            recorder._last_labels = None
        else:
            labels = np.asarray(labels)
            if labels.shape != (values.shape[1],) or not np.issubdtype(labels.dtype, np.integer):
                raise ValueError(f"labels must be [{values.shape[1]}] integers (one per example), got "
                                 f"{labels.dtype} {labels.shape}")
            if (labels < -1).any():
                raise ValueError("labels must be -1 (never presented) or a class, got "
                                 f"{int(labels.min())}")
            recorder._last_labels = labels.astype(np.int64, copy=True)
        if num_classes is not None:
            if isinstance(num_classes, bool) or not isinstance(num_classes, int | np.integer) or num_classes < 1:
                raise ValueError(f"num_classes must be a positive int or None, got {num_classes!r}")
            if columns == SIGNAL_COLUMNS and labels is not None and len(labels) and int(labels.max()) >= num_classes:
                raise ValueError(f"labels reach {int(labels.max())} but num_classes is {num_classes}")
            recorder._num_classes = int(num_classes)
        return recorder


@torch.no_grad()
def _weight_norm(model: torch.nn.Module) -> float:
    """The L2 norm of all of ``model``'s trainable parameters taken as one vector (one host sync)."""
    squares = [p.detach().float().pow(2).sum() for p in model.parameters() if p.requires_grad]
    return float(torch.stack(squares).sum().sqrt()) if squares else float("nan")
