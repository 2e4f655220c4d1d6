"""Memorization proxies: kernel speed per backend, a leaderboard of every proxy, and per-sample gradient engines.

1. Kernel throughput of every backend (rows/s, GB/s) for ``signals`` (C = 10 and 100) and ``learning_events``
   (E = 200), its ratio to the torch reference, and memory-copy bandwidth as the physical limit.
2. The leaderboard (``--part quality``), on digits and a Fashion-MNIST subset, of every registered proxy:
   - Spearman and Pearson correlation with FZ memorization (K subset models), beside the anchor figures of
     REFERENCE.md, and the FZ estimate's own noise: the mean per-example standard error and the split-half
     reliability of the K models (two halves of K/2 models, Spearman-Brown corrected), whose square root caps the
     correlation any proxy can show with a K-model estimate;
   - precision at the top 1% and 5% against LiRA vulnerability (the LT-IQR paper's measure): examples ranked by
     their per-example online-LiRA score, each subset model in turn the target and the others its shadows, and
     that attack's ROC AUC (the target's members against its non-members, the mean over the K targets);
   - the cost in forward passes over the training set, against the cost of the FZ estimate;
   - a PNG scatter per dataset.
3. Per-sample gradients (``--part gradients``): ``gradient_norm`` through torch.func against opacus on the CNNs, in
   the same run (``benchmarks/per_sample_gradients.py``).

    python benchmarks/bench_proxies.py [--part kernels|quality|gradients|all] [--max-n 1000000] [--k 256] [--check]

Subset models are cached under ``--cache`` (a rerun reuses them). ``--check`` exits 1 when a compiled CPU
backend misses its targets: 2x the torch reference and 50% of copy bandwidth at the largest N.
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import roc_auc_score

import proxies
from proxies import TrainingRecorder
from unlearn.data import DatasetNotFoundError, load_dataset
from unlearn.evaluation.attacks import lira
from unlearn.evaluation.attacks.signals import logit_scaled_confidence
from unlearn.farm.subset_models import train_subset_models
from unlearn.models import create_model
from unlearn.training import RECIPES, predict, train

# Anchor figures (REFERENCE.md): Spearman with FZ on CIFAR-10 / ResNet-18, and the CSL paper's cosine/Pearson.
ANCHORS = {"confidence": "-0.89", "max_confidence": "-0.85", "negative_entropy": "-0.84", "accuracy": "-0.82",
           "loss_curvature": "0.82", "holdout_retraining": "0.55", "csl": "Pearson 0.79 (CIFAR-100)",
           "forgetting_events": "Pearson 0.59 (CIFAR-100, frequency)", "csg": "Pearson 0.72 (CIFAR-100)",
           "sgal": "Pearson 0.77 (CIFAR-100)", "loss_iqr": "LiRA top-1% precision 0.92 (CIFAR-10)"}
MODEL_PROXIES = ("loss_curvature", "loss_curvature_cure", "loss_curvature_last", "gradient_norm",
                 "holdout_retraining")


# ------------------------------------------------------------------------------------------------ 1. kernels

def _best_seconds(fn, repeats: int) -> float:
    fn()  # warm-up: numba compilation / cache load, allocator
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def copy_bandwidth(nbytes: int, repeats: int) -> float:
    """GB/s of a plain tensor copy (bytes read + written), the ceiling for a kernel that streams memory."""
    src = torch.ones(nbytes // 4)
    dst = torch.empty_like(src)
    return 2 * nbytes / _best_seconds(lambda: dst.copy_(src), repeats) / 1e9


def bench_kernels(max_n: int, repeats: int) -> pd.DataFrame:
    sizes = [n for n in (10_000, 100_000, 1_000_000, 10_000_000) if n <= max_n]
    backends = [b for b in proxies.backends() if b != "cuda"]
    rows = []
    g = torch.Generator().manual_seed(0)
    for c in (10, 100):
        for n in sizes:
            logits = torch.randn(n, c, generator=g) * 3
            labels = torch.randint(0, c, (n,), generator=g)
            nbytes = logits.numel() * 4 + n * 8 + n * 5 * 4
            for backend in backends:
                seconds = _best_seconds(lambda b=backend, z=logits, y=labels: proxies.signals(z, y, backend=b),
                                        repeats)
                rows.append({"kernel": f"signals C={c}", "n": n, "backend": backend, "seconds": seconds,
                             "rows_per_s": n / seconds, "gb_per_s": nbytes / seconds / 1e9})
            # the compute floor: signals needs one exp per logit, and torch.exp alone is that much work
            seconds = _best_seconds(lambda z=logits: torch.exp(z), repeats)
            rows.append({"kernel": f"signals C={c}", "n": n, "backend": "(torch.exp alone)", "seconds": seconds,
                         "rows_per_s": n / seconds, "gb_per_s": 2 * logits.numel() * 4 / seconds / 1e9})
    for n in sizes:
        correct = torch.rand(200, n, generator=g) < 0.8
        nbytes = correct.numel() + 3 * n * 8
        for backend in backends:
            seconds = _best_seconds(lambda b=backend, c=correct: proxies.learning_events(c, backend=b), repeats)
            rows.append({"kernel": "learning_events E=200", "n": n, "backend": backend, "seconds": seconds,
                         "rows_per_s": n / seconds, "gb_per_s": nbytes / seconds / 1e9})
    table = pd.DataFrame(rows)
    reference = table[table.backend == "torch"].set_index(["kernel", "n"])["seconds"]
    table["speedup_vs_torch"] = [reference[(k, n)] / s for k, n, s in zip(table.kernel, table.n, table.seconds,
                                                                          strict=True)]
    return table


# ------------------------------------------------------------------------------------------------ 2. quality

def _forward_seconds(model, data) -> float:
    """One eval-mode forward pass over ``data`` (batches of 256: on 2 cores, 1024 runs slower per example)."""
    return _best_seconds(lambda: predict(model, data, batch_size=256), 3)


def fz_noise(correct: np.ndarray, in_mask: np.ndarray, *, seed: int = 0) -> dict:
    """How noisy a K-model FZ estimate is: the mean per-example standard error of ``mean(correct | in) -
    mean(correct | out)`` (binomial, per side), and the split-half reliability: FZ from two random halves of the
    models, correlated and corrected to K models by Spearman-Brown (``2r / (1 + r)``). A proxy that were the true
    memorization would correlate with the estimate at about ``sqrt(reliability)``: the noise ceiling."""
    memorization, p_out = proxies.feldman_zhang(correct, in_mask)
    p_in, n_in, n_out = memorization + p_out, in_mask.sum(0), (~in_mask).sum(0)
    se = np.sqrt(p_in * (1 - p_in) / n_in + p_out * (1 - p_out) / n_out)  # NaN where a side has no model
    order = np.random.default_rng(seed).permutation(len(correct))
    halves = [proxies.feldman_zhang(correct[part], in_mask[part])[0] for part in np.array_split(order, 2)]
    a, b = pd.Series(halves[0]), pd.Series(halves[1])
    noise = {"fz_mean_se": float(np.nanmean(se))}
    for method in ("spearman", "pearson"):
        r = a.corr(b, method=method)
        reliability = 2 * r / (1 + r)
        noise |= {f"fz_split_half_{method}": float(r), f"fz_reliability_{method}": float(reliability),
                  f"noise_ceiling_{method}": float(np.sqrt(max(reliability, 0.0)))}
    return noise


def lira_scores(logits: np.ndarray, in_mask: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Online-LiRA scores ``[K, N]``: each subset model in turn the target, the other K - 1 its shadows (leave one
    out)."""
    phi = logit_scaled_confidence(logits, labels[None, :])  # [K, N]
    others = [np.arange(len(phi)) != m for m in range(len(phi))]
    return np.stack([lira(phi[m], phi[rest], in_mask[rest]) for m, rest in enumerate(others)])


