"""Unlearning quality against cost: every method and memorization-aware RUM (each policy, scheduled by Feldman-Zhang
scores and by a proxy) on forget sets of low, medium, high and mixed memorization, against retraining from scratch.

For each dataset the original model is trained once with the training recorder; FZ scores come from the subset
models that ``bench_proxies.py`` caches (same settings, so they are reused). Forget sets hold N examples per group:
low = the N least memorized, high = the N most, medium = the N closest to the median, mixed = all three; they are
chosen once by FZ scores and once by the proxy. For every seed the retrained reference and each method run again.
One more row, ``retrain (another seed)``, is exact unlearning: ``method="retrain"`` with the original's recipe and
the seed's own seed, scored against the reference like any method. It is the ToW a perfect method reaches in
expectation, below 1 because two retrainings differ; it is not counted among the single methods a policy must beat.
Reported: forget / retain / test accuracy, ToW, ToW-MIA (SVC attack, confidence feature) and seconds, as mean and
95% t-interval over seeds. RUM runs once per policy of ``--policies`` (default: the anchor ``finetune_salun`` and
the cheap ``random_label_fast``, which trains each step on a small retain sample). RUM forms its groups by the
request's own quantiles (``grouping="request"``, the RUM paper's split), as the published tables were made;
``--groupings request training_set`` adds rows grouped by the training set's score quantiles (the library's default).

    python benchmarks/bench_unlearn.py [--seeds 3] [--first-seed 0] [--datasets digits fashion-mnist]
                                       [--kinds low medium high mixed] [--policies finetune_salun random_label_fast]
                                       [--methods finetune salun ...] [--groupings request training_set]
                                       [--schedulers confidence csg ...] [--selections fz confidence]
                                       [--decompose]
                                       [--out benchmarks/results] [--fresh]

A rerun with the same ``--out`` reads back the forget sets and seeds already written under ``<out>/runs``.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Subset
from tqdm.auto import tqdm

import proxies
from unlearn import create_model, memorization_scores, train, unlearn
from unlearn.algorithms.registry import get_method, make_config, methods
from unlearn.algorithms.rum.grouping import group_names
from unlearn.algorithms.rum.policies import POLICIES, register_policy, resolve_policy, step_seed_of, uses_expected
from unlearn.data import DatasetNotFoundError, load_dataset
from unlearn.evaluation.attacks import extract_signals, svc
from unlearn.evaluation.metrics import mean_interval, tow, tow_mia
from unlearn.training import RECIPES, top1_accuracy

# rum with one method on every group, each step with the method's defaults: the vision-transformer benchmark's
# RUM^F (Zhao, Luca, Triantafillou 2026) for F = fine-tune, SalUn and Sharp MinMax (F = NegGrad+ is the library's
# neggrad_plus policy, gentler and longer as memorization grows)
for _method in ("finetune", "salun", "sharp_minmax"):
    register_policy(f"{_method}_each", dict.fromkeys(("low", "medium", "high"), _method), force=True)

DATASETS = {  # training subset, test subset, subset models (as bench_proxies.py), epochs, N per group
    "digits": {"train_size": None, "test_size": None, "k": 256, "epochs": None, "group": 30},
    "fashion-mnist": {"train_size": 4000, "test_size": 2000, "k": 128, "epochs": 8, "group": 100},
}


def select(memorization: pd.Series, kind: str, n: int, seed: int = 0) -> np.ndarray:
    """Training indices of a forget set: the n lowest / highest / nearest-the-median, or all three (mixed).

    Ties are broken at random (seeded): many examples share a memorization score of exactly 0.
    """
    shuffled = memorization.sample(frac=1.0, random_state=seed)
    order = shuffled.sort_values(kind="stable").index.to_numpy()
    median_rank = np.argsort(np.abs(shuffled.loc[order].to_numpy() - shuffled.median()), kind="stable")
    groups = {"low": order[:n], "high": order[-n:], "medium": order[median_rank[:n]]}
    if kind == "mixed":
        return np.unique(np.concatenate(list(groups.values())))
    return np.sort(groups[kind])


def _mia(model, retain, test, forget, seed) -> float:
    """The SVC attack's efficacy on the forget set (fraction called non-members), confidence feature."""
    signals = [extract_signals(model, data) for data in (retain, test, forget)]
    return svc(*signals, features=("confidence",), seed=seed)["confidence"]


