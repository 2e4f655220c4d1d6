"""The ``unlearn`` command line: a thin layer over the library.

Errors a user can cause print one line and exit with status 2; ``--verbose`` shows tracebacks.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import pandas as pd
import torch

import proxies
from proxies import TrainingRecorder

from .data import DatasetNotFoundError, datasets, load_dataset
from .models import create_model, models
from .training import RECIPES, TrainConfig, accuracy, load_checkpoint, save_checkpoint, train


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

    p = sub.add_parser("train", help="train a model and record its per-example training dynamics",
                       description="Train a model with the training recorder; writes model.pt (state_dict), "
                                   "recording.npz, history.csv and config.json to --out.")
    _add_data_options(p)
    _add_train_options(p)
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("--force", action="store_true", help="overwrite a folder trained with other settings")

    p = sub.add_parser("run", help="the main job on the built-in data (default: digits)",
                       description="Train (or reuse from --out) the original model with the training recorder, "
                                   "then compute the memorization proxies and print the per-example table.")
    _add_data_options(p)
    _add_train_options(p)
    p.add_argument("--out", type=Path, default=None, help="output folder (default: runs/<dataset>)")
    p.add_argument("--force", action="store_true", help="retrain even if --out holds a run with other settings")
    p.add_argument("--rows", type=int, default=10, help="rows of the proxy table to print (default: 10)")
    return parser


# ------------------------------------------------------------------------------------------------ stages

def _train_config(args: argparse.Namespace) -> TrainConfig:
    config = RECIPES.get(args.dataset, TrainConfig())
    overrides = {k: getattr(args, k) for k in ("epochs", "lr", "batch_size", "momentum", "weight_decay", "schedule")
                 if getattr(args, k) is not None}
    return replace(config, **overrides)


def _train_stage(args: argparse.Namespace, out: Path):
    """Train the original model into ``out``, or load it when ``out`` already holds the same run."""
    try:
        splits = load_dataset(args.dataset, root=args.root, download=args.download, val_fraction=args.val_fraction,
                              train_size=args.train_size, seed=args.seed)
    except DatasetNotFoundError as err:
        raise UsageError(str(err)) from err
    model_name = args.model or splits.default_model
    config = _train_config(args)
    if args.checkpoints < 1:
        raise UsageError(f"--checkpoints must be >= 1, got {args.checkpoints}")
    keep = sorted({round(config.epochs * (i + 1) / args.checkpoints) for i in range(args.checkpoints)} - {0})
    settings = {"dataset": args.dataset, "model": model_name, "seed": args.seed, "train_size": args.train_size,
                "val_fraction": args.val_fraction, "checkpoint_epochs": keep, **config.as_kwargs()}
    torch.manual_seed(args.seed)
    model = create_model(model_name, num_classes=splits.num_classes, in_channels=splits.in_channels)

    config_file = out / "config.json"
    checkpoint_files = [out / "checkpoints" / f"epoch-{e:03d}.pt" for e in keep]
    files = [out / "model.pt", out / "recording.npz", config_file]
    saved = json.loads(config_file.read_text()) if config_file.is_file() else None
    if saved is not None and saved != settings and not args.force:
        changed = sorted(k for k in settings.keys() | saved.keys() if settings.get(k) != saved.get(k))
        raise UsageError(f"{out} holds a run with other settings ({', '.join(changed)}); "
                         "choose another --out or pass --force to overwrite it")
    if saved == settings and all(f.is_file() for f in files + checkpoint_files):
        print(f"reusing the trained model in {out}")
        checkpoints = [load_checkpoint(copy.deepcopy(model), f).eval() for f in checkpoint_files]
        model = load_checkpoint(model, out / "model.pt").eval()
        return splits, model, TrainingRecorder.load(out / "recording.npz"), checkpoints, settings

    config_file.unlink(missing_ok=True)  # until training finishes, the folder holds no finished run
    (out / "checkpoints").mkdir(parents=True, exist_ok=True)
    recorder = TrainingRecorder(len(splits.train))
    checkpoints = []

    def keep_checkpoint(epoch, trained):
        if epoch in keep:
            save_checkpoint(trained, out / "checkpoints" / f"epoch-{epoch:03d}.pt")
            checkpoints.append(copy.deepcopy(trained).eval())

    print(f"training {model_name} on {splits!r} for {config.epochs} epochs")
    start = time.perf_counter()
    model, history = train(model, splits.train, seed=args.seed, recorder=recorder, device=args.device,
                           on_epoch_end=keep_checkpoint, **config.as_kwargs())
    seconds = time.perf_counter() - start
    save_checkpoint(model, out / "model.pt")
    recorder.save(out / "recording.npz")
    history.to_csv(out / "history.csv", index=False)
    config_file.write_text(json.dumps(settings, indent=2) + "\n")  # written last: marks the stage finished
    print(f"trained in {seconds:.1f} s; wrote {', '.join(f.name for f in files)}, history.csv and "
          f"{len(checkpoints)} checkpoints to {out}")
    return splits, model, recorder, checkpoints, settings


def cmd_train(args: argparse.Namespace) -> None:
    splits, model, _, _, _ = _train_stage(args, args.out)
    print(f"test accuracy {accuracy(model, splits.test):.4f}")


def cmd_run(args: argparse.Namespace) -> None:
    out = args.out or Path("runs") / args.dataset
    splits, model, recorder, checkpoints, settings = _train_stage(args, out)
    scores = proxies.compute(proxies.RECORDING_PROXIES, recording=recorder)
    print(f"loss curvature over {len(checkpoints)} checkpoints (epochs {settings['checkpoint_epochs']})")
    scores["loss_curvature"] = proxies.loss_curvature(checkpoints, splits.train)
    scores.insert(0, "label", splits.train.targets.numpy())
    scores.to_csv(out / "scores.csv")

    print(f"\n{settings['model']} on {args.dataset}: train accuracy {accuracy(model, splits.train):.4f}, "
          f"test accuracy {accuracy(model, splits.test):.4f}, {recorder.num_epochs} epochs recorded")
    with pd.option_context("display.width", 160, "display.max_columns", 20, "display.precision", 3):
        print(f"\nper-example memorization proxies (first {args.rows} of {len(scores)}; scores.csv has all):")
        print(scores.head(args.rows).to_string())
        ranked = scores.sort_values("confidence").head(args.rows)  # low confidence = most memorized
        print(f"\nmost memorized by confidence (the {args.rows} least confidently learned examples):")
        print(ranked.to_string())
    print(f"\nwrote {out / 'scores.csv'}")


COMMANDS = {"train": cmd_train, "run": cmd_run}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        COMMANDS[args.command](args)
    except (UsageError, ValueError, OSError) as err:
        if args.verbose:
            raise
        print(f"unlearn {args.command}: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
