"""The ``unlearn`` command line: a thin layer over the library.

``unlearn run`` is the main job: train with the recorder, score memorization, pick a forget set, retrain a reference,
unlearn, attack and report. Its output folder keeps every finished stage, so a rerun only does what is missing.
Errors a user can cause print one line and exit with status 2; ``--verbose`` shows tracebacks.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import functools
import hashlib
import json
import math
import subprocess
import sys
import time
import warnings
import zipfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

import proxies
from proxies import TrainingRecorder

from .attacks import DEFAULT_ATTACKS, NotApplicable
from .attacks import attacks as attack_names
from .data import DatasetNotFoundError, datasets, load_dataset
from .farm import farms
from .models import create_model, models
from .pipeline import RunFolder, group_of, locked, per_example_scores, subset
from .registry import methods
from .scheduler import GROUPINGS, RUMConfig, group_thresholds, policies
from .selection import parse_forget_spec, read_ids, select_forget
from .training import RECIPES, TrainConfig, accuracy, load_checkpoint, resolve_device, save_checkpoint, train

DEFAULT_PROXIES = (*proxies.RECORDING_PROXIES, "loss_curvature")
"""What ``unlearn run`` computes unless ``--proxies`` says otherwise."""


class UsageError(Exception):
    """A mistake on the command line or in its inputs; shown as one line."""


# ------------------------------------------------------------------------------------------------ arguments

def _add_data_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--dataset", default="digits", choices=datasets(),
                   help="training data (default: digits, scikit-learn's real 8x8 digits, nothing to download)")
    g.add_argument("--root", default=None,
                   help="folder of torchvision-format datasets (default: $UNLEARN_DATA or ~/.cache/memunlearn)")
    g.add_argument("--download", action="store_true", help="let torchvision download a missing dataset")
    g.add_argument("--train-size", type=int, default=None, help="train on a seeded random subset of this size")
    g.add_argument("--val-fraction", type=float, default=0.1,
                   help="fraction of the training set held out for validation (default: 0.1)")


def _add_train_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("training (defaults: the dataset's recipe)")
    g.add_argument("--model", default=None, choices=models(), help="architecture (default: the dataset's model)")
    g.add_argument("--epochs", type=int, default=None, help="training epochs")
    g.add_argument("--lr", type=float, default=None, help="SGD learning rate")
    g.add_argument("--batch-size", type=int, default=None, help="minibatch size")
    g.add_argument("--momentum", type=float, default=None, help="SGD momentum")
    g.add_argument("--weight-decay", type=float, default=None, help="L2 weight decay")
    g.add_argument("--schedule", default=None, choices=["cosine", "step", "linear", "constant"],
                   help="learning-rate schedule, set per epoch")
    g.add_argument("--seed", type=int, default=0, help="seed of the splits, initialisation and shuffling (default: 0)")
    g.add_argument("--device", default=None, help="torch device, e.g. cpu or cuda (default: cuda if available)")
    g.add_argument("--checkpoints", type=int, default=3,
                   help="evenly spaced epoch checkpoints kept for checkpoint-averaged proxies such as loss curvature; "
                        "the last epoch is always one (default: 3)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="unlearn",
        description="Memorization-aware machine unlearning: train with per-example dynamics recorded, score "
                    "memorization with cheap proxies, and remove training examples from a classifier.")
    parser.add_argument("--verbose", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    common = argparse.ArgumentParser(add_help=False)  # options every command also takes after its name
    common.add_argument("--verbose", action="store_true", default=argparse.SUPPRESS,
                        help="show full tracebacks on errors")

    p = sub.add_parser("train", parents=[common], help="train a model and record its per-example training dynamics",
                       description="Train a model with the training recorder; writes model.pt (state_dict), "
                                   "recording.npz, history.csv and config.json to --out.")
    _add_data_options(p)
    _add_train_options(p)
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("--force", action="store_true", help="overwrite a folder trained with other settings")

    p = sub.add_parser(
        "run", parents=[common], help="the main job: train, score memorization, unlearn a forget set, attack, report",
        description="Train (or reuse from --out) the original model with the training recorder, compute the "
                    "memorization proxies, choose a forget set, retrain a reference without it, unlearn it, evaluate "
                    "both with membership-inference attacks, and write results.json, report.md, scores.csv and PNG "
                    "figures to --out. A rerun with the same --out reuses every finished stage.")
    _add_data_options(p)
    _add_train_options(p)
    g = p.add_argument_group("unlearning")
    g.add_argument("--forget", default="random:0.1", metavar="SPEC",
                   help="the examples to remove: random:FRACTION or random:N (seeded random), high:N / low:N (the N "
                        "most / least memorized by --select-by), mixed:N (a third each of least, median and most "
                        "memorized), or ids:FILE (training indices as in scores.csv, comma/space/newline separated, or "
                        "a CSV with an 'index' or 'source_row' column); default: random:0.1")
    g.add_argument("--select-by", default=None, metavar="SCORE",
                   help="what ranks examples for high/low/mixed: a proxy name or 'memorization' (needs --fz-models); "
                        "default: memorization when --fz-models is set, else --proxy")
    g.add_argument("--method", default="rum", choices=methods(),
                   help="unlearning method; rum (the default) schedules one per memorization group")
    model_proxies = [n for n in proxies.available() if n not in ("memorization", "c_score")]
    g.add_argument("--proxy", default="confidence", choices=model_proxies, metavar="PROXY",
                   help="memorization proxy that schedules rum and groups the report (default: confidence); one of "
                        f"{model_proxies}")
    g.add_argument("--proxies", nargs="+", default=list(DEFAULT_PROXIES), metavar="PROXY", choices=model_proxies,
                   help="proxies to compute and report (default: the recording-based ones and loss_curvature, which "
                        "costs ~20 forward-backward passes per checkpoint); --proxy and --select-by must be among them")
    g.add_argument("--grouping", default="training_set", choices=list(GROUPINGS),
                   help="how rum forms its memorization groups: training_set (the default: bins between the "
                        "training set's score tertiles, the same levels whatever the request's size) or request (the "
                        "RUM paper's: a third of the forget set each, by rank within it)")
    g.add_argument("--policy", default=None, choices=policies(),
                   help="rum's built-in policy: finetune_salun (the paper's first recipe, the default: fine-tune "
                        "the medium group, SalUn on the high one, over the whole retain set), neggrad_plus (its "
                        "second), random_label_fast (random labels on the high group only, 2 epochs on a retain "
                        "sample of 16 per forget example: a few percent of retraining), random_label_repair (the "
                        "same plus 1 epoch of fine-tuning on another such sample), random_label_to_expected (random "
                        "labels on the medium and high groups, each stopped once its accuracy falls to what a model "
                        "that never saw it is expected to score, estimated from the recording; then 1 epoch of "
                        "fine-tuning; up to 10 epochs on a sample of 16 per forget example)")
    g.add_argument("--method-config", nargs="+", default=[], metavar="KEY=VALUE",
                   help="settings of --method, e.g. epochs=3 lr=0.01 (values read as JSON: numbers, true/false, "
                        "quoted or bare strings); for rum: groups, order, retain_per_forget; `unlearn run --method M "
                        "--method-config nope=1` lists a method's settings")
    g = p.add_argument_group("evaluation")
    g.add_argument("--attacks", nargs="+", default=list(DEFAULT_ATTACKS), choices=attack_names(),
                   metavar="ATTACK", help=f"membership-inference attacks, of {attack_names()} (default: "
                                          "loss_threshold loss_logreg svc; lira and rmia are added with --shadows)")
    g.add_argument("--shadows", type=int, default=0, metavar="K",
                   help="train K shadow models (even, >= 4; default 0: none) for LiRA and RMIA, and K train-then-"
                        "unlearn shadows for U-LiRA. Each example is IN for K/2 shadows and OUT for K/2 (RMIA tunes "
                        "on one); each U-LiRA shadow unlearns a random 20%% of the training examples in its half, "
                        "so a forget example has Binomial(K/2, 0.2) unlearned shadows, K/10 on average. K=4: 64%% "
                        "of forget examples have none (not scored) and 32%% one (scored with the global variance); "
                        "K=16: 17%% / 34%%; use K >= 32 for U-LiRA (3%% none, 86%% with two or more, a variance of "
                        "their own)")
    g.add_argument("--fz-models", type=int, default=0, metavar="K",
                   help="train K subset models for ground-truth Feldman-Zhang memorization (hundreds for stable "
                        "scores; default 0: none); adds the proxy-vs-memorization figure")
    _add_farm_options(p)
    g = p.add_argument_group("output")
    g.add_argument("--out", type=Path, default=None, help="output folder (default: runs/<dataset>)")
    g.add_argument("--force", action="store_true",
                   help="redo stages that --out holds with other settings instead of refusing")
    g.add_argument("--rows", type=int, default=10, help="rows of the proxy table to print (default: 10)")

    p = sub.add_parser("proxies", parents=[common], help="compute the memorization proxies of a trained run folder",
                       description="Compute per-example memorization proxies for the model and training recording "
                                   "in a folder written by `unlearn train` or `unlearn run`; writes them as a CSV "
                                   "indexed by training index.")
    p.add_argument("run", type=Path, help="folder written by `unlearn train` or `unlearn run`")
    p.add_argument("--proxies", nargs="+", default=None, choices=proxies.available(), metavar="PROXY",
                   help=f"which proxies (default: the recording-based ones and loss_curvature); of "
                        f"{proxies.available()}")
    p.add_argument("--fz-models", type=int, default=0, metavar="K",
                   help="also train K subset models for Feldman-Zhang memorization and c-scores (0: none)")
    p.add_argument("--to", type=Path, default=None, help="CSV to write (default: <run>/proxy_scores.csv)")
    p.add_argument("--root", default=None, help="dataset folder, as when the run was trained")
    p.add_argument("--device", default=None, help="torch device for the models, e.g. cpu or cuda (default: cuda if "
                                                  "available)")
    p.add_argument("--rows", type=int, default=10, help="rows of the table to print (default: 10)")
    _add_farm_options(p)

    p = sub.add_parser("attack", parents=[common], help="evaluate a saved model with membership-inference attacks",
                       description="Attack a saved model (default: the run's unlearned.pt) on the run's forget set "
                                   "(or --forget), beside the run's retrained reference when it has one; prints the "
                                   "report and writes attack-<model>.json to the run folder.")
    p.add_argument("run", type=Path, help="folder written by `unlearn run` (or `unlearn train` with --forget)")
    p.add_argument("--checkpoint", type=Path, default=None,
                   help="state_dict of the model to attack (default: <run>/unlearned.pt)")
    p.add_argument("--forget", default=None, metavar="SPEC",
                   help="forget set, as in `unlearn run` (default: the run's forget.csv)")
    p.add_argument("--select-by", default="confidence", choices=proxies.RECORDING_PROXIES, metavar="PROXY",
                   help="the proxy that ranks examples for --forget high:N / low:N / mixed:N, read from the run's "
                        f"recording: one of {proxies.RECORDING_PROXIES} (default: confidence)")
    p.add_argument("--attacks", nargs="+", default=list(DEFAULT_ATTACKS), choices=attack_names(),
                   metavar="ATTACK", help=f"attacks to run, of {attack_names()} (default: loss_threshold "
                                          "loss_logreg svc; lira and rmia are added with --shadows)")
    p.add_argument("--shadows", type=int, default=0, metavar="K",
                   help="train (or reuse) K shadow models for LiRA and RMIA (even, >= 4; 0: none): each example is "
                        "IN for K/2 of them and OUT for K/2; 16+ for stable scores")
    p.add_argument("--root", default=None, help="dataset folder, as when the run was trained")
    p.add_argument("--device", default=None, help="torch device for the models, e.g. cpu or cuda (default: cuda if "
                                                  "available)")
    _add_farm_options(p)

    p = sub.add_parser("bench", parents=[common], help="run one of the benchmarks in benchmarks/",
                       description="Run benchmarks/bench_<NAME>.py from a source checkout, passing the remaining "
                                   "arguments through (e.g. `unlearn bench proxies --part kernels`; "
                                   "`unlearn bench unlearn -- --help` shows a benchmark's own options).")
    p.add_argument("name", choices=_benchmarks() or None, metavar="NAME",
                   help=f"which benchmark: {', '.join(_benchmarks()) or 'none found (not a source checkout)'}")
    p.add_argument("args", nargs=argparse.REMAINDER, help="arguments for the benchmark script")
    return parser


def _add_farm_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model farm (shadow and subset models)")
    g.add_argument("--farm", default="local", choices=farms(),
                   help="where the many small models train: here, one after another, or as Ray tasks (pip install "
                        "'memunlearn[ray]')")
    g.add_argument("--ray-address", default=None,
                   help="Ray cluster to join (default: $RAY_ADDRESS, else a local instance)")
    g.add_argument("--gpus-per-model", type=float, default=None,
                   help="fraction of a GPU each Ray task asks for when the cluster has GPUs (e.g. 0.25)")


def _farm_options(args: argparse.Namespace) -> dict:
    if args.farm != "ray":
        return {}
    return {k: v for k, v in (("address", args.ray_address), ("gpus_per_model", args.gpus_per_model))
            if v is not None}


def _benchmarks() -> list[str]:
    folder = Path(__file__).resolve().parent.parent / "benchmarks"
    return sorted(p.stem.removeprefix("bench_") for p in folder.glob("bench_*.py"))


# ------------------------------------------------------------------------------------------------ stages

MAX_MODELS = 10_000
"""The most shadow or subset models a run may ask for (the LiRA paper used 256, Feldman and Zhang 4,000)."""

MIN_TRAIN_SIZE = 10
"""The smallest --train-size: a forget set, a retain set and the attacks' cross-validation need examples."""


