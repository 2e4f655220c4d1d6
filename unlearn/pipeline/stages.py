"""The stages of ``unlearn run``: each reuses what its run folder already holds with the same settings, and
otherwise does its work and records itself finished (:class:`~unlearn.pipeline.folder.RunFolder`).

What a stage says goes through :func:`say` (silent when :func:`unlearn.pipeline.run` runs with
``progress=False``).
"""

from __future__ import annotations

import contextvars
import copy
import functools
import hashlib
import json
import time
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

import proxies
from proxies import TrainingRecorder
from proxies.devices import model_device
from proxies.files import write_text, written

from .._checks import same_settings
from ..algorithms.registry import get_method, make_config
from ..algorithms.rum.policies import default_policy, resolve_policy, uses_expected
from ..data.selection import parse_forget_spec, read_ids, select_forget
from ..data.sources import DatasetNotFoundError, first_input, labels_of, load_dataset
from ..farm.subset_models import train_subset_models
from ..models import create_model
from ..training.loop import SHOW_BARS, warm_up
from ..training.trainer import TrainConfig, load_checkpoint, save_checkpoint, train
from .config import DEFAULT_PROXIES, TEXT_OPTIONS, RunConfig
from .folder import RunFolder

_PROGRESS = SHOW_BARS  # the stages speak when the loops show bars


def say(*message) -> None:
    """Print a stage's message, unless the run is silent."""
    if _PROGRESS.get():
        print(*message)


def progress_bars() -> bool:
    """Whether the stages show tqdm bars."""
    return _PROGRESS.get()


def set_progress(progress: bool) -> contextvars.Token:
    """Make the stages speak (and show bars) or not, until :func:`reset_progress` with the token."""
    return _PROGRESS.set(bool(progress))


def reset_progress(token: contextvars.Token) -> None:
    _PROGRESS.reset(token)


def check_data(config: RunConfig, splits, model: nn.Module, model_name: str) -> None:
    """What the data decides, checked before training: the model takes the inputs, the forget set fits."""
    try:
        with torch.no_grad():
            model.eval()(first_input(splits.train, 2))
    except RuntimeError as err:
        raise ValueError(f"--model {model_name} does not take {config.dataset}'s inputs "
                         f"{list(first_input(splits.train).shape[1:])}: {str(err).splitlines()[0]}") from None
    spec = getattr(config, "forget", None)
    if spec is None:
        return
    spec = parse_forget_spec(spec)
    n = len(splits.train)
    if spec.needs_scores:
        if spec.size >= n:
            raise ValueError(f"--forget {config.forget} asks for {spec.size} of {n} training examples; expected "
                             f"fewer than {n}, so that some are retained")
    else:  # random, ids and canaries need no scores: the selection itself is the check
        select_forget(spec, None, num_train=n, seed=config.seed, canaries=canary_ids(splits), **request_names(splits))


def with_shadow_attacks(attacks, shadows) -> list[str]:
    """The attacks to run: ``attacks``, and LiRA and RMIA when there are shadow models, each once."""
    return list(dict.fromkeys([*attacks, *(["lira", "rmia"] if shadows is not None else [])]))


def request_names(splits) -> dict:
    """How a deletion request may name the training examples besides their indices: by their rows of the official
    training file, by their files (an ``imagefolder:``'s); :func:`~unlearn.data.selection.read_ids`'s keywords."""
    rows = getattr(splits, "train_rows", None)
    return {"source_rows": None if rows is None else rows.numpy(), "source_paths": getattr(splits, "train_paths", None)}


def forget_table(splits, ids: np.ndarray) -> pd.DataFrame:
    """``forget.csv``: the forget set's training indices, with each one's label (classes), source row and file
    where the data has them."""
    table = pd.DataFrame({"index": ids})
    labels = labels_of(splits.train)[0]
    if labels.ndim == 1:  # a class (a sequence's labels are its tokens: its text is in scores.csv)
        table["label"] = labels[ids].numpy()
    if splits.train_rows is not None:
        table["source_row"] = splits.train_rows[ids].numpy()
    if getattr(splits, "train_paths", None) is not None:
        table["path"] = [splits.train_paths[i] for i in ids]
    return table


