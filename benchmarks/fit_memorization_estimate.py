"""Choose the ``memorization_estimate`` proxy's weights on digits only (so that Fashion-MNIST, where it is evaluated,
never lends its FZ scores): every rank average of one to four recorded proxies, and a ridge regression from all
their training-set ranks to Feldman-Zhang memorization (penalty and score by 10-fold cross-validation).

Trains the digits model with the recorder as ``bench_proxies.py`` does, reads the K=256 subset models that
``bench_proxies.py --part quality`` caches (training them where missing), prints the best rank averages, the ridge
fit beside each single feature, the weights ``proxies/estimate.py`` holds, and writes JSON.

    python benchmarks/fit_memorization_estimate.py [--k 256] [--cache benchmarks/results] [--out FILE]
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.linear_model import RidgeCV
from sklearn.model_selection import KFold, cross_val_predict

import proxies
from proxies.estimate import FEATURES, feature_ranks
from unlearn.data import load_dataset
from unlearn.farm.subset_models import memorization_scores
from unlearn.models import create_model
from unlearn.training import RECIPES, train


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--k", type=int, default=256, help="subset models of the FZ scores (default: 256)")
    parser.add_argument("--cache", type=Path, default=Path("benchmarks/results"), help="subset-model cache")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/memorization_estimate.json"),
                        help="JSON output")
    args = parser.parse_args()
    splits = load_dataset("digits")
    recipe = RECIPES["digits"].as_kwargs()
    model_fn = functools.partial(create_model, splits.default_model, num_classes=splits.num_classes,
                                 in_channels=splits.in_channels)
    torch.manual_seed(0)
    recorder = proxies.TrainingRecorder(len(splits.train))
    train(model_fn(), splits.train, seed=0, recorder=recorder, progress=False, **recipe)
    fz = memorization_scores(splits.train, model_fn, k=args.k, folder=args.cache / f"fz-digits-k{args.k}", **recipe)
    features = feature_ranks(recorder)
    valid = features.notna().all(axis=1) & fz["memorization"].notna()
    x, y = features[valid].to_numpy(), fz.loc[valid, "memorization"].to_numpy()
    ridge = RidgeCV(alphas=np.logspace(-3, 3, 13)).fit(x, y)
    folds = KFold(10, shuffle=True, random_state=0)
    predicted = pd.Series(cross_val_predict(RidgeCV(alphas=np.logspace(-3, 3, 13)), x, y, cv=folds))
    truth = pd.Series(y)
    rows = [{"feature": "memorization_estimate (10-fold CV)", "spearman": predicted.corr(truth, method="spearman"),
             "pearson": predicted.corr(truth)}]
    for column in FEATURES:
        rank = features.loc[valid, column].reset_index(drop=True)
        rows.append({"feature": column, "spearman": rank.corr(truth, method="spearman"), "pearson": rank.corr(truth)})
    table = pd.DataFrame(rows)
    ridge_weights = {name: round(float(w), 6) for name, w in zip(FEATURES, ridge.coef_, strict=True)}
    print(table.to_string(index=False, float_format=lambda v: f"{v:+.3f}"))
    print(f"\nridge: alpha {ridge.alpha_:g}, intercept {ridge.intercept_:.6f}, weights {ridge_weights}")

    averages = []
    for size in range(1, 5):
        for combo in itertools.combinations(FEATURES, size):
            mean = features.loc[valid, list(combo)].mean(axis=1).reset_index(drop=True)
            averages.append({"rank_average": ", ".join(combo), "spearman": mean.corr(truth, method="spearman"),
                             "pearson": mean.corr(truth)})
    averages = pd.DataFrame(averages).sort_values("spearman", ascending=False, kind="stable")
    print(f"\nbest of {len(averages)} rank averages by Spearman:")
    print(averages.head(10).to_string(index=False, float_format=lambda v: f"{v:+.3f}"))
    best = averages.iloc[0]["rank_average"].split(", ")
    weights = {name: 1 / len(best) for name in best}
    print(f"\nWEIGHTS = {weights}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"weights": weights, "ridge": {"alpha": float(ridge.alpha_),
                                                                  "intercept": float(ridge.intercept_),
                                                                  "weights": ridge_weights},
                                    "examples": int(valid.sum()), "k": args.k,
                                    "agreement": table.to_dict("records"),
                                    "rank_averages": averages.head(50).to_dict("records")}, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