def _device(args: argparse.Namespace) -> torch.device:
    """``--device``, or CUDA when there is one: checked to exist on this machine."""
    try:
        return resolve_device(args.device)
    except ValueError as err:
        raise UsageError(f"--device {args.device}: {err}") from None


def _check_options(args: argparse.Namespace) -> torch.device:
    """Everything the options alone decide, checked before any data is read; returns the device."""
    device = _device(args)
    config = _train_config(args)
    for name in ("lr", "momentum", "weight_decay", "val_fraction"):
        value = getattr(config, name, None) if name != "val_fraction" else args.val_fraction
        if not math.isfinite(value) or value < 0 or (name == "lr" and value == 0):
            raise UsageError(f"--{name.replace('_', '-')} must be a finite number "
                             f"{'> 0' if name == 'lr' else '>= 0'}, got {value}")
    if not 0 < args.val_fraction < 1:
        raise UsageError(f"--val-fraction must lie in (0, 1), got {args.val_fraction}")
    if config.epochs < 1:
        raise UsageError(f"--epochs must be >= 1 (the recording and every proxy need a trained epoch), got "
                         f"{config.epochs}")
    if config.batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1, got {config.batch_size}")
    if args.checkpoints < 1:
        raise UsageError(f"--checkpoints must be >= 1, got {args.checkpoints}")
    if args.train_size is not None and args.train_size < MIN_TRAIN_SIZE:
        raise UsageError(f"--train-size must be >= {MIN_TRAIN_SIZE}, got {args.train_size}")
    for name in ("rows", "shadows", "fz_models"):
        value = getattr(args, name, 0)
        if value < 0 or (name != "rows" and value > MAX_MODELS):
            raise UsageError(f"--{name.replace('_', '-')} must be between 0 and "
                             f"{MAX_MODELS if name != 'rows' else 'the number of examples'}, got {value}")
    return device


