"""SGD training that can record per-example dynamics, deterministic for a seed on CPU.

>>> from unlearn.data import load_dataset
>>> from unlearn.models import create_model
>>> splits = load_dataset("digits")
>>> model, history = train(create_model("digits_cnn", num_classes=10, in_channels=1), splits.train,
...                        epochs=1, progress=False)
>>> list(history.columns)
['epoch', 'lr', 'loss', 'accuracy', 'seconds']
"""

from __future__ import annotations

import copy
import functools
import math
import numbers
import os
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from proxies import predictions

from ._checks import same_settings
from .data import batches
from .epochs import Schedule, Step, lr_factor, run_epochs

__all__ = ["RECIPES", "DPConfig", "TrainConfig", "accuracy", "load_checkpoint", "predict", "save_checkpoint", "train"]

@dataclass(frozen=True)
class TrainConfig:
    """Hyperparameters of :func:`train`, for recipes and configs written next to checkpoints."""

    epochs: int = 20
    lr: float = 0.05
    batch_size: int = 128
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "cosine"
    drop_last: bool = False

    def as_kwargs(self) -> dict:
        return asdict(self)


RECIPES: dict[str, TrainConfig] = {
    "digits": TrainConfig(epochs=30, lr=0.05, batch_size=64),
    "fashion-mnist": TrainConfig(epochs=15, lr=0.05, batch_size=128),
    "mnist": TrainConfig(epochs=15, lr=0.05, batch_size=128),
    # the Feldman-Zhang anchor: ResNet-18, 30 epochs, lr 0.01, x0.1 at 15/20/25, batch 512
    "cifar10": TrainConfig(epochs=30, lr=0.01, batch_size=512, schedule="step"),
    "cifar100": TrainConfig(epochs=30, lr=0.01, batch_size=512, schedule="step"),
}
"""Default training recipe per dataset (the CLI's defaults)."""


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
          progress: bool = True) -> tuple[nn.Module, pd.DataFrame]:
    """Train a copy of ``model`` with SGD on ``dataset``; the caller's model is left unchanged.

    Args:
        model: any classifier returning logits ``[B, C]``.
        dataset: items ``(x, y)`` or ``(x, y, index)``; ``index`` is the training-set index the recorder keys on.
        epochs, lr, batch_size, momentum, weight_decay: SGD settings.
        schedule: ``"cosine"``, ``"step"`` (x0.1 at 1/2, 2/3, 5/6), ``"linear"``, ``"constant"`` or
            ``f(epoch, epochs) -> factor``; the learning rate is set per epoch.
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
        progress: show a tqdm bar.

    Returns:
        The trained model (in eval mode, on ``device``) and a DataFrame with one row per epoch.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    check_recipe(epochs=epochs, lr=lr, batch_size=batch_size, momentum=momentum, weight_decay=weight_decay)
    if len(dataset) == 0:
        raise ValueError("cannot train on an empty dataset")
    lr_factor(schedule, 0, max(epochs, 1))  # reject a bad schedule before any work
    if resume is not None and (dp is not None or callable(schedule)):
        raise ValueError("resume= needs a named schedule and no dp: a callable schedule or opacus's accountant "
                         "cannot be written to the state file")
    device = resolve_device(device)
    model = copy.deepcopy(model).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    rows, best_loss, stale, first = [], float("inf"), 0, 0
    fingerprint = {"epochs": epochs, "lr": lr, "batch_size": batch_size, "momentum": momentum,
                   "weight_decay": weight_decay, "schedule": schedule, "seed": seed, "drop_last": drop_last,
                   "patience": patience, "examples": len(dataset), "recorder": recorder is not None}
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        generator = torch.Generator().manual_seed(seed)
        if resume is not None and os.path.exists(resume):
            first, rows, best_loss, stale = _restore(resume, fingerprint, model, optimizer, generator, recorder,
                                                     device)
        if dp is not None:
            private, optimizer, engine, loader = _make_private(model, optimizer, dataset, dp, batch_size=batch_size,
                                                               epochs=epochs, generator=generator)

            def epoch_batches():
                for x, y, index in loader:
                    if len(y):  # Poisson sampling can draw an empty batch
                        yield x.to(device), y.to(device), index
        else:
            private = model
            epoch_batches = functools.partial(batches, dataset, batch_size, shuffle=True, generator=generator,
                                              drop_last=drop_last, device=device)

        # the recorder's input gradients come from this very backward pass: the inputs require grad, and x.grad
        # (of the batch-mean loss, 1/B of each example's own) is handed over once the step is done
        input_gradients = recorder is not None and getattr(recorder, "input_gradients", False)

        def steps(epoch: int):
            if recorder is not None:
                recorder.start_epoch()
            for x, y, index in epoch_batches():
                if input_gradients:
                    x = x.detach().requires_grad_()
                logits = private(x)
                loss = F.cross_entropy(logits, y)
                if recorder is not None:
                    recorder.record(logits, y, index)
                yield Step(loss, logits, y)  # the loop steps on it before asking for the next one
                if input_gradients:
                    recorder.record_input_gradients(x.grad, index, scale=len(y))
            if recorder is not None:
                recorder.end_epoch(model)

        def end_epoch(epoch: int, row: dict) -> bool:
            nonlocal best_loss, stale
            if dp is not None:
                row["epsilon"] = engine.get_epsilon(dp.delta)
            rows.append(row)
            if on_epoch_end is not None:
                on_epoch_end(epoch + 1, model)
            if patience is not None:
                best_loss, stale = (row["loss"], 0) if row["loss"] < best_loss else (best_loss, stale + 1)
            if resume is not None:
                _save_state(resume, fingerprint, epoch + 1, model, optimizer, generator, recorder, rows, best_loss,
                            stale, device)
            return patience is not None and stale >= patience

        run_epochs(model, optimizer, steps, lr=lr, schedule=schedule, epochs=epochs, first=first,
                   on_epoch_end=end_epoch, progress="train" if progress else None)
    if dp is not None:
        private._close()  # removes opacus's hooks; ``model`` is the trained module inside
    model.eval()
    columns = ["epoch", "lr", "loss", "accuracy", "seconds"] + (["epsilon"] if dp is not None else [])
    return model, pd.DataFrame(rows, columns=columns)


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
                recorder, rows: list[dict], best_loss: float, stale: int, device: torch.device) -> None:
    """Write the state after ``epoch`` finished epochs to ``path`` (through a temporary file: a kill mid-write
    leaves the previous state)."""
    state = {"fingerprint": fingerprint, "epoch": epoch, "model": model.state_dict(),
             "optimizer": optimizer.state_dict(), "torch_rng": torch.get_rng_state(),
             "generator": generator.get_state(),
             "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
             "recording": recorder.state_dict() if recorder is not None else None,
             "rows": rows, "best_loss": best_loss, "stale": stale}
    tmp = f"{os.fspath(path)}.partial"
    torch.save(state, tmp)
    os.replace(tmp, path)


def _restore(path, fingerprint: dict, model: nn.Module, optimizer, generator: torch.Generator, recorder,
             device: torch.device) -> tuple[int, list[dict], float, int]:
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

    from .data import WithIndex

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


@torch.no_grad()
def predict(model: nn.Module, dataset: Dataset, *, batch_size: int = 1024,
            device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Eval-mode logits ``[N, C]`` (on CPU), labels ``[N]`` and indices ``[N]`` of a dataset, in its order.

    ``device``: where to predict (default: where the model is); a model elsewhere is copied there, never moved.
    The model's train/eval mode is restored afterwards. The one implementation is :func:`proxies.predict`.
    """
    return predictions.predict(model, dataset, batch_size=batch_size, device=device)


