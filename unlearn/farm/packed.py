"""A farm that trains a pack of small models at once, as one vmapped ensemble, with one-at-a-time's results.

:class:`PackedFarm` (``get_farm("packed", folder, models_per_pack=16)``) trains up to ``models_per_pack``
:func:`~unlearn.farm.train_and_predict` jobs together: their fresh models (each built exactly as one-at-a-time
training builds it, from ``model_fn`` under ``torch.manual_seed(job.seed)``) are stacked with
``torch.func.stack_module_state`` into one module whose parameters are the stacked weights ``[P, ...]``, and
one ``vmap(functional_call)`` runs every model on its own batch. The ensemble trains through the one epoch loop,
:func:`unlearn.training.loop.run_epochs` (each epoch's learning rate from the schedule, ``zero_grad``, ``backward``,
``optimizer.step``), with one ``torch.optim.SGD`` over the stacked weights: SGD's update (``d_p = g + wd * p``,
``buf = momentum * buf + d_p``, ``p -= lr * buf``) is elementwise, so a stacked weight steps exactly as its P models
would one by one. Each model draws its own batches from its own ``train_ids``, shuffled by a generator seeded with
its job's seed, in the order :func:`unlearn.train` draws them, with the same per-epoch learning rate, so a packed
model ends where the same model trained alone ends, up to float rounding: vmap sums in another order, as training
with another number of threads does (digits CNNs, 3 epochs: logits within ~1e-5, the same argmax; see
``tests/test_farm.py``). Many small models per step instead of one amortise Python's and the kernels' per-step cost
(a kernel launch per layer per model, an optimizer step per model): on a GPU, where a small CNN leaves most of the
device idle, that is the point; on a CPU at one thread it about breaks even (``benchmarks/bench_farm.py``).
Trained, the ensemble is split back into P ordinary models, whose predictions are made as every farm makes them
(:func:`unlearn.farm.local.predict_job`).

Results are written per job exactly as :class:`~unlearn.farm.LocalFarm` writes them (same file, same keys), so a
folder is a cache for both and a rerun resumes from either. The manifest does not record the farm: a packed model
and a model trained alone are the same settings, equal within float rounding, as models trained with different
thread counts (which the manifest does not record either) are. A run interrupted mid-pack loses only that pack.

Subsets of different sizes pack together (a shadow model's half of the pool differs in size from model to model):
every model's epoch has its own number of batches; a step gives each model its own batch (padded to the largest,
the padding weighted zero), and a model whose epoch has ended does not step until the next epoch starts: SGD steps
every stacked weight (weight decay and momentum move even a weight with a zero gradient), so that model's slices of
the weights and momentum buffers are copied before the step and put back, bit for bit, after it (the loop's
``grad_hook`` and ``step_hook``); steps where every model has a batch copy nothing.

Not packed (refused with a ``ValueError`` naming them): models with BatchNorm (its running statistics are updated
inside the forward pass) or dropout (vmap cannot draw one model's random masks as training alone draws them),
datasets that are not in memory (an :class:`~unlearn.data.IndexedDataset` or a ``Subset`` of one:
:func:`unlearn.data.materialize` makes one), and :func:`unlearn.train` settings other than ``epochs``, ``lr``,
``batch_size``, ``momentum``, ``weight_decay``, ``schedule`` and ``drop_last`` (``dp``, ``recorder``, ``patience``,
``resume``, ``on_epoch_end``...): use ``farm="local"`` for those. Jobs of another function than
:func:`~unlearn.farm.train_and_predict` (unlearned shadow models) run one at a time, as on a local farm.

>>> import functools, tempfile
>>> from unlearn.data import load_dataset
>>> from unlearn.models import create_model
>>> splits = load_dataset("digits")
>>> model_fn = functools.partial(create_model, "digits_cnn", num_classes=10, in_channels=1)
>>> task = TrainTask(splits.train, model_fn, {"epochs": 1, "batch_size": 64})
>>> jobs = [Job(f"m{i}", np.arange(100 * i, 100 * i + 300), seed=i) for i in range(3)]
>>> results = PackedFarm(tempfile.mkdtemp(), progress=False).run(train_and_predict, jobs, task)
>>> results["m2"]["logits"].shape == (len(splits.train), 10)
True
"""