def _check_data(args: argparse.Namespace, splits, model: nn.Module, model_name: str) -> None:
    """What the data decides, checked before training: the model takes the inputs, the forget set fits."""
    try:
        with torch.no_grad():
            model.eval()(splits.train.inputs[:2])
    except RuntimeError as err:
        raise UsageError(f"--model {model_name} does not take {args.dataset}'s inputs "
                         f"{list(splits.train.inputs.shape[1:])}: {str(err).splitlines()[0]}") from None
    spec = getattr(args, "forget", None)
    if spec is None:
        return
    spec = parse_forget_spec(spec)
    n = len(splits.train)
    if spec.needs_scores:
        if spec.size >= n:
            raise UsageError(f"--forget {args.forget} asks for {spec.size} of {n} training examples; expected "
                             f"fewer than {n}, so that some are retained")
    else:  # random and ids need no scores: the selection itself is the check
        select_forget(spec, None, num_train=n, seed=args.seed,
                      source_rows=None if splits.train_rows is None else splits.train_rows.numpy())


def _train_config(args: argparse.Namespace) -> TrainConfig:
    config = RECIPES.get(args.dataset, TrainConfig())
    overrides = {k: getattr(args, k) for k in ("epochs", "lr", "batch_size", "momentum", "weight_decay", "schedule")
                 if getattr(args, k) is not None}
    return replace(config, **overrides)


TRAIN_STATE = "train-state.pt"
"""The training state after the last finished epoch, in ``OUT/checkpoints``: a killed training resumes from it."""


