"""Unlearning secrets from a language model: every method and memorization-aware rum against retraining, on real
fortunes with inserted canaries.

For each seed: ``load_dataset("fortunes", train_size=N, canaries=12, seed=seed)`` (12 secrets "my PIN is d d d d d
d", repeated 1 to 32 times), a ``tiny_gpt`` trained with the ``fortunes`` recipe and the training recorder, and two
requests, each with a model retrained without it (the reference, timed):

- ``canaries``: every copy of every secret;
- ``top1``: the most memorized 1% of the fortunes (the canary copies aside) by the recorded token accuracy.

Every method of ``--methods`` runs with its defaults; rum runs once per ``--policies`` entry and per scheduler (and
``npo_to_expected`` once more, stopped at the token accuracy of held-out sequences of each one's kind instead of the
recording's estimate: :func:`unlearn.pipeline.canaries.held_out_token_accuracy`):
the recorded ``token_accuracy`` (free), ``extraction_probability`` of each training sequence (prefix 8, suffix 8,
top-k 40: one forward pass; a sequence too short to score takes the lowest score) and, with ``--cf-models K``,
counterfactual memorization from K models trained on random halves (Zhang et al. 2021: in minus out token
accuracy). Reported, mean and 95% t-interval over seeds: secrets still (n=1000, p=0.5)-extractable (of 12, on the
canary request), mean exposure (bits), PrivLeak (MUSE, Min-K% k=0.4, forget vs test, against the reference),
Min-K%++ AUC (forget vs test), retain and test perplexity, and time as a share of retraining. On the canary
request PrivLeak compares the 12 secrets with the 1,000 never-inserted ones of their format (MUSE's holdout is text
of the forget set's kind: against test fortunes a model that never saw a secret still finds its digits likelier
than prose, AUC ~0.97, and the formula divides by 1 - that), and ``privleak_vs_test`` is the forget-vs-test one.

    python benchmarks/bench_text_unlearn.py [--seeds 3] [--train-size 500] [--cf-models 8]
                                            [--requests canaries top1] [--methods npo simnpo ...]
                                            [--policies npo_graded npo_to_expected] [--out FILE.json]

``--summary FILE.json`` prints the table of a finished (or interrupted) run's JSON without running anything.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

import proxies
from unlearn import evaluate, unlearn
from unlearn.algorithms.rum import policies, register_policy
from unlearn.data import load_dataset
from unlearn.evaluation.attacks import priv_leak_of
from unlearn.evaluation.metrics import mean_interval
from unlearn.farm.subset_models import train_subset_models
from unlearn.models import create_model
from unlearn.pipeline.canaries import canary_table, held_out_token_accuracy
from unlearn.pipeline.scores import subset
from unlearn.training import get_recipe, train

METHODS = ("finetune", "neggrad", "neggrad_plus", "npo", "simnpo", "sga", "tau")
CANDIDATES = {  # policies tried here before the library takes one (its own are npo_graded and npo_to_expected)
    "npo_light": {"low": None, "medium": ("npo", {"epochs": 2}), "high": ("npo", {"epochs": 4})},
}
POLICIES = ("npo_graded", "npo_to_expected", "npo_light")
METRICS = ("extractable", "exposure", "privleak", "privleak_vs_test", "min_k_pp_auc", "retain_ppl", "test_ppl",
           "time_share")


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3, help="seeds (default 3)")
    parser.add_argument("--train-size", type=int, default=500, help="fortunes in the training set (default 500)")
    parser.add_argument("--epochs", type=int, default=None, help="training epochs (default: the recipe's, 20)")
    parser.add_argument("--cf-models", type=int, default=0,
                        help="models on random halves for counterfactual memorization (default 0: rum is not "
                             "scheduled by it)")
    parser.add_argument("--requests", nargs="+", default=["canaries", "top1"], choices=["canaries", "top1"])
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    parser.add_argument("--policies", nargs="+", default=list(POLICIES))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/bench_text_unlearn.json"))
    parser.add_argument("--summary", type=Path, default=None, help="print the table of this JSON and stop")
    return parser.parse_args()


def model_fn(splits):
    return functools.partial(create_model, "tiny_gpt", **splits.model_options)


def schedulers(args, splits, model, recorder, recipe: dict, seed: int) -> dict[str, pd.Series]:
    """Per-sequence memorization scores of the whole training set that rum can group by, with their direction."""
    scores = {"token_accuracy": proxies.compute("token_accuracy", recording=recorder)}
    log_p = proxies.compute("extraction_probability", model=model, data=splits.train, prefix_length=8,
                            suffix_length=8, top_k=40, progress=False)
    floor = log_p[np.isfinite(log_p)].min() if np.isfinite(log_p).any() else -1e3
    scores["extraction_probability"] = log_p.where(np.isfinite(log_p), floor)
    scores["extraction_probability"].attrs["higher_is_memorized"] = True
    if args.cf_models:
        with tempfile.TemporaryDirectory() as folder:
            models = train_subset_models(splits.train, model_fn(splits), k=args.cf_models, folder=folder,
                                         fraction=0.5, seed=seed, **recipe)
        memorization = proxies.compute("memorization", subset_models=models)
        scores["counterfactual"] = memorization.fillna(memorization.median())
        scores["counterfactual"].attrs["higher_is_memorized"] = True
    return scores


def measure(model, reference, forget, retain, splits, *, canaries: bool, seconds: float, retrain_seconds: float,
            seed: int) -> dict[str, float]:
    report = evaluate(model, forget=forget, retain=retain, test=splits.test, reference=reference, attacks=(),
                      seed=seed)["model"]
    # PrivLeak is undefined (not computed) where the reference itself ranks every forget sequence above every
    # test one
    row = {"privleak": report.get("privleak", np.nan), "min_k_pp_auc": report["mia_min_k_plus_plus.auc"],
           "retain_ppl": report["perplexity.retain"], "test_ppl": report["perplexity.test"],
           "time_share": seconds / retrain_seconds, "seconds": seconds}
    if canaries:  # and PrivLeak of the secrets against never-inserted ones of their format, not unlike text
        table = canary_table({"model": model}, splits)
        row |= {"extractable": float(table["extractable_model"].sum()),
                "exposure": float(table["exposure_model"].mean()),
                "privleak": priv_leak_of(model, reference, splits.canary_secrets, splits.references),
                "privleak_vs_test": row["privleak"]}
    return row


def one_request(args, splits, model, recorder, recipe, scores, request: str, seed: int) -> list[dict]:
    n = len(splits.train)
    if request == "canaries":
        ids = np.sort(splits.canaries["index"].to_numpy())
    else:  # the most memorized 1% of the fortunes (the canaries aside: their request is the other one)
        fortunes = scores["token_accuracy"].drop(splits.canaries["index"])
        ranked = fortunes.sort_values(ascending=False, kind="stable")
        ids = np.sort(ranked.index[:max(1, math.ceil(0.01 * len(fortunes)))].to_numpy())
    forget = subset(splits.train, ids)
    retain = subset(splits.train, np.setdiff1d(np.arange(n), ids))
    start = time.perf_counter()
    torch.manual_seed(seed)
    reference, _ = train(model_fn(splits)(), retain, seed=seed, **recipe)
    retrain_seconds = time.perf_counter() - start
    common = {"canaries": request == "canaries", "retrain_seconds": retrain_seconds, "seed": seed}
    rows = [{"request": request, "method": "original", **measure(model, reference, forget, retain, splits,
                                                                  seconds=0.0, **common)},
            {"request": request, "method": "retrain", **measure(reference, reference, forget, retain, splits,
                                                                 seconds=retrain_seconds, **common)}]
    runs = [(name, {"method": name}) for name in args.methods]
    runs += [(f"rum[{policy}] by {by}", {"method": "rum", "policy": policy, "scores": series,
                                         "recording": recorder})
             for policy in args.policies for by, series in scores.items()]
    if "npo_to_expected" in args.policies:  # stopped at held-out sequences' token accuracy, not the recording's
        held_out = held_out_token_accuracy(model, splits)
        runs += [(f"rum[npo_to_expected, held-out] by {by}",
                  {"method": "rum", "policy": "npo_to_expected", "scores": series, "expected_accuracy": held_out})
                 for by, series in scores.items()]
    for row in rows:
        show(row, seed)
    for name, options in runs:
        start = time.perf_counter()
        result = unlearn(model, forget=forget, retain=retain, seed=seed, **options)
        seconds = time.perf_counter() - start
        rows.append({"request": request, "method": name,
                     **measure(result.model, reference, forget, retain, splits, seconds=seconds, **common)})
        show(rows[-1], seed)
    return rows


def show(row: dict, seed: int) -> None:
    print(f"  seed {seed} {row['request']:9s} {row['method']:46s} "
          + "  ".join(f"{k} {v:.3g}" for k, v in row.items() if isinstance(v, float)), flush=True)


def summary(rows: pd.DataFrame) -> pd.DataFrame:
    columns = [c for c in METRICS if c in rows]
    table = rows.groupby(["request", "method"], sort=False)[columns].agg(
        lambda values: "{:.3g} ± {:.2g}".format(*mean_interval(values.dropna().to_numpy()))
        if values.notna().any() else "")
    return table


def main() -> int:
    args = parse()
    if args.summary is not None:
        pd.set_option("display.width", 200)
        print(summary(pd.DataFrame(json.loads(args.summary.read_text())["rows"])).to_string())
        return 0
    for name, policy in CANDIDATES.items():
        if name not in policies():
            register_policy(name, policy)
    torch.set_num_threads(2)
    rows = []
    for seed in range(args.seeds):
        splits = load_dataset("fortunes", train_size=args.train_size, canaries=12, seed=seed)
        recipe = {**get_recipe("fortunes").as_kwargs(), "progress": False}
        if args.epochs is not None:
            recipe["epochs"] = args.epochs
        recorder = proxies.TrainingRecorder(len(splits.train))
        torch.manual_seed(seed)
        model, _ = train(model_fn(splits)(), splits.train, recorder=recorder, seed=seed, **recipe)
        scores = schedulers(args, splits, model, recorder, recipe, seed)
        for request in args.requests:
            rows += one_request(args, splits, model, recorder, recipe, scores, request, seed)
            write(args, rows)  # after each request: an interrupted run keeps what it measured
    pd.set_option("display.width", 200)
    print(summary(pd.DataFrame(rows)).to_string())
    return 0


def write(args, rows: list[dict]) -> None:
    args.out.parent.mkdir(parents=True, exist_ok=True)
    partial = args.out.with_suffix(".partial")
    partial.write_text(json.dumps({"config": {**vars(args), "out": str(args.out)}, "machine": platform.platform(),
                                   "rows": rows}, indent=2, default=float))
    partial.replace(args.out)


if __name__ == "__main__":
    sys.exit(main())
