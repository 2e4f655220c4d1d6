"""What the training recorder costs: epoch time without it, with it recording the softmax signals only, and with it
also taking each presentation's input gradient (for ``csg``, the default), on the digits and Fashion-MNIST CNNs.

The three settings are interleaved (the order rotates per repeat) so that drift in the machine's speed hits all of
them; the first epoch of every run is dropped as warm-up. Prints a table, writes JSON, and with ``--check`` exits 1
if the signals' overhead exceeds ``--target`` percent or the input gradients' exceeds ``--csg-target``.

    python benchmarks/bench_recorder.py [--repeats 5] [--epochs 6] [--fmnist-size 10000] [--out FILE] [--check]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
from pathlib import Path

import pandas as pd
import torch

from proxies import TrainingRecorder
from unlearn.data import DatasetNotFoundError, load_dataset
from unlearn.models import create_model
from unlearn.training import RECIPES, train

SETTINGS = ("without", "signals", "signals+csg")


def epoch_seconds(splits, model_name: str, *, setting: str, epochs: int, batch_size: int,
                  seed: int) -> list[float]:
    torch.manual_seed(seed)
    model = create_model(model_name, num_classes=splits.num_classes, in_channels=splits.in_channels)
    recorder = (None if setting == "without" else
                TrainingRecorder(len(splits.train), input_gradients=setting == "signals+csg"))
    _, history = train(model, splits.train, epochs=epochs, batch_size=batch_size, seed=seed, recorder=recorder,
                       device="cpu", progress=False)
    return history["seconds"].tolist()[1:]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="runs per setting (default: 5)")
    parser.add_argument("--epochs", type=int, default=6, help="epochs per run; the first is warm-up (default: 6)")
    parser.add_argument("--fmnist-size", type=int, default=10000,
                        help="Fashion-MNIST training examples (default: 10000)")
    parser.add_argument("--target", type=float, default=3.0,
                        help="allowed overhead of the signals in percent (default: 3)")
    parser.add_argument("--csg-target", type=float, default=5.0,
                        help="allowed overhead of signals + input gradients in percent (default: 5)")
    parser.add_argument("--check", action="store_true", help="exit 1 if an overhead exceeds its target")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/bench_recorder.json"), help="JSON output")
    args = parser.parse_args()

    cases = [("digits", {})]
    try:
        load_dataset("fashion-mnist", train_size=100)
        cases.append(("fashion-mnist", {"train_size": args.fmnist_size}))
    except DatasetNotFoundError as err:
        print(f"skipping Fashion-MNIST: {err}", file=sys.stderr)

    rows = []
    for name, options in cases:
        splits = load_dataset(name, **options)
        batch_size = RECIPES[name].batch_size
        times = {setting: [] for setting in SETTINGS}
        for repeat in range(args.repeats):
            shift = repeat % len(SETTINGS)
            for setting in SETTINGS[shift:] + SETTINGS[:shift]:
                times[setting] += epoch_seconds(splits, splits.default_model, setting=setting, epochs=args.epochs,
                                                batch_size=batch_size, seed=repeat)
        median = {setting: statistics.median(values) for setting, values in times.items()}
        rows.append({"dataset": name, "model": splits.default_model, "examples": len(splits.train),
                     "batch_size": batch_size, "epochs_timed": len(times["without"]),
                     "epoch_s_without": median["without"], "epoch_s_signals": median["signals"],
                     "epoch_s_signals_csg": median["signals+csg"],
                     "overhead_pct": 100.0 * (median["signals"] / median["without"] - 1.0),
                     "overhead_csg_pct": 100.0 * (median["signals+csg"] / median["without"] - 1.0)})

    table = pd.DataFrame(rows)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"torch": torch.__version__, "threads": torch.get_num_threads(),
                                    "target_pct": args.target, "csg_target_pct": args.csg_target, "rows": rows},
                                   indent=2) + "\n")
    print(f"wrote {args.out}")
    over = table[(table["overhead_pct"] > args.target) | (table["overhead_csg_pct"] > args.csg_target)]
    if args.check and len(over):
        print(f"FAIL: overhead above {args.target}% (signals) or {args.csg_target}% (with input gradients) for "
              f"{', '.join(over['dataset'])}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