def lira_vulnerability(scores: np.ndarray, in_mask: np.ndarray) -> np.ndarray:
    """Each example's online-LiRA score (:func:`lira_scores`), averaged over the models that trained on it. High: a
    member LiRA singles out."""
    member = in_mask & np.isfinite(scores)
    count = member.sum(0)
    total = np.where(member, scores, 0.0).sum(0)
    return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def lira_auc(scores: np.ndarray, in_mask: np.ndarray) -> float:
    """Online LiRA's ROC AUC (:func:`lira_scores`), the target's members against its non-members, averaged over
    all K targets."""
    aucs = []
    for score, members in zip(scores, in_mask, strict=True):
        finite = np.isfinite(score)
        aucs.append(roc_auc_score(members[finite], score[finite]))
    return float(np.mean(aucs))


def precision_at(scores: pd.Series, higher_is_memorized: bool, truth: pd.Series, fraction: float) -> float:
    """Of the top ``fraction`` of examples by ``scores`` (oriented), the share that is in the top ``fraction`` by
    ``truth``."""
    valid = scores.notna() & truth.notna()
    oriented = scores[valid] if higher_is_memorized else -scores[valid]
    k = max(1, round(fraction * int(valid.sum())))
    top = set(oriented.sort_values(ascending=False, kind="stable").index[:k])
    true_top = set(truth[valid].sort_values(ascending=False, kind="stable").index[:k])
    return len(top & true_top) / k


