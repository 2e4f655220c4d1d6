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

``gpus_per_model="auto"`` sizes each task's share of a GPU from the model: its parameter count and the activations
of one example, counted on the ``meta`` device (:func:`model_footprint`), times the batch size, against one GPU's
memory (:func:`gpus_for_model` gives the rule); pure functions, tested without Ray or a GPU.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from .local import FolderFarm, Job, JobFn, save_result

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


CUDA_CONTEXT_BYTES = 512 * 2**20
"""What a task's own CUDA context and torch's allocator hold before any tensor (about 300-500 MiB on recent GPUs)."""


def model_footprint(model, input_shape: Sequence[int]) -> tuple[int, int]:
    """``(parameters, activations per example)`` of a model: its parameter count and the values its leaf modules
    output for one input of ``input_shape`` (without the batch dimension), counted on the ``meta`` device (no
    memory, no compute).

    Raises:
        ValueError: the model cannot run on the ``meta`` device (then give ``gpus_per_model`` as a number).

    >>> from unlearn.models import create_model
    >>> model_footprint(create_model("digits_cnn", num_classes=10, in_channels=1), (1, 8, 8))
    (151306, 14666)
    """
    import copy

    import torch

    parameters = sum(p.numel() for p in model.parameters())
    meta = copy.deepcopy(model).to("meta")
    counted = [math.prod(input_shape)]

    def count(module, inputs, output):
        counted.extend(t.numel() for t in (output if isinstance(output, (tuple, list)) else (output,))
                       if isinstance(t, torch.Tensor))

    hooks = [m.register_forward_hook(count) for m in meta.modules() if not list(m.children())]
    try:
        meta.train()
        meta(torch.empty((1, *input_shape), device="meta"))
    except Exception as err:
        raise ValueError(f"cannot size {type(model).__name__} on the meta device ({type(err).__name__}: {err}); "
                         "give gpus_per_model as a number") from err
    finally:
        for hook in hooks:
            hook.remove()
    return parameters, sum(counted)


def gpus_for_model(parameters: int, activations_per_example: int, *, batch_size: int, gpu_memory_bytes: float,
                   max_models_per_gpu: int = 8, bytes_per_value: int = 4,
                   context_bytes: int = CUDA_CONTEXT_BYTES) -> float:
    """The GPU fraction one training task asks Ray for: ``1 / n`` for the ``n`` tasks that fit on a GPU.

    The rule: a task needs its CUDA context (``context_bytes``), four values per parameter (weights, gradients, the
    momentum buffer, one spare for the optimizer's temporaries) and three per activation of a batch (the forward's
    saved outputs, their gradients, kernels' workspace), ``bytes_per_value`` each (float32); ``n`` tasks fit in 90%
    of ``gpu_memory_bytes``, at least 1 (a model larger than that asks for a whole GPU and may still not fit) and at
    most ``max_models_per_gpu`` (beyond a few, tasks only take turns on the GPU's compute).

    The digits CNN (batch 64) takes an eighth of a 16 GiB GPU (the cap); the CIFAR ResNet-18 (batch 512, about
    12 GB) a whole 16 GiB GPU, a sixth of an 80 GiB one:

    >>> gpus_for_model(151_306, 14_666, batch_size=64, gpu_memory_bytes=16 * 2**30)
    0.125
    >>> [round(gpus_for_model(11_173_962, 1_854_986, batch_size=512, gpu_memory_bytes=gib * 2**30), 3)
    ...  for gib in (16, 80)]
    [1.0, 0.167]

    Raises:
        ValueError: a count or size out of range.
    """
    if min(parameters, activations_per_example) < 0 or batch_size < 1 or gpu_memory_bytes <= 0 or \
            max_models_per_gpu < 1 or bytes_per_value < 1 or context_bytes < 0:
        raise ValueError(f"expected parameters, activations_per_example, context_bytes >= 0 and batch_size, "
                         f"gpu_memory_bytes, max_models_per_gpu, bytes_per_value >= 1; got {parameters}, "
                         f"{activations_per_example}, {context_bytes}, {batch_size}, {gpu_memory_bytes}, "
                         f"{max_models_per_gpu}, {bytes_per_value}")
    need = context_bytes + bytes_per_value * (4 * parameters + 3 * batch_size * activations_per_example)
    fits = math.floor(0.9 * gpu_memory_bytes / need)
    return 1.0 / max(1, min(max_models_per_gpu, fits))