def _train_stage(args: argparse.Namespace, out: Path, run: RunFolder | None = None):
    """Train the original model into ``out``, or load it when ``out`` already holds the same run (``run``: the
    folder's later stages, cleared when training starts).

    Returns the splits, the model, its recording, its checkpoints, the settings and the training seconds (None
    when reused)."""
    try:
        splits = load_dataset(args.dataset, root=args.root, download=args.download, val_fraction=args.val_fraction,
                              train_size=args.train_size, seed=args.seed)
    except DatasetNotFoundError as err:
        raise UsageError(str(err)) from err
    model_name = args.model or splits.default_model
    config = _train_config(args)
    every = min(args.checkpoints, config.epochs)  # more checkpoints than epochs: one per epoch
    keep = sorted({round(config.epochs * (i + 1) / every) for i in range(every)} - {0})
    settings = {"dataset": args.dataset, "model": model_name, "seed": args.seed, "train_size": args.train_size,
                "val_fraction": args.val_fraction, "checkpoint_epochs": keep, **config.as_kwargs()}
    device = _check_options(args)  # a reused model goes where a new one would train
    torch.manual_seed(args.seed)
    model = create_model(model_name, num_classes=splits.num_classes, in_channels=splits.in_channels)
    _check_data(args, splits, model, model_name)

    config_file = out / "config.json"
    checkpoint_files = [out / "checkpoints" / f"epoch-{e:03d}.pt" for e in keep]
    files = [out / "model.pt", out / "recording.npz", config_file]
    saved = _read_config(config_file) if config_file.is_file() else None
    if saved is not None and saved != settings and not args.force:
        changed = sorted(k for k in settings.keys() | saved.keys() if settings.get(k) != saved.get(k))
        raise UsageError(f"{out} holds a run with other settings ({', '.join(changed)}); "
                         "choose another --out or pass --force to overwrite it")
    if saved == settings and all(f.is_file() for f in files + checkpoint_files):
        print(f"reusing the trained model in {out}")
        checkpoints = []
        try:
            for reading in checkpoint_files:
                checkpoints.append(load_checkpoint(copy.deepcopy(model), reading, device).eval())
            reading = out / "model.pt"
            model = load_checkpoint(model, reading, device).eval()
            reading = out / "recording.npz"
            recorder = TrainingRecorder.load(reading)
        except UNREADABLE as err:
            reason = str(err).splitlines()[0].replace(f"{reading}: ", "")
            raise UsageError(f"cannot read {reading} ({reason}); pass --force to train again, or delete it") from None
        return splits, model, recorder, checkpoints, settings, None

    config_file.unlink(missing_ok=True)  # until training finishes, the folder holds no finished run
    if run is not None:
        run.clear("train")
    (out / "checkpoints").mkdir(parents=True, exist_ok=True)
    state = out / "checkpoints" / TRAIN_STATE
    if saved is not None and saved != settings:  # --force over another run: its state is not this run's
        state.unlink(missing_ok=True)
    recorder = TrainingRecorder(len(splits.train))

    def keep_checkpoint(epoch, trained):
        if epoch in keep:
            save_checkpoint(trained, out / "checkpoints" / f"epoch-{epoch:03d}.pt")

    resumed = state.is_file()
    print(f"training {model_name} on {splits!r} for {config.epochs} epochs"
          + (f" (resuming from {state})" if resumed else ""))
    start = time.perf_counter()
    options = {"seed": args.seed, "device": device, "on_epoch_end": keep_checkpoint, "resume": state,
               **config.as_kwargs()}
    try:
        trained, history = train(model, splits.train, recorder=recorder, **options)
    except ValueError as err:  # a state file of another training, or unreadable
        if not (resumed and str(state) in str(err)):
            raise
        if not args.force:
            raise UsageError(f"{err}, or pass --force") from err
        print(f"{state} is not this training's state: training from the start (--force)")
        state.unlink()
        recorder = TrainingRecorder(len(splits.train))
        trained, history = train(model, splits.train, recorder=recorder, **options)
    model = trained
    seconds = time.perf_counter() - start
    checkpoints = [load_checkpoint(copy.deepcopy(model), f, device).eval() for f in checkpoint_files]
    save_checkpoint(model, out / "model.pt")
    recorder.save(out / "recording.npz")
    history.to_csv(out / "history.csv", index=False)
    config_file.write_text(json.dumps(settings, indent=2) + "\n")  # written last: marks the stage finished
    state.unlink(missing_ok=True)
    print(f"trained in {seconds:.1f} s; wrote {', '.join(f.name for f in files)}, history.csv and "
          f"{len(checkpoints)} checkpoints to {out}")
    return splits, model, recorder, checkpoints, settings, seconds


def cmd_train(args: argparse.Namespace) -> None:
    _check_options(args)
    with locked(args.out):
        splits, model, _, _, _, _ = _train_stage(args, args.out)
    print(f"test accuracy {accuracy(model, splits.test):.4f}")


