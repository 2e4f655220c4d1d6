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
"""

from __future__ import annotations

import os

import numpy as np
import torch
from torch import Tensor

from .kernels import SIGNAL_COLUMNS, signals

__all__ = ["TrainingRecorder"]


class TrainingRecorder:
    """Per-presentation training dynamics, stored as ``epochs x examples`` float32 arrays.

    Args:
        num_examples: size of the training set; ``record`` takes indices in ``[0, num_examples)``.
    """

    columns = SIGNAL_COLUMNS

    def __init__(self, num_examples: int) -> None:
        if not isinstance(num_examples, int) or num_examples < 0:
            raise ValueError(f"num_examples must be a non-negative int, got {num_examples!r}")
        self.num_examples = num_examples
        self._epochs: list[Tensor] = []
        # the fingerprint of the training set: each example's label as last presented (-1: never), the logits'
        # width; None for both when unknown (a file written before recordings carried them)
        self._last_labels: np.ndarray | None = np.full(num_examples, -1, dtype=np.int64)
        self._num_classes: int | None = None
        self._current: Tensor | None = None  # presented-this-epoch mask while an epoch is open
        self._epoch_has_rows = False
        self._logits: Tensor | None = None  # [N, C] logits of the open epoch's presentations
        self._labels: Tensor | None = None
        self._stacked: np.ndarray | None = None

    # --------------------------------------------------------------------------------------- during training
    # A batch only copies its logits into an epoch buffer; the signals are computed once per epoch over the whole
    # buffer. That keeps the cost per batch to one small copy, where computing them per batch cost ~2% of an epoch.
    def start_epoch(self) -> None:
        """Open a new epoch (closing one left open)."""
        if self._current is not None:
            self.end_epoch()
        self._current = torch.zeros(self.num_examples, dtype=torch.bool)  # presented this epoch
        self._epoch_has_rows = False  # kept on the host: asking the mask would sync with the device
        if self._logits is not None:
            self._current = self._current.to(self._logits.device)

    def record(self, logits: Tensor, labels: Tensor, index: Tensor) -> None:
        """Store one batch: train-mode ``logits [B, C]``, ``labels [B]``, training-set ``index [B]``."""
        if self._current is None:
            raise RuntimeError("call start_epoch() before record()")
        index, labels = torch.as_tensor(index), torch.as_tensor(labels)
        if not isinstance(logits, torch.Tensor) or logits.ndim != 2:
            raise ValueError(f"logits must be a tensor [B, C], got {getattr(logits, 'shape', type(logits).__name__)}")
        if labels.shape != (len(logits),) or index.shape != (len(logits),):
            raise ValueError(f"labels and index must be [B] = [{len(logits)}] like the logits' rows, got "
                             f"{list(labels.shape)} and {list(index.shape)}")
        for name, value in (("labels", labels), ("index", index)):
            if value.is_floating_point() or value.dtype == torch.bool:
                raise TypeError(f"{name} must be integers, got {value.dtype}")
        if self._logits is not None and self._logits.shape[1] != logits.shape[1] and self._epoch_has_rows:
            raise ValueError(f"logits have {logits.shape[1]} classes, earlier batches of this epoch had "
                             f"{self._logits.shape[1]}")
        if index.numel() and (int(index.min()) < 0 or int(index.max()) >= self.num_examples):
            raise ValueError(f"index must lie in [0, {self.num_examples}), "
                             f"got [{int(index.min())}, {int(index.max())}]")
        logits = logits.detach()
        if self._logits is None or self._logits.shape[1] != logits.shape[1] or (
                self._logits.device != logits.device and not self._epoch_has_rows):
            # the buffers live where the logits are: no device sync per batch
            self._logits = torch.zeros(self.num_examples, logits.shape[1], dtype=torch.float32, device=logits.device)
            self._labels = torch.zeros(self.num_examples, dtype=torch.long, device=logits.device)
            self._current = self._current.to(logits.device)
        # a batch from another device in the middle of an epoch joins the epoch's buffers, which keep its rows
        device = self._logits.device
        index = index.to(device)
        self._logits[index] = logits.to(device=device, dtype=torch.float32)
        self._labels[index] = labels.to(device)
        self._current[index] = True
        self._epoch_has_rows = self._epoch_has_rows or bool(len(index))

    def end_epoch(self) -> None:
        """Close the current epoch: score every presented example's logits in one pass."""
        if self._current is None:
            raise RuntimeError("end_epoch() without start_epoch()")
        values = torch.full((self.num_examples, len(self.columns)), float("nan"))
        presented = self._current
        if bool(presented.any()):
            # a diverged model's NaN/inf rows come back NaN, as if not presented
            scored = signals(self._logits[presented], self._labels[presented], check_finite=False)
            on_host = presented.cpu()
            values[on_host] = scored.cpu()
            if self._last_labels is not None:
                self._last_labels[on_host.numpy()] = self._labels[presented].cpu().numpy()
            self._num_classes = int(self._logits.shape[1])
        self._epochs.append(values)
        self._current = None
        self._stacked = None

    # --------------------------------------------------------------------------------------------- reading
    @property
    def num_epochs(self) -> int:
        return len(self._epochs)

    @property
    def values(self) -> np.ndarray:
        """All signals, ``[epochs, examples, 5]`` float32 (columns :attr:`columns`), read-only."""
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
    def labels(self) -> np.ndarray | None:
        """Each example's label as last presented, ``int64 [num_examples]`` (-1: never presented), read-only; None
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
        labels = np.asarray(torch.as_tensor(labels).cpu(), dtype=np.int64).ravel()
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
        state = {"values": torch.from_numpy(self.values.copy())}
        if self._last_labels is not None:
            state["labels"] = torch.from_numpy(self._last_labels.copy())
        if self._num_classes is not None:
            state["num_classes"] = torch.tensor(self._num_classes)
        return state

    def load_state_dict(self, state: dict) -> None:
        """Replace the recording by one :meth:`state_dict` made (of a recorder of the same size), e.g. to resume a
        training after its last finished epoch."""
        values = torch.as_tensor(state["values"]).cpu().numpy()
        labels = state.get("labels")
        num_classes = state.get("num_classes")
        restored = TrainingRecorder.from_values(
            values, labels=None if labels is None else torch.as_tensor(labels).cpu().numpy(),
            num_classes=None if num_classes is None else int(num_classes))
        if restored.num_examples != self.num_examples:
            raise ValueError(f"the state holds {restored.num_examples} examples, this recorder {self.num_examples}")
        self._epochs, self._last_labels, self._num_classes = restored._epochs, restored._last_labels, \
            restored._num_classes
        self._current, self._epoch_has_rows, self._stacked = None, False, None

    def save(self, path: str | os.PathLike) -> None:
        """Write a compressed ``.npz`` (no pickled objects) to ``path`` exactly, whatever its suffix: the signals,
        their columns and, where known, the fingerprint (``labels``, ``num_classes``)."""
        arrays = {"signals": self.values, "columns": np.array(self.columns)}
        if self._last_labels is not None:
            arrays["labels"] = self._last_labels
        if self._num_classes is not None:
            arrays["num_classes"] = np.array(self._num_classes, dtype=np.int64)
        with open(path, "wb") as file:  # a path, not a file, would get ".npz" appended by numpy
            np.savez_compressed(file, **arrays)

    @classmethod
    def load(cls, path: str | os.PathLike) -> TrainingRecorder:
        """Read a recording written by :meth:`save`.

        A file written before recordings carried their fingerprint (only ``signals`` and ``columns``) still loads,
        with :attr:`labels` and :attr:`num_classes` None: :meth:`check_matches` then checks only the number of
        examples, and a recording of another training set of at least as many examples goes unnoticed.
        """
        with np.load(path, allow_pickle=False) as f:
            if "signals" not in f or "columns" not in f:
                raise ValueError(f"{os.fspath(path)} is not a training recording (expected 'signals' and 'columns')")
            columns, values = tuple(f["columns"].tolist()), f["signals"]
            labels = f["labels"] if "labels" in f else None
            num_classes = int(f["num_classes"]) if "num_classes" in f else None
        if columns != cls.columns:
            raise ValueError(f"{os.fspath(path)}: expected columns {cls.columns}, got {columns}")
        return cls.from_values(values, labels=labels, num_classes=num_classes)

    @classmethod
    def from_values(cls, values: np.ndarray, *, labels: np.ndarray | None = None,
                    num_classes: int | None = None) -> TrainingRecorder:
        """A recording holding ``values [epochs, examples, 5]`` (columns :attr:`columns`, NaN = not presented) and,
        where given, its fingerprint: ``labels [examples]`` (-1: never presented) and ``num_classes``. Without
        them the recording carries none (:attr:`labels` / :attr:`num_classes` None) and is not checked against a
        dataset's labels or a model's width."""
        values = np.asarray(values, dtype=np.float32)
        if values.ndim != 3 or values.shape[2] != len(cls.columns):
            raise ValueError(f"expected values [epochs, examples, {len(cls.columns)}], got {values.shape}")
        recorder = cls(int(values.shape[1]))
        recorder._epochs = [torch.from_numpy(v.copy()) for v in values]
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
            if labels is not None and len(labels) and int(labels.max()) >= num_classes:
                raise ValueError(f"labels reach {int(labels.max())} but num_classes is {num_classes}")
            recorder._num_classes = int(num_classes)
        return recorder