def accuracy(model: nn.Module, dataset: Dataset, **kwargs) -> float:
    """Top-1 accuracy of ``model`` on ``dataset``: correct predictions over examples, an exact fraction (no float32
    rounding); NaN for an empty dataset. ``kwargs`` go to :func:`predict` (``device``, ``batch_size``)."""
    logits, labels, _ = predict(model, dataset, **kwargs)
    return int((logits.argmax(1) == labels).sum()) / len(labels) if len(labels) else float("nan")


def save_checkpoint(model: nn.Module, path: str | os.PathLike) -> None:
    """Write the model's ``state_dict`` (tensors only; loadable with ``weights_only=True``)."""
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, path)


def load_checkpoint(model: nn.Module, path: str | os.PathLike,
                    device: torch.device | str | None = None) -> nn.Module:
    """Load a ``state_dict`` written by :func:`save_checkpoint` into ``model`` (never unpickles objects), and move
    ``model`` to ``device`` when one is given."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a truncated or foreign file: say which file, keep the cause
        raise ValueError(f"cannot read checkpoint {os.fspath(path)}: {err}") from err
    if not isinstance(state, dict):
        raise ValueError(f"{os.fspath(path)} holds no state_dict (a {type(state).__name__})")
    try:
        model.load_state_dict(state)
    except RuntimeError as err:  # other keys or shapes: weights of another model
        raise ValueError(f"{os.fspath(path)} does not hold this model's weights: "
                         f"{str(err).splitlines()[0].rstrip(':.')}") from err
    return model if device is None else model.to(device)