from __future__ import annotations

import copy
import os
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from .local import FolderFarm, Job, JobFn, TrainTask, predict_job, save_result, train_and_predict

__all__ = ["PACKABLE_SETTINGS", "PackedFarm", "check_packable", "train_pack"]

PACKABLE_SETTINGS = ("epochs", "lr", "batch_size", "momentum", "weight_decay", "schedule", "drop_last")
"""The :func:`unlearn.train` settings packed training honours."""


def check_packable(train_kwargs: dict, model=None) -> dict:
    """The full training recipe of ``train_kwargs`` (``unlearn.train``'s defaults filled in), refusing what packed
    training cannot do as one-at-a-time training does it.

    Raises:
        ValueError: a setting outside :data:`PACKABLE_SETTINGS`, a recipe that cannot train, or a ``model`` with
            BatchNorm or dropout.

    >>> check_packable({"epochs": 2})["lr"]
    0.05
    >>> check_packable({"epochs": 2, "patience": 3, "dp": None})
    Traceback (most recent call last):
    ...
    ValueError: packed training cannot honour dp, patience; use farm='local' for them (it packs epochs, lr, \
batch_size, momentum, weight_decay, schedule, drop_last)
    """
    import inspect

    from ..training.loop import lr_factor
    from ..training.trainer import check_recipe, train

    unknown = sorted(set(train_kwargs) - set(PACKABLE_SETTINGS))
    if unknown:
        raise ValueError(f"packed training cannot honour {', '.join(unknown)}; use farm='local' for them "
                         f"(it packs {', '.join(PACKABLE_SETTINGS)})")
    defaults = {name: p.default for name, p in inspect.signature(train).parameters.items() if name in PACKABLE_SETTINGS}
    recipe = {**defaults, **train_kwargs}
    check_recipe(epochs=recipe["epochs"], lr=recipe["lr"], batch_size=recipe["batch_size"],
                 momentum=recipe["momentum"], weight_decay=recipe["weight_decay"])
    lr_factor(recipe["schedule"], 0, max(recipe["epochs"], 1))  # an unknown schedule, before any work
    if model is not None:
        for name, module in model.named_modules():
            if isinstance(module, nn.modules.batchnorm._NormBase) and module.track_running_stats:
                raise ValueError(f"packed training does not support BatchNorm ({name}: {type(module).__name__} "
                                 "updates running statistics in the forward pass); use farm='local'")
            if isinstance(module, nn.modules.dropout._DropoutNd) and module.p > 0:
                raise ValueError(f"packed training does not support dropout ({name}: {type(module).__name__} "
                                 "draws random masks that vmap cannot draw as training alone does); use farm='local'")
    return recipe


