"""Training (SGD, or AdamW for language models) that can record per-example dynamics, deterministic for a seed on CPU.

Where :func:`train`'s data is: with an in-memory dataset the training set is copied to ``device`` once per call and
each batch (shuffled by a CPU generator, the order copied once an epoch) is gathered there; any other dataset is
streamed, a batch at a time, through a ``DataLoader`` (:class:`unlearn.data.Streamed` sets its workers; the batches
are pinned on CUDA and copied asynchronously), in the same order as from memory for the same seed. Loss and accuracy
are summed on the device: an epoch reads the device back a fixed number of times at its end (the history row, the
recorder's epoch), never per batch.

>>> from unlearn.data import load_dataset
>>> from unlearn.models import create_model
>>> splits = load_dataset("digits")
>>> model, history = train(create_model("digits_cnn", num_classes=10, in_channels=1), splits.train,
...                        epochs=1, progress=False)
>>> list(history.columns)
['epoch', 'lr', 'loss', 'accuracy', 'seconds']
"""

from __future__ import annotations

import contextlib
import copy
import functools
import math
import numbers
import os
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field

import pandas as pd
import torch
from torch import nn
from torch.utils.data import Dataset

from proxies.batching import as_tensors
from proxies.files import written
from proxies.predictions import predict
from proxies.registries import Registry
from proxies.tasks import CLASSIFICATION, Classification, Task, task_of

from .._checks import check_finite_inputs, same_settings
from ..data.sources import batches
from .augment import Augmentation, augmentation_generator, get_augmentation
from .loop import BatchLoss, Schedule, lr_factor, run_epochs, training_numerics

__all__ = ["OPTIMIZERS", "PRECISIONS", "RECIPES", "DPConfig", "TrainConfig", "get_recipe", "load_checkpoint", "recipes",
           "register_recipe", "save_checkpoint", "top1_accuracy", "train"]

PRECISIONS = ("fp32", "bf16")
"""The arithmetic :func:`train` can run in: ``fp32`` (on CUDA its matmuls and convolutions use TF32, see
:func:`~.loop.training_numerics`) or ``bf16`` (autocast: bfloat16 matmuls and convolutions, float32 weights,
optimizer, loss and recording)."""

NUMERICS = ("precision", "channels_last", "deterministic")
"""The :class:`TrainConfig` fields that say how the arithmetic runs rather than what is optimised."""


@dataclass(frozen=True)
class TrainConfig:
    """Hyperparameters of :func:`train`, for recipes and configs written next to checkpoints.

    ``precision``, ``channels_last`` and ``deterministic`` (:data:`NUMERICS`) say how the arithmetic runs; see
    :func:`train`. ``augment`` names the training-time augmentation (:func:`unlearn.training.augment.augmentations`).
    """

    epochs: int = 20
    lr: float = 0.05
    batch_size: int = 128
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "cosine"
    drop_last: bool = False
    precision: str = "fp32"
    channels_last: bool = False
    deterministic: bool = False
    augment: str = "none"
    optimizer: str = "sgd"

    def __post_init__(self) -> None:
        check_numerics(precision=self.precision, channels_last=self.channels_last, deterministic=self.deterministic)
        get_augmentation(self.augment)
        check_optimizer(self.optimizer)

    def as_kwargs(self) -> dict:
        """The recipe as :func:`train`'s keyword arguments. The :data:`NUMERICS`, ``augment`` and ``optimizer`` are
        left out where
        they have their defaults, so that a default recipe reads as it did before they existed: the settings a run
        folder records, and what a method that takes a recipe (``retrain``) accepts, are unchanged.

        >>> sorted(TrainConfig(precision="bf16").as_kwargs())[-4:]
        ['momentum', 'precision', 'schedule', 'weight_decay']
        >>> "augment" in TrainConfig().as_kwargs(), TrainConfig(augment="flip").as_kwargs()["augment"]
        (False, 'flip')
        """
        defaults = TrainConfig.__dataclass_fields__
        return {k: v for k, v in asdict(self).items()
                if k not in (*NUMERICS, "augment", "optimizer") or v != defaults[k].default}


OPTIMIZERS = ("sgd", "adamw")
"""What :func:`train` steps with: SGD with ``momentum`` and ``weight_decay`` (the classifiers' recipes), or AdamW
(``torch.optim.AdamW``, betas (0.9, 0.999), decoupled ``weight_decay``; ``momentum`` is not used), the language
models' recipe."""