def bench_quality(name: str, options: dict, k: int, epochs: int | None, cache: Path, out: Path,
                  recipe: str | None = None, architecture: str | None = None) -> tuple:
    """The leaderboard of one dataset, its models trained with ``recipe`` (:data:`RECIPES`; default the dataset's
    own) and of ``architecture`` (a model's name; default the dataset's). Another recipe's subset models are
    cached apart (``fz-<recipe>-k<K>``, the dataset's name before it unless the recipe's name starts with it;
    another model's name after it), and so is its scatter plot."""
    recipe = recipe or name
    tag = name if recipe == name else recipe if recipe.startswith(name) else f"{name}-{recipe}"
    tag += f"-{architecture}" if architecture else ""
    splits = load_dataset(name, **options)
    train_kwargs = RECIPES[recipe].as_kwargs() | ({"epochs": epochs} if epochs else {})
    if architecture is None:  # (as before models took the image size: cached subset models keep their manifest)
        model_fn = functools.partial(create_model, splits.default_model, num_classes=splits.num_classes,
                                     in_channels=splits.in_channels)
    else:
        model_fn = functools.partial(create_model, architecture, **splits.model_options)
    torch.manual_seed(0)
    recorder = TrainingRecorder(len(splits.train))
    checkpoints = []
    start = time.perf_counter()
    model, _ = train(model_fn(), splits.train, seed=0, recorder=recorder, progress=False,
                     on_epoch_end=lambda epoch, m: checkpoints.append(copy.deepcopy(m).eval()), **train_kwargs)
    train_seconds = time.perf_counter() - start
    forward = _forward_seconds(model, splits.train)

    timed = {}

    def timed_proxy(label, fn):
        start = time.perf_counter()
        values = fn()
        timed[label] = time.perf_counter() - start
        return values

    scores = timed_proxy("recording proxies", lambda: proxies.compute(proxies.RECORDING_PROXIES, recording=recorder))
    directions = dict(scores.attrs["higher_is_memorized"])
    scores["loss_curvature"] = timed_proxy(
        "loss_curvature", lambda: proxies.loss_curvature(checkpoints, splits.train, progress=False))
    scores["loss_curvature_cure"] = timed_proxy(
        "loss_curvature_cure", lambda: proxies.loss_curvature(checkpoints, splits.train, variant="cure",
                                                              progress=False))
    scores["loss_curvature_last"] = timed_proxy(
        "loss_curvature_last", lambda: proxies.loss_curvature(model, splits.train, progress=False))
    scores["gradient_norm"] = timed_proxy("gradient_norm", lambda: proxies.gradient_norm(checkpoints, splits.train))
    scores["holdout_retraining"] = timed_proxy(
        "holdout_retraining", lambda: proxies.holdout_retraining(model, splits.train, splits.val, fine_tune=train,
                                                                progress=False))
    directions |= dict.fromkeys(MODEL_PROXIES, True)

    start = time.perf_counter()
    subset = train_subset_models(splits.train, model_fn, k=k, folder=cache / f"fz-{tag}-k{k}", **train_kwargs)
    fz = subset.scores()
    fz_seconds = time.perf_counter() - start
    per_model = train_seconds * 0.7  # a subset model trains on 70% of the data; also right when loaded from cache
    scores["c_score"] = fz["c_score"]
    directions["c_score"] = False
    noise = fz_noise(subset.correct, subset.in_mask)
    attack = lira_scores(subset.logits, subset.in_mask, subset.labels)
    vulnerability = pd.Series(lira_vulnerability(attack, subset.in_mask), index=fz.index)

    quality = []
    valid = fz["memorization"].notna()
    m = fz.loc[valid, "memorization"]
    for column in scores.columns:
        s = scores.loc[valid, column].astype(float)
        quality.append({"dataset": name, "proxy": column, "spearman": s.corr(m, method="spearman"),
                        "pearson": s.corr(m),
                        "lira_top1": precision_at(scores[column], directions[column], vulnerability, 0.01),
                        "lira_top5": precision_at(scores[column], directions[column], vulnerability, 0.05),
                        "anchor": ANCHORS.get(column, "")})
    quality.append({"dataset": name, "proxy": "memorization (FZ itself)", "spearman": float("nan"),
                    "pearson": float("nan"),
                    "lira_top1": precision_at(fz["memorization"], True, vulnerability, 0.01),
                    "lira_top5": precision_at(fz["memorization"], True, vulnerability, 0.05), "anchor": ""})
    quality.append({"dataset": name, "proxy": "(noise ceiling of the FZ estimate)",
                    "spearman": noise["noise_ceiling_spearman"], "pearson": noise["noise_ceiling_pearson"],
                    "lira_top1": float("nan"), "lira_top5": float("nan"), "anchor": ""})

    # cost in forward passes over the training set (F); recording proxies cost their share of training time
    recorder_cost = timed["recording proxies"] / forward
    cost = [{"dataset": name, "proxy": f"recording-based (all {len(proxies.RECORDING_PROXIES)})",
             "forward_passes": recorder_cost,
             "note": "computed from the recording; the recorder adds to training what bench_recorder.py measures"}]
    for label in MODEL_PROXIES:
        cost.append({"dataset": name, "proxy": label, "forward_passes": timed[label] / forward, "note": ""})
    cost.append({"dataset": name, "proxy": f"FZ memorization (K={k})", "forward_passes": k * per_model / forward,
                 "note": f"K x one 70% training; this run took {fz_seconds:.0f} s (cached models are free)"})

    _scatter(scores[valid], fz.loc[valid, "memorization"], out / f"bench_proxies_{tag}.png", tag, k)
    peak = int(np.nanargmax(recorder.weight_norms)) + 1
    info = {"dataset": name, "recipe": recipe, "model": architecture or splits.default_model,
            "train_examples": len(splits.train), "k": k, "train": train_kwargs,
            "forward_s": forward, "train_s": train_seconds, "fz_mean": float(fz["memorization"].mean()),
            "fz_defined": int(valid.sum()), "weight_norm_peak_epoch": peak,
            "lira_vulnerability_defined": int(vulnerability.notna().sum()),
            "lira_auc": lira_auc(attack, subset.in_mask)} | noise
    return pd.DataFrame(quality), pd.DataFrame(cost), info