def train_pack(task: TrainTask, jobs: Sequence[Job]) -> list[nn.Module]:
    """Train one model per job together, as one vmapped ensemble; the trained models (eval mode, on the device).

    Each model equals, up to float rounding, ``unlearn.train(model_fn(), Subset(task.dataset, job.train_ids),
    seed=job.seed, **task.train_kwargs)`` with ``model_fn`` called under ``torch.manual_seed(job.seed)``, as
    :func:`~unlearn.farm.train_and_predict` trains it: the ensemble steps through the same epoch loop
    (:func:`~unlearn.training.loop.run_epochs`, which sets each epoch's learning rate from the schedule) with a
    ``torch.optim.SGD`` over the stacked weights, each model on its own batch; a model whose epoch has ended is
    held where it is until the next epoch starts.

    Raises:
        ValueError: see :func:`check_packable`; a dataset that is not in memory; a job with no training examples.
        TypeError: a ``model_fn`` that does not build a ``torch.nn.Module``.
    """

    from proxies.tasks import task_of

    from ..data.sources import as_tensors
    from ..training.loop import run_epochs
    from ..training.trainer import resolve_device

    recipe = check_packable(task.train_kwargs)
    tensors = as_tensors(task.dataset)
    if tensors is None:
        raise ValueError(f"packed training needs an in-memory dataset (an IndexedDataset or a Subset of one), got "
                         f"{type(task.dataset).__name__}; unlearn.data.materialize makes one, or use farm='local'")
    if any(len(job.train_ids) == 0 for job in jobs):
        raise ValueError("cannot train on an empty dataset (a job has no train_ids)")
    device = resolve_device(task.device)
    models = _fresh_models(task, jobs, device)
    ensemble = _Ensemble(models)
    optimizer = torch.optim.SGD(ensemble.parameters(), lr=recipe["lr"], momentum=recipe["momentum"],
                                weight_decay=recipe["weight_decay"])
    hold = _HoldIdle(optimizer)
    plan = _Batches(jobs, recipe["batch_size"], drop_last=recipe["drop_last"], device=device)
    inputs, targets = tensors[0].to(device), tensors[1].to(device)
    kind = task_of(task.dataset)  # (``task`` is the farm's TrainTask: the examples' task is their kind)

    def steps(epoch: int):
        order = plan.order()
        for step in range(plan.steps):
            take, weight, count = plan.batch(order, step)
            logits = ensemble(inputs[take])  # [P, B, C]
            losses = kind.loss(logits.flatten(0, 1), targets[take].flatten(), reduction="none")
            hold.idle = plan.idle[step]
            # the sum of each model's mean loss over its own batch: each model's gradient is its own
            yield ((losses.view_as(weight) * weight.to(losses.dtype)).sum(1) / count).sum()

    run_epochs(ensemble, optimizer, steps, lr=recipe["lr"], schedule=recipe["schedule"], epochs=recipe["epochs"],
               grad_hook=hold.save, step_hook=hold.restore)
    ensemble.unstack(models)
    for model in models:
        model.eval()
    return models


def _fresh_models(task: TrainTask, jobs: Sequence[Job], device) -> list[nn.Module]:
    """Each job's untrained model on ``device``, built as one-at-a-time training builds it: ``task.model_fn()``
    under ``torch.manual_seed(job.seed)``, the global random state left as it was.

    Raises:
        TypeError: ``model_fn`` does not build a ``torch.nn.Module``.
        ValueError: a model that cannot be packed (see :func:`check_packable`).
    """
    models = []
    for job in jobs:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(job.seed)
            models.append(task.model_fn())
    if not isinstance(models[0], nn.Module):
        raise TypeError(f"model_fn must build a torch.nn.Module, got {type(models[0]).__name__}")
    check_packable(task.train_kwargs, models[0])
    return [model.to(device) for model in models]