def check_optimizer(optimizer, label: Callable[[str], str] = str) -> str:
    """``optimizer`` if it is one of :data:`OPTIMIZERS`, else a ValueError saying which are."""
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"{label('optimizer')} must be one of {list(OPTIMIZERS)}, got {optimizer!r}")
    return optimizer


def make_optimizer(name: str, parameters, *, lr: float, momentum: float,
                   weight_decay: float) -> torch.optim.Optimizer:
    """The optimizer :data:`OPTIMIZERS` names, over ``parameters``."""
    if check_optimizer(name) == "adamw":
        return torch.optim.AdamW(parameters, lr=lr, weight_decay=weight_decay)
    return torch.optim.SGD(parameters, lr=lr, momentum=momentum, weight_decay=weight_decay)


def check_numerics(*, precision, channels_last, deterministic, label: Callable[[str], str] = str) -> None:
    """Refuse a ``precision`` outside :data:`PRECISIONS` and ``channels_last`` / ``deterministic`` that are not
    bools; ``label`` names a setting in the message (the command line's ``--precision``)."""
    if precision not in PRECISIONS:
        raise ValueError(f"{label('precision')} must be one of {list(PRECISIONS)}, got {precision!r}")
    for name, value in (("channels_last", channels_last), ("deterministic", deterministic)):
        if not isinstance(value, bool):
            raise TypeError(f"{label(name)} must be True or False, got {value!r}")


# The anchors' CIFAR-10/100 ResNet-18 recipe. From the Feldman-Zhang anchor (REFERENCE.md, "Feldman-Zhang
# memorization"): 30 epochs, SGD lr 0.01, momentum 0.9, wd 5e-4, lr x0.1 at 15/20/25 (the "step" schedule: x0.1 at
# 1/2, 2/3, 5/6 of the epochs), batch 512. From "Compute anchors" (the anchors' CIFAR training recipe): random crop
# 32 with padding 4 and a horizontal flip (``crop_flip``), SGD momentum 0.9, wd 5e-4.
_CIFAR_RESNET18 = TrainConfig(epochs=30, lr=0.01, batch_size=512, momentum=0.9, weight_decay=5e-4, schedule="step",
                              augment="crop_flip")

RECIPES: Registry[TrainConfig] = Registry("training recipe", entries={
    # the dataset defaults, by dataset name (the CLI's defaults)
    "digits": TrainConfig(epochs=30, lr=0.05, batch_size=64),
    "fashion-mnist": TrainConfig(epochs=15, lr=0.05, batch_size=128),
    "mnist": TrainConfig(epochs=15, lr=0.05, batch_size=128),
    "cifar10": _CIFAR_RESNET18,
    "cifar100": _CIFAR_RESNET18,
    # CIFAR-shaped synthetic data (unlearn.data.synthetic) for timing: ResNet-18 learns it in a few epochs
    "synthetic-cifar": TrainConfig(epochs=10, lr=0.05, batch_size=512),
    # named recipes
    "cifar-resnet18": _CIFAR_RESNET18,
    # a small causal LM on fortunes (tiny_gpt): TinyMem's AdamW lr 1e-3 and weight decay 0.1, batch 64 sequences,
    # a warmup then cosine; in 20 epochs on 1,000 fortunes it orders canaries by their copies (bench_text.py)
    "fortunes": TrainConfig(epochs=20, lr=1e-3, batch_size=64, momentum=0.0, weight_decay=0.1,
                            schedule="warmup_cosine", optimizer="adamw"),
    # the fashion-mnist default with augmentation: a random 28x28 crop of the image padded by 2 (items are centred
    # and fill the frame: a shift of 4 of 28 pixels would cut sleeves and soles off) and a horizontal flip
    # (label-preserving for clothes, bags and shoes, unlike for digits: mnist and digits have no augmented recipe)
    "fashion-mnist-augmented": TrainConfig(epochs=15, lr=0.05, batch_size=128, augment="crop2_flip"),
    # a small vision transformer (vit_mini) on Fashion-MNIST: AdamW lr 1e-3 and weight decay 0.05 (DeiT's), batch
    # 128, a linear warmup over the first tenth then cosine; on 4,000 images it reaches ~80% test accuracy in 10
    # epochs (15 at lr 2e-3 overfits to the same 80%)
    "fashion-mnist-vit": TrainConfig(epochs=10, lr=1e-3, batch_size=128, momentum=0.0, weight_decay=0.05,
                                     schedule="warmup_cosine", optimizer="adamw"),
})
"""Training recipes by name (:func:`get_recipe`): each dataset's default under the dataset's name (what ``unlearn
run`` uses without ``--recipe``), and named ones: ``cifar-resnet18`` (the anchors' CIFAR-10/100 ResNet-18 recipe,
also the ``cifar10`` and ``cifar100`` defaults), ``fashion-mnist-augmented`` and ``fashion-mnist-vit`` (for
``vit_mini``); :func:`register_recipe` adds one."""