def canary_ids(splits) -> np.ndarray | None:
    """The training indices of a text dataset's canary copies (None without canaries)."""
    canaries = getattr(splits, "canaries", None)
    return None if canaries is None else canaries["index"].to_numpy()


@dataclass
class Trained:
    """The original model and what its training left: the splits, recording, checkpoints and settings."""

    splits: Any
    model: nn.Module
    recorder: proxies.TrainingRecorder
    checkpoints: list
    settings: dict
    digest: str

    @property
    def model_fn(self):
        return model_fn_of(self.settings, self.splits)

    @property
    def recipe(self) -> dict:
        return recipe_of(self.settings)

    @property
    def kind(self) -> str:
        """``"text"`` for token sequences, else ``"images"``."""
        return "images" if labels_of(self.splits.train)[0].ndim == 1 else "text"


@dataclass
class Request:
    """The forget set: training indices, the forget and retain sets, and what ranked them."""

    ids: np.ndarray
    forget: Any
    retain: Any
    ranked_by: str | None
    skipped: str | None
    digest: str


@dataclass
class Unlearned:
    """The unlearned model, its plan, what the method noted of it, and the proxy that scheduled it (if any)."""

    model: nn.Module
    plan: pd.DataFrame
    notes: dict
    scheduled_by: str | None = None


TRAIN_STATE = "train-state.pt"
"""The training state after the last finished epoch, in ``OUT/checkpoints``: a killed training resumes from it."""


