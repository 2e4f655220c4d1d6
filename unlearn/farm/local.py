"""The model farm: train many models (subset models, shadow models) and keep each one's predictions on disk.

A farm runs ``fn(job, shared) -> dict of arrays`` for every :class:`Job` and writes each result to
``<folder>/<job.key>.npz`` as soon as it is done. A job whose file exists is not run again, so an interrupted run
resumes where it stopped. ``shared`` (the data, the model factory, the training settings) is handed over once.
:class:`LocalFarm` runs jobs one after another in this process; :class:`unlearn.farm.packed.PackedFarm` trains packs
of them at once in this process as one vmapped ensemble (``get_farm("packed", folder, models_per_pack=16)``), with
the same results up to float rounding; :class:`unlearn.farm.ray.RayFarm` runs them as tasks on a Ray cluster
(``get_farm("ray", folder)``; Ray is an optional dependency, imported only then).

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

import functools
import hashlib
import json
import os
import tempfile
import warnings
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from tqdm.auto import tqdm

from proxies.files import write_text

from .._checks import same_settings

__all__ = ["Farm", "FolderFarm", "Job", "LocalFarm", "TrainTask", "check_manifest", "describe_factory", "fingerprint",
           "predict_job", "save_result", "train_and_predict"]


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


def save_result(path: Path, result: dict[str, np.ndarray]) -> None:
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


def _readable(path: Path) -> bool:
    """Whether ``path`` holds a whole result; an unreadable one is removed, with a warning, to be made again."""
    if not path.is_file():
        return False
    try:
        _load(path)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        warnings.warn(f"{path} is unreadable ({err}); training that model again", stacklevel=3)
        path.unlink()
        return False
    return True


class FolderFarm:
    """What every farm shares: the results folder, one ``<key>.npz`` per job."""

    def __init__(self, folder: str | os.PathLike, *, progress: bool = True) -> None:
        self.folder = Path(folder)
        self.progress = progress

    def path(self, key: str) -> Path:
        return self.folder / f"{key}.npz"

    def pending(self, jobs: Sequence[Job]) -> list[Job]:
        """The jobs without a readable result on disk (an unreadable one, e.g. truncated by a full disk, is removed
        with a warning and trained again)."""
        keys = [job.key for job in jobs]
        if len(set(keys)) != len(keys):
            raise ValueError("job keys must be unique")
        return [job for job in jobs if not _readable(self.path(job.key))]

    def collect(self, jobs: Sequence[Job]) -> dict[str, dict[str, np.ndarray]]:
        """Every job's result, read from disk."""
        return {job.key: _load(self.path(job.key)) for job in jobs}


class LocalFarm(FolderFarm):
    """Runs jobs sequentially in this process, with a progress bar.

    Args:
        folder: where results go; created if missing.
        progress: show a tqdm bar.
    """

    name = "local"

    def run(self, fn: JobFn, jobs: Sequence[Job], shared: Any) -> dict[str, dict[str, np.ndarray]]:
        """Run every job that has no result yet, then return all results by key."""
        self.folder.mkdir(parents=True, exist_ok=True)
        todo = self.pending(jobs)
        for job in tqdm(todo, desc=f"models ({len(jobs) - len(todo)} of {len(jobs)} on disk)", unit="model",
                        disable=not self.progress or not todo):
            save_result(self.path(job.key), fn(job, shared))
        return self.collect(jobs)


@dataclass(frozen=True)
class TrainTask:
    """What every train-and-predict job shares (handed to the farm once): the data the jobs' ``train_ids`` index
    into, a picklable model factory, the :func:`unlearn.train` settings, and the augmentation queries to predict."""

    dataset: Any
    model_fn: Callable[[], Any]
    train_kwargs: dict
    device: str | None = None
    queries: tuple[str, ...] = ("identity",)


def train_and_predict(job: Job, task: TrainTask) -> dict[str, np.ndarray]:
    """Train a fresh model on ``job.train_ids`` (seeded by ``job.seed``) and predict the whole dataset.

    Returns ``train_ids`` and ``logits`` ``[N, C]`` (identity query) plus ``logits_<query>`` for other queries.
    """
    import torch
    from torch.utils.data import Subset

    from ..training.trainer import train

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(job.seed)
        model = task.model_fn()
    model, _ = train(model, Subset(task.dataset, job.train_ids.tolist()), seed=job.seed, device=task.device,
                     progress=False, **task.train_kwargs)
    return predict_job(model, job, task)


def predict_job(model, job: Job, task: TrainTask) -> dict[str, np.ndarray]:
    """A trained model's result for ``job``, as every farm writes it: ``train_ids`` and the model's ``logits``
    ``[N, C]`` on the whole ``task.dataset`` (identity query) plus ``logits_<query>`` for ``task.queries``' others;
    for examples of another task (token sequences), their eval-mode ``signals [N, columns]`` instead
    (:func:`proxies.predictions.predict_signals`).

    Args:
        model: the trained model.
        job: the job it was trained for.
        task: what its jobs share: the dataset to predict, and the queries.
    """
    from proxies.predictions import predict_signals
    from proxies.tasks import Classification, task_of

    from ..evaluation.attacks.signals import predict_queries

    result = {"train_ids": job.train_ids}
    if not isinstance(task_of(task.dataset), Classification):  # token sequences: their signals, not [N, T, V]
        signals, _, _ = predict_signals(model, task.dataset)
        result["signals"] = signals.numpy().astype(np.float32)
        return result
    logits, _, _ = predict_queries(model, task.dataset, task.queries)
    for a, query in enumerate(task.queries):
        result["logits" if query == "identity" else f"logits_{query}"] = logits[:, a].numpy().astype(np.float32)
    return result


def describe_factory(fn: Callable) -> str:
    """A stable description of a model factory (no memory addresses), for the farm's manifest."""
    if isinstance(fn, functools.partial):
        args = [repr(a) for a in fn.args] + [f"{k}={v!r}" for k, v in sorted(fn.keywords.items())]
        return f"{describe_factory(fn.func)}({', '.join(args)})"
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', type(fn).__name__)}"


def fingerprint(dataset) -> str:
    """A hash of an in-memory dataset's tensors (its type and length otherwise), for the farm's manifest."""
    from ..data.sources import as_tensors

    tensors = as_tensors(dataset)
    if tensors is None:
        return f"{type(dataset).__name__}[{len(dataset)}]"
    digest = hashlib.sha1()
    for t in tensors:
        digest.update(t.contiguous().numpy().tobytes())
    return digest.hexdigest()


def check_manifest(folder: str | os.PathLike, settings: dict, *, force: bool = False) -> None:
    """Record ``settings`` in ``folder/manifest.json``; refuse a folder written with other settings.

    Results of different settings must never mix in one folder. ``force`` clears the old results instead.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    manifest = folder / "manifest.json"
    settings = json.loads(json.dumps(settings))  # normalise tuples and numpy scalars as JSON sees them
    if manifest.is_file():
        try:
            saved = json.loads(manifest.read_text())
        except ValueError as err:
            saved = {"unreadable manifest": str(err)}
        if not isinstance(saved, dict):
            saved = {"unreadable manifest": f"a JSON {type(saved).__name__}, not an object"}
        if same_settings(saved, settings, holder=f"{folder} holds models trained", force=force,
                         hint="use another folder, or force (--force) to discard them"):
            return
        for old in folder.glob("*.npz"):
            old.unlink()
    write_text(manifest, json.dumps(settings, indent=2, sort_keys=True) + "\n")