def get_recipe(name: str) -> TrainConfig:
    """The training recipe registered as ``name`` (:data:`RECIPES`).

    >>> get_recipe("cifar-resnet18").augment, get_recipe("digits").augment
    ('crop_flip', 'none')

    Raises:
        ValueError: an unknown name, with the names there are.
    """
    return RECIPES.get(name)


def register_recipe(name: str, recipe: TrainConfig, *, force: bool = False) -> None:
    """Add a training recipe (``unlearn run --recipe NAME``); a taken name is refused unless ``force``."""
    if not isinstance(recipe, TrainConfig):
        raise TypeError(f"a recipe must be a TrainConfig, got {type(recipe).__name__}")
    RECIPES.register(name, recipe, force=force)


def recipes() -> list[str]:
    """The names of the training recipes, sorted."""
    return RECIPES.names()


def resolve_device(device: torch.device | str | None) -> torch.device:
    """``device``, or CUDA when none is given and one is available, else the CPU: where training goes by default.

    Raises:
        ValueError: a device torch does not know, or a CUDA / MPS device this machine does not have.
    """
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"unknown device {device!r}; expected e.g. 'cpu', 'cuda' or 'cuda:1'") from err
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0 or (device.index or 0) >= count:
            raise ValueError(f"device {str(device)!r} asked for, but this machine has {count} CUDA device(s)")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError("device 'mps' asked for, but MPS is not available here")
    return device


