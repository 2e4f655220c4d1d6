"""A model farm on a Ray cluster: every model is one Ray task, every result is written as soon as it comes back.

:class:`RayFarm` has :class:`~unlearn.farm.LocalFarm`'s interface and cache: ``run(fn, jobs, shared)`` skips the
jobs whose ``<folder>/<key>.npz`` exists, and the driver writes each finished model's result there (atomically) the
moment its task returns, so nothing finished is lost when another task fails or the run is interrupted. ``shared``
goes into the object store once (``ray.put``) and every task gets a reference to it.

Ray is optional (``pip install 'memunlearn[ray]'``); this module imports it only when a farm is made. Every node of a
cluster needs this package installed (or shipped with ``runtime_env={"py_modules": [...]}``).

Results equal those of a :class:`~unlearn.farm.LocalFarm` for the same jobs bit for bit when both train with the same
number of torch threads on the same kind of processor (CPU kernels sum in an order that depends on the thread count:
digits models trained with 1 and 2 threads differ by 2e-7 to 4e-6 in their logits after 2-3 epochs, by more later).
A task sets ``torch.set_num_threads(threads_per_model)``, one thread per CPU Ray reserved for it by default.

    farm = RayFarm("runs/subset-models", gpus_per_model=0.25)          # RAY_ADDRESS or a local instance
    train_subset_models(train, model_fn, k=400, folder=farm.folder, farm=farm, **recipe)
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from .farm import Job, JobFn, _FolderFarm, _save

__all__ = ["RayFarm"]

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'memunlearn[ray]'"


def _import_ray():
    """The ``ray`` module, or a ModuleNotFoundError that says how to install it."""
    try:
        import ray
    except ModuleNotFoundError as err:
        raise ModuleNotFoundError(f"the 'ray' farm needs Ray, which is not installed: {INSTALL_HINT}") from err
    return ray


def task_resources(cluster: dict[str, float], *, cpus_per_model: float, gpus_per_model: float) -> dict[str, float]:
    """What one model's task asks Ray for: GPUs (a fraction lets several models share one) when the cluster has
    any, CPUs always.

    >>> task_resources({"CPU": 64.0, "GPU": 8.0}, cpus_per_model=1, gpus_per_model=0.25)
    {'num_cpus': 1, 'num_gpus': 0.25}
    >>> task_resources({"CPU": 2.0}, cpus_per_model=1, gpus_per_model=0.25)
    {'num_cpus': 1, 'num_gpus': 0}
    """
    return {"num_cpus": cpus_per_model, "num_gpus": gpus_per_model if cluster.get("GPU", 0) > 0 else 0}


def concurrent_models(cluster: dict[str, float], resources: dict[str, float]) -> int:
    """How many tasks asking for ``resources`` the cluster runs at once (at least 1).

    >>> concurrent_models({"CPU": 64.0, "GPU": 8.0}, {"num_cpus": 1, "num_gpus": 0.25})
    32
    >>> concurrent_models({"CPU": 2.0}, {"num_cpus": 1, "num_gpus": 0})
    2
    """
    limits = [cluster.get(kind, 0.0) / resources[key] for kind, key in (("CPU", "num_cpus"), ("GPU", "num_gpus"))
              if resources[key] > 0]
    return max(1, math.floor(min(limits, default=1) + 1e-9))


def _run_job(fn: JobFn, job: Job, shared: Any, threads: int | None) -> dict[str, np.ndarray]:
    """The body of one Ray task (Ray hands ``fn`` and ``shared`` over from the object store)."""
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    return fn(job, shared)


class RayFarm(_FolderFarm):
    """Runs each job as a Ray task, writing each result to ``folder/<key>.npz`` as soon as its task returns.

    Connects to ``address``, else to ``$RAY_ADDRESS``, else starts a local Ray instance with ``num_cpus`` CPUs. If Ray
    is already initialised in this process, that connection is used as it is. A cluster this farm did not start is
    never shut down; a local instance it started stops with the process or at :meth:`close`.

    Args:
        folder: where results go; created if missing.
        progress: show a tqdm bar.
        address: a Ray cluster address (``"ray://head:10001"``, ``"auto"``, ...).
        num_cpus: CPUs of a local instance this farm starts (default: all of them).
        cpus_per_model: CPUs each task reserves.
        gpus_per_model: GPUs each task reserves when the cluster has GPUs (``0.25``: four models share a GPU;
            ``0``: never use GPUs). Ignored on a cluster without GPUs.
        threads_per_model: torch threads in each task (default: ``cpus_per_model``, rounded down, at least 1).
        max_retries: times a failing task is run again (Ray's ``max_retries`` with ``retry_exceptions=True``)
            before it counts as failed.
        max_in_flight: tasks submitted at once (default: twice what the cluster runs at the same time).
        runtime_env: Ray's ``runtime_env`` for the connection this farm opens (e.g. ``{"py_modules": [...]}``).

    Raises:
        ModuleNotFoundError: Ray is not installed.
        ValueError: a setting is out of range, or ``num_cpus`` is given with a cluster address.
    """

    name = "ray"

    def __init__(self, folder: str | os.PathLike, *, progress: bool = True, address: str | None = None,
                 num_cpus: int | None = None, cpus_per_model: float = 1, gpus_per_model: float = 1.0,
                 threads_per_model: int | None = None, max_retries: int = 2, max_in_flight: int | None = None,
                 runtime_env: dict | None = None) -> None:
        _import_ray()
        if cpus_per_model <= 0 or gpus_per_model < 0 or max_retries < 0:
            raise ValueError(f"expected cpus_per_model > 0, gpus_per_model >= 0, max_retries >= 0; got "
                             f"{cpus_per_model}, {gpus_per_model}, {max_retries}")
        for option, value in (("num_cpus", num_cpus), ("threads_per_model", threads_per_model),
                              ("max_in_flight", max_in_flight)):
            if value is not None and value < 1:
                raise ValueError(f"{option} must be >= 1 or None, got {value}")
        if address is not None and num_cpus is not None:
            raise ValueError(f"num_cpus sizes a local Ray instance; it cannot be set for the cluster at {address}")
        super().__init__(folder, progress=progress)
        self.address = address
        self.num_cpus = num_cpus
        self.cpus_per_model = cpus_per_model
        self.gpus_per_model = gpus_per_model
        self.threads_per_model = threads_per_model or max(1, math.floor(cpus_per_model))
        self.max_retries = max_retries
        self.max_in_flight = max_in_flight
        self.runtime_env = runtime_env
        self._started = False

    def connect(self) -> None:
        """Connect to Ray (see the class docstring); does nothing if Ray is initialised already."""
        ray = _import_ray()
        if ray.is_initialized():
            return
        address = self.address or os.environ.get("RAY_ADDRESS") or None
        if address is None:
            ray.init(address="local", num_cpus=self.num_cpus, include_dashboard=False, runtime_env=self.runtime_env)
            self._started = True
            return
        if self.num_cpus is not None:
            raise ValueError(f"num_cpus sizes a local Ray instance; it cannot be set for the cluster at {address}")
        ray.init(address=address, runtime_env=self.runtime_env)

    def close(self) -> None:
        """Shut down the local Ray instance this farm started, if any; a cluster it connected to is left alone."""
        if self._started:
            _import_ray().shutdown()
            self._started = False

    def run(self, fn: JobFn, jobs: Sequence[Job], shared: Any) -> dict[str, dict[str, np.ndarray]]:
        """Run every job that has no result yet as a Ray task, then return all results by key.

        Raises:
            RuntimeError: some jobs still failed after ``max_retries`` retries. The others have finished and are on
                disk; a rerun runs only the failed ones.
        """
        self.folder.mkdir(parents=True, exist_ok=True)
        todo = self.pending(jobs)
        if todo:
            failed = self._run_remote(fn, todo, shared, on_disk=len(jobs) - len(todo))
            if failed:
                keys = sorted(failed)
                first = failed[keys[0]]
                cause = getattr(first, "cause", None) or first
                attempts = "1 attempt" if self.max_retries == 0 else f"{self.max_retries + 1} attempts each"
                raise RuntimeError(
                    f"{len(keys)} of {len(todo)} models failed after {attempts} ({', '.join(keys)}); the finished "
                    f"ones are in {self.folder} and a rerun runs only the failed ones. "
                    f"First error ({keys[0]}): {type(cause).__name__}: {cause}") from first
        return self.collect(jobs)

    def _run_remote(self, fn: JobFn, todo: list[Job], shared: Any, *, on_disk: int) -> dict[str, Exception]:
        """Submit ``todo`` in a bounded window, save each result as it arrives; the errors of the failed jobs."""
        ray = _import_ray()
        self.connect()
        cluster = ray.cluster_resources()
        resources = task_resources(cluster, cpus_per_model=self.cpus_per_model, gpus_per_model=self.gpus_per_model)
        window = self.max_in_flight or 2 * concurrent_models(cluster, resources)
        log.info("ray farm: %d models, each on %s (%d threads), at most %d in flight", len(todo), resources,
                 self.threads_per_model, window)
        remote = ray.remote(max_retries=self.max_retries, retry_exceptions=True, **resources)(_run_job)
        fn_ref, shared_ref = ray.put(fn), ray.put(shared)  # once; every task gets the references
        queue, running, failed = list(reversed(todo)), {}, {}
        bar = tqdm(total=len(todo), desc=f"models ({on_disk} of {on_disk + len(todo)} on disk)", unit="model",
                   disable=not self.progress)
        try:
            while queue or running:
                while queue and len(running) < window:
                    job = queue.pop()
                    running[remote.remote(fn_ref, job, shared_ref, self.threads_per_model)] = job
                done, _ = ray.wait(list(running), num_returns=1)
                for ref in done:
                    job = running.pop(ref)
                    try:
                        result = ray.get(ref)
                    except ray.exceptions.RayError as err:  # the task's own error, a crashed worker, ...
                        failed[job.key] = err
                        bar.set_postfix(failed=len(failed))
                    else:
                        _save(self.path(job.key), result)
                    bar.update()
        except BaseException:  # interrupted (or a result could not be written): stop what is still queued there
            for ref in running:
                ray.cancel(ref)
            raise
        finally:
            bar.close()
        return failed
