"""The stages of ``unlearn run`` as library functions, and the output folder that lets a rerun reuse them.

A :class:`RunFolder` records each finished stage's settings in ``stages.json``. A stage asked again with the same
settings (and its files on disk) is reused; with other settings it is refused unless ``force``, so one folder never
mixes results of different runs. A stage's settings name the stages it builds on (their digests), so changing an
early stage invalidates everything after it.

>>> import tempfile
>>> run = RunFolder(tempfile.mkdtemp())
>>> run.reusable("forget", {"spec": "random:0.1"})
False
>>> run.finish("forget", {"spec": "random:0.1"}, seconds=0.1)
>>> run.reusable("forget", {"spec": "random:0.1"})
True
>>> run.reusable("forget", {"spec": "high:50"})  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
ValueError: ... holds the forget stage of a run with other settings (spec); choose another folder or force it...
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from .data import IndexedDataset
from .scheduler import partition

__all__ = ["FolderInUseError", "RunFolder", "group_of", "locked", "per_example_scores", "subset"]

LOCK_FILE = ".lock"


class FolderInUseError(ValueError):
    """Another process holds a run folder's lock."""


@contextmanager
def locked(path: str | os.PathLike) -> Iterator[Path]:
    """Hold ``path``'s lock (an OS file lock on ``path/.lock``, created with the folder) for the body: a second
    process that asks for it is refused at once with :class:`FolderInUseError`. The lock goes when the body ends
    or the process dies, however it dies (``kill -9`` included): the OS drops it with the process's files."""
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "another process"
            raise FolderInUseError(f"{folder} is in use by another unlearn command (pid {holder}); wait for it to "
                                   "finish or choose another --out") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield folder
    finally:
        os.close(fd)  # closing releases the lock


def _jsonable(settings: dict) -> dict:
    return json.loads(json.dumps(settings, default=str))


class RunFolder:
    """An output folder of staged results; see the module doc.

    Args:
        path: the folder (created when missing).
        force: redo a stage recorded with other settings instead of refusing.
        order: every stage's files, in the order the stages run. Before a stage's work starts (:meth:`timed`,
            :meth:`clear`), its files and those of every later stage are removed and the later stages forgotten,
            so a folder never holds outputs derived from a stage that is being redone.
        outputs: files derived from all the stages (the report): removed whenever any stage is redone.
    """

    def __init__(self, path: str | os.PathLike, *, force: bool = False,
                 order: Mapping[str, Sequence[str]] | None = None, outputs: Sequence[str] = ()) -> None:
        self.path = Path(path)
        self.force = force
        self.order = dict(order or {})
        self.outputs = tuple(outputs)
        self.path.mkdir(parents=True, exist_ok=True)
        self._file = self.path / "stages.json"
        self.stages: dict[str, dict] = self._read() if self._file.is_file() else {}

    def _read(self) -> dict[str, dict]:
        """``stages.json``, checked: an unreadable record is refused (or, with ``force``, dropped with a warning)."""
        try:
            stages = json.loads(self._file.read_text())
            if not isinstance(stages, dict):
                raise ValueError(f"a JSON {type(stages).__name__}, not an object")
            for name, entry in stages.items():
                if not (isinstance(entry, dict) and isinstance(entry.get("settings"), dict)
                        and isinstance(entry.get("seconds"), (int, float))):
                    raise ValueError(f"its {name!r} entry lacks settings or seconds")
        except ValueError as err:
            if not self.force:
                raise ValueError(f"{self._file} is unreadable ({err}); delete it, or force (--force) to redo "
                                 "every stage") from None
            warnings.warn(f"{self._file} is unreadable ({err}); every stage is redone (--force)", stacklevel=3)
            return {}
        return stages

    def _write(self) -> None:
        tmp = self._file.with_suffix(".partial")
        tmp.write_text(json.dumps(self.stages, indent=2, sort_keys=True) + "\n")
        os.replace(tmp, self._file)

    def reusable(self, stage: str, settings: dict, files: Sequence[str] = ()) -> bool:
        """True when ``stage`` finished with these settings and its ``files`` exist. A stage finished with other
        settings raises ``ValueError`` unless ``force``; then (and when its files are gone) it is forgotten."""
        settings = _jsonable(settings)
        saved = self.stages.get(stage)
        if saved is None:
            return False
        if saved["settings"] == settings and all((self.path / f).exists() for f in files):
            return True
        if saved["settings"] != settings and not self.force:
            keys = saved["settings"].keys() | settings.keys()
            changed = sorted(k for k in keys if saved["settings"].get(k) != settings.get(k))
            raise ValueError(f"{self.path} holds the {stage} stage of a run with other settings "
                             f"({', '.join(changed)}); choose another folder or force it (--force)")
        del self.stages[stage]
        self._write()
        return False

    def forget(self, stage: str) -> None:
        """Drop ``stage``'s record (e.g. its file turned out unreadable): it is redone."""
        if self.stages.pop(stage, None) is not None:
            self._write()

    def finish(self, stage: str, settings: dict, *, seconds: float) -> None:
        """Record ``stage`` as finished with ``settings`` after ``seconds`` of work."""
        self.stages[stage] = {"settings": _jsonable(settings), "seconds": round(float(seconds), 3)}
        self._write()

    def clear(self, stage: str) -> None:
        """Remove what redoing ``stage`` makes stale: the outputs, the files of ``stage`` and of every stage after
        it in :attr:`order`, and the records of those later stages."""
        later = list(self.order)[list(self.order).index(stage):] if stage in self.order else []
        for name in self.outputs:
            (self.path / name).unlink(missing_ok=True)
        for name in later:
            for file in self.order[name]:
                (self.path / file).unlink(missing_ok=True)
        forgotten = [name for name in later if name != stage and name in self.stages]
        for name in forgotten:
            del self.stages[name]
        if forgotten:
            self._write()

    @contextmanager
    def timed(self, stage: str, settings: dict):
        """Run the body as ``stage`` (after :meth:`clear`) and record it finished, with its time, when the body
        returns."""
        self.clear(stage)
        start = time.perf_counter()
        yield
        self.finish(stage, settings, seconds=time.perf_counter() - start)

    def digest(self, stage: str) -> str:
        """A short hash of a finished stage's settings, for the settings of the stages built on it."""
        return hashlib.sha1(json.dumps(self.stages[stage]["settings"], sort_keys=True).encode()).hexdigest()[:12]

    def seconds(self, stage: str) -> float | None:
        entry = self.stages.get(stage)
        return entry["seconds"] if entry else None