def train(model: nn.Module, dataset: Dataset, *, epochs: int = 20, lr: float = 0.05, batch_size: int = 128,
          momentum: float = 0.9, weight_decay: float = 5e-4, schedule: Schedule = "cosine", seed: int = 0,
          drop_last: bool = False, patience: int | None = None, recorder=None,
          on_epoch_end: Callable[[int, nn.Module], None] | None = None, dp: DPConfig | None = None,
          device: torch.device | str | None = None, resume: str | os.PathLike | None = None,
          precision: str = "fp32", channels_last: bool = False, deterministic: bool = False,
          augment: str = "none", optimizer: str = "sgd", progress: bool = True) -> tuple[nn.Module, pd.DataFrame]:
    """Train a copy of ``model`` on ``dataset``; the caller's model is left unchanged.

    Args:
        model: a classifier (logits ``[B, C]``), or a causal LM (logits ``[B, T, V]`` or ``.logits``) for token
            sequences (:mod:`proxies.sequences`): the data's task says how the loss comes out of the output.
        dataset: items ``(x, y)`` or ``(x, y, index)``; ``index`` is the training-set index the recorder keys on.
        epochs, lr, batch_size, momentum, weight_decay: the optimizer's settings.
        schedule: ``"cosine"``, ``"step"`` (x0.1 at 1/2, 2/3, 5/6), ``"linear"``, ``"constant"``,
            ``"warmup_cosine"`` (:data:`~.loop.SCHEDULES`) or ``f(epoch, epochs) -> factor``; the learning rate is
            set per epoch.
        seed: seeds shuffling and any randomness in the model; the global RNG state is restored afterwards.
        drop_last: drop the last partial batch of each epoch.
        patience: stop early once the training loss has not improved for this many epochs (None: never).
        recorder: a :class:`proxies.TrainingRecorder` sized to the training set, filled during training: each
            presentation's softmax signals, its input-gradient norm when ``recorder.input_gradients`` (the batch's
            inputs then require grad) and each epoch's weight norm.
        on_epoch_end: called as ``f(epoch, model)`` (1-based epoch) after each epoch, e.g. to keep checkpoints.
        dp: train with differential privacy (DP-SGD through opacus: Poisson-sampled batches of expected size
            ``batch_size``, per-example clipping, noise calibrated to ``dp.epsilon`` over ``epochs``); the history
            gains the ``epsilon`` opacus's accountant reports after each epoch.
        device: where to train (default: CUDA if available, else CPU).
        resume: a file for the training state after each finished epoch (model, optimizer, random states, the
            recorder's epochs, the history so far), written atomically. When it exists, training continues after
            its epoch: a run killed at any point and started again ends bit for bit where an uninterrupted run ends
            (on the CPU; the ``seconds`` column aside). A state written with other settings is refused. Not with
            ``dp``. ``on_epoch_end`` is called only for the epochs trained in this call.
        precision: ``"fp32"`` (the default; on CUDA the matmuls and convolutions use TF32 for the duration of the
            call) or ``"bf16"``: the forward pass and the loss under ``torch.autocast(device, bfloat16)``, on CUDA
            and on the CPU alike; weights, gradients, the optimizer and the recording stay float32 (the recorder
            casts the bf16 logits). No loss scaling is needed: bf16 has float32's range.
        channels_last: put the model's 4-d weights and every batch of images in channels-last memory order
            (``torch.channels_last``): cuDNN's tensor-core convolutions want it, and it skips their transposes.
            The values computed are the same up to rounding; the model is returned in that order.
        deterministic: bitwise-reproducible CUDA training for the call (deterministic algorithms, cuDNN
            deterministic, no benchmark, ``CUBLAS_WORKSPACE_CONFIG``), restored afterwards; it costs speed on CUDA
            and nothing on the CPU, which is deterministic already (:func:`~.loop.training_numerics`).
        augment: a training-time augmentation by name (:func:`unlearn.training.augment.augmentations`: ``"none"``, the
            default, ``"flip"``, ``"crop"``, ``"crop_flip"``...). Each batch is augmented on ``device`` after it is
            fetched and before the forward pass, so the model steps on, and the recorder records, the augmented
            presentations (their logits, and the input gradient of the augmented input), as the anchors' recorders
            do. The random numbers come from a CPU generator of their own
            (:func:`~.augment.augmentation_generator` of ``seed``): the batches' order is that of ``"none"``,
            which trains bit for bit as without the argument. The resume state holds that generator's state too.
            Only training presents augmented inputs: :func:`predict`, :func:`accuracy`, the proxies computed from a
            model and the attacks see the data as it is (the attacks add their own queries), and so do the
            unlearning methods' steps (:mod:`unlearn.methods`; ``retrain`` alone calls :func:`train`, with the
            original recipe, its augmentation included).
        optimizer: ``"sgd"`` or ``"adamw"`` (:data:`OPTIMIZERS`). progress: show a tqdm bar.

    Returns:
        The trained model (in eval mode, on ``device``) and a DataFrame with one row per epoch.

    Raises:
        ValueError: bad settings or data, before any work (an in-memory training set with NaN or infinite inputs
            among them, naming their indices); :class:`unlearn.NonFiniteError` (a ValueError) when the
            loss or the weights become NaN or infinite, at the end of that epoch, naming it and the step: no model
            is returned.
    """
    settings = _Settings(epochs=epochs, lr=lr, batch_size=batch_size, momentum=momentum, weight_decay=weight_decay,
                         schedule=schedule, seed=seed, drop_last=drop_last, patience=patience, recorder=recorder,
                         on_epoch_end=on_epoch_end, dp=dp, resume=resume, precision=precision,
                         channels_last=channels_last, deterministic=deterministic, augment=augment,
                         optimizer=optimizer)
    augmentation = settings.check(model, dataset)
    device = resolve_device(device)
    run = _Run.create(settings, model, dataset, device, augmentation)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), \
            training_numerics(device, deterministic=deterministic):
        run.start(dataset)
        run_epochs(run.model, run.optimizer, run.steps, lr=lr, schedule=schedule, epochs=epochs, first=run.first,
                   on_epoch_end=run.end_epoch, progress="train" if progress else None, task=run.task)
    return run.finish()