def _task_footprint(shared: Any) -> tuple[int, int, int]:
    """``(parameters, activations per example, batch size)`` of the model a :class:`~unlearn.farm.TrainTask`
    trains, for ``gpus_per_model="auto"``."""
    import inspect

    from ..training.trainer import train
    from .local import TrainTask

    if not isinstance(shared, TrainTask):
        raise ValueError("gpus_per_model='auto' sizes train_and_predict jobs from their TrainTask (model and batch "
                         f"size); got {type(shared).__name__}: give gpus_per_model as a number")
    item = shared.dataset[0]
    shape = tuple(item[0].shape)
    batch_size = shared.train_kwargs.get("batch_size", inspect.signature(train).parameters["batch_size"].default)
    return (*model_footprint(shared.model_fn(), shape), int(batch_size))


def _probe_gpu_memory() -> int:
    import torch

    return torch.cuda.get_device_properties(0).total_memory


def _run_job(fn: JobFn, job: Job, shared: Any, threads: int | None) -> dict[str, np.ndarray]:
    """The body of one Ray task (Ray hands ``fn`` and ``shared`` over from the object store)."""
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    return fn(job, shared)


class RayFarm(FolderFarm):
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
            ``0``: never use GPUs; ``"auto"``: sized from the model, see :func:`gpus_for_model`, for
            :func:`~unlearn.farm.train_and_predict` jobs). Ignored on a cluster without GPUs.
        gpu_memory_gib: the memory of one GPU, for ``"auto"`` (default: this process's first CUDA device, else what
            a one-GPU task reports).
        max_models_per_gpu: most tasks sharing one GPU under ``"auto"``.
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
                 num_cpus: int | None = None, cpus_per_model: float = 1, gpus_per_model: float | str = 1.0,
                 gpu_memory_gib: float | None = None, max_models_per_gpu: int = 8,
                 threads_per_model: int | None = None, max_retries: int = 2, max_in_flight: int | None = None,
                 runtime_env: dict | None = None) -> None:
        _import_ray()
        if isinstance(gpus_per_model, str) and gpus_per_model != "auto":
            raise ValueError(f"gpus_per_model must be a number >= 0 or 'auto', got {gpus_per_model!r}")
        if (gpu_memory_gib is not None and gpu_memory_gib <= 0) or max_models_per_gpu < 1:
            raise ValueError(f"expected gpu_memory_gib > 0 (or None) and max_models_per_gpu >= 1; got "
                             f"{gpu_memory_gib}, {max_models_per_gpu}")
        if cpus_per_model <= 0 or (gpus_per_model != "auto" and gpus_per_model < 0) or max_retries < 0:
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
        self.gpu_memory_gib = gpu_memory_gib
        self.max_models_per_gpu = max_models_per_gpu
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

    def _auto_gpus(self, shared: Any) -> float:
        """``gpus_per_model="auto"``: the fraction :func:`gpus_for_model` gives for the task's model on this
        cluster's GPUs."""
        parameters, activations, batch_size = _task_footprint(shared)
        if self.gpu_memory_gib is not None:
            memory = self.gpu_memory_gib * 2**30
        else:
            import torch

            if torch.cuda.is_available():
                memory = torch.cuda.get_device_properties(0).total_memory
            else:
                ray = _import_ray()
                memory = ray.get(ray.remote(num_gpus=1, num_cpus=0)(_probe_gpu_memory).remote())
        fraction = gpus_for_model(parameters, activations, batch_size=batch_size, gpu_memory_bytes=memory,
                                  max_models_per_gpu=self.max_models_per_gpu)
        log.info("ray farm: %d parameters, %d activations per example, batch %d on %.0f GiB GPUs: %.3g GPU per "
                 "model", parameters, activations, batch_size, memory / 2**30, fraction)
        return fraction

    def _run_remote(self, fn: JobFn, todo: list[Job], shared: Any, *, on_disk: int) -> dict[str, Exception]:
        """Submit ``todo`` in a bounded window, save each result as it arrives; the errors of the failed jobs."""
        ray = _import_ray()
        self.connect()
        cluster = ray.cluster_resources()
        gpus = self.gpus_per_model
        if gpus == "auto":
            gpus = self._auto_gpus(shared) if cluster.get("GPU", 0) > 0 else 0
        resources = task_resources(cluster, cpus_per_model=self.cpus_per_model, gpus_per_model=gpus)
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
                        save_result(self.path(job.key), result)
                    bar.update()
        except BaseException:  # interrupted (or a result could not be written): stop what is still queued there
            for ref in running:
                ray.cancel(ref)
            raise
        finally:
            bar.close()
        return failed