def _digest(settings: dict) -> str:
    return hashlib.sha1(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _proxy_series(table: pd.DataFrame, name: str) -> pd.Series:
    """A proxy column with its direction attached (as :func:`proxies.compute` returns it)."""
    series = table[name].copy()
    series.attrs["higher_is_memorized"] = proxies.get_proxy(name).higher_is_memorized
    return series


def _model_fn(settings: dict, splits):
    return functools.partial(create_model, settings["model"], num_classes=splits.num_classes,
                             in_channels=splits.in_channels)


def _recipe(settings: dict) -> dict:
    return {k: settings[k] for k in TrainConfig().as_kwargs()}


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


def _proxies_stage(run: RunFolder, splits, recorder, checkpoints, after: str, names=DEFAULT_PROXIES) -> pd.DataFrame:
    settings = {"after": after, "proxies": list(names)}
    path = run.path / "proxies.csv"
    table = _reuse(run, "proxies", settings, ["proxies.csv"],
                   lambda: _columns(pd.read_csv(path, index_col="index"), path, names).astype(float))
    if table is not None and len(table) != len(splits.train):
        warnings.warn(f"{path} scores {len(table)} examples, not {len(splits.train)}; redoing the proxies stage",
                      stacklevel=2)
        run.forget("proxies")
        table = None
    if table is not None:
        print("reusing the proxies in proxies.csv")
        return table
    with run.timed("proxies", settings):
        table = _compute_proxies(names, splits, recorder, checkpoints)
        table.to_csv(run.path / "proxies.csv")
    return table


def _compute_proxies(names, splits, recorder, checkpoints, subset_models=None) -> pd.DataFrame:
    """The named proxies of the training set: from the recording, from the checkpoints (loss curvature averages
    them all; other model proxies read the last, on the checkpoints' device) or from subset models. Holdout
    retraining fine-tunes on the validation split, which the model never trained on."""
    recorded = [n for n in names if "recording" in proxies.get_proxy(n).needs]
    table = proxies.compute(recorded, recording=recorder) if recorded else pd.DataFrame(
        index=pd.RangeIndex(len(splits.train)))
    for name in (n for n in names if n not in recorded):
        if "subset_models" in proxies.get_proxy(name).needs:
            if subset_models is None:
                raise UsageError(f"proxy {name} needs subset models: add --fz-models K")
            table[name] = proxies.compute(name, subset_models=subset_models)
        elif name == "loss_curvature":
            print(f"loss curvature over {len(checkpoints)} checkpoints")
            table[name] = proxies.loss_curvature(checkpoints, splits.train)
        else:
            table[name] = proxies.compute(name, model=checkpoints[-1], data=splits.train, holdout=splits.val)
    table.index.name = "index"
    return table


def _memorization_stage(args, splits, settings, out: Path) -> pd.Series | None:
    if not args.fz_models:
        return None
    print(f"Feldman-Zhang memorization from {args.fz_models} subset models (cached in {out / 'subset-models'})")
    models = proxies.train_subset_models(splits.train, _model_fn(settings, splits), k=args.fz_models,
                                         folder=out / "subset-models", seed=args.seed, farm=args.farm,
                                         farm_options=_farm_options(args), device=args.device, force=args.force,
                                         **_recipe(settings))
    memorization = proxies.compute("memorization", subset_models=models)
    memorization.index.name = "index"
    return memorization


def _forget_stage(run: RunFolder, spec_text: str, ranking: pd.Series | None, splits, seed: int, after: str,
                  select_by: str, fz_models: int) -> np.ndarray:
    spec = parse_forget_spec(spec_text)
    settings = {"after": after, "spec": spec_text, "seed": seed,
                "select_by": select_by if spec.needs_scores else None}
    if spec.needs_scores and select_by == "memorization":
        settings["fz_models"] = fz_models  # the ranking changes with the number of subset models
    if spec.kind == "ids":  # cmd_run checked the file exists
        settings["ids_sha1"] = hashlib.sha1(spec.path.read_bytes()).hexdigest()
    path = run.path / "forget.csv"
    ids = _reuse(run, "forget", settings, ["forget.csv"],
                 lambda: _forget_ids(_columns(pd.read_csv(path), path, ["index"]), len(splits.train)))
    if ids is not None:
        return ids
    with run.timed("forget", settings):
        ids = select_forget(spec, ranking if spec.needs_scores else None, num_train=len(splits.train), seed=seed,
                            source_rows=None if splits.train_rows is None else splits.train_rows.numpy())
        table = pd.DataFrame({"index": ids, "label": splits.train.targets[ids].numpy()})
        if splits.train_rows is not None:
            table["source_row"] = splits.train_rows[ids].numpy()
        table.to_csv(run.path / "forget.csv", index=False)
    return ids


def _skipped_request_rows(spec, splits) -> str | None:
    """What an ids request asked for that the run does not remove, and why (None when nothing was skipped)."""
    if spec.kind != "ids":
        return None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        read_ids(spec.path, source_rows=None if splits.train_rows is None else splits.train_rows.numpy())
    return "; ".join(str(w.message) for w in caught) or None


def _rum_facts(args, table: pd.DataFrame) -> dict:
    """The policy, the grouping and its thresholds (in the proxy's own units) of a rum run."""
    if args.method != "rum":
        return {}
    facts = {"policy": args.policy or RUMConfig().policy, "grouping": args.grouping}
    if args.grouping == "training_set":
        scores = _proxy_series(table, args.proxy)
        sign = 1.0 if scores.attrs["higher_is_memorized"] else -1.0
        cuts = sign * group_thresholds(sign * scores.to_numpy(dtype=float))
        facts["grouping"] += (f": {args.proxy} tertiles of the training set, low / medium / high split at "
                              + " and ".join(f"{c:.4g}" for c in cuts))
    return facts


def _forget_ids(table: pd.DataFrame, num_train: int) -> np.ndarray:
    ids = table["index"].to_numpy()
    if not np.issubdtype(ids.dtype, np.integer) or ids.min() < 0 or ids.max() >= num_train:
        raise ValueError(f"its index column holds no training indices in [0, {num_train})")
    return ids


def _reference_stage(run: RunFolder, retain, model_fn, recipe: dict, seed: int, device, after: str):
    settings = {"after": after, "seed": seed, **recipe}
    reference = _reuse(run, "reference", settings, ["reference.pt"],
                       lambda: load_checkpoint(model_fn(), run.path / "reference.pt", device))
    if reference is not None:
        print("reusing the retrained reference in reference.pt")
        return reference.eval()
    print(f"retraining the reference from scratch on the {len(retain)} retained examples")
    with run.timed("reference", settings):
        torch.manual_seed(seed)
        reference, _ = train(model_fn(), retain, seed=seed, device=device, **recipe)
        save_checkpoint(reference, run.path / "reference.pt")
    return reference.eval()


def _method_config(args, settings: dict) -> dict:
    """The method's settings ``unlearn run`` passes: ``--method-config``, over (for ``retrain``) the run's model and
    recipe, so that it rebuilds the model exactly as the retrained reference is built."""
    base = {"model_fn": settings["model"], **_recipe(settings)} if args.method == "retrain" else {}
    return {**base, **parse_method_config(args.method, getattr(args, "method_config", []))}


def parse_method_config(method: str, items: list[str]) -> dict:
    """``KEY=VALUE`` strings as a method's settings, checked against its config dataclass (before any work)."""
    from .registry import get_method, make_config
    from .scheduler import RUMConfig

    config = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise UsageError(f"--method-config {item!r}: expected KEY=VALUE, e.g. epochs=3")
        try:
            config[key] = json.loads(text)
        except ValueError:
            config[key] = text  # a bare string, e.g. order=low,medium,high is a string the method reads
    if not config:
        return config
    known = [f.name for f in dataclasses.fields(RUMConfig)] if method == "rum" else None
    try:
        if known is not None:
            unknown = sorted(set(config) - set(known))
            if unknown:
                raise ValueError(f"rum has no setting {unknown[0]!r}; expected some of {known}")
            RUMConfig(**config)
        else:
            make_config(get_method(method), config)
    except (TypeError, ValueError) as err:
        raise UsageError(f"--method-config: {err}") from None
    return config


def _unlearn_stage(run: RunFolder, args, original, forget, retain, table: pd.DataFrame, recorder, model_fn,
                   after: str, device: torch.device, config: dict):
    from .unlearning import unlearn

    rum = args.method == "rum"
    settings = {"after": after, "method": args.method, "proxy": args.proxy if rum else None,
                "policy": (args.policy or RUMConfig().policy) if rum else None, "seed": args.seed}
    if rum:
        settings["grouping"] = args.grouping
    if config:
        settings["config"] = config
    path = run.path / "plan.csv"
    reused = _reuse(run, "unlearn", settings, ["unlearned.pt", "plan.csv"],
                    lambda: (load_checkpoint(model_fn(), run.path / "unlearned.pt", device),
                             _columns(pd.read_csv(path), path, ["group", "method", "examples", "config"])))
    if reused is not None:
        print("reusing the unlearned model in unlearned.pt")
        return reused[0].eval(), reused[1]
    print(f"unlearning {len(forget)} examples with {args.method}" + (f" scheduled by {args.proxy}" if rum else ""))
    with run.timed("unlearn", settings):
        # the recording is there for policies that stop at each group's expected accuracy (early_accuracy)
        options = {"scores": _proxy_series(table, args.proxy), "policy": args.policy, "recording": recorder,
                   "grouping": args.grouping} if rum else {}
        if config:
            options["config"] = config
        result = unlearn(original, forget=forget, retain=retain, method=args.method, seed=args.seed,
                         device=device, **options)
        save_checkpoint(result.model, run.path / "unlearned.pt")
        plan = result.summary()
        written = pd.DataFrame(plan).assign(config=[json.dumps(c, default=str, sort_keys=True) for c in plan["config"]])
        written.to_csv(run.path / "plan.csv", index=False)  # the settings as JSON, readable from any language
    return result.model.eval(), plan


def _shadow_stage(args, splits, settings, out: Path):
    from .shadows import train_shadow_models, train_unlearned_shadow_models

    if not args.shadows:  # cmd_run checked that K is even and >= 4
        return None, None
    model_fn, recipe = _model_fn(settings, splits), _recipe(settings)
    farm = {"farm": args.farm, "farm_options": _farm_options(args), "device": args.device, "force": args.force}
    print(f"{args.shadows} shadow models for LiRA / RMIA (cached in {out / 'shadows'})")
    shadows = train_shadow_models(splits.train, splits.test, model_fn, k=args.shadows, folder=out / "shadows",
                                  queries=splits.queries, seed=args.seed, **farm, **recipe)
    config = _method_config(args, settings)
    if args.method == "rum":
        config = {**config, "proxy": args.proxy, "grouping": args.grouping,
                  **({"policy": args.policy} if args.policy else {})}
    print(f"{args.shadows} shadow models that train and then unlearn with {args.method}, for U-LiRA")
    unlearned = train_unlearned_shadow_models(splits.train, splits.test, model_fn, method=args.method,
                                              method_config=config, k=args.shadows,
                                              folder=out / f"unlearned-shadows-{args.method}", seed=args.seed,
                                              **farm, **recipe)
    return shadows, unlearned


RUN_STAGES = {"train": (), "proxies": ("proxies.csv",), "forget": ("forget.csv",), "reference": ("reference.pt",),
              "unlearn": ("unlearned.pt", "plan.csv")}
"""The stages of ``unlearn run`` in order, with the files each writes (training keeps its own, to resume from)."""

RUN_OUTPUTS = ("report.md", "results.json", "scores.csv", "roc.png", "forget_accuracy_by_group.png",
               "proxies_vs_memorization.png")
"""What the evaluation writes from all the stages: removed as soon as any stage is redone."""


def cmd_run(args: argparse.Namespace) -> None:
    out = args.out or Path("runs") / args.dataset
    _check_options(args)
    with locked(out):  # a second run on the same folder is refused while this one lives
        _run(args, out)


def _run(args: argparse.Namespace, out: Path) -> None:
    from .attacks import extract_signals
    from .evaluation import evaluate, evaluate_ulira
    from .metrics import plot_roc
    from .report import plot_group_accuracy, plot_proxies_vs_memorization, write_report

    spec = parse_forget_spec(args.forget)  # a bad spec fails before any training
    if args.fz_models < 0 or args.shadows < 0:
        raise UsageError("--fz-models and --shadows must be >= 0")
    if args.shadows and (args.shadows < 4 or args.shadows % 2):
        raise UsageError(f"--shadows must be an even number >= 4 (RMIA holds one out), got {args.shadows}")
    select_by = args.select_by or ("memorization" if args.fz_models else args.proxy)
    if select_by == "memorization" and not args.fz_models:
        raise UsageError("--select-by memorization needs ground-truth scores: add --fz-models K")
    if args.proxy not in args.proxies:
        raise UsageError(f"--proxy {args.proxy} must be one of the --proxies {args.proxies}")
    if select_by not in (*args.proxies, "memorization"):
        raise UsageError(f"--select-by must be memorization or one of the --proxies {args.proxies}, got {select_by!r}")
    if spec.kind == "ids" and not spec.path.is_file():
        raise UsageError(f"--forget {args.forget}: no such file {spec.path}")
    if args.policy and args.method != "rum":
        raise UsageError(f"--policy is for --method rum, not {args.method}")
    parse_method_config(args.method, args.method_config)  # a misspelt setting fails before any work

    device = _check_options(args)  # every stage, trained or reused, runs its models here
    run = RunFolder(out, force=args.force, order=RUN_STAGES, outputs=RUN_OUTPUTS)
    print("[1/6] original model")
    splits, original, recorder, checkpoints, settings, seconds = _train_stage(args, out, run)
    after_train = _digest(settings)
    if seconds is not None:
        run.finish("train", {"config": after_train}, seconds=seconds)
    model_fn, recipe = _model_fn(settings, splits), _recipe(settings)

    print("\n[2/6] memorization proxies")
    table = _proxies_stage(run, splits, recorder, checkpoints, after_train, args.proxies)
    memorization = _memorization_stage(args, splits, settings, out)
    with pd.option_context("display.width", 160, "display.max_columns", 20, "display.precision", 3):
        print(f"most memorized by {args.proxy} (the first {args.rows} of {len(table)}; scores.csv has all):")
        ranked = _proxy_series(table, args.proxy)
        order = ranked.sort_values(ascending=not ranked.attrs["higher_is_memorized"]).index[:args.rows]
        print(table.loc[order].to_string())

    print("\n[3/6] forget set")
    ranking = memorization if select_by == "memorization" else _proxy_series(table, select_by)
    if spec.needs_scores and ranking.isna().any():
        print(f"{int(ranking.isna().sum())} examples have no {select_by} score (with few subset models, some are "
              "in all or none of them) and are not ranked")
        ranking = ranking.dropna()
    skipped = _skipped_request_rows(spec, splits)
    forget_ids = _forget_stage(run, args.forget, ranking, splits, args.seed, after_train, select_by, args.fz_models)
    forget = subset(splits.train, forget_ids)
    retain = subset(splits.train, np.setdiff1d(splits.train.indices.numpy(), forget_ids))
    print(f"forget {len(forget)} of {len(splits.train)} training examples ({args.forget}"
          + (f", ranked by {select_by}" if spec.needs_scores else "") + ")")
    after_forget = run.digest("forget")

    print("\n[4/6] retrained reference")
    reference = _reference_stage(run, retain, model_fn, recipe, args.seed, device, after_forget)
    print(f"\n[5/6] unlearning ({args.method})")
    unlearned, plan = _unlearn_stage(run, args, original, forget, retain, table, recorder, model_fn,
                                    after_forget, device, _method_config(args, settings))
    print(plan.drop(columns=["config"]).to_string(index=False))

    print("\n[6/6] evaluation")
    shadows, unlearned_shadows = _shadow_stage(args, splits, settings, out)
    attacks = list(dict.fromkeys([*args.attacks, *(["lira", "rmia"] if shadows is not None else [])]))
    models = {"original": original, "unlearned": unlearned, "retrained": reference}
    queries = shadows.queries if shadows is not None else ("identity",)
    # each model predicted once per split; the report, scores.csv and the ROC figure all score these signals
    signals = {name: {split: extract_signals(model, data, queries=queries, device=device)
                      for split, data in (("train", splits.train), ("test", splits.test))}
               for name, model in models.items()}
    common = {"forget": forget, "retain": retain, "test": splits.test, "reference": reference, "attacks": attacks,
              "shadows": shadows, "seed": args.seed, "device": device,
              "signals": {**signals, "reference": signals["retrained"]}}
    results = evaluate({"original": original, "unlearned": unlearned}, **common)
    not_computed = dict(results.attrs.get("not_computed", {}))
    results = results.rename(columns={"reference": "retrained"})
    examples = per_example_scores(models, splits.train, shadows=shadows, device=device, signals=signals)
    if unlearned_shadows is not None:
        try:
            summary, ulira_scores = evaluate_ulira(unlearned, reference, forget=forget, shadows=unlearned_shadows,
                                                   device=device, signals=signals)
        except NotApplicable as err:
            not_computed["ulira"] = str(err)
        else:
            for key, value in summary.items():
                results.loc[f"ulira.{key}", "unlearned"] = value
            examples = examples.join(ulira_scores.add_prefix("ulira_"))
    for name, reason in not_computed.items():
        warnings.warn(f"{name} not computed: {reason}", stacklevel=1)
    stage_seconds = {stage: run.seconds(stage) for stage in ("train", "proxies", "reference", "unlearn")}
    results.loc["seconds", ["original", "unlearned", "retrained"]] = [stage_seconds["train"],
                                                                      stage_seconds["unlearn"],
                                                                      stage_seconds["reference"]]

    groups = group_of(_proxy_series(table, args.proxy), forget_ids, grouping=args.grouping)
    scores = table.copy()
    scores.insert(0, "label", splits.train.targets.numpy())
    if splits.train_rows is not None:
        scores.insert(1, "source_row", splits.train_rows.numpy())
    if memorization is not None:
        scores["memorization"] = memorization
    scores["forget"] = scores.index.isin(forget_ids)
    scores["group"] = groups
    scores = scores.join(examples)
    scores.to_csv(out / "scores.csv")
    per_group = scores.loc[forget_ids].groupby("group")[[f"correct_{m}" for m in models]].mean()
    per_group = per_group.reindex([g for g in ("low", "medium", "high") if g in per_group.index])
    per_group.columns = list(models)
    per_group.insert(0, "examples", groups.value_counts().reindex(per_group.index))

    figures = {"membership inference ROC (forget vs test)": "roc.png",
               f"forget accuracy by {args.proxy} group": "forget_accuracy_by_group.png"}
    test_scores = per_example_scores(models, splits.test, shadows=shadows, split="test", device=device,
                                     signals=signals)
    kind = "lira" if shadows is not None else "loss"
    sign = 1.0 if kind == "lira" else -1.0  # a low loss marks a member
    curves = {name: (sign * np.r_[scores.loc[forget_ids, f"{kind}_{name}"].to_numpy(),
                                  test_scores[f"{kind}_{name}"].to_numpy()],
                     np.r_[np.ones(len(forget_ids)), np.zeros(len(test_scores))]) for name in models}
    plot_roc(curves, out / "roc.png", title=f"{'LiRA' if kind == 'lira' else 'loss'} attack: forget vs test")
    plot_group_accuracy(per_group[list(models)], out / "forget_accuracy_by_group.png",
                        title=f"forget accuracy by {args.proxy} group")
    if memorization is not None:
        plot_proxies_vs_memorization(table, memorization, out / "proxies_vs_memorization.png")
        figures["proxies against Feldman-Zhang memorization"] = "proxies_vs_memorization.png"

    ratio = stage_seconds["unlearn"] / stage_seconds["reference"]
    facts = {"dataset": args.dataset, "model": settings["model"], "training examples": len(splits.train),
             "forget": f"{args.forget} ({len(forget_ids)} examples" + (f", by {select_by})" if spec.needs_scores
                                                                       else ")"),
             "method": args.method + (f" scheduled by {args.proxy}" if args.method == "rum" else ""),
             **_rum_facts(args, table),
             "method settings": json.dumps(_method_config(args, settings)) if args.method_config else "defaults",
             "training recipe": ", ".join(f"{k} {v}" for k, v in recipe.items()), "seed": args.seed,
             **({"skipped from the request": skipped} if skipped else {}),
             **({"not computed": "; ".join(f"{k} ({v})" for k, v in not_computed.items())} if not_computed else {}),
             "attacks": ", ".join(attacks) + (" and U-LiRA" if unlearned_shadows is not None else ""),
             "shadow models": args.shadows, "subset models (FZ)": args.fz_models,
             "unlearning time vs retraining": f"{ratio:.1%}"}
    tables = {"results": results, "forget accuracy by memorization group": per_group,
              "unlearning plan": plan.drop(columns=["config"])}
    write_report(out, {"run": facts, "seconds": stage_seconds, "time_vs_retrain": ratio}, tables, figures)

    with pd.option_context("display.width", 160, "display.precision", 4):
        print(f"\n{results.to_string()}\n\nforget accuracy by {args.proxy} group:\n{per_group.to_string()}")
    print(f"\nunlearning took {stage_seconds['unlearn']:.1f} s, {ratio:.1%} of retraining "
          f"({stage_seconds['reference']:.1f} s); ToW {results.loc['tow', 'unlearned']:.3f} "
          f"(the original model: {results.loc['tow', 'original']:.3f})")
    print(f"wrote report.md, results.json, scores.csv and {len(figures)} figures to {out}")


def _read_config(path: Path) -> dict:
    try:
        config = json.loads(path.read_text())
    except ValueError as err:
        raise UsageError(f"{path} is unreadable ({err}); pass --force to train again, or delete it") from None
    if not isinstance(config, dict):
        raise UsageError(f"{path} holds a JSON {type(config).__name__}, not a run's settings; pass --force to train "
                         "again, or delete it")
    return config


def _trained_run(folder: Path) -> Path:
    """The ``config.json`` of a folder written by ``train`` or ``run``, or a :class:`UsageError`."""
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise UsageError(f"{folder} is not a trained run (no config.json): run `unlearn train --out {folder}` first")
    return config_file


def _load_run(folder: Path, root, device: torch.device | None = None) -> tuple:
    """The splits, original model, recording and checkpoints of a folder written by ``train`` or ``run``, with the
    models on ``device``."""
    settings = _read_config(_trained_run(folder))
    try:
        splits = load_dataset(settings["dataset"], root=root, val_fraction=settings["val_fraction"],
                              train_size=settings["train_size"], seed=settings["seed"])
    except DatasetNotFoundError as err:
        raise UsageError(str(err)) from err
    model_fn = _model_fn(settings, splits)
    try:
        model = load_checkpoint(model_fn(), folder / "model.pt", device).eval()
        checkpoints = [load_checkpoint(model_fn(), folder / "checkpoints" / f"epoch-{e:03d}.pt", device).eval()
                       for e in settings["checkpoint_epochs"]]
        recorder = TrainingRecorder.load(folder / "recording.npz")
    except UNREADABLE as err:
        raise UsageError(f"cannot read the run in {folder}: {str(err).splitlines()[0]}") from err
    return settings, splits, model, recorder, checkpoints


def cmd_proxies(args: argparse.Namespace) -> None:
    _trained_run(args.run)
    with locked(args.run):
        _proxies(args)


def _proxies(args: argparse.Namespace) -> None:
    settings, splits, _, recorder, checkpoints = _load_run(args.run, args.root, _device(args))
    names = list(args.proxies or DEFAULT_PROXIES)
    subset_models = None
    if args.fz_models:
        subset_models = proxies.train_subset_models(
            splits.train, _model_fn(settings, splits), k=args.fz_models, folder=args.run / "subset-models",
            seed=settings["seed"], farm=args.farm, farm_options=_farm_options(args), **_recipe(settings))
        names += [n for n in ("memorization", "c_score") if n not in names]
    table = _compute_proxies(names, splits, recorder, checkpoints, subset_models)
    target = args.to or args.run / "proxy_scores.csv"
    table.to_csv(target)
    with pd.option_context("display.width", 160, "display.max_columns", 20, "display.precision", 3):
        print(table.head(args.rows).to_string())
    print(f"\nwrote {len(table.columns)} proxies for {len(table)} examples to {target}")


def cmd_attack(args: argparse.Namespace) -> None:
    _trained_run(args.run)
    with locked(args.run):
        _attack(args)


def _attack(args: argparse.Namespace) -> None:
    from .evaluation import evaluate
    from .shadows import train_shadow_models

    device = _device(args)
    settings, splits, original, recorder, _ = _load_run(args.run, args.root, device)
    model_fn = _model_fn(settings, splits)
    checkpoint = args.checkpoint or args.run / "unlearned.pt"
    model = load_checkpoint(model_fn(), checkpoint, device).eval()  # an unreadable file raises a one-line ValueError
    if args.forget is not None:
        spec = parse_forget_spec(args.forget)
        ranking = None
        if spec.needs_scores:
            ranking = _proxy_series(proxies.compute([args.select_by], recording=recorder), args.select_by)
        forget_ids = select_forget(spec, ranking, num_train=len(splits.train), seed=settings["seed"],
                                   source_rows=splits.train_rows.numpy())
    elif (args.run / "forget.csv").is_file():
        forget_ids = pd.read_csv(args.run / "forget.csv")["index"].to_numpy()
    else:
        raise UsageError(f"{args.run} has no forget.csv: pass --forget SPEC")
    forget = subset(splits.train, forget_ids)
    retain = subset(splits.train, np.setdiff1d(splits.train.indices.numpy(), forget_ids))
    reference = None
    if args.forget is None and (args.run / "reference.pt").is_file():
        reference = load_checkpoint(model_fn(), args.run / "reference.pt", device).eval()
    shadows = None
    if args.shadows:
        shadows = train_shadow_models(splits.train, splits.test, model_fn, k=args.shadows,
                                      folder=args.run / "shadows", queries=splits.queries, seed=settings["seed"],
                                      farm=args.farm, farm_options=_farm_options(args), **_recipe(settings))
    attacks = list(dict.fromkeys([*args.attacks, *(["lira", "rmia"] if shadows is not None else [])]))
    report = evaluate(model, forget=forget, retain=retain, test=splits.test, reference=reference, attacks=attacks,
                      shadows=shadows, seed=settings["seed"])
    with pd.option_context("display.width", 160, "display.precision", 4):
        print(report.to_string())
    target = args.run / f"attack-{checkpoint.stem}.json"
    target.write_text(json.dumps({"checkpoint": str(checkpoint), "forget": len(forget_ids),
                                  "forget_ids": [int(i) for i in forget_ids], "attacks": attacks,
                                  "report": report.to_dict()}, indent=2) + "\n")
    print(f"\nwrote {target}")


def cmd_bench(args: argparse.Namespace) -> None:
    script = Path(__file__).resolve().parent.parent / "benchmarks" / f"bench_{args.name}.py"
    if not script.is_file():
        raise UsageError(f"no benchmark {args.name!r}: the benchmarks live in the source checkout's benchmarks/")
    passthrough = args.args[1:] if args.args[:1] == ["--"] else args.args
    completed = subprocess.run([sys.executable, str(script), *passthrough], cwd=script.parent.parent)
    if completed.returncode:
        raise UsageError(f"benchmark {args.name} exited with status {completed.returncode}")


COMMANDS = {"train": cmd_train, "run": cmd_run, "proxies": cmd_proxies, "attack": cmd_attack, "bench": cmd_bench}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)

    def show_warning(message, category, filename, lineno, file=None, line=None):
        print(f"unlearn {args.command}: warning: {message}", file=sys.stderr)

    try:
        with warnings.catch_warnings():
            warnings.showwarning = show_warning
            COMMANDS[args.command](args)
    except (UsageError, ValueError, OSError) as err:
        if args.verbose:
            raise
        print(f"unlearn {args.command}: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