@dataclass(frozen=True)
class _Settings:
    """:func:`train`'s arguments other than the model, the data, the device and the progress bar."""

    epochs: int
    lr: float
    batch_size: int
    momentum: float
    weight_decay: float
    schedule: Schedule
    seed: int
    drop_last: bool
    patience: int | None
    recorder: object
    on_epoch_end: Callable[[int, nn.Module], None] | None
    dp: DPConfig | None
    resume: str | os.PathLike | None
    precision: str
    channels_last: bool
    deterministic: bool
    augment: str
    optimizer: str

    def check(self, model: nn.Module, dataset: Dataset) -> Augmentation:
        """Refuse what cannot train, before any work; returns the augmentation ``augment`` names.

        Raises:
            TypeError: ``model`` is not a module, or a numerics flag is not a bool.
            ValueError: bad settings, an empty dataset, inputs the augmentation cannot take, a recorder too small
                for the dataset, an unknown schedule, or ``resume`` with ``dp`` or a callable schedule.
        """
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        check_recipe(epochs=self.epochs, lr=self.lr, batch_size=self.batch_size, momentum=self.momentum,
                     weight_decay=self.weight_decay)
        check_numerics(precision=self.precision, channels_last=self.channels_last, deterministic=self.deterministic)
        check_optimizer(self.optimizer)
        augmentation = get_augmentation(self.augment)
        if len(dataset) == 0:
            raise ValueError("cannot train on an empty dataset")
        check_finite_inputs(dataset, "training set")
        if self.augment != "none" and torch.as_tensor(dataset[0][0]).ndim != 3:
            raise ValueError(f"augment={self.augment!r} needs images [C, H, W], but the dataset's inputs have shape "
                             f"{list(torch.as_tensor(dataset[0][0]).shape)}")
        _check_recorder_fits(self.recorder, dataset)
        _probe(model, dataset)
        lr_factor(self.schedule, 0, max(self.epochs, 1))  # reject a bad schedule before any work
        if self.resume is not None and (self.dp is not None or callable(self.schedule)):
            raise ValueError("resume= needs a named schedule and no dp: a callable schedule or opacus's accountant "
                             "cannot be written to the state file")
        return augmentation

    def fingerprint(self, examples: int) -> dict:
        """What a resume state must have been written with: the settings that change the weights trained."""
        fingerprint = {"epochs": self.epochs, "lr": self.lr, "batch_size": self.batch_size, "momentum": self.momentum,
                       "weight_decay": self.weight_decay, "schedule": self.schedule, "seed": self.seed,
                       "drop_last": self.drop_last, "patience": self.patience, "examples": examples,
                       "recorder": self.recorder is not None}
        # other arithmetic trains other weights; the defaults stay out, so that states written before read the same
        fingerprint.update({k: v for k, v in (("precision", self.precision), ("channels_last", self.channels_last),
                                              ("augment", self.augment), ("optimizer", self.optimizer))
                            if v != TrainConfig.__dataclass_fields__[k].default})
        return fingerprint