CEILING = "retrain (another seed)"
"""The row of exact unlearning: a retraining that differs from the reference only by its seed."""


def rum_label(policy: str, scheduled_by: str, grouping: str = "request", targets: str | None = None) -> str:
    """The method column of a RUM run: ``rum <policy> (FZ scores)`` or ``rum <policy> (<proxy> proxy)``, e.g.
    ``(confidence proxy)``, with ``, training-set groups`` inside the brackets for a run grouped by the training
    set's quantiles and ``, <targets> targets`` for one whose stopping targets come from the other source."""
    groups = "" if grouping == "request" else ", training-set groups"
    stops = "" if targets is None else f", {targets} targets"
    return f"rum {policy} ({'FZ scores' if scheduled_by == 'fz' else f'{scheduled_by} proxy'}{groups}{stops})"


def fingerprint(what: dict, kwargs: dict) -> str:
    """A short hash of what a saved row depends on: the setting ``what`` (forget set, recipe, dataset spec) and the
    run itself (a method's default settings, or a policy as resolved and what schedules it)."""
    if kwargs["method"] == "rum":
        policy = resolve_policy(kwargs["policy"], group_names(3))
        # step_seed: how a step's seed follows from the run's (it changed in session 5), so rows made before are redone
        run = {"policy": policy, "scheduled_by": "fz" if "scores" in kwargs else kwargs["proxy"],
               "step_seed": step_seed_of(12345, 1),
               # the defaults of its steps' methods, which the policy does not name (sharp_minmax's mask changed)
               "defaults": {method: dataclasses.asdict(make_config(get_method(method)))
                            for steps in policy.values() for method, _ in steps}}
        if uses_expected(policy):
            run["expected_from"] = "c_score" if "expected_accuracy" in kwargs else "early_accuracy"
        if kwargs.get("grouping", "request") != "request":  # absent for the request's split: saved rows stay valid
            run["grouping"] = kwargs["grouping"]
    else:
        config = make_config(get_method(kwargs["method"]), kwargs.get("config"))
        run = {"method": kwargs["method"], "config": dataclasses.asdict(config)}
    text = json.dumps({**what, **run}, sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def retrain_reference(setting: dict, forget, retain, test, seed: int) -> dict:
    """The seed's model retrained without ``forget``: its accuracies, SVC efficacy and seconds."""
    torch.manual_seed(1000 + seed)
    start = time.perf_counter()
    retrained, _ = train(setting["model_fn"](), retain, seed=1000 + seed, progress=False, **setting["recipe"])
    seconds = time.perf_counter() - start
    acc = {part: top1_accuracy(retrained, data)
           for part, data in (("forget", forget), ("retain", retain), ("test", test))}
    return {"acc": acc, "mia": _mia(retrained, retain, test, forget, seed), "seconds": seconds}


def run_methods(setting: dict, forget, retain, test, seed: int, reference: dict, runs: dict) -> pd.DataFrame:
    """Unlearn from the original model with each of ``runs`` (label -> ``unlearn`` keyword arguments), scored
    against ``reference``; one row per label."""
    rows = []
    for label, kwargs in runs.items():
        result = unlearn(setting["original"], forget=forget, retain=retain, seed=seed, **kwargs)
        acc = {part: top1_accuracy(result.model, data) for part, data in (("forget", forget), ("retain", retain),
                                                                     ("test", test))}
        mia = _mia(result.model, retain, test, forget, seed)
        rows.append({"dataset": setting["dataset"], "selected_by": setting["selected_by"], "forget": setting["forget"],
                     "n": len(forget), "method": label, "seed": seed, **{f"acc_{k}": v for k, v in acc.items()},
                     **{f"retrained_acc_{k}": v for k, v in reference["acc"].items()},
                     "retain_used": max(step.retain_size for step in result.plan),
                     "tow": tow(acc, reference["acc"]),
                     "tow_mia": tow_mia(acc, reference["acc"], mia_unlearned=mia, mia_retrained=reference["mia"]),
                     "seconds": result.seconds, "retrain_seconds": reference["seconds"],
                     "fingerprint": setting["fingerprints"][label]})
    return pd.DataFrame(rows)


def model_factory(splits, model: str | None):
    """The factory of the benchmark's models: the dataset's default model (built as before models took the image
    size, so that cached subset models keep their manifest), or ``model`` built for the data."""
    if model is None:
        return functools.partial(create_model, splits.default_model, num_classes=splits.num_classes,
                                 in_channels=splits.in_channels)
    return functools.partial(create_model, model, **splits.model_options)


def fz_folder(name: str, spec: dict) -> str:
    """Where the subset models of a dataset spec are cached, as ``bench_proxies.py`` names them: ``fz-<tag>-k<K>``,
    the tag the dataset's name, then the recipe's (if another) and the model's (if not the default)."""
    recipe = spec.get("recipe", name)
    tag = name if recipe == name else recipe if recipe.startswith(name) else f"{name}-{recipe}"
    return f"fz-{tag}{'-' + spec['model'] if spec.get('model') else ''}-k{spec['k']}"


def run_dataset(name: str, spec: dict, kinds, seeds, cache: Path, policies, singles, saved: Path,
                groupings=("request",), schedulers=("confidence",), selections=("fz", "confidence"),
                decompose: bool = False) -> pd.DataFrame:
    """Every (forget-set selection of ``selections``, kind, seed): retrain, then each single method of ``singles``
    and RUM with each policy of ``policies`` scheduled by FZ scores and by each proxy of ``schedulers`` (read from
    the original model's recording). With ``decompose``, a policy that stops at expected accuracies also runs with
    FZ's groups and the recording's targets (early_accuracy), and with each proxy's groups and FZ's targets
    (c_score): what each half of a proxy's shortfall costs.

    Each (selection, kind, seed) is written to ``saved/<dataset>-<selection>-<kind>-seed<seed>.csv`` as soon as it is
    done, every row with a :func:`fingerprint` of what made it. A rerun reads those back and runs only the methods
    and policies they lack or that changed, after retraining that seed's reference again; if the reference comes
    out different (it is deterministic on the CPU for a fixed thread count), every method runs again."""
    options = {"train_size": spec["train_size"]} if spec["train_size"] else {}
    splits = load_dataset(name, **options)
    test = splits.test if spec["test_size"] is None else Subset(splits.test, range(spec["test_size"]))
    recipe = RECIPES[spec.get("recipe", name)].as_kwargs() | ({"epochs": spec["epochs"]} if spec["epochs"] else {})
    model_fn = model_factory(splits, spec.get("model"))
    torch.manual_seed(0)
    recorder = proxies.TrainingRecorder(len(splits.train))
    original, _ = train(model_fn(), splits.train, seed=0, recorder=recorder, progress=False, **recipe)
    fz_table = memorization_scores(splits.train, model_fn, k=spec["k"], folder=cache / fz_folder(name, spec),
                                   **recipe)
    fz = fz_table["memorization"].fillna(0.0)
    confidence = proxies.compute("confidence", recording=recorder)
    by = {"fz": fz, "confidence": -confidence}  # oriented: higher = more memorized
    by = {selection: by[selection] for selection in selections}

    runs = {m: {"method": m} for m in singles}
    runs[CEILING] = {"method": "retrain", "config": {k: v for k, v in recipe.items() if k != "drop_last"}}
    if spec.get("model"):  # built afresh by name: a ViT's class token and position embedding have no reset
        runs[CEILING]["config"]["model_fn"] = spec["model"]
    for policy in policies:
        # a policy that stops at expected accuracies takes them from the same source as its scores: FZ's c_score,
        # or the recording (the early_accuracy proxy) for the proxy-scheduled run. c_score is NaN only for an
        # example in every subset model (chance 2^-K), which unlearn() would refuse by name.
        stops = uses_expected(resolve_policy(policy, group_names(3)))
        expected = {"expected_accuracy": fz_table["c_score"]} if stops else {}
        for grouping in groupings:  # "request": the request's own quantiles, as the published tables were made
            runs[rum_label(policy, "fz", grouping)] = {"method": "rum", "policy": policy, "scores": fz,
                                                       "grouping": grouping, **expected}
            for proxy in schedulers:
                runs[rum_label(policy, proxy, grouping)] = {"method": "rum", "policy": policy, "proxy": proxy,
                                                            "recording": recorder, "grouping": grouping}
            if stops and decompose:  # the groups of one source with the stopping targets of the other
                runs[rum_label(policy, "fz", grouping, "early_accuracy")] = {
                    "method": "rum", "policy": policy, "scores": fz, "recording": recorder, "grouping": grouping}
                for proxy in schedulers:
                    runs[rum_label(policy, proxy, grouping, "c_score")] = {
                        "method": "rum", "policy": policy, "proxy": proxy, "recording": recorder,
                        "grouping": grouping, **expected}
    saved.mkdir(parents=True, exist_ok=True)
    tables = []
    bar = tqdm(total=len(by) * len(kinds) * len(seeds), desc=f"{name}: forget sets x seeds", unit="set")
    for selection, scores in by.items():
        for kind in kinds:
            forget_ids = select(scores, kind, spec["group"])
            forget = Subset(splits.train, forget_ids.tolist())
            retain = Subset(splits.train, np.setdiff1d(np.arange(len(splits.train)), forget_ids).tolist())
            what = {"spec": spec, "recipe": recipe, "forget_ids": forget_ids.tolist()}
            setting = {"dataset": name, "selected_by": selection, "forget": kind, "model_fn": model_fn,
                       "recipe": recipe, "original": original,
                       "fingerprints": {label: fingerprint(what, kwargs) for label, kwargs in runs.items()}}
            for seed in seeds:
                path = saved / f"{name}-{selection}-{kind}-seed{seed}.csv"
                done = pd.read_csv(path) if path.exists() else pd.DataFrame({"method": [], "fingerprint": []})
                if "fingerprint" not in done:
                    done["fingerprint"] = ""  # written before rows had fingerprints: nothing to trust
                # a saved row counts only if made by the same method or policy on the same setting; the rows of
                # methods this run does not name are kept as they are (a run of one more policy must not drop them)
                others = done[~done["method"].isin(list(runs))]
                done = done[done["fingerprint"] == done["method"].map(setting["fingerprints"])]
                todo = {label: kwargs for label, kwargs in runs.items() if label not in set(done["method"])}
                if todo:
                    reference = retrain_reference(setting, forget, retain, test, seed)
                    saved_acc = done.filter(like="retrained_acc_").drop_duplicates()
                    if len(done) and not np.allclose(saved_acc.to_numpy(), list(reference["acc"].values())):
                        print(f"{path.name}: the retrained reference differs from the saved rows' (another thread "
                              "count or machine?); running every method again", file=sys.stderr)
                        done, todo = done.iloc[:0], runs
                    new = run_methods(setting, forget, retain, test, seed, reference, todo)
                    done = pd.concat([done, new], ignore_index=True) if len(done) else new
                    pd.concat([others, done], ignore_index=True).to_csv(path, index=False)
                tables.append(done[done["method"].isin(list(runs))])
                bar.update()
    bar.close()
    return pd.concat(tables, ignore_index=True)


def summarise(runs: pd.DataFrame) -> pd.DataFrame:
    keys = ["dataset", "selected_by", "forget", "method"]
    out = []
    for key, group in runs.groupby(keys, sort=False):
        row = dict(zip(keys, key, strict=True))
        for metric in ("acc_forget", "acc_retain", "acc_test", "tow", "tow_mia"):
            mean, half = mean_interval(group[metric])
            row[metric] = mean
            row[f"{metric}_ci"] = half
        row["seconds"] = group["seconds"].mean()
        row["retrain_seconds"] = group["retrain_seconds"].mean()
        row["retain_used"] = group["retain_used"].max()
        row["time_vs_retrain"] = (group["seconds"] / group["retrain_seconds"]).mean()
        out.append(row)
    return pd.DataFrame(out)


def paired(runs: pd.DataFrame, a: str, b: str) -> tuple[float, float]:
    """Mean and 95% t-interval of ToW(a) - ToW(b) over seeds. Both runs of a seed are scored against the same
    retrained reference, so the paired difference is far less noisy than either ToW."""
    tows = runs.pivot_table(index="seed", columns="method", values="tow")
    return mean_interval((tows[a] - tows[b]).dropna())


def check_targets(summary: pd.DataFrame, runs: pd.DataFrame, policies, schedulers=("confidence",)) -> list[str]:
    """The issue's targets, per dataset, forget-set selection and policy: RUM with a proxy reaches the ToW of RUM with
    FZ scores within 0.02 (no more than 0.02 below it: a proxy that does better has lost nothing by standing in for
    FZ), beats every single method on the mixed forget set, at <= 20% of retraining time. Each comparison also
    gives the paired per-seed difference with its 95% interval."""
    notes = []
    for (dataset, selection), group in summary.groupby(["dataset", "selected_by"], sort=False):
        mixed = group[group.forget == "mixed"].set_index("method")
        if mixed.empty:
            continue
        mixed_runs = runs[(runs.dataset == dataset) & (runs.selected_by == selection) & (runs.forget == "mixed")]
        singles = mixed[~mixed.index.str.startswith("rum ") & (mixed.index != CEILING)]
        ceiling = f"; retraining with another seed {mixed.loc[CEILING].tow:.3f}" if CEILING in mixed.index else ""
        best = singles["tow"].idxmax() if len(singles) else None
        for policy, scheduler in ((p, s) for p in policies for s in schedulers):
            by_proxy, by_fz = rum_label(policy, scheduler), rum_label(policy, "fz")
            if by_proxy not in mixed.index or by_fz not in mixed.index:  # run without the request's grouping
                continue
            proxy, fz = mixed.loc[by_proxy], mixed.loc[by_fz]
            shortfall = fz.tow - proxy.tow
            met = [shortfall <= 0.02, best is not None and proxy.tow > singles.tow.max(),
                   proxy.time_vs_retrain <= 0.2]
            diff = "rum(proxy) - rum(FZ) {:+.3f} ± {:.3f}".format(*paired(mixed_runs, by_proxy, by_fz))
            if best:
                versus = (f"best of {len(singles)} single methods {best} {singles.tow.max():.3f} "
                          f"({'beaten' if met[1] else 'not beaten'}; paired difference "
                          "{:+.3f} ± {:.3f})".format(*paired(mixed_runs, by_proxy, best)))
            else:
                versus = "no single method run"
            notes.append(f"{dataset}, forget set by {selection}, mixed, policy {policy}, scheduled by "
                         f"{scheduler}: rum(proxy) ToW "
                         f"{proxy.tow:.3f} vs rum(FZ) {fz.tow:.3f} (short of it by {max(shortfall, 0.0):.3f}, "
                         f"target <= 0.02: "
                         f"{'met' if met[0] else 'not met'}; paired {diff}); {versus}; rum(proxy) time "
                         f"{100 * proxy.time_vs_retrain:.0f}% of retraining (target <= 20%: "
                         f"{'met' if met[2] else 'not met'}){ceiling} -> {'ALL MET' if all(met) else 'not all met'}")
    return notes


def spec_of(name: str, args: argparse.Namespace) -> dict:
    """The dataset's spec (:data:`DATASETS`) with the command line's overrides; the model and recipe join it only
    when given, so that the default runs' fingerprints stay as they were."""
    spec = dict(DATASETS[name])
    for key in ("train_size", "test_size", "k", "epochs", "group"):
        if getattr(args, key) is not None:
            spec[key] = getattr(args, key)
    for key in ("model", "recipe"):
        if getattr(args, key) is not None:
            spec[key] = getattr(args, key)
    return spec


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS), help="datasets")
    parser.add_argument("--kinds", nargs="+", default=["low", "medium", "high", "mixed"],
                        choices=["low", "medium", "high", "mixed"], help="forget-set kinds")
    parser.add_argument("--seeds", type=int, default=3, help="seeds per setting (default: 3)")
    parser.add_argument("--first-seed", type=int, default=0,
                        help="first seed (default: 0); e.g. 3 evaluates on seeds no policy was tuned on")
    parser.add_argument("--policies", nargs="+", default=["finetune_salun", "random_label_fast"],
                        choices=sorted(POLICIES), help="RUM policies (default: finetune_salun random_label_fast)")
    singles = [m for m in methods() if m not in ("rum", "retrain")]
    parser.add_argument("--methods", nargs="*", default=singles, choices=singles,
                        help="single methods to compare with (default: all)")
    parser.add_argument("--groupings", nargs="+", default=["request"], choices=["request", "training_set"],
                        help="how RUM forms its groups (default: request, the RUM paper's split by the forget set's "
                             "own quantiles, as the published tables were made; training_set: bins of the training "
                             "set's score quantiles, the library's default)")
    recorded = list(proxies.RECORDING_PROXIES)
    parser.add_argument("--schedulers", nargs="+", default=["confidence"], choices=recorded, metavar="PROXY",
                        help="recording proxies that schedule RUM besides FZ scores, one run each (default: "
                             f"confidence); any of {recorded}")
    parser.add_argument("--selections", nargs="+", default=["fz", "confidence"], choices=["fz", "confidence"],
                        help="what chooses the forget sets: FZ scores, the confidence proxy (default: both)")
    parser.add_argument("--decompose", action="store_true",
                        help="for policies that stop at expected accuracies, also run FZ's groups with the "
                             "recording's targets and each proxy's groups with FZ's (c_score) targets")
    parser.add_argument("--model", default=None,
                        help="architecture of every model (unlearn.create_model's name, e.g. vit_mini or "
                             "timm:NAME; default: each dataset's)")
    parser.add_argument("--recipe", default=None, choices=RECIPES.names(),
                        help="training recipe (default: each dataset's; e.g. fashion-mnist-vit with vit_mini)")
    for option, what in (("train-size", "training examples"), ("test-size", "test examples scored"),
                         ("k", "subset models for FZ"), ("epochs", "training epochs"), ("group", "N per group")):
        parser.add_argument(f"--{option}", type=int, default=None,
                            help=f"{what} (default: the dataset's, in DATASETS)")
    parser.add_argument("--cache", type=Path, default=Path("benchmarks/results"), help="subset-model cache")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"),
                        help="output folder: bench_unlearn.json, and runs/ with one CSV per forget set and seed, "
                             "which a rerun reads back, running only what is missing or changed")
    parser.add_argument("--fresh", action="store_true",
                        help="forget the saved runs/ of the datasets run (changed settings and policies are found "
                             "by their fingerprint; this is for a change of code, which the fingerprint cannot see)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    pd.set_option("display.width", 250)
    pd.set_option("display.max_columns", 30)
    tables, start = [], time.perf_counter()
    for name in args.datasets:
        try:
            if args.fresh:
                for path in (args.out / "runs").glob(f"{name}-*.csv"):
                    path.unlink()
            tables.append(run_dataset(name, spec_of(name, args), args.kinds,
                                      range(args.first_seed, args.first_seed + args.seeds), args.cache, args.policies,
                                      args.methods, saved=args.out / "runs", groupings=args.groupings,
                                      schedulers=args.schedulers, selections=args.selections,
                                      decompose=args.decompose))
        except DatasetNotFoundError as err:
            print(f"skipping {name}: {err}", file=sys.stderr)
    runs = pd.concat(tables)
    summary = summarise(runs)
    columns = ["dataset", "selected_by", "forget", "method", "acc_forget", "acc_retain", "acc_test", "tow", "tow_ci",
               "tow_mia", "tow_mia_ci", "seconds", "retrain_seconds", "time_vs_retrain"]
    print(summary[columns].to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    notes = check_targets(summary, runs, args.policies, args.schedulers)
    print("\n" + "\n".join(notes))
    path = args.out / "bench_unlearn.json"
    path.write_text(json.dumps({"summary": summary.to_dict("records"), "runs": runs.to_dict("records"),
                                "targets": notes}, indent=2, default=float) + "\n")
    print(f"\nwrote {path} ({(time.perf_counter() - start) / 60:.1f} min, torch threads {torch.get_num_threads()})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