class _Batches:
    """Every model's batches of a pack, a step at a time.

    Model ``m``'s epoch is its own shuffle of its ``train_ids`` (the draw of ``proxies.batching.tensor_batches``,
    made by :func:`unlearn.train` once per epoch, from a generator seeded with its job's seed) cut into batches of
    ``batch_size``; step ``s`` takes every model's ``s``-th batch, padded to the largest (the padding weighted 0).
    A model with fewer batches (a smaller subset) is idle at the steps after its last one.

    Args:
        jobs: the pack's jobs.
        batch_size: examples per batch.
        drop_last: drop each model's last partial batch, as :func:`unlearn.train` does.
        device: where the batches' indices and weights go (all made before training: no host sync per step).
    """

    def __init__(self, jobs: Sequence[Job], batch_size: int, *, drop_last: bool, device) -> None:
        sizes = torch.tensor([len(job.train_ids) for job in jobs])
        stops = sizes - sizes % batch_size if drop_last else sizes  # the examples each model steps on
        self.batch_size, self.device = batch_size, device
        self.steps = int(-(-int(stops.max()) // batch_size))
        self.width = self.steps * batch_size
        self.generators = [torch.Generator().manual_seed(job.seed) for job in jobs]
        self.train_ids = [torch.as_tensor(job.train_ids, dtype=torch.long) for job in jobs]
        valid = torch.arange(self.width)[None, :] < stops[:, None]  # [P, width]: model m steps on slot j of its epoch
        counts = valid.view(len(jobs), self.steps, batch_size).sum(2)  # [P, steps] examples of each model's batch
        self.used = counts.amax(0).tolist() if self.steps else []  # each step's batch width: its largest batch
        self.weights = valid.to(device, torch.get_default_dtype())
        self.counts = counts.clamp(min=1).to(device)
        # per step: the indices of the models without a batch, None when every model has one
        self.idle = [None if bool(count.all()) else torch.nonzero(count == 0).flatten().to(device)
                     for count in counts.T]

    def order(self) -> torch.Tensor:
        """The next epoch's example indices ``[P, width]``: row ``m`` is model ``m``'s shuffle, zero-padded."""
        order = torch.zeros(len(self.train_ids), self.width, dtype=torch.long)
        for m, (ids, generator) in enumerate(zip(self.train_ids, self.generators, strict=True)):
            drawn = ids[torch.randperm(len(ids), generator=generator)][:self.width]
            order[m, :len(drawn)] = drawn
        return order.to(self.device)

    def batch(self, order: torch.Tensor, step: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Step ``step``'s example indices ``[P, B]``, their weights ``[P, B]`` (1, or 0 for padding) and each
        model's number of examples ``[P]`` (at least 1: an idle model's weights are all 0)."""
        start, used = step * self.batch_size, self.used[step]
        return order[:, start:start + used], self.weights[:, start:start + used], self.counts[:, step]


class _Ensemble(nn.Module):
    """P models of one architecture as one module: each weight stacked ``[P, ...]`` into one ``nn.Parameter`` (what
    the optimizer steps), ``forward(x [P, B, ...]) -> [P, B, C]`` running model ``m`` on ``x[m]`` with vmap.

    Args:
        models: the P models, on one device (their weights are copied, not shared).
    """

    def __init__(self, models: Sequence[nn.Module]) -> None:
        from torch.func import stack_module_state

        super().__init__()
        params, self.stacked_buffers = stack_module_state(list(models))  # the buffers are not trained
        self.names = list(params)
        self.stacked = nn.ParameterList([nn.Parameter(params[name].detach()) for name in self.names])
        base = copy.deepcopy(models[0]).to("meta")
        base.train()
        self._base = (base,)  # in a tuple: no submodule, so its meta weights are none of the ensemble's parameters

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from torch.func import functional_call, vmap

        base = self._base[0]

        def one(params, buffers, inputs):
            return functional_call(base, (params, buffers), (inputs,))

        return vmap(one)(dict(zip(self.names, self.stacked, strict=True)), self.stacked_buffers, x)

    @torch.no_grad()
    def unstack(self, models: Sequence[nn.Module]) -> None:
        """Copy model ``m``'s slice of every stacked weight and buffer into ``models[m]``."""
        params = dict(zip(self.names, self.stacked, strict=True))
        for m, model in enumerate(models):
            for name, param in model.named_parameters():
                param.copy_(params[name][m])
            for name, buffer in model.named_buffers():
                buffer.copy_(self.stacked_buffers[name][m])


class _HoldIdle:
    """Keeps the models without a batch at a step (their epoch has ended) from stepping, bit for bit.

    ``torch.optim.SGD`` steps every stacked weight, and even a zero gradient moves a weight through weight decay and
    momentum; so the idle models' slices of the weights and momentum buffers are copied before the step
    (:meth:`save`, :func:`~unlearn.training.loop.run_epochs`'s ``grad_hook``) and put back after it (:meth:`restore`,
    its ``step_hook``). A momentum buffer that the step created holds zeros for them, as SGD's first step
    (``buf = d_p``) is ``momentum * 0 + d_p``. ``idle`` is None (nothing copied) when every model has a batch.
    """

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        self.optimizer = optimizer
        self.params = [p for group in optimizer.param_groups for p in group["params"]]
        self.idle: torch.Tensor | None = None  # the idle models' indices [I], set before each step
        self.saved: list[tuple[torch.Tensor, torch.Tensor | None]] = []

    @torch.no_grad()
    def save(self, model: nn.Module) -> None:
        """Copy the idle models' weights and momentum buffers (``grad_hook``: after ``backward``, before the step)."""
        if self.idle is None:
            return
        self.saved = [(p[self.idle], None if (buf := self._momentum(p)) is None else buf[self.idle])
                      for p in self.params]

    @torch.no_grad()
    def restore(self, optimizer: torch.optim.Optimizer) -> None:
        """Put the idle models' weights and momentum buffers back as they were before the step (``step_hook``)."""
        if self.idle is None:
            return
        for p, (weights, momenta) in zip(self.params, self.saved, strict=True):
            p.index_copy_(0, self.idle, weights)
            buf = self._momentum(p)
            if buf is not None and momenta is not None:
                buf.index_copy_(0, self.idle, momenta)
            elif buf is not None:  # made by this step
                buf.index_fill_(0, self.idle, 0)

    def _momentum(self, p: torch.Tensor) -> torch.Tensor | None:
        return self.optimizer.state.get(p, {}).get("momentum_buffer")


class PackedFarm(FolderFarm):
    """Trains :func:`~unlearn.farm.train_and_predict` jobs in packs of ``models_per_pack`` vmapped models, writing
    each model's result to ``folder/<key>.npz`` when its pack is done (see the module docstring).

    Args:
        folder: where results go; created if missing.
        progress: show a tqdm bar.
        models_per_pack: models trained at once (more fill more of a GPU, and need that many times the memory).

    Raises:
        ValueError: ``models_per_pack`` below 1.
    """

    name = "packed"

    def __init__(self, folder: str | os.PathLike, *, progress: bool = True, models_per_pack: int = 16) -> None:
        if isinstance(models_per_pack, bool) or not isinstance(models_per_pack, int) or models_per_pack < 1:
            raise ValueError(f"models_per_pack must be a whole number >= 1, got {models_per_pack!r}")
        super().__init__(folder, progress=progress)
        self.models_per_pack = models_per_pack

    def run(self, fn: JobFn, jobs: Sequence[Job], shared: Any) -> dict[str, dict[str, np.ndarray]]:
        """Run every job that has no result yet, a pack at a time, then return all results by key.

        Raises:
            ValueError: ``shared`` asks for training that cannot be packed (see :func:`check_packable`).
        """
        self.folder.mkdir(parents=True, exist_ok=True)
        todo = self.pending(jobs)
        packable = fn is train_and_predict and isinstance(shared, TrainTask)
        if todo and packable:
            check_packable(shared.train_kwargs)
        elif todo:
            warnings.warn(f"the packed farm packs train_and_predict jobs only; running {getattr(fn, '__name__', fn)} "
                          "one model at a time", stacklevel=2)
        bar = tqdm(total=len(todo), desc=f"models ({len(jobs) - len(todo)} of {len(jobs)} on disk)", unit="model",
                   disable=not self.progress or not todo)
        try:
            step = self.models_per_pack if packable else 1
            for start in range(0, len(todo), step):
                pack = todo[start:start + step]
                if packable:
                    for job, model in zip(pack, train_pack(shared, pack), strict=True):
                        save_result(self.path(job.key), predict_job(model, job, shared))
                else:
                    save_result(self.path(pack[0].key), fn(pack[0], shared))
                bar.update(len(pack))
        finally:
            bar.close()
        return self.collect(jobs)
