"""Record every example's softmax signals at every presentation during training, at almost no cost.

The training loop calls :meth:`TrainingRecorder.record` with the train-mode logits of each batch *before* the
optimizer step; the recorder keeps, per epoch and example, the columns of :func:`proxies.kernels.signals`. An example
not presented in an epoch (``drop_last``) stays NaN there.

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
            values[presented.cpu()] = scored.cpu()
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

    def __repr__(self) -> str:
        return f"TrainingRecorder(num_examples={self.num_examples}, epochs={self.num_epochs})"

    # ------------------------------------------------------------------------------------------------- I/O
    def save(self, path: str | os.PathLike) -> None:
        """Write a compressed ``.npz`` (no pickled objects) to ``path`` exactly, whatever its suffix."""
        with open(path, "wb") as file:  # a path, not a file, would get ".npz" appended by numpy
            np.savez_compressed(file, signals=self.values, columns=np.array(self.columns))

    @classmethod
    def load(cls, path: str | os.PathLike) -> TrainingRecorder:
        """Read a recording written by :meth:`save`."""
        with np.load(path, allow_pickle=False) as f:
            if "signals" not in f or "columns" not in f:
                raise ValueError(f"{os.fspath(path)} is not a training recording (expected 'signals' and 'columns')")
            columns, values = tuple(f["columns"].tolist()), f["signals"]
        if columns != cls.columns:
            raise ValueError(f"{os.fspath(path)}: expected columns {cls.columns}, got {columns}")
        return cls.from_values(values)

    @classmethod
    def from_values(cls, values: np.ndarray) -> TrainingRecorder:
        """A recording holding ``values [epochs, examples, 5]`` (columns :attr:`columns`, NaN = not presented)."""
        values = np.asarray(values, dtype=np.float32)
        if values.ndim != 3 or values.shape[2] != len(cls.columns):
            raise ValueError(f"expected values [epochs, examples, {len(cls.columns)}], got {values.shape}")
        recorder = cls(int(values.shape[1]))
        recorder._epochs = [torch.from_numpy(v.copy()) for v in values]
        return recorder
