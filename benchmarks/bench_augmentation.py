"""Augmentation on Fashion-MNIST (issue #16): what the augmented recipe changes in the proxies' agreement with FZ
memorization and in LiRA's AUC, and its test accuracy on the full training set.

a. The leaderboard of ``bench_proxies.py`` (``bench_quality``) on the Fashion-MNIST subset, for the recipes
   ``fashion-mnist`` (no augmentation) and ``fashion-mnist-augmented`` (a random crop of the image padded by 2 and a
   horizontal flip), with the same K and epochs. The table: per proxy, Spearman with FZ memorization without and
   with augmentation and the difference; then the mean FZ memorization, the noise ceiling of the FZ estimate and the
   online-LiRA AUC (each subset model in turn the target, the others its shadows; the mean over the K targets) of
   each. K=64 by default: half the leaderboard's 128, so that both recipes fit in a session (about half an hour of
   subset models each at one thread).
b. One model per recipe on the full training set: the 60,000 official training images less ``load_dataset``'s
   default validation split (a seeded 10%), so 54,000, with the recipe's own epochs (15): test accuracy on the
   10,000 test images and training seconds. ``--skip-full`` skips it.

    OMP_NUM_THREADS=1 python benchmarks/bench_augmentation.py [--k 64] [--epochs 8] [--fmnist-size 4000] [--skip-full]

Writes ``augmentation.json`` (everything, rewritten after each stage: a run cut short keeps what finished),
``augmentation.csv`` (the table of a), ``full.csv`` (b) and the scatter plots under ``--out``. Subset models are
cached under ``--cache`` as ``bench_proxies.py`` caches them, one folder per recipe.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_proxies import bench_quality  # noqa: E402

from unlearn.data import DatasetNotFoundError, load_dataset  # noqa: E402
from unlearn.models import create_model  # noqa: E402
from unlearn.training import RECIPES, top1_accuracy, train  # noqa: E402

COMPARED = ("fashion-mnist", "fashion-mnist-augmented")
SUMMARY = {"fz_mean": "FZ mean memorization", "noise_ceiling_spearman": "(noise ceiling of the FZ estimate)",
           "lira_auc": "LiRA AUC (online, mean over K targets)"}


def comparison(qualities: dict, infos: dict) -> pd.DataFrame:
    """Per proxy, Spearman with FZ under each recipe and the difference (augmented less plain), then the
    :data:`SUMMARY` rows of each run."""
    plain, augmented = COMPARED
    spearman = {r: q[~q.proxy.str.startswith(("memorization (", "("))].set_index("proxy")["spearman"]
                for r, q in qualities.items()}
    table = pd.DataFrame({plain: spearman[plain], augmented: spearman[augmented]}).rename_axis("proxy").reset_index()
    summary = pd.DataFrame([{"proxy": text, plain: infos[plain][key], augmented: infos[augmented][key]}
                            for key, text in SUMMARY.items()])
    table = pd.concat([table, summary], ignore_index=True)
    table["difference"] = table[augmented] - table[plain]
    return table


def full_accuracy(recipe: str) -> dict:
    """One model on the full training set with ``recipe`` (its own epochs): test accuracy and training seconds."""
    splits = load_dataset("fashion-mnist")
    torch.manual_seed(0)
    model = create_model(splits.default_model, num_classes=splits.num_classes, in_channels=splits.in_channels)
    start = time.perf_counter()
    model, _ = train(model, splits.train, seed=0, progress=False, **RECIPES[recipe].as_kwargs())
    seconds = time.perf_counter() - start
    return {"recipe": recipe, "train_examples": len(splits.train), "val_examples": len(splits.val),
            "test_examples": len(splits.test), "epochs": RECIPES[recipe].epochs,
            "test_accuracy": top1_accuracy(model, splits.test), "train_s": seconds}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--k", type=int, default=64,
                        help="subset models per recipe for FZ memorization and LiRA (the leaderboard uses 128)")
    parser.add_argument("--epochs", type=int, default=8, help="epochs of every model on the subset (both recipes)")
    parser.add_argument("--fmnist-size", type=int, default=4000, help="Fashion-MNIST training examples of the subset")
    parser.add_argument("--skip-full", action="store_true",
                        help="skip part b, the two models on the full training set")
    parser.add_argument("--cache", type=Path, default=Path("benchmarks/results"),
                        help="subset-model cache (one folder per recipe, fz-<recipe>-k<K>, shared with "
                             "bench_proxies.py)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/augmentation"),
                        help="output folder: augmentation.json, augmentation.csv, full.csv, scatter plots")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    pd.set_option("display.width", 200)
    try:
        load_dataset("fashion-mnist", train_size=10)
    except DatasetNotFoundError as err:
        print(f"Fashion-MNIST is missing: {err}", file=sys.stderr)
        return 1
    report: dict = {"torch": torch.__version__, "threads": torch.get_num_threads(),
                    "settings": {"k": args.k, "epochs": args.epochs, "fmnist_size": args.fmnist_size},
                    "quality": {}, "info": {}, "wall_s": {}}
    path = args.out / "augmentation.json"

    def save() -> None:
        path.write_text(json.dumps(report, indent=2, default=float) + "\n")

    qualities = {}
    for recipe in COMPARED:
        start = time.perf_counter()
        quality, _, info = bench_quality("fashion-mnist", {"train_size": args.fmnist_size}, args.k, args.epochs,
                                         args.cache, args.out, recipe)
        report["wall_s"][f"subset {recipe}"] = time.perf_counter() - start
        qualities[recipe] = quality
        report["quality"][recipe] = quality.to_dict("records")
        report["info"][recipe] = info
        save()
        print(f"{recipe}: {report['wall_s'][f'subset {recipe}']:.0f} s, mean FZ {info['fz_mean']:.4f}, "
              f"LiRA AUC {info['lira_auc']:.3f}", flush=True)
    table = comparison(qualities, report["info"])
    report["table"] = table.to_dict("records")
    table.to_csv(args.out / "augmentation.csv", index=False)
    save()
    print(f"\n== Spearman with FZ memorization ({args.fmnist_size} examples, K={args.k}, {args.epochs} epochs)")
    print(table.to_string(index=False, float_format=lambda v: f"{v:+.3f}"))

    if not args.skip_full:
        full = []
        for recipe in COMPARED:
            full.append(full_accuracy(recipe))
            report["full"] = full
            save()
        full = pd.DataFrame(full)
        full.to_csv(args.out / "full.csv", index=False)
        print("\n== full training set: test accuracy")
        print(full.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
