"""Membership-inference attacks: speed of the vectorised fits against per-example loops, and every attack's figures
on digits and a Fashion-MNIST subset for the original, retrained, DP-trained and unlearned models.

    python benchmarks/bench_attacks.py [--part speed|figures|all] [--shadows 16] [--check]

Shadow models are cached under ``--cache``. ``--check`` exits 1 when a vectorised path is under 20x its loop.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from scipy import stats
from torch.utils.data import Subset

from unlearn import create_model, evaluate, train, unlearn
from unlearn.algorithms.registry import methods
from unlearn.data import DatasetNotFoundError, load_dataset
from unlearn.evaluation.attacks import epsilons, lira
from unlearn.evaluation.metrics import plot_roc
from unlearn.evaluation.shadows import train_shadow_models
from unlearn.training import RECIPES, DPConfig

ATTACKS = ("loss_threshold", "loss_logreg", "svc", "lira", "lira_offline", "rmia")


# ------------------------------------------------------------------------------------------------ speed

def lira_loop(target, shadow, in_mask):
    """The plain per-example loop the vectorised LiRA replaces."""
    out = np.empty(len(target))
    for n in range(len(target)):
        ins, outs = shadow[in_mask[:, n], n], shadow[~in_mask[:, n], n]
        out[n] = np.mean(stats.norm.logpdf(target[n], np.median(ins, 0), ins.std(0) + 1e-30)
                         - stats.norm.logpdf(target[n], np.median(outs, 0), outs.std(0) + 1e-30))
    return out


def epsilon_loop(u, r, delta=1e-5, cap=50.0):
    """The plain double-threshold sweep, one example and one rule at a time."""
    result = np.empty(u.shape[1])
    for e in range(u.shape[1]):
        ue, re_ = u[:, e], r[:, e]
        values = np.unique(np.r_[ue, re_])
        cuts = np.r_[-np.inf, (values[:-1] + values[1:]) / 2, np.inf]
        best = 0.0
        for i, lo in enumerate(cuts):
            for hi in cuts[i:]:
                iu, ir = ((ue > lo) & (ue < hi)).mean(), ((re_ > lo) & (re_ < hi)).mean()
                for fpr, fnr in ((ir, 1 - iu), (1 - ir, iu)):
                    if fpr == 0 and fnr == 0:
                        best = np.inf
                    elif fpr > 0 and fnr > 0:
                        for num, den in ((1 - delta - fpr, fnr), (1 - delta - fnr, fpr)):
                            if num > 0:
                                best = max(best, np.log(num) - np.log(den))
        result[e] = min(best, cap)
    return result


def bench_speed() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = []
    in_mask = rng.random((64, 2000)) < 0.5
    shadow = rng.normal(size=(64, 2000, 2)) + in_mask[:, :, None]
    target = rng.normal(size=(2000, 2))
    u, r = rng.normal(0.5, 1, (16, 300)), rng.normal(0, 1, (16, 300))
    for name, fast, slow in [
        ("lira online, M=64, N=2000, A=2", lambda: lira(target, shadow, in_mask),
         lambda: lira_loop(target, shadow, in_mask)),
        ("epsilon sweeps, 16+16 models, E=300", lambda: epsilons(u, r), lambda: epsilon_loop(u, r)),
    ]:
        fast()  # warm-up: numba loads its compiled kernels on the first call
        start = time.perf_counter()
        a = fast()
        fast_s = time.perf_counter() - start
        start = time.perf_counter()
        b = slow()
        slow_s = time.perf_counter() - start
        rows.append({"computation": name, "vectorised_s": fast_s, "loop_s": slow_s, "speedup": slow_s / fast_s,
                     "max_abs_diff": float(np.max(np.abs(a - b)))})
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------------------------------ figures

def forget_setup(name: str, options: dict, forget_size: int, recipe: dict, seed: int):
    """The dataset, a model factory, a seeded random forget set with its retain set, and the original model."""
    splits = load_dataset(name, **options)
    model_fn = functools.partial(create_model, splits.default_model, num_classes=splits.num_classes,
                                 in_channels=splits.in_channels)
    rng = np.random.default_rng(seed)
    forget_ids = np.sort(rng.choice(len(splits.train), forget_size, replace=False))
    retain_ids = np.setdiff1d(np.arange(len(splits.train)), forget_ids)
    forget, retain = Subset(splits.train, forget_ids.tolist()), Subset(splits.train, retain_ids.tolist())
    torch.manual_seed(seed)
    original, _ = train(model_fn(), splits.train, seed=seed, progress=False, **recipe)
    return splits, model_fn, forget_ids, forget, retain, original


def bench_figures(name: str, options: dict, test_size: int | None, k: int, forget_size: int, recipe: dict,
                  cache: Path, out: Path, seed: int = 0):
    splits, model_fn, _, forget, retain, original = forget_setup(name, options, forget_size, recipe, seed)
    test = splits.test if test_size is None else Subset(splits.test, range(test_size))
    torch.manual_seed(seed + 1)
    retrained, _ = train(model_fn(), retain, seed=seed + 1, progress=False, **recipe)
    torch.manual_seed(seed)
    dp_recipe = {**recipe, "lr": 0.5, "momentum": 0.0, "weight_decay": 0.0}
    dp_model, dp_history = train(model_fn(), splits.train, seed=seed, progress=False, dp=DPConfig(epsilon=8.0),
                                 **dp_recipe)
    size = f"{len(splits.train)}-{len(test)}"
    shadows = train_shadow_models(splits.train, test, model_fn, k=k, folder=cache / f"shadows-{name}-{size}-k{k}",
                                  **recipe)
    models = {"original": original, "retrained": retrained, f"dp (eps={dp_history['epsilon'].iloc[-1]:.1f})": dp_model}
    for method in methods():
        if method in ("rum", "retrain"):
            continue
        models[method] = unlearn(original, forget=forget, retain=retain, method=method, seed=seed).model

    rows, curves = [], {}
    for label, model in models.items():
        report = evaluate(model, forget=forget, retain=retain, test=test, attacks=ATTACKS, shadows=shadows, seed=seed)
        row = {"dataset": name, "model": label}
        row |= {f"acc_{s}": report.loc[f"accuracy.{s}", "model"] for s in ("forget", "retain", "test")}
        for attack in ("loss_threshold", "lira", "lira_offline", "rmia"):
            row |= {f"{attack}_auc": report.loc[f"{attack}.auc", "model"],
                    f"{attack}_tpr@0.1%": report.loc[f"{attack}.tpr_at_fpr_0.001", "model"],
                    f"{attack}_tpr@1%": report.loc[f"{attack}.tpr_at_fpr_0.01", "model"]}
        row |= {"loss_logreg_acc": report.loc["loss_logreg.accuracy", "model"],
                "svc_confidence": report.loc["svc.confidence", "model"]}
        rows.append(row)
        if label in ("original", "retrained") or label.startswith("dp"):
            curves[label] = _lira_curve(model, forget, test, shadows)
    plot_roc(curves, out / f"bench_attacks_{name}_lira_roc.png", title=f"{name}: LiRA, forget vs test")
    return pd.DataFrame(rows), {"dataset": name, "train": len(splits.train), "test": len(test), "shadows": k,
                                "forget": forget_size, "recipe": recipe, "dp_epsilon": dp_history["epsilon"].iloc[-1]}


def bench_unlearning_attacks(name: str, options: dict, k: int, forget_size: int, recipe: dict, models: int,
                             cache: Path, seed: int = 0) -> pd.DataFrame:
    """U-LiRA (train-then-unlearn shadows per method) and the NeurIPS 2023 forgetting score (``models`` unlearned
    and ``models`` retrained copies) for every method, on one forget set."""
    from unlearn.evaluation import evaluate_ulira
    from unlearn.evaluation.attacks import extract_signals, forgetting_score
    from unlearn.evaluation.shadows import train_unlearned_shadow_models
    from unlearn.training import top1_accuracy

    splits, model_fn, forget_ids, forget, retain, original = forget_setup(name, options, forget_size, recipe, seed)
    retrained = []
    for s in range(models):
        torch.manual_seed(100 + s)
        retrained.append(train(model_fn(), retain, seed=100 + s, progress=False, **recipe)[0])
    phi_retrained = np.stack([extract_signals(m, forget).phi[:, 0] for m in retrained])
    accuracy_retrained = [np.mean([top1_accuracy(m, d) for m in retrained]) for d in (retain, splits.test)]

    rows = []
    for method in methods():
        if method in ("rum", "retrain"):
            continue
        shadows = train_unlearned_shadow_models(splits.train, splits.test, model_fn, method=method, k=k,
                                                folder=cache / f"ulira-{name}-{len(splits.train)}-{method}-k{k}",
                                                **recipe)
        unlearned = [unlearn(original, forget=forget, retain=retain, method=method, seed=s).model
                     for s in range(models)]
        phi_unlearned = np.stack([extract_signals(m, forget).phi[:, 0] for m in unlearned])
        summary, _ = evaluate_ulira(unlearned[0], retrained[0], forget=forget, shadows=shadows)
        accuracy_unlearned = [np.mean([top1_accuracy(m, d) for m in unlearned]) for d in (retain, splits.test)]
        score = forgetting_score(phi_unlearned, phi_retrained,
                                 retain_accuracy=(accuracy_unlearned[0], accuracy_retrained[0]),
                                 test_accuracy=(accuracy_unlearned[1], accuracy_retrained[1]))
        rows.append({"dataset": name, "method": method, "ulira_auc": summary["auc"],
                     "ulira_tpr@1%": summary["tpr_at_fpr_0.01"], "examples_scored": int(summary["scored"]),
                     **score})
    return pd.DataFrame(rows)


def _lira_curve(model, forget, test, shadows):
    from unlearn.evaluation.attacks import extract_signals

    f, t = extract_signals(model, forget), extract_signals(model, test)
    pos = np.concatenate([shadows.locate("train", f.index), shadows.locate("test", t.index)])
    scores = lira(np.concatenate([f.phi, t.phi]), shadows.phi(pos), shadows.in_mask[:, pos])
    return scores, np.r_[np.ones(len(f.index)), np.zeros(len(t.index))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=["speed", "figures", "all"], default="all", help="what to run")
    parser.add_argument("--shadows", type=int, default=16, help="shadow models per dataset (default: 16)")
    parser.add_argument("--digits-size", type=int, default=300,
                        help="digits training examples (default: 300; fewer examples leak more)")
    parser.add_argument("--fmnist-size", type=int, default=2000, help="Fashion-MNIST training examples")
    parser.add_argument("--fmnist-test", type=int, default=2000, help="Fashion-MNIST test examples in the pool")
    parser.add_argument("--models", type=int, default=8,
                        help="unlearned and retrained models per method for the forgetting score (default: 8)")
    parser.add_argument("--cache", type=Path, default=Path("benchmarks/results"), help="shadow-model cache")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"), help="JSON and PNG output folder")
    parser.add_argument("--check", action="store_true", help="exit 1 if a vectorised path is under 20x its loop")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    pd.set_option("display.width", 250)
    pd.set_option("display.max_columns", 40)
    report: dict = {"torch": torch.__version__, "threads": torch.get_num_threads()}
    failed = []
    if args.part in ("speed", "all"):
        speed = bench_speed()
        print("\n== vectorised attacks against per-example loops")
        print(speed.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
        report["speed"] = speed.to_dict("records")
        failed += [r.computation for r in speed.itertuples() if r.speedup < 20]
    if args.part in ("figures", "all"):
        cases = [("digits", {"train_size": args.digits_size}, None, 100,
                  {**RECIPES["digits"].as_kwargs(), "epochs": 20})]
        try:
            load_dataset("fashion-mnist", train_size=10)
            cases.append(("fashion-mnist", {"train_size": args.fmnist_size}, args.fmnist_test, 200,
                          {**RECIPES["fashion-mnist"].as_kwargs(), "epochs": 10}))
        except DatasetNotFoundError as err:
            print(f"skipping Fashion-MNIST: {err}", file=sys.stderr)
        tables, infos = [], []
        for name, options, test_size, forget_size, recipe in cases:
            table, info = bench_figures(name, options, test_size, args.shadows, forget_size, recipe, args.cache,
                                        args.out)
            tables.append(table)
            infos.append(info)
        figures = pd.concat(tables)
        print("\n== attacks on the forget set (members of the original) against test examples")
        print(figures.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
        for info in infos:
            print(info)
        report |= {"figures": figures.to_dict("records"), "datasets": infos}
        unlearning = bench_unlearning_attacks("digits", {"train_size": args.digits_size}, args.shadows, 100,
                                              {**RECIPES["digits"].as_kwargs(), "epochs": 20}, args.models,
                                              args.cache)
        print(f"\n== unlearning attacks on digits: U-LiRA ({args.shadows} train-then-unlearn shadows per method; "
              f"AUC 0.5 = indistinguishable from retraining) and the NeurIPS 2023 score ({args.models} unlearned "
              f"vs {args.models} retrained models; 1 = perfect)")
        print(unlearning.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
        report["unlearning_attacks"] = unlearning.to_dict("records")
    path = args.out / "bench_attacks.json"
    path.write_text(json.dumps(report, indent=2, default=float) + "\n")
    print(f"\nwrote {path}")
    if failed and args.check:
        print(f"under 20x: {failed}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
