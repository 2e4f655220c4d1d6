"""A farm that trains a pack of small models at once, as one vmapped ensemble, with one-at-a-time's results.

:class:`PackedFarm` (``get_farm("packed", folder, models_per_pack=16)``) trains up to ``models_per_pack``
:func:`~unlearn.farm.train_and_predict` jobs together: their fresh models (each built exactly as one-at-a-time
training builds it, from ``model_fn`` under ``torch.manual_seed(job.seed)``) are stacked with
``torch.func.stack_module_state``, one ``vmap(functional_call)`` runs every model on its own batch, and one SGD step
(torch.optim.SGD's formula: ``d_p = g + wd * p``, ``buf = momentum * buf + d_p``, ``p -= lr * buf``) updates all the
stacked weights. Each model draws its own batches from its own ``train_ids``, shuffled by a generator seeded with
its job's seed, in the order :func:`unlearn.train` draws them, with the same per-epoch learning rate, so a packed
model ends where the same model trained alone ends, up to float rounding: vmap sums in another order, as training
with another number of threads does (digits CNNs, 3 epochs: logits within ~1e-5, the same argmax; see
``tests/test_farm.py``). Many small models per step instead of one amortise Python's and the kernels' per-step cost:
on CPU, 16 digits CNNs train several times faster packed (``benchmarks/bench_farm.py``).

Results are written per job exactly as :class:`~unlearn.farm.LocalFarm` writes them (same file, same keys), so a
folder is a cache for both and a rerun resumes from either. The manifest does not record the farm: a packed model
and a model trained alone are the same settings, equal within float rounding, as models trained with different
thread counts (which the manifest does not record either) are. A run interrupted mid-pack loses only that pack.

Subsets of different sizes pack together (a shadow model's half of the pool differs in size from model to model):
every model's epoch has its own number of batches; a step gives each model its own batch (padded to the largest,
the padding weighted zero), and a model whose epoch has ended does not step (its update is masked) until the
next epoch starts.

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
from tqdm.auto import tqdm

from .local import FolderFarm, Job, JobFn, TrainTask, save_result, train_and_predict

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

    import torch.nn as nn

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


def train_pack(task: TrainTask, jobs: Sequence[Job]) -> list:
    """Train one model per job together, as one vmapped ensemble; the trained models (eval mode, on the device).

    Each model equals, up to float rounding, ``unlearn.train(model_fn(), Subset(task.dataset, job.train_ids),
    seed=job.seed, **task.train_kwargs)`` with ``model_fn`` called under ``torch.manual_seed(job.seed)``, as
    :func:`~unlearn.farm.train_and_predict` trains it.

    Raises:
        ValueError: see :func:`check_packable`; a dataset that is not in memory; a job with no training examples.
    """
    import torch
    import torch.nn.functional as F
    from torch.func import functional_call, stack_module_state, vmap

    from ..data.sources import as_tensors
    from ..training.loop import lr_factor
    from ..training.trainer import resolve_device

    recipe = check_packable(task.train_kwargs)
    tensors = as_tensors(task.dataset)
    if tensors is None:
        raise ValueError(f"packed training needs an in-memory dataset (an IndexedDataset or a Subset of one), got "
                         f"{type(task.dataset).__name__}; unlearn.data.materialize makes one, or use farm='local'")
    if any(len(job.train_ids) == 0 for job in jobs):
        raise ValueError("cannot train on an empty dataset (a job has no train_ids)")
    device = resolve_device(task.device)
    models = []
    for job in jobs:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(job.seed)
            models.append(task.model_fn())
    if not isinstance(models[0], torch.nn.Module):
        raise TypeError(f"model_fn must build a torch.nn.Module, got {type(models[0]).__name__}")
    check_packable(task.train_kwargs, models[0])
    models = [model.to(device) for model in models]
    params, buffers = stack_module_state(models)
    names = list(params)
    base = copy.deepcopy(models[0]).to("meta")
    base.train()

    def forward(p, b, x):
        return functional_call(base, (p, b), (x,))

    ensemble = vmap(forward)
    inputs, targets = tensors[0].to(device), tensors[1].to(device)
    sizes = torch.tensor([len(job.train_ids) for job in jobs])
    batch_size, epochs, momentum, weight_decay = (recipe[k] for k in ("batch_size", "epochs", "momentum",
                                                                       "weight_decay"))
    stops = sizes - sizes % batch_size if recipe["drop_last"] else sizes  # the examples each model steps on
    steps = int(-(-int(stops.max()) // batch_size))
    width = steps * batch_size
    momenta = {name: torch.zeros_like(params[name]) for name in names} if momentum else {}
    generators = [torch.Generator().manual_seed(job.seed) for job in jobs]
    train_ids = [torch.as_tensor(job.train_ids, dtype=torch.long) for job in jobs]
    valid = torch.arange(width)[None, :] < stops[:, None]  # [P, width]: model m steps on slot j of its epoch
    counts = valid.view(len(jobs), steps, batch_size).sum(2)  # [P, steps] examples of each model's batch
    # known before training: no host sync per step on a GPU
    step_weights, step_counts = valid.to(device, torch.get_default_dtype()), counts.clamp(min=1).to(device)
    for epoch in range(epochs):
        lr = recipe["lr"] * lr_factor(recipe["schedule"], epoch, epochs)
        order = torch.zeros(len(jobs), width, dtype=torch.long)
        for m, (ids, generator) in enumerate(zip(train_ids, generators, strict=True)):
            # the draw of proxies.batching.tensor_batches, made by train() once per epoch
            drawn = ids[torch.randperm(len(ids), generator=generator)][:width]
            order[m, :len(drawn)] = drawn
        order = order.to(device)
        for step in range(steps):
            start, used = step * batch_size, int(counts[:, step].max())  # the batch padded to the largest
            take, weight = order[:, start:start + used], step_weights[:, start:start + used]
            logits = ensemble(params, buffers, inputs[take])  # [P, B, C]
            losses = F.cross_entropy(logits.flatten(0, 1), targets[take].flatten(), reduction="none")
            # the sum of each model's mean loss over its own batch: each model's gradient is its own
            loss = ((losses.view_as(weight) * weight.to(losses.dtype)).sum(1) / step_counts[:, step]).sum()
            grads = torch.autograd.grad(loss, [params[name] for name in names])
            active = counts[:, step] > 0  # a model whose epoch has ended does not step
            _sgd_step(params, momenta, dict(zip(names, grads, strict=True)), lr=lr, momentum=momentum,
                      weight_decay=weight_decay, active=None if bool(active.all()) else active.to(device))
    with torch.no_grad():
        for m, model in enumerate(models):
            for name, param in model.named_parameters():
                param.copy_(params[name][m])
            for name, buffer in model.named_buffers():
                buffer.copy_(buffers[name][m])
            model.eval()
    return models


def _sgd_step(params: dict, momenta: dict, grads: dict, *, lr: float, momentum: float, weight_decay: float,
              active) -> None:
    """torch.optim.SGD's step (no dampening, no Nesterov) on stacked weights; ``active [P]`` (None: all) masks the
    models that do not step."""
    import torch

    with torch.no_grad():
        for name, param in params.items():
            d_p = grads[name]
            if weight_decay:
                d_p = d_p.add(param, alpha=weight_decay)
            if active is None:  # every model steps: in place, as torch's SGD
                if momentum:
                    d_p = momenta[name].mul_(momentum).add_(d_p)  # first step: momentum * 0 + d_p == d_p
                param.add_(d_p, alpha=-lr)
                continue
            mask = active.view(-1, *([1] * (param.dim() - 1)))
            if momentum:
                buf = momenta[name]
                d_p = buf.mul(momentum).add_(d_p)
                buf.copy_(torch.where(mask, d_p, buf))
            param.copy_(torch.where(mask, param.add(d_p, alpha=-lr), param))


def _predictions(model, job: Job, task: TrainTask) -> dict[str, np.ndarray]:
    """A trained model's result, as :func:`~unlearn.farm.train_and_predict` makes it."""
    from ..evaluation.attacks.signals import predict_queries

    logits, _, _ = predict_queries(model, task.dataset, task.queries)
    result = {"train_ids": job.train_ids}
    for a, query in enumerate(task.queries):
        result["logits" if query == "identity" else f"logits_{query}"] = logits[:, a].numpy().astype(np.float32)
    return result


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
                        save_result(self.path(job.key), _predictions(model, job, shared))
                else:
                    save_result(self.path(pack[0].key), fn(pack[0], shared))
                bar.update(len(pack))
        finally:
            bar.close()
        return self.collect(jobs)
