"""The model farm: train many models (subset models, shadow models) and keep each one's predictions on disk.

A farm runs ``fn(job, shared) -> dict of arrays`` for every :class:`Job` and writes each result to
``<folder>/<job.key>.npz`` as soon as it is done. A job whose file exists is not run again, so an interrupted run
resumes where it stopped. ``shared`` (the data, the model factory, the training settings) is handed over once.
:class:`LocalFarm` runs jobs one after another in this process; a Ray runner implements the same interface.

>>> import tempfile
>>> farm = LocalFarm(tempfile.mkdtemp(), progress=False)
>>> jobs = [Job("a", np.array([0, 1]), seed=0), Job("b", np.array([2]), seed=1)]
>>> def total(job, shared):
...     return {"total": np.array(job.train_ids.sum() + shared)}
>>> results = farm.run(total, jobs, shared=10)
>>> int(results["b"]["total"])
12
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from tqdm.auto import tqdm

__all__ = ["Farm", "Job", "LocalFarm", "check_manifest", "get_farm"]


@dataclass(frozen=True)
class Job:
    """One model to train: a unique ``key`` (a file name), the training indices it sees, and its seed."""

    key: str
    train_ids: np.ndarray = field(repr=False)
    seed: int

    def __post_init__(self) -> None:
        if not self.key or not all(c.isalnum() or c in "-_." for c in self.key):
            raise ValueError(f"job key must be a non-empty file-name-safe string, got {self.key!r}")


JobFn = Callable[[Job, Any], dict[str, np.ndarray]]


class Farm(Protocol):
    """Runs jobs, each result written to ``folder/<key>.npz``; finished jobs are never run again."""

    folder: Path

    def run(self, fn: JobFn, jobs: Sequence[Job], shared: Any) -> dict[str, dict[str, np.ndarray]]: ...


def _save(path: Path, result: dict[str, np.ndarray]) -> None:
    """Write atomically: a crash mid-write leaves no file that looks finished."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".partial.npz")
    os.close(fd)
    try:
        np.savez(tmp, **result)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _load(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


class LocalFarm:
    """Runs jobs sequentially in this process, with a progress bar.

    Args:
        folder: where results go; created if missing.
        progress: show a tqdm bar.
    """

    name = "local"

    def __init__(self, folder: str | os.PathLike, *, progress: bool = True) -> None:
        self.folder = Path(folder)
        self.progress = progress

    def path(self, key: str) -> Path:
        return self.folder / f"{key}.npz"

    def pending(self, jobs: Sequence[Job]) -> list[Job]:
        """The jobs without a result on disk."""
        keys = [job.key for job in jobs]
        if len(set(keys)) != len(keys):
            raise ValueError("job keys must be unique")
        return [job for job in jobs if not self.path(job.key).is_file()]

    def run(self, fn: JobFn, jobs: Sequence[Job], shared: Any) -> dict[str, dict[str, np.ndarray]]:
        """Run every job that has no result yet, then return all results by key."""
        self.folder.mkdir(parents=True, exist_ok=True)
        todo = self.pending(jobs)
        for job in tqdm(todo, desc=f"models ({len(jobs) - len(todo)} of {len(jobs)} on disk)", unit="model",
                        disable=not self.progress):
            _save(self.path(job.key), fn(job, shared))
        return {job.key: _load(self.path(job.key)) for job in jobs}


def get_farm(farm: str | Farm, folder: str | os.PathLike, *, progress: bool = True) -> Farm:
    """A farm by name (``"local"``) or the farm object itself."""
    if isinstance(farm, str):
        if farm == "local":
            return LocalFarm(folder, progress=progress)
        raise ValueError(f"unknown farm {farm!r}; expected 'local' or a farm object")
    if not callable(getattr(farm, "run", None)):
        raise TypeError(f"farm must be 'local' or an object with a run(fn, jobs, shared) method, got {farm!r}")
    return farm


def check_manifest(folder: str | os.PathLike, settings: dict, *, force: bool = False) -> None:
    """Record ``settings`` in ``folder/manifest.json``; refuse a folder written with other settings.

    Results of different settings must never mix in one folder. ``force`` clears the old results instead.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    manifest = folder / "manifest.json"
    settings = json.loads(json.dumps(settings))  # normalise tuples and numpy scalars as JSON sees them
    if manifest.is_file():
        saved = json.loads(manifest.read_text())
        if saved == settings:
            return
        if not force:
            changed = sorted(k for k in saved.keys() | settings.keys() if saved.get(k) != settings.get(k))
            raise ValueError(f"{folder} holds models trained with other settings ({', '.join(changed)}); "
                             "use another folder or force=True to discard them")
        for old in folder.glob("*.npz"):
            old.unlink()
    manifest.write_text(json.dumps(settings, indent=2, sort_keys=True) + "\n")