@dataclass
class _Run:
    """The objects and the progress of one :func:`train` call, which its epochs' steps (:meth:`steps`) and ends
    (:meth:`end_epoch`) share. :meth:`start` sets the fields after ``fingerprint`` (``first`` and the progress only
    when it resumes); :meth:`end_epoch` keeps the progress."""

    settings: _Settings
    model: nn.Module
    optimizer: torch.optim.Optimizer
    device: torch.device
    augmentation: Augmentation
    fingerprint: dict
    task: Task = CLASSIFICATION  # the kind of example: how a batch's loss comes out of the model's output
    generator: torch.Generator | None = None  # the shuffling's
    augment_generator: torch.Generator | None = None  # the augmentation's; None without augmentation
    private: nn.Module | None = None  # the module stepped on: ``model``, or opacus's wrapper of it with dp
    engine: object = None  # opacus's PrivacyEngine with dp: its accountant reports epsilon
    epoch_batches: Callable[[], Iterable] | None = None
    autocast: Callable[[], contextlib.AbstractContextManager] | None = None
    input_gradients: bool = False
    first: int = 0
    rows: list[dict] = field(default_factory=list)
    best_loss: float = float("inf")
    stale: int = 0

    @classmethod
    def create(cls, settings: _Settings, model: nn.Module, dataset: Dataset, device: torch.device,
               augmentation: Augmentation) -> _Run:
        """A copy of ``model`` on ``device`` (the caller's is left unchanged) with its optimizer."""
        model = copy.deepcopy(model).to(device)
        if settings.channels_last:
            model = model.to(memory_format=torch.channels_last)
        optimizer = make_optimizer(settings.optimizer, model.parameters(), lr=settings.lr,
                                   momentum=settings.momentum, weight_decay=settings.weight_decay)
        return cls(settings, model, optimizer, device, augmentation, settings.fingerprint(len(dataset)),
                   task_of(dataset))

    def start(self, dataset: Dataset) -> None:
        """Seed the random numbers, continue from the resume state when there is one, and choose where the batches
        come from and the arithmetic; inside the call's ``fork_rng``, before the first epoch."""
        settings, recorder = self.settings, self.settings.recorder
        torch.manual_seed(settings.seed)
        self.generator = torch.Generator().manual_seed(settings.seed)
        # augmentation draws from a stream of its own: the shuffling order is that of an un-augmented run
        self.augment_generator = augmentation_generator(settings.seed) if settings.augment != "none" else None
        if settings.resume is not None and os.path.exists(settings.resume):
            self.first, self.rows, self.best_loss, self.stale = _restore(
                settings.resume, self.fingerprint, self.model, self.optimizer, self.generator, recorder, self.device,
                self.augment_generator)
        self._choose_batches(dataset)
        self.autocast = (functools.partial(torch.autocast, self.device.type, dtype=torch.bfloat16)
                         if settings.precision == "bf16" else contextlib.nullcontext)
        # the recorder's input gradients come from this very backward pass: the inputs require grad, and x.grad
        # (of the batch-mean loss, 1/B of each example's own) is handed over once the step is done
        self.input_gradients = recorder is not None and getattr(recorder, "input_gradients", False)

    def _choose_batches(self, dataset: Dataset) -> None:
        """With dp, opacus's Poisson-sampled batches through a private model and optimizer; else the dataset's
        batches, shuffled by the generator."""
        settings, device = self.settings, self.device
        if settings.dp is not None:
            self.private, self.optimizer, self.engine, loader = _make_private(
                self.model, self.optimizer, dataset, settings.dp, batch_size=settings.batch_size,
                epochs=settings.epochs, generator=self.generator)

            def epoch_batches():
                for x, y, index in loader:
                    if len(y):  # Poisson sampling can draw an empty batch
                        yield x.to(device, non_blocking=True), y.to(device, non_blocking=True), index

            self.epoch_batches = epoch_batches
        else:
            self.private = self.model
            # the indices go to the device too: the recorder keys its device buffers on them without a copy
            self.epoch_batches = functools.partial(batches, dataset, settings.batch_size, shuffle=True,
                                                   generator=self.generator, drop_last=settings.drop_last,
                                                   device=device, moved=("x", "y", "index"))

    def steps(self, epoch: int) -> Iterator[BatchLoss]:
        """:func:`~.loop.run_epochs`'s ``steps``: the epoch's batch losses, recorded when there is a recorder."""
        recorder, channels_last = self.settings.recorder, self.settings.channels_last
        if recorder is not None:
            recorder.start_epoch()
        for x, y, index in self.epoch_batches():
            if self.augment_generator is not None:  # the presentation: what the model and the recorder see
                x = self.augmentation(x, self.augment_generator)
            if channels_last and x.ndim == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            gradient = None
            if self.input_gradients:  # the task says where an example's input gradient is taken
                x, gradient = self.task.watch_input(self.private, x)
            with self.autocast():
                logits = self.task.forward(self.private, x)
                loss = self.task.loss(logits, y)
            if recorder is not None:
                recorder.record(logits, y, index)
            yield BatchLoss(loss, logits, y)  # the loop steps on it before asking for the next one
            if gradient is not None:
                recorder.record_input_gradients(gradient(), index, scale=len(y))
        if recorder is not None:
            recorder.end_epoch(self.model)

    def end_epoch(self, epoch: int, row: dict) -> bool:
        """:func:`~.loop.run_epochs`'s ``on_epoch_end``: keep the row (with dp, its epsilon), call the caller's
        ``on_epoch_end``, write the resume state; True (stop) once the patience has run out."""
        settings = self.settings
        if settings.dp is not None:
            row["epsilon"] = self.engine.get_epsilon(settings.dp.delta)
        self.rows.append(row)
        if settings.on_epoch_end is not None:
            settings.on_epoch_end(epoch + 1, self.model)
        if settings.patience is not None:
            self.best_loss, self.stale = ((row["loss"], 0) if row["loss"] < self.best_loss
                                          else (self.best_loss, self.stale + 1))
        if settings.resume is not None:
            _save_state(settings.resume, self.fingerprint, epoch + 1, self.model, self.optimizer, self.generator,
                        settings.recorder, self.rows, self.best_loss, self.stale, self.device, self.augment_generator)
        return settings.patience is not None and self.stale >= settings.patience

    def finish(self) -> tuple[nn.Module, pd.DataFrame]:
        """The trained model, in eval mode, and the history, one row per epoch."""
        if self.settings.dp is not None:
            self.private._close()  # removes opacus's hooks; ``model`` is the trained module inside
        self.model.eval()
        columns = ["epoch", "lr", "loss", "accuracy", "seconds"] + (["epsilon"] if self.settings.dp is not None else [])
        return self.model, pd.DataFrame(self.rows, columns=columns)