def _run_settings(config: RunConfig, splits, model_name: str) -> dict:
    """What identifies the original model's training: data, model, seed, checkpoint epochs and recipe."""
    recipe = config.training_recipe()
    every = min(config.checkpoints, recipe.epochs)  # more checkpoints than epochs: one per epoch
    keep = sorted({round(recipe.epochs * (i + 1) / every) for i in range(every)} - {0})
    settings = {"dataset": config.dataset, "model": model_name, "seed": config.seed, "train_size": config.train_size,
                "val_fraction": config.val_fraction, "checkpoint_epochs": keep, **config.text_options(),
                **config.recipe_settings(), **recipe.as_kwargs()}
    # (left out when not given, so that a run without them records what it did before they existed)
    if config.model_options:
        settings["model_options"] = dict(config.model_options)
    if config.weights is not None:  # the file's digest: other weights under the same name are another run
        path = Path(config.weights).resolve()
        settings["weights"] = {"file": str(path), "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
    if config.stream:  # (an image folder's streamed normalisation can differ in the last bits: another run)
        settings["stream"] = True
    return settings


def train_stage(config: RunConfig, out: Path, device: torch.device, run: RunFolder | None = None):
    """Train the original model on ``device`` into ``out``, or load it there when ``out`` already holds the same
    run (``run``: the folder's later stages, cleared when training starts).

    Returns the splits, the model, its recording, its checkpoints, the settings and the training seconds (None
    when reused)."""
    try:
        splits = load_dataset(config.dataset, root=config.root, download=config.download,
                              val_fraction=config.val_fraction, train_size=config.train_size, seed=config.seed,
                              stream=config.stream, num_workers=config.num_workers, **config.text_options())
    except DatasetNotFoundError as err:
        raise ValueError(str(err)) from err
    model_name = config.model or splits.default_model
    settings = _run_settings(config, splits, model_name)
    torch.manual_seed(config.seed)
    model = model_fn_of(settings, splits)()
    check_data(config, splits, model, model_name)

    config_file = out / "config.json"
    checkpoint_files = [out / "checkpoints" / f"epoch-{e:03d}.pt" for e in settings["checkpoint_epochs"]]
    files = [out / "model.pt", out / "recording.npz", config_file]
    saved = _saved_settings(config_file, config.force)
    if saved is not None:
        same_settings(saved, settings, holder=f"{out} holds a run", force=config.force,
                      hint="choose another --out or pass --force to overwrite it")
    if saved == settings and all(f.is_file() for f in files + checkpoint_files):
        try:
            model, recorder, checkpoints = _trained_files(out, copy.deepcopy(model), checkpoint_files, device)
        except ValueError as err:
            if not config.force:
                raise
            warnings.warn(_training_again(err), stacklevel=2)
        else:
            say(f"reusing the trained model in {out}")
            return splits, model, recorder, checkpoints, settings, None

    config_file.unlink(missing_ok=True)  # until training finishes, the folder holds no finished run
    if run is not None:
        run.clear("train")
    (out / "checkpoints").mkdir(parents=True, exist_ok=True)
    state = out / "checkpoints" / TRAIN_STATE
    if saved is not None and saved != settings:  # --force over another run: its state is not this run's
        state.unlink(missing_ok=True)
    say(f"training {model_name} on {splits!r} for {config.training_recipe().epochs} epochs"
        + (f" (resuming from {state})" if state.is_file() else ""))
    warm_up()
    start = time.perf_counter()
    model, recorder, history = _train_original(config, model, splits, settings, state, out, device)
    seconds = time.perf_counter() - start
    checkpoints = [load_checkpoint(copy.deepcopy(model), f, device).eval() for f in checkpoint_files]
    save_checkpoint(model, out / "model.pt")
    recorder.save(out / "recording.npz")
    with written(out / "history.csv") as tmp:
        history.to_csv(tmp, index=False)
    write_text(config_file, json.dumps(settings, indent=2) + "\n")  # written last: marks the stage finished
    state.unlink(missing_ok=True)
    say(f"trained in {seconds:.1f} s; wrote {', '.join(f.name for f in files)}, history.csv and "
        f"{len(checkpoints)} checkpoints to {out}")
    return splits, model, recorder, checkpoints, settings, seconds


def _trained_files(out: Path, model: nn.Module, checkpoint_files: list[Path], device):
    """The trained model, its recording and its checkpoints, read from a finished run folder (a file that cannot
    be read: a one-line ValueError naming it)."""
    checkpoints = []
    try:
        for reading in checkpoint_files:
            checkpoints.append(load_checkpoint(copy.deepcopy(model), reading, device).eval())
        reading = out / "model.pt"
        model = load_checkpoint(model, reading, device).eval()
        reading = out / "recording.npz"
        recorder = TrainingRecorder.load(reading)
    except UNREADABLE as err:
        # its first sentence: numpy's and torch's go on to advise loading untrusted pickles
        reason = str(err).splitlines()[0].replace(f"{reading}: ", "").removeprefix("cannot read checkpoint ")
        reason = reason.split(". ")[0]
        raise ValueError(f"cannot read {reading}, damaged or not written by this library ({reason}); pass --force "
                         "to train again") from None
    return model, recorder, checkpoints


def _train_original(config: RunConfig, model: nn.Module, splits, settings: dict, state: Path, out: Path, device):
    """Train with the recorder, keeping the checkpoints of ``settings["checkpoint_epochs"]`` and resuming from
    ``state`` when it is this training's (another's is refused, or with ``--force`` trained over)."""
    keep = settings["checkpoint_epochs"]

    def keep_checkpoint(epoch, trained):
        if epoch in keep:
            save_checkpoint(trained, out / "checkpoints" / f"epoch-{epoch:03d}.pt")

    resumed = state.is_file()
    recorder = TrainingRecorder(len(splits.train))
    options = {"seed": config.seed, "device": device, "on_epoch_end": keep_checkpoint, "resume": state,
               "progress": progress_bars(), **config.training_recipe().as_kwargs()}
    try:
        trained, history = train(model, splits.train, recorder=recorder, **options)
    except ValueError as err:  # a state file of another training, or unreadable
        if not (resumed and str(state) in str(err)):
            raise
        if not config.force:
            raise ValueError(f"{err}, or pass --force") from err
        say(f"{state} is not this training's state: training from the start (--force)")
        state.unlink()
        recorder = TrainingRecorder(len(splits.train))
        trained, history = train(model, splits.train, recorder=recorder, **options)
    return trained, recorder, history


def digest(settings: dict) -> str:
    return hashlib.sha1(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:12]


def proxy_series(table: pd.DataFrame, name: str, task: str | None = None) -> pd.Series:
    """A proxy column with its direction on examples of the task named ``task`` attached (as
    :func:`proxies.compute` returns it; None: the proxy's registered direction)."""
    series = table[name].copy()
    series.attrs["higher_is_memorized"] = proxies.get_proxy(name).higher_is_memorized_on(task)
    return series


def model_fn_of(settings: dict, splits):
    """Builds a fresh model of the run: its architecture, the data's sizes, ``--model-options`` and ``--weights``."""
    options = {**splits.model_options, **chosen_model_kwargs(settings)}  # the user's over the data's
    return functools.partial(create_model, settings["model"], **options)


def chosen_model_kwargs(settings: dict) -> dict:
    """The model's keywords a run's user chose: ``--model-options`` and ``--weights``."""
    weights = settings.get("weights")
    return {**settings.get("model_options", {}), **({"weights": weights["file"]} if weights else {})}


def text_options_of(settings: dict) -> dict:
    """The text dataset's options a run's ``settings`` record (none for images)."""
    return {k: settings[k] for k in TEXT_OPTIONS if k in settings}


def recipe_of(settings: dict) -> dict:
    """The training recipe a run's ``settings`` record, as :func:`~unlearn.training.train`'s keyword arguments: what
    the retrained reference, ``retrain``, the shadow and the subset models train with. The optimisation settings and
    the augmentation (recorded when it is not ``"none"``: the anchors' shadow and subset models train as the target
    does) and the optimizer (recorded when it is not SGD: a language model's AdamW); the arithmetic settings
    (:data:`~unlearn.training.NUMERICS`) are train()'s defaults.

    >>> recipe_of({"epochs": 2, "lr": 1e-3, "optimizer": "adamw", "precision": "bf16", "seed": 0})
    {'epochs': 2, 'lr': 0.001, 'optimizer': 'adamw'}
    """
    return {k: settings[k] for k in (*TrainConfig().as_kwargs(), "augment", "optimizer") if k in settings}


UNREADABLE = (OSError, ValueError, KeyError, RuntimeError, EOFError, zipfile.BadZipFile)
"""What reading a damaged file of a run folder raises (pandas' parser errors are ValueErrors)."""


def _reuse(run: RunFolder, stage: str, settings: dict, files: list[str], read):
    """``read()`` of a finished stage, or None when the stage must be done: not finished with these settings, or
    one of its files unreadable (then it is redone from the stages before it, with a warning)."""
    if not run.reusable(stage, settings, files):
        return None
    try:
        return read()
    except UNREADABLE as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        warnings.warn(f"{run.path}: cannot read the {stage} stage's {' or '.join(files)} ({reason}); redoing the "
                      f"{stage} stage", stacklevel=2)
        run.forget(stage)
        return None


def _columns(table: pd.DataFrame, path: Path, needed) -> pd.DataFrame:
    missing = [c for c in needed if c not in table.columns]
    if missing or table.empty:
        raise ValueError(f"{path.name} lacks {missing or 'rows'}")
    return table


def proxies_stage(run: RunFolder, splits, recorder, checkpoints, after: str, names=DEFAULT_PROXIES) -> pd.DataFrame:
    settings = {"after": after, "proxies": list(names)}
    path = run.path / "proxies.csv"
    table = _reuse(run, "proxies", settings, ["proxies.csv"],
                   lambda: _columns(pd.read_csv(path, index_col="index"), path, names))  # dtypes as written:
    # a count column (first_learned) read back as floats would write scores.csv unlike an uninterrupted run
    if table is not None and len(table) != len(splits.train):
        warnings.warn(f"{path} scores {len(table)} examples, not {len(splits.train)}; redoing the proxies stage",
                      stacklevel=2)
        run.forget("proxies")
        table = None
    if table is not None:
        say("reusing the proxies in proxies.csv")
        return table
    with run.timed("proxies", settings):
        table = compute_proxies(names, splits, recorder, checkpoints)
        with written(run.path / "proxies.csv") as tmp:
            table.to_csv(tmp)
    return table


def compute_proxies(names, splits, recorder, checkpoints, subset_models=None) -> pd.DataFrame:
    """The named proxies of the training set: from the recording, from the checkpoints (loss curvature averages
    them all; other model proxies read the last, on the checkpoints' device) or from subset models. Holdout
    retraining fine-tunes on the validation split, which the model never trained on."""
    recorded = [n for n in names if "recording" in proxies.get_proxy(n).needs]
    # the learning events count on the GPU when the run is on one (their CUDA kernel); on the CPU nothing moves
    device = model_device(checkpoints[-1]) if checkpoints else None
    on_device = {"device": device} if device is not None and device.type == "cuda" else {}
    table = proxies.compute(recorded, recording=recorder, **on_device) if recorded else pd.DataFrame(
        index=pd.RangeIndex(len(splits.train)))
    for name in (n for n in names if n not in recorded):
        if "subset_models" in proxies.get_proxy(name).needs:
            if subset_models is None:
                raise ValueError(f"proxy {name} needs subset models: add --fz-models K")
            table[name] = proxies.compute(name, subset_models=subset_models)
        elif name == "loss_curvature":
            say(f"loss curvature over {len(checkpoints)} checkpoints")
            table[name] = proxies.loss_curvature(checkpoints, splits.train, progress=progress_bars())
        else:
            table[name] = proxies.compute(name, model=checkpoints[-1], data=splits.train, holdout=splits.val,
                                          fine_tune=train)
    table.index.name = "index"
    return table


def memorization_stage(config: RunConfig, splits, settings, out: Path) -> pd.Series | None:
    if not config.fz_models:
        return None
    say(f"Feldman-Zhang memorization from {config.fz_models} subset models (cached in {out / 'subset-models'})")
    models = train_subset_models(splits.train, model_fn_of(settings, splits), k=config.fz_models,
                                         folder=out / "subset-models", seed=config.seed, farm=config.farm,
                                         farm_options=config.farm_options(), device=config.device, force=config.force,
                                         **recipe_of(settings))
    memorization = proxies.compute("memorization", subset_models=models)
    memorization.index.name = "index"
    return memorization


def forget_stage(run: RunFolder, spec_text: str, ranking: pd.Series | None, splits, seed: int, after: str,
                  select_by: str, fz_models: int) -> np.ndarray:
    spec = parse_forget_spec(spec_text)
    settings = {"after": after, "spec": spec_text, "seed": seed,
                "select_by": select_by if spec.needs_scores else None}
    if spec.needs_scores and select_by == "memorization":
        settings["fz_models"] = fz_models  # the ranking changes with the number of subset models
    if spec.kind == "ids":  # run() checked the file exists
        settings["ids_sha1"] = hashlib.sha1(spec.path.read_bytes()).hexdigest()
    path = run.path / "forget.csv"
    ids = _reuse(run, "forget", settings, ["forget.csv"],
                 lambda: _forget_ids(_columns(pd.read_csv(path), path, ["index"]), len(splits.train)))
    if ids is not None:
        return ids
    with run.timed("forget", settings):
        ids = select_forget(spec, ranking if spec.needs_scores else None, num_train=len(splits.train), seed=seed,
                            canaries=canary_ids(splits), **request_names(splits))
        with written(run.path / "forget.csv") as tmp:
            forget_table(splits, ids).to_csv(tmp, index=False)
    return ids


def skipped_request_rows(spec, splits) -> str | None:
    """What an ids request asked for that the run does not remove, and why (None when nothing was skipped)."""
    if spec.kind != "ids":
        return None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        read_ids(spec.path, **request_names(splits))
    return "; ".join(str(w.message) for w in caught) or None


def _forget_ids(table: pd.DataFrame, num_train: int) -> np.ndarray:
    ids = table["index"].to_numpy()
    if not np.issubdtype(ids.dtype, np.integer) or ids.min() < 0 or ids.max() >= num_train:
        raise ValueError(f"its index column holds no training indices in [0, {num_train})")
    return ids


def reference_stage(run: RunFolder, retain, model_fn, recipe: dict, seed: int, device, after: str):
    settings = {"after": after, "seed": seed, **recipe}
    reference = _reuse(run, "reference", settings, ["reference.pt"],
                       lambda: load_checkpoint(model_fn(), run.path / "reference.pt", device))
    if reference is not None:
        say("reusing the retrained reference in reference.pt")
        return reference.eval()
    say(f"retraining the reference from scratch on the {len(retain)} retained examples")
    warm_up()  # the stages' times leave out the process's one-off imports
    with run.timed("reference", settings):
        torch.manual_seed(seed)
        reference, _ = train(model_fn(), retain, seed=seed, device=device, progress=progress_bars(), **recipe)
        save_checkpoint(reference, run.path / "reference.pt")
    return reference.eval()


def method_config_of(config: RunConfig, settings: dict) -> dict:
    """The method's settings a run passes: ``method_config``, over (for ``retrain``) the run's model and recipe, so
    that it rebuilds the model exactly as the retrained reference is built."""
    base = {}
    if config.method == "retrain":
        model_kwargs = chosen_model_kwargs(settings)
        base = {"model_fn": settings["model"], **({"model_kwargs": model_kwargs} if model_kwargs else {}),
                **recipe_of(settings)}
    return {**base, **config.method_config}


def method_options(config: RunConfig, table: pd.DataFrame | None, recorder) -> tuple[dict, dict]:
    """What a run hands its method beside the forget and retain sets, as far as the method's registration says it
    takes them: ``(the settings that identify them, the keywords for unlearn())``. Scores come from the run's
    ``--proxy`` (a method that takes ``scores=``), the recording from training, ``--policy`` and ``--grouping``
    where the method has them (``table`` None: the names alone, for the unlearned shadow models, which score their
    own recordings)."""
    method = get_method(config.method)
    named, passed = {}, {}
    if method.takes("scores"):
        named["proxy"] = config.proxy
        if table is not None:
            passed["scores"] = proxy_series(table, config.proxy, config.task)
        else:
            passed["proxy"] = config.proxy
    if method.takes("recording") and table is not None:
        passed["recording"] = recorder  # for policies that stop at each group's expected accuracy
    if method.takes("policy"):
        named["policy"] = (config.chosen_policy or config.method_config.get("policy") or make_config(method).policy
                           or default_policy(config.task))
        passed["policy"] = config.chosen_policy
    if method.takes("grouping"):
        named["grouping"] = passed["grouping"] = config.grouping
    return named, passed


def unlearn_stage(run: RunFolder, config: RunConfig, original, forget, retain, table: pd.DataFrame, recorder,
                  model_fn, after: str, device: torch.device, method_config: dict, expected=None):
    """Unlearn ``forget`` from the original model with the run's method, or reuse the folder's
    ``unlearned.pt`` and ``plan.csv``: the model, the plan and what the method noted of it. ``expected()``, where
    given, makes the ``expected_accuracy=`` of a method that takes it (rum's held-out estimate on text)."""
    from ..unlearning import unlearn

    named, options = method_options(config, table, recorder)
    settings = {"after": after, "method": config.method, "proxy": named.get("proxy"), "policy": named.get("policy"),
                "seed": config.seed, **({"grouping": named["grouping"]} if "grouping" in named else {}),
                **({"config": method_config} if method_config else {})}
    path = run.path / "plan.csv"
    reused = _reuse(run, "unlearn", settings, ["unlearned.pt", "plan.csv"],
                    lambda: (load_checkpoint(model_fn(), run.path / "unlearned.pt", device),
                             _columns(pd.read_csv(path), path, ["group", "method", "examples", "config",
                                                                "indices"])))
    if reused is not None:
        say("reusing the unlearned model in unlearned.pt")
        return Unlearned(reused[0].eval(), reused[1], run.notes("unlearn"), named.get("proxy"))
    say(f"unlearning {len(forget)} examples with {config.method}"
        + (f" scheduled by {config.proxy}" if "proxy" in named else ""))
    if "policy" in named and "scores" in options:
        warn_if_costlier_than_retraining(named["policy"], options["scores"], forget, retain, config)
    if expected is not None and get_method(config.method).takes("expected_accuracy"):
        options["expected_accuracy"] = expected()  # before the clock: an estimate of the original model's
    warm_up()
    with run.timed("unlearn", settings) as notes:
        if method_config:
            options["config"] = method_config
        result = unlearn(original, forget=forget, retain=retain, method=config.method, seed=config.seed,
                         device=device, **options)
        save_checkpoint(result.model, run.path / "unlearned.pt")
        plan = result.plan_table()  # the report's groups are read back from its indices (plan_groups)
        with written(run.path / "plan.csv") as tmp:
            plan.to_csv(tmp, index=False)
        notes.update(result.facts())
    return Unlearned(result.model.eval(), plan, run.notes("unlearn"), named.get("proxy"))


def warn_if_costlier_than_retraining(policy, scores: pd.Series, forget, retain, config: RunConfig) -> float | None:
    """Warn, before it runs, when a rum plan would pass over more examples than retraining with the run's recipe
    (:func:`~unlearn.algorithms.rum.plan_cost`), saying what costs less; returns the estimated ratio (None when it
    cannot be estimated: the method itself then says what is wrong with its policy)."""
    from ..algorithms.rum import group_of, plan_cost

    rum = make_config(get_method(config.method), config.method_config)
    try:
        groups = group_of(scores, labels_of(forget)[1].numpy(), rum.groups, grouping=rum.grouping)
        sizes = {name: int((groups == name).sum()) for name in rum.ordered_groups()}
        cost = plan_cost(policy, sizes, len(retain), retain_per_forget=rum.retain_per_forget)
    except (TypeError, ValueError):
        return None
    epochs = config.training_recipe().epochs
    retraining = epochs * len(retain)
    ratio = cost / retraining
    if ratio > 1:
        cheaper = [p for p in (("npo_to_expected",) if config.kind == "text" else ("random_label_fast",
                                                                                   "random_label_to_expected"))
                   if p != policy]
        stops = uses_expected(resolve_policy(policy, list(sizes)))
        name, bound = (policy if isinstance(policy, str) else "given"), ("up to" if stops else "about")
        warnings.warn(f"policy {name} passes over {bound} {ratio:.1f}x as many examples as retraining ({cost} "
                      f"against {retraining}: the recipe's {epochs} epochs over the {len(retain)} retained examples"
                      + ("; its steps stop early once a group falls to its expected accuracy" if stops else "")
                      + "), so unlearning may take longer than retraining would; cheaper: "
                      + ", ".join(f"--policy {p}" for p in cheaper) + ", a smaller request, or --method retrain",
                      stacklevel=2)
    return ratio


def plan_groups(plan: pd.DataFrame, forget_ids: np.ndarray) -> pd.Series:
    """The group each forget example was unlearned in, as the plan's steps record it (their ``indices``)."""
    groups = pd.Series(None, index=pd.Index(forget_ids, name="index"), name="group", dtype=object)
    for group, indices in zip(plan["group"], plan["indices"], strict=True):
        groups.loc[json.loads(indices)] = group
    if groups.isna().any():
        raise ValueError(f"plan.csv covers {int(groups.notna().sum())} of the {len(groups)} forget examples")
    return groups


def shadow_stage(config: RunConfig, splits, settings, out: Path):
    from ..evaluation.shadows import train_shadow_models, train_unlearned_shadow_models

    if not config.shadows:  # run() checked that K is even and >= 4
        return None, None
    model_fn, recipe = model_fn_of(settings, splits), recipe_of(settings)
    farm = {"farm": config.farm, "farm_options": config.farm_options(), "device": config.device, "force": config.force}
    say(f"{config.shadows} shadow models for LiRA / RMIA (cached in {out / 'shadows'})")
    shadows = train_shadow_models(splits.train, splits.test, model_fn, k=config.shadows, folder=out / "shadows",
                                  queries=splits.queries, seed=config.seed, **farm, **recipe)
    method_config = farm_method_config(config, settings)
    say(f"{config.shadows} shadow models that train and then unlearn with {config.method}, for U-LiRA")
    unlearned = train_unlearned_shadow_models(splits.train, splits.test, model_fn, method=config.method,
                                              method_config=method_config, k=config.shadows,
                                              folder=out / f"unlearned-shadows-{config.method}", seed=config.seed,
                                              **farm, **recipe)
    return shadows, unlearned


def farm_method_config(config: RunConfig, settings: dict) -> dict:
    """The method's settings for models of the farm that train and then unlearn (U-LiRA's shadows, KLoM's
    originals): the run's, with what schedules it (a rum run's proxy and policy) by name."""
    _, options = method_options(config, None, None)
    return {**method_config_of(config, settings), **{k: v for k, v in options.items() if v is not None}}


def klom_stage(config: RunConfig, splits, settings: dict, request: Request, out: Path):
    """KLoM's N originals (each unlearning the request with the run's method) and N oracles, from the farm (cached
    in ``out/klom-<method>``); None without ``--klom``."""
    from ..evaluation.klom import train_klom_models

    if not config.klom:
        return None
    farm = {"farm": config.farm, "farm_options": config.farm_options(), "device": config.device, "force": config.force}
    say(f"KLoM: {config.klom} originals that unlearn with {config.method} and {config.klom} oracles "
        f"(cached in {out / f'klom-{config.method}'})")
    return train_klom_models(splits.train, splits.val, model_fn_of(settings, splits), method=config.method,
                             method_config=farm_method_config(config, settings), forget_ids=request.ids,
                             n=config.klom, folder=out / f"klom-{config.method}", seed=config.seed, **farm,
                             **recipe_of(settings))


def _training_again(err: ValueError) -> str:
    """What a forced run says of a damaged file it trains again over: the error, without its advice to force."""
    return f"{err.args[0].split('; pass --force')[0]}: training again (--force)"


def _saved_settings(config_file: Path, force: bool) -> dict | None:
    """The settings a folder's finished training recorded; None without any, or (with ``force``, which trains
    again) when ``config.json`` is damaged."""
    if not config_file.is_file():
        return None
    try:
        return read_settings(config_file)
    except ValueError as err:
        if not force:
            raise
        warnings.warn(_training_again(err), stacklevel=3)
        return None


def read_settings(path: Path) -> dict:
    try:
        config = json.loads(path.read_text())
    except ValueError as err:
        raise ValueError(f"{path} is unreadable ({err}); pass --force to train again, or delete it") from None
    if not isinstance(config, dict):
        raise ValueError(f"{path} holds a JSON {type(config).__name__}, not a run's settings; pass --force to train "
                         "again, or delete it")
    return config


def trained_run(folder: Path) -> Path:
    """The ``config.json`` of a folder written by ``train`` or ``run``, or a :class:`ValueError`."""
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise ValueError(f"{folder} is not a trained run (no config.json): run `unlearn train --out {folder}` first")
    return config_file


def load_run(folder: Path, root, device: torch.device | None = None) -> tuple:
    """The splits, original model, recording and checkpoints of a folder written by ``train`` or ``run``, with the
    models on ``device``."""
    settings = read_settings(trained_run(folder))
    try:
        splits = load_dataset(settings["dataset"], root=root, val_fraction=settings["val_fraction"],
                              train_size=settings["train_size"], seed=settings["seed"],
                              stream=settings.get("stream", False), **text_options_of(settings))
    except DatasetNotFoundError as err:
        raise ValueError(str(err)) from err
    model_fn = model_fn_of(settings, splits)
    try:
        model = load_checkpoint(model_fn(), folder / "model.pt", device).eval()
        checkpoints = [load_checkpoint(model_fn(), folder / "checkpoints" / f"epoch-{e:03d}.pt", device).eval()
                       for e in settings["checkpoint_epochs"]]
        recorder = TrainingRecorder.load(folder / "recording.npz")
    except UNREADABLE as err:
        raise ValueError(f"cannot read the run in {folder}: {str(err).splitlines()[0]}") from err
    return settings, splits, model, recorder, checkpoints
