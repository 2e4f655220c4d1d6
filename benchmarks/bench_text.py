"""Memorization of token sequences on real fortunes with canaries: which proxy tracks what, and at what cost.

A tiny_gpt trains on ``--train-size`` fortunes plus canaries (the Secret Sharer setting: 12 secrets "my PIN is
d d d d d d", repeated 1, 2, 4, 8, 16 or 32 times) with the recorder on. Then:

1. **Leaderboard.** Each proxy's Spearman correlation with counterfactual memorization (Zhang et al. 2021; ``K``
   subset models on random ``--fraction`` subsets, token accuracy) over the fortunes, with the estimate's noise
   ceiling (split-half reliability, Spearman-Brown corrected, square-rooted), and with the canaries' repeat count
   over the canary copies; with each proxy's cost in forward passes.
2. **Canaries.** Exposure (rank and skew-normal) and extraction probability of each secret by its repeat count,
   and the counterfactual memorization of one copy.
3. **Extraction probability against sampling.** For secrets whose p_z is measurable, ``generate`` with the same
   scheme (top-k 40, temperature 1) draws enough samples for a +-10% estimate; agreement and speed-up.
4. **Recorder overhead** on tiny_gpt: epoch seconds without the recorder, with its signals, and with the
   input-embedding gradients too.

    python benchmarks/bench_text.py [--train-size 1000] [--models 16] [--epochs 20] [--part recorder] [--out FILE]

Prints the tables and writes JSON (``benchmarks/results/bench_text.json``). Needs ``make fortunes``.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.stats
import torch

import proxies
from proxies import TrainingRecorder
from proxies.predictions import predict_signals
from proxies.sequences import SEQUENCE_COLUMNS
from unlearn.data import load_dataset
from unlearn.farm.subset_models import train_subset_models
from unlearn.models import create_model
from unlearn.training import get_recipe, train

RECORDED = ("confidence", "max_confidence", "negative_entropy", "accuracy", "token_accuracy", "forgetting_events",
            "first_learned", "csl", "csg", "sgal", "loss_iqr")
"""Recorded proxies: free during training (csg: one more backward step to the input embeddings)."""


def spearman(a, b) -> float:
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    keep = ~np.isnan(a) & ~np.isnan(b)  # -inf (a log p_z of 0) ranks last
    return float(scipy.stats.spearmanr(a[keep], b[keep]).statistic) if keep.sum() > 2 else float("nan")


def model_fn(splits):
    return functools.partial(create_model, "tiny_gpt", vocab_size=splits.vocab_size, n_positions=splits.max_tokens,
                             bos_token_id=splits.tokenizer.bos_token_id, eos_token_id=splits.tokenizer.eos_token_id)


def train_original(splits, recipe: dict):
    torch.manual_seed(0)
    recorder = TrainingRecorder(len(splits.train))
    start = time.perf_counter()
    model, history = train(model_fn(splits)(), splits.train, recorder=recorder, device="cpu", **recipe)
    return model, recorder, history, time.perf_counter() - start


def model_scores(model, splits) -> tuple[pd.DataFrame, dict]:
    """The model-based measures over the training set, and their seconds."""
    seconds, columns = {}, {}
    for name, options in (("exact_memorization", {}),
                          ("extraction_probability", {"prefix_length": 8, "suffix_length": 8, "top_k": 40})):
        start = time.perf_counter()
        columns[name] = proxies.compute(name, model=model, data=splits.train, **options)
        seconds[name] = time.perf_counter() - start
    start = time.perf_counter()
    signals, _, index = predict_signals(model, splits.train)
    columns["eval_loss"] = pd.Series(signals[:, SEQUENCE_COLUMNS.index("loss")].numpy(), index=index.numpy())
    seconds["eval_loss"] = time.perf_counter() - start
    return pd.DataFrame(columns), seconds


def noise_ceiling(subset_models) -> tuple[float, float]:
    """Split-half Spearman of the memorization estimate and the ceiling it puts on any proxy's correlation."""
    k = len(subset_models.in_mask)
    halves = [proxies.feldman_zhang(subset_models.correct[part], subset_models.in_mask[part])[0]
              for part in (slice(0, k // 2), slice(k // 2, k))]
    r = spearman(*halves)
    reliability = 2 * r / (1 + r) if r > 0 else float("nan")
    return r, math.sqrt(reliability) if reliability == reliability else float("nan")


def leaderboard(table: pd.DataFrame, canaries: pd.DataFrame, cost: dict) -> pd.DataFrame:
    fortunes = ~table.index.isin(canaries["index"])
    copies = table.loc[canaries["index"]]
    rows = []
    for name in [c for c in table.columns if c not in ("memorization", "repeats")]:
        rows.append({"proxy": name, "vs counterfactual (fortunes)": spearman(table.loc[fortunes, name],
                                                                            table.loc[fortunes, "memorization"]),
                     "vs repeats (canary copies)": spearman(copies[name], canaries["repeats"]),
                     "cost": cost.get(name, "free during training")})
    rows.append({"proxy": "memorization", "vs counterfactual (fortunes)": 1.0,
                 "vs repeats (canary copies)": spearman(copies["memorization"], canaries["repeats"]),
                 "cost": cost["memorization"]})
    return pd.DataFrame(rows).set_index("proxy")


def canary_table(model, splits, table: pd.DataFrame, *, prefix: int, suffix: int) -> pd.DataFrame:
    secrets = splits.canary_secrets
    rank = proxies.exposure(model, secrets, splits.references, method="rank")
    skew = proxies.exposure(model, secrets, splits.references, method="skewnorm")
    log_p = proxies.compute("extraction_probability", model=model, data=secrets, prefix_length=prefix,
                            suffix_length=suffix, top_k=40)
    copies = splits.canaries.assign(memorization=table.loc[splits.canaries["index"], "memorization"].to_numpy())
    per_secret = copies.groupby("canary").agg(repeats=("repeats", "first"), memorization=("memorization", "mean"))
    per_secret["exposure_rank"] = rank.to_numpy()
    per_secret["exposure_skewnorm"] = skew.to_numpy()
    per_secret["log_p_z"] = log_p.to_numpy()
    return per_secret.sort_values("repeats")


def sampling_agreement(model, splits, per_secret: pd.DataFrame, *, prefix: int, suffix: int,
                       max_samples: int = 20_000) -> pd.DataFrame:
    """Monte Carlo p_z from ``generate`` (top-k 40) for each secret with p_z >= 1e-3, against the one-pass value."""
    rows = []
    for canary, row in per_secret.iterrows():
        p = math.exp(row["log_p_z"])
        if p < 1e-3:
            continue
        n = min(max_samples, math.ceil(100 * (1 - p) / p) + 100)  # a standard error of ~10% of p
        ids, labels, _ = splits.canary_secrets[canary]
        prompt, target = ids[:prefix][None], ids[prefix:prefix + suffix]
        torch.manual_seed(canary)
        start, hits, drawn = time.perf_counter(), 0, 0
        with torch.no_grad():
            while drawn < n:
                batch = min(2000, n - drawn)
                prompts = prompt.repeat(batch, 1)
                out = model.generate(prompts, attention_mask=torch.ones_like(prompts), do_sample=True, top_k=40,
                                     temperature=1.0,
                                     max_new_tokens=suffix, min_new_tokens=suffix,
                                     pad_token_id=splits.tokenizer.pad_token_id)
                hits += int((out[:, prefix:prefix + suffix] == target).all(1).sum())
                drawn += batch
        sampled_seconds = time.perf_counter() - start
        start = time.perf_counter()
        proxies.compute("extraction_probability", model=model, data=torch.utils.data.Subset(splits.canary_secrets,
                        [canary]), prefix_length=prefix, suffix_length=suffix, top_k=40)
        one_pass = time.perf_counter() - start
        rows.append({"canary": canary, "repeats": row["repeats"], "p_z (one pass)": p, "p_z (sampled)": hits / n,
                     "samples": n, "relative difference": hits / n / p - 1,
                     "speed-up": sampled_seconds / one_pass})
    return pd.DataFrame(rows)


def recorder_overhead(splits, recipe: dict, *, repeats: int) -> pd.DataFrame:
    settings = {"without": None, "signals": False, "signals+csg": True}
    seconds = {name: [] for name in settings}
    for r in range(repeats):
        for name in list(settings)[r % 3:] + list(settings)[:r % 3]:  # rotate the order against drift
            torch.manual_seed(0)
            recorder = None if settings[name] is None else TrainingRecorder(len(splits.train),
                                                                            input_gradients=settings[name])
            _, history = train(model_fn(splits)(), splits.train, recorder=recorder, device="cpu",
                               **{**recipe, "epochs": 3})
            seconds[name] += history["seconds"].tolist()[1:]
    base = statistics.median(seconds["without"])
    return pd.DataFrame([{"setting": name, "epoch seconds (median)": statistics.median(v),
                          "overhead %": 100 * (statistics.median(v) / base - 1)} for name, v in seconds.items()])


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-size", type=int, default=1000, help="fortunes in the training set (default 1000)")
    parser.add_argument("--canaries", type=int, default=12, help="inserted secrets (default 12)")
    parser.add_argument("--models", type=int, default=16, help="subset models for counterfactual memorization")
    parser.add_argument("--fraction", type=float, default=0.5, help="each subset model's share of the data")
    parser.add_argument("--epochs", type=int, default=20, help="epochs of every training (default: the recipe's)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per recorder setting (default 3)")
    parser.add_argument("--part", choices=("all", "recorder"), default="all",
                        help="'recorder': only the recorder's overhead (default: all)")
    parser.add_argument("--out", type=Path, default=None,
                        help="JSON output (default: benchmarks/results/bench_text[_recorder].json)")
    args = parser.parse_args()
    if args.out is None:
        suffix = "" if args.part == "all" else f"_{args.part}"
        args.out = Path(f"benchmarks/results/bench_text{suffix}.json")
    return args


def recorder_only(args, splits, recipe: dict) -> int:
    overhead = recorder_overhead(splits, recipe, repeats=args.repeats)
    print(f"recorder overhead (tiny_gpt, {len(splits.train)} sequences, {args.repeats} runs of 2 timed epochs):\n"
          f"{overhead.round(2).to_string(index=False)}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"config": {**vars(args), "out": str(args.out)}, "machine": platform.platform(),
                                    "recorder": overhead.to_dict("records")}, indent=2, default=float))
    return 0


def main() -> int:
    args = parse()
    torch.set_num_threads(2)
    splits = load_dataset("fortunes", train_size=args.train_size, canaries=args.canaries)
    recipe = {**get_recipe("fortunes").as_kwargs(), "epochs": args.epochs, "progress": False}
    if args.part == "recorder":
        return recorder_only(args, splits, recipe)
    model, recorder, history, train_seconds = train_original(splits, recipe)
    prefix, suffix = splits.canary_lengths
    table = proxies.compute(list(RECORDED), recording=recorder)
    scores, seconds = model_scores(model, splits)
    table = table.join(scores)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        subset_models = train_subset_models(splits.train, model_fn(splits), k=args.models, folder=folder,
                                            fraction=args.fraction, **recipe)
    farm_seconds = time.perf_counter() - start
    table["memorization"] = proxies.compute("memorization", subset_models=subset_models)
    split_half, ceiling = noise_ceiling(subset_models)
    n = len(splits.train)
    cost = {name: f"1 F/example ({s:.1f} s)" for name, s in seconds.items()}
    cost["memorization"] = f"{args.models} trainings at {args.fraction:.0%} + {args.models} F ({farm_seconds:.0f} s)"
    board = leaderboard(table, splits.canaries, cost)
    per_secret = canary_table(model, splits, table, prefix=prefix, suffix=suffix)
    sampled = sampling_agreement(model, splits, per_secret, prefix=prefix, suffix=suffix)
    overhead = recorder_overhead(splits, recipe, repeats=args.repeats)
    pd.set_option("display.width", 160)
    print(f"fortunes: {n} training sequences ({len(splits.canaries)} canary copies), vocab {splits.vocab_size}; "
          f"tiny_gpt {args.epochs} epochs in {train_seconds:.0f} s, final loss {history['loss'].iloc[-1]:.3f}")
    print(f"\ncounterfactual memorization: {args.models} models, split-half Spearman {split_half:.3f}, "
          f"noise ceiling {ceiling:.3f}\n{board.round(3).to_string()}")
    print(f"\ncanaries (prefix {prefix} tokens, suffix {suffix}):\n{per_secret.round(3).to_string()}")
    print(f"\nextraction probability against sampling:\n{sampled.round(4).to_string()}")
    print(f"\nrecorder overhead (tiny_gpt, {n} sequences):\n{overhead.round(2).to_string(index=False)}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "config": {**vars(args), "out": str(args.out)}, "machine": platform.platform(), "threads": 2,
        "train_seconds": train_seconds, "split_half": split_half, "noise_ceiling": ceiling,
        "leaderboard": board.reset_index().to_dict("records"), "canaries": per_secret.reset_index().to_dict("records"),
        "sampling": sampled.to_dict("records"), "recorder": overhead.to_dict("records")}, indent=2, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