def _probe(model: nn.Module, dataset: Dataset) -> None:
    """Refuse, before any work, a model that cannot take the data's first examples: for token sequences the task's
    probe on two (a vocabulary too small for the tokenizer's ids, logits that are not a causal LM's); for a
    classifier, on the first: inputs of another floating dtype than its weights, inputs it cannot take (a
    ValueError with the shape and torch's first line), and labels outside its logits (all of an in-memory set's)."""
    def examples(n: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
        first = [dataset[i] for i in range(min(n, len(dataset)))]
        device = next(model.parameters(), torch.empty(0)).device
        return (torch.stack([torch.as_tensor(item[0]) for item in first]).to(device),
                torch.stack([torch.as_tensor(item[1]) for item in first]))

    task = task_of(dataset)
    if not isinstance(task, Classification):
        task.probe(model, examples)
        return
    inputs, targets = examples(1)  # the first item, which training reads for its shape anyway
    weight = next((p for p in model.parameters() if p.is_floating_point()), None)
    if weight is not None and inputs.is_floating_point() and inputs.dtype != weight.dtype:
        raise ValueError(f"the inputs are {str(inputs.dtype).removeprefix('torch.')} but the model's weights are "
                         f"{str(weight.dtype).removeprefix('torch.')}: convert one to the other (e.g. "
                         "inputs.float(), or train in float32 and use precision='bf16' for half precision)")
    try:  # on a throwaway copy: the caller's model (and any hook on it) sees no extra forward pass
        with torch.no_grad():
            output = copy.deepcopy(model).eval()(inputs)
    except RuntimeError as err:
        raise ValueError(f"the model cannot take the training inputs of shape {list(inputs.shape[1:])}: "
                         f"{str(err).splitlines()[0]}") from None
    tensors = as_tensors(dataset)
    task.check(output, targets if tensors is None else tensors[1], len(inputs))


def _check_recorder_fits(recorder, dataset: Dataset) -> None:
    """Refuse a recorder smaller than an in-memory dataset's training indices, before any work, on the CPU: the
    recorder checks indices on a device only at an epoch's end, and a wrong one in an input-gradient write
    would stop the device instead of raising."""
    size = getattr(recorder, "num_examples", None)
    tensors = as_tensors(dataset) if isinstance(size, int) else None
    if tensors is None or not len(tensors[2]):
        return
    indices = tensors[2]
    low, high = int(indices.min()), int(indices.max())
    if low < 0 or high >= size:
        raise ValueError(f"the recorder holds {size} examples but the dataset has training "
                         f"indices in [{low}, {high}]; size it to the training set (TrainingRecorder(len(train)))")


def check_recipe(*, epochs, lr, batch_size, momentum=0.0, weight_decay=0.0,
                 label: Callable[[str], str] = str) -> None:
    """Refuse training settings that cannot train: epochs and batch_size whole numbers (>= 0, >= 1), lr finite and
    > 0, momentum and weight decay finite and >= 0 (a NaN would train and write NaN weights). ``label`` names a
    setting in the message (the command line names them ``--lr``, ``--batch-size``...)."""
    for name, value, least in (("epochs", epochs, 0), ("batch_size", batch_size, 1)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < least:
            raise ValueError(f"{label(name)} must be a whole number >= {least}, got {value!r}")
    for name, value, positive in (("lr", lr, True), ("momentum", momentum, False),
                                  ("weight_decay", weight_decay, False)):
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or (
                value <= 0 if positive else value < 0):
            raise ValueError(f"{label(name)} must be a finite number {'> 0' if positive else '>= 0'}, got {value!r}")


def _save_state(path, fingerprint: dict, epoch: int, model: nn.Module, optimizer, generator: torch.Generator,
                recorder, rows: list[dict], best_loss: float, stale: int, device: torch.device,
                augment_generator: torch.Generator | None = None) -> None:
    """Write the state after ``epoch`` finished epochs to ``path`` (through a temporary file: a kill mid-write
    leaves the previous state); the augmentation's generator's state too, when training augments."""
    state = {"fingerprint": fingerprint, "epoch": epoch, "model": model.state_dict(),
             "optimizer": optimizer.state_dict(), "torch_rng": torch.get_rng_state(),
             "generator": generator.get_state(),
             "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
             "recording": recorder.state_dict() if recorder is not None else None,
             "rows": rows, "best_loss": best_loss, "stale": stale}
    if augment_generator is not None:  # states of un-augmented training keep the keys they always had
        state["augment_generator"] = augment_generator.get_state()
    with written(path) as tmp:  # a kill mid-write leaves the previous state
        torch.save(state, tmp)


def _restore(path, fingerprint: dict, model: nn.Module, optimizer, generator: torch.Generator, recorder,
             device: torch.device, augment_generator: torch.Generator | None = None
             ) -> tuple[int, list[dict], float, int]:
    """Load a state written by :func:`_save_state` into the training objects; returns ``(epochs done, history
    rows, best loss, stale epochs)``."""
    try:
        state = torch.load(path, map_location=device, weights_only=True)
        saved = state["fingerprint"]
    except Exception as err:
        raise ValueError(f"cannot read the training state {os.fspath(path)} ({err}); delete it to train from "
                         "the start") from err
    same_settings(saved, fingerprint, holder=f"{os.fspath(path)} holds the state of a training",
                  hint="delete it to train from the start")
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["torch_rng"].cpu())
    generator.set_state(state["generator"].cpu())
    if augment_generator is not None:  # the fingerprint holds augment: a state of this training has it
        augment_generator.set_state(state["augment_generator"].cpu())
    if state["cuda_rng"] is not None and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda_rng"].cpu(), device)
    if recorder is not None:
        recorder.load_state_dict(state["recording"])
    return state["epoch"], list(state["rows"]), float(state["best_loss"]), int(state["stale"])


@dataclass(frozen=True)
class DPConfig:
    """Differentially private training: the privacy budget ``(epsilon, delta)`` and the per-example clipping norm."""

    epsilon: float
    delta: float = 1e-5
    max_grad_norm: float = 1.0

    def __post_init__(self) -> None:
        if self.epsilon <= 0 or not 0 < self.delta < 1 or self.max_grad_norm <= 0:
            raise ValueError(f"expected epsilon > 0, 0 < delta < 1, max_grad_norm > 0; got {self}")


def _make_private(model: nn.Module, optimizer, dataset: Dataset, dp: DPConfig, *, batch_size: int, epochs: int,
                  generator: torch.Generator):
    """opacus's DP-SGD around ``model`` and ``optimizer``; checks that the model's layers support it."""
    from opacus import PrivacyEngine
    from opacus.validators import ModuleValidator
    from torch.utils.data import DataLoader

    from ..data.sources import WithIndex

    errors = ModuleValidator.validate(model, strict=False)
    if errors:
        raise ValueError(f"DP training needs layers opacus supports: {errors[0]} "
                         "(opacus.validators.ModuleValidator.fix(model) replaces BatchNorm with GroupNorm)")
    loader = DataLoader(WithIndex(dataset), batch_size=batch_size, shuffle=True, generator=generator)
    engine = PrivacyEngine()
    with warnings.catch_warnings():  # opacus warns that its RNG is not cryptographically secure (secure_mode)
        warnings.filterwarnings("ignore", message="Secure RNG turned off")
        private, optimizer, loader = engine.make_private_with_epsilon(
            module=model, optimizer=optimizer, data_loader=loader, target_epsilon=dp.epsilon, target_delta=dp.delta,
            epochs=max(epochs, 1), max_grad_norm=dp.max_grad_norm)
    return private, optimizer, engine, loader


def top1_accuracy(model: nn.Module, dataset: Dataset, **kwargs) -> float:
    """Top-1 accuracy of ``model`` on ``dataset``: correct predictions over examples, an exact fraction (no float32
    rounding); NaN for an empty dataset. ``kwargs`` go to :func:`proxies.predict` (``device``, ``batch_size``).
    (Named apart from the ``accuracy`` proxy, a score of training dynamics.)"""
    logits, labels, _ = predict(model, dataset, **kwargs)
    return int(task_of(dataset).correct(logits, labels).sum()) / len(labels) if len(labels) else float("nan")


def save_checkpoint(model: nn.Module, path: str | os.PathLike) -> None:
    """Write the model's ``state_dict`` (tensors only; loadable with ``weights_only=True``), whole: through a
    temporary file renamed over ``path``."""
    with written(path) as tmp:
        torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, tmp)


def load_checkpoint(model: nn.Module, path: str | os.PathLike,
                    device: torch.device | str | None = None) -> nn.Module:
    """Load a ``state_dict`` written by :func:`save_checkpoint` into ``model`` (never unpickles objects), and move
    ``model`` to ``device`` when one is given."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a truncated or foreign file: say which file, keep the cause; torch's advice to
        # load it with weights_only=False (arbitrary code) is cut: its first line says what failed
        raise ValueError(f"cannot read checkpoint {os.fspath(path)}: not a state_dict that "
                         f"torch.load(weights_only=True) reads ({type(err).__name__})") from err
    if not isinstance(state, dict):
        raise ValueError(f"{os.fspath(path)} holds no state_dict (a {type(state).__name__})")
    try:
        model.load_state_dict(state)
    except RuntimeError as err:  # other keys or shapes: weights of another model
        raise ValueError(f"{os.fspath(path)} does not hold this model's weights: "
                         f"{str(err).splitlines()[0].rstrip(':.')}") from err
    return model if device is None else model.to(device)