def _scatter(scores: pd.DataFrame, memorization: pd.Series, path: Path, name: str, k: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = list(scores.columns)
    cols = 4
    rows = (len(columns) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3.2 * rows), squeeze=False)
    for ax, column in zip(axes.flat, columns, strict=False):
        ax.scatter(scores[column], memorization, s=4, alpha=0.4)
        rho = scores[column].corr(memorization, method="spearman")
        ax.set_title(f"{column} (Spearman {rho:+.2f})", fontsize=9)
        ax.set_ylabel("FZ memorization", fontsize=8)
        if column in (*MODEL_PROXIES, "csg") and (scores[column] > 0).all():
            ax.set_xscale("log")
    for ax in list(axes.flat)[len(columns):]:
        ax.axis("off")
    fig.suptitle(f"{name}: proxies vs Feldman-Zhang memorization (K={k})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ------------------------------------------------------------------------------------------------ main

def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=["kernels", "quality", "gradients", "all"], default="all",
                        help="what to run: kernel throughput, the proxy leaderboard, per-sample gradient engines")
    parser.add_argument("--max-n", type=int, default=1_000_000, help="largest N for the kernels (default: 1e6)")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats per kernel; the best counts")
    parser.add_argument("--datasets", nargs="+", default=["digits", "fashion-mnist"],
                        choices=["digits", "fashion-mnist"], help="datasets of the leaderboard (default: both)")
    parser.add_argument("--k", type=int, default=256, help="subset models for FZ on digits (default: 256)")
    parser.add_argument("--fmnist-k", type=int, default=128, help="subset models for FZ on Fashion-MNIST")
    parser.add_argument("--fmnist-size", type=int, default=4000, help="Fashion-MNIST training examples")
    parser.add_argument("--fmnist-epochs", type=int, default=8, help="epochs per Fashion-MNIST model")
    parser.add_argument("--fmnist-recipe", choices=RECIPES.names(), default="fashion-mnist",
                        help="training recipe of the Fashion-MNIST models (unlearn.training.RECIPES; default: "
                             "fashion-mnist, no augmentation; fashion-mnist-augmented adds a random crop of the "
                             "image padded by 2 and a horizontal flip). Its epochs give way to --fmnist-epochs; "
                             "another recipe's subset models are cached apart, as fz-<recipe>-k<K>")
    parser.add_argument("--fmnist-model", default=None,
                        help="architecture of the Fashion-MNIST models (unlearn.create_model's name, e.g. vit_mini; "
                             "default: cnn28); another model's subset models are cached apart")
    parser.add_argument("--cache", type=Path, default=Path("benchmarks/results"), help="subset-model cache")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"), help="JSON and PNG output folder")
    parser.add_argument("--check", action="store_true", help="exit 1 if a compiled CPU backend misses its targets")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    report: dict = {"torch": torch.__version__, "threads": torch.get_num_threads(), "backends": proxies.backends()}
    failed = []
    pd.set_option("display.width", 200)

    if args.part in ("kernels", "all"):
        table = bench_kernels(args.max_n, args.repeats)
        bandwidth = copy_bandwidth(400 * 2**20, args.repeats)
        table["pct_of_copy_bw"] = 100 * table["gb_per_s"] / bandwidth
        print(f"\n== kernel throughput ({torch.get_num_threads()} threads; copy bandwidth {bandwidth:.1f} GB/s)")
        print(table.to_string(index=False, float_format=lambda v: f"{v:.3g}"))
        report["copy_gb_per_s"] = bandwidth
        report["kernels"] = table.to_dict("records")
        largest = table[(table.n == table.n.max()) & table.backend.isin(["numba", "cpp"])]
        for row in largest.itertuples():
            if row.speedup_vs_torch < 2 or row.pct_of_copy_bw < 50:
                failed.append(f"{row.backend} {row.kernel}: {row.speedup_vs_torch:.2f}x torch, "
                              f"{row.pct_of_copy_bw:.0f}% of copy bandwidth")

    if args.part in ("quality", "all"):
        cases = [("digits", {}, args.k, None, None, None)] if "digits" in args.datasets else []
        try:
            if "fashion-mnist" in args.datasets:
                load_dataset("fashion-mnist", train_size=10)
                cases.append(("fashion-mnist", {"train_size": args.fmnist_size}, args.fmnist_k, args.fmnist_epochs,
                              args.fmnist_recipe, args.fmnist_model))
        except DatasetNotFoundError as err:
            print(f"skipping Fashion-MNIST: {err}", file=sys.stderr)
        qualities, costs, infos = [], [], []
        for name, options, k, epochs, recipe, model in cases:
            quality, cost, info = bench_quality(name, options, k, epochs, args.cache, args.out, recipe, model)
            qualities.append(quality)
            costs.append(cost)
            infos.append(info)
        quality, cost = pd.concat(qualities), pd.concat(costs)
        print("\n== leaderboard: agreement with Feldman-Zhang memorization, precision against LiRA vulnerability")
        print(quality.to_string(index=False, float_format=lambda v: f"{v:+.3f}"))
        print("\n== cost in forward passes over the training set")
        print(cost.to_string(index=False, float_format=lambda v: f"{v:.3g}"))
        for info in infos:
            print(f"{info['dataset']} ({info['model']}, recipe {info['recipe']}): {info['train_examples']} examples, "
                  f"K={info['k']}, {info['train']}, "
                  f"FZ defined for {info['fz_defined']}, mean memorization {info['fz_mean']:.4f}, mean FZ "
                  f"standard error {info['fz_mean_se']:.4f}, split-half reliability (Spearman-Brown) "
                  f"{info['fz_reliability_spearman']:.3f} Spearman / {info['fz_reliability_pearson']:.3f} Pearson, "
                  f"weight norm peaks after epoch {info['weight_norm_peak_epoch']}, online-LiRA AUC "
                  f"{info['lira_auc']:.3f} (mean over the K targets)")
        report |= {"quality": quality.to_dict("records"), "cost": cost.to_dict("records"), "datasets": infos}

    if args.part in ("gradients", "all"):
        sys.path.insert(0, str(Path(__file__).parent))
        from per_sample_gradients import bench_per_sample_gradients

        table = bench_per_sample_gradients()
        print("\n== per-sample gradients: gradient_norm through torch.func against opacus")
        print(table.to_string(index=False, float_format=lambda v: f"{v:.3g}"))
        report["per_sample_gradients"] = table.to_dict("records")

    path = args.out / "bench_proxies.json"
    path.write_text(json.dumps(report, indent=2, default=float) + "\n")
    print(f"\nwrote {path}")
    if failed:
        print("targets missed: " + "; ".join(failed), file=sys.stderr)
        return 1 if args.check else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