def subset(data: IndexedDataset, indices: np.ndarray) -> IndexedDataset:
    """The examples of ``data`` with the given training indices (which must all be in it), in index order."""
    position = np.searchsorted(data.indices.numpy(), indices)
    if (position >= len(data)).any() or not np.array_equal(data.indices.numpy()[position.clip(max=len(data) - 1)],
                                                           indices):
        raise ValueError("some indices are not in the dataset")
    keep = torch.from_numpy(position)
    return IndexedDataset(data.inputs[keep], data.targets[keep], data.classes, indices=data.indices[keep])


def group_of(scores: pd.Series, ids: np.ndarray, groups: int = 3, *, grouping: str = "request") -> pd.Series:
    """The memorization group (``low`` / ``medium`` / ``high``, as RUM splits it) of each forget example, by the
    scores (a proxy Series from :func:`proxies.compute` carries its direction).

    ``grouping`` is the rule of :func:`unlearn.unlearn`'s ``grouping=`` (see :mod:`unlearn.scheduler`):
    ``"request"`` (the default here, as before): equal-count groups by rank among ``ids``; ``"training_set"``: bins
    between the quantiles of every finite score of ``scores`` (pass the training set's), as ``unlearn`` forms them
    from the same Series. A Series of ``ids`` alone falls back to ``"request"`` with a warning, as ``unlearn`` does.
    """
    import warnings

    import proxies

    from .scheduler import check_grouping, group_thresholds

    check_grouping(grouping)
    sign = 1.0 if proxies.higher_is_memorized(scores) else -1.0
    values = sign * scores.reindex(ids).to_numpy(dtype=float)
    thresholds = None
    if grouping == "training_set":
        if np.isin(scores.index.to_numpy(), ids).all():
            warnings.warn("group_of was given only the forget set's scores: its groups are the request's own split; "
                          "pass the whole training set's scores for training-set thresholds", UserWarning,
                          stacklevel=2)
        else:
            thresholds = group_thresholds(sign * scores.to_numpy(dtype=float), groups)
    labels = np.empty(len(ids), dtype=object)
    for name, positions in partition(values, groups, thresholds=thresholds).items():
        labels[positions] = name
    return pd.Series(labels, index=pd.Index(ids, name="index"), name="group")


def per_example_scores(models: dict[str, nn.Module], data: IndexedDataset, *, shadows=None, split: str = "train",
                       device=None, signals=None) -> pd.DataFrame:
    """Per-example attack scores of each model on ``data``: ``correct_<model>``, ``loss_<model>`` and, given shadow
    models whose pool holds ``data`` (as ``split`` examples), ``lira_<model>`` (online LiRA; higher = more likely a
    member).

    ``signals[model][split]``, where given, are the model's signals on a dataset holding ``data``'s examples (with
    the shadow models' queries, else identity), as :func:`unlearn.evaluate` takes them: their rows are scored instead
    of predicting again."""
    from .attacks import lira
    from .evaluation import _signals

    table = {}
    positions = shadows.locate(split, data.indices.numpy()) if shadows is not None else None
    queries = shadows.queries if shadows is not None else ("identity",)
    for name, model in models.items():
        scored = _signals(model, data, split, (signals or {}).get(name), queries, device)
        table[f"correct_{name}"] = scored.correct[:, 0].astype(bool)
        table[f"loss_{name}"] = scored.loss[:, 0]
        if shadows is not None:
            table[f"lira_{name}"] = lira(scored.phi, shadows.phi(positions), shadows.in_mask[:, positions])
    return pd.DataFrame(table, index=pd.Index(data.indices.numpy(), name="index"))
