"""What the training recorder costs: epoch time with and without it, on the digits and Fashion-MNIST CNNs.

Runs with and without the recorder are interleaved (the order alternates per repeat) so that drift in the machine's
speed hits both; the first epoch of every run is dropped as warm-up. Prints a table, writes JSON, and with
``--check`` exits 1 if an overhead exceeds ``--target`` percent.

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


def epoch_seconds(splits, model_name: str, *, record: bool, epochs: int, batch_size: int, seed: int) -> list[float]:
    torch.manual_seed(seed)
    model = create_model(model_name, num_classes=splits.num_classes, in_channels=splits.in_channels)
    recorder = TrainingRecorder(len(splits.train)) if record else None
    _, history = train(model, splits.train, epochs=epochs, batch_size=batch_size, seed=seed, recorder=recorder,
                       device="cpu", progress=False)
    return history["seconds"].tolist()[1:]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="runs per setting (default: 5)")
    parser.add_argument("--epochs", type=int, default=6, help="epochs per run; the first is warm-up (default: 6)")
    parser.add_argument("--fmnist-size", type=int, default=10000,
                        help="Fashion-MNIST training examples (default: 10000)")
    parser.add_argument("--target", type=float, default=3.0, help="allowed overhead in percent (default: 3)")
    parser.add_argument("--check", action="store_true", help="exit 1 if an overhead exceeds --target")
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
        times = {False: [], True: []}
        for repeat in range(args.repeats):
            for record in ((False, True) if repeat % 2 == 0 else (True, False)):
                times[record] += epoch_seconds(splits, splits.default_model, record=record, epochs=args.epochs,
                                               batch_size=batch_size, seed=repeat)
        plain, recorded = statistics.median(times[False]), statistics.median(times[True])
        rows.append({"dataset": name, "model": splits.default_model, "examples": len(splits.train),
                     "batch_size": batch_size, "epochs_timed": len(times[False]),
                     "epoch_s_without": plain, "epoch_s_with": recorded,
                     "overhead_pct": 100.0 * (recorded / plain - 1.0)})

    table = pd.DataFrame(rows)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"torch": torch.__version__, "threads": torch.get_num_threads(),
                                    "target_pct": args.target, "rows": rows}, indent=2) + "\n")
    print(f"wrote {args.out}")
    over = table[table["overhead_pct"] > args.target]
    if args.check and len(over):
        print(f"FAIL: overhead above {args.target}% for {', '.join(over['dataset'])}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
