"""The output folder of ``unlearn run`` that lets a rerun reuse finished stages, and its lock.

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
import shutil
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

from proxies.files import write_text

from .._checks import same_settings

__all__ = ["FolderInUseError", "RunFolder", "locked"]

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
        outputs: files (or folders) derived from all the stages (the report): removed whenever any stage is redone.
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
        write_text(self._file, json.dumps(self.stages, indent=2, sort_keys=True) + "\n")

    def reusable(self, stage: str, settings: dict, files: Sequence[str] = ()) -> bool:
        """True when ``stage`` finished with these settings and its ``files`` exist. A stage finished with other
        settings raises ``ValueError`` unless ``force``; then (and when its files are gone) it is forgotten."""
        settings = _jsonable(settings)
        saved = self.stages.get(stage)
        if saved is None:
            return False
        if saved["settings"] == settings and all((self.path / f).exists() for f in files):
            return True
        same_settings(saved["settings"], settings, holder=f"{self.path} holds the {stage} stage of a run",
                      hint="choose another folder or force it (--force)", force=self.force)
        del self.stages[stage]
        self._write()
        return False

    def forget(self, stage: str) -> None:
        """Drop ``stage``'s record (e.g. its file turned out unreadable): it is redone."""
        if self.stages.pop(stage, None) is not None:
            self._write()

    def finish(self, stage: str, settings: dict, *, seconds: float, notes: Mapping | None = None) -> None:
        """Record ``stage`` as finished with ``settings`` after ``seconds`` of work, with what it noted of its
        result for the report (``notes``, short texts: e.g. how a method planned)."""
        self.stages[stage] = {"settings": _jsonable(settings), "seconds": round(float(seconds), 3)}
        if notes:
            self.stages[stage]["notes"] = _jsonable(dict(notes))
        self._write()

    def clear(self, stage: str) -> None:
        """Remove what redoing ``stage`` makes stale: the outputs, the files of ``stage`` and of every stage after
        it in :attr:`order`, and the records of those later stages."""
        later = list(self.order)[list(self.order).index(stage):] if stage in self.order else []
        for name in self.outputs:
            if (self.path / name).is_dir():
                shutil.rmtree(self.path / name)
            else:
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
        returns. The body gets a dict to fill with its notes (see :meth:`finish`)."""
        self.clear(stage)
        start = time.perf_counter()
        notes: dict = {}
        yield notes
        self.finish(stage, settings, seconds=time.perf_counter() - start, notes=notes)

    def notes(self, stage: str) -> dict:
        """What a finished stage noted of its result (see :meth:`finish`); empty when it noted nothing."""
        return dict(self.stages.get(stage, {}).get("notes", {}))

    def digest(self, stage: str) -> str:
        """A short hash of a finished stage's settings, for the settings of the stages built on it."""
        return hashlib.sha1(json.dumps(self.stages[stage]["settings"], sort_keys=True).encode()).hexdigest()[:12]

    def seconds(self, stage: str) -> float | None:
        entry = self.stages.get(stage)
        return entry["seconds"] if entry else None
