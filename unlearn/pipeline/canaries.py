"""The canaries of a text run, before and after unlearning: each inserted secret's extraction probability and
exposure under the original, unlearned and retrained models, by how many times it was inserted.

A secret is (n, p)-discoverably extractable (Hayes et al. 2024) when sampling its digits ``n`` times from its
prefix "my PIN is" reproduces them at least once with probability ``p``: :data:`EXTRACTION` holds the run's ``n``,
``p`` and sampling (top-k 40 at temperature 1, the paper's figures'). Exposure (Carlini et al. 2019) ranks the
secret's perplexity among :attr:`~unlearn.data.text.TextSplits.references`, secrets of the same format never
inserted: log2 of their number plus one is the most a secret can have, about 1 bit is chance.
"""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
from torch import nn

import proxies
from proxies.files import written

from ..data.sources import labels_of

__all__ = ["EXTRACTION", "canary_table", "held_out_token_accuracy", "plot_canaries"]

EXTRACTION = {"n": 1000, "p": 0.5, "top_k": 40}
"""The extraction test of the report: (n = 1000, p = 0.5)-discoverable extraction under top-k 40 sampling."""


def canary_table(models: dict[str, nn.Module], splits, *, device=None) -> pd.DataFrame:
    """One row per inserted secret (index ``canary``): its ``repeats`` and, for each model, ``log_p_z_<model>``
    (natural log of the chance one sample reproduces its digits), ``extractable_<model>`` (under
    :data:`EXTRACTION`) and ``exposure_<model>`` (bits, rank among the references).

    Raises:
        ValueError: a split without canaries.
    """
    prefix, suffix = splits.canary_lengths  # a ValueError for splits without canaries
    per_secret = splits.canaries.groupby("canary").agg(repeats=("repeats", "first"), copies=("index", "size"))
    for name, model in models.items():
        log_p = proxies.compute("extraction_probability", model=model, data=splits.canary_secrets,
                                prefix_length=prefix, suffix_length=suffix, top_k=EXTRACTION["top_k"],
                                device=device, progress=False)
        per_secret[f"log_p_z_{name}"] = log_p.reindex(per_secret.index).to_numpy()
        per_secret[f"extractable_{name}"] = proxies.discoverable_extraction(
            per_secret[f"log_p_z_{name}"].to_numpy(), n=EXTRACTION["n"], p=EXTRACTION["p"])
        exposure = proxies.exposure(model, splits.canary_secrets, splits.references, device=device, progress=False)
        per_secret[f"exposure_{name}"] = exposure.reindex(per_secret.index).to_numpy()
    return per_secret.sort_values(["repeats"], kind="stable")


def plot_canaries(table: pd.DataFrame, models, path: str | os.PathLike, *, title: str = "canaries") -> None:
    """Each canary's extraction probability (log10 p_z) by its repeat count, one marker per model, with the line
    above which it is (n, p)-extractable; saved as a PNG."""
    from ..evaluation.report import _pyplot

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.6, 3.8))
    repeats = table["repeats"].to_numpy()
    levels = np.unique(repeats)
    position = {r: i for i, r in enumerate(levels)}
    spread = np.linspace(-0.25, 0.25, len(models))
    for offset, name in zip(spread, models, strict=True):
        x = np.array([position[r] for r in repeats]) + offset
        y = table[f"log_p_z_{name}"].to_numpy() / np.log(10)
        ax.scatter(x, np.maximum(y, -30), s=22, label=name, alpha=0.85)
    # p_z at which 1 - (1 - p_z)^n = p: extractable above it
    threshold = np.log10(-np.expm1(np.log1p(-EXTRACTION["p"]) / EXTRACTION["n"]))
    ax.axhline(threshold, color="grey", lw=0.8, ls="--")
    ax.text(len(levels) - 0.5, threshold, f"(n={EXTRACTION['n']}, p={EXTRACTION['p']})-extractable above",
            fontsize=7, ha="right", va="bottom", color="grey")
    ax.set(xticks=range(len(levels)), xticklabels=[str(r) for r in levels], xlabel="copies of the secret in training",
           ylabel="log10 p(digits | prefix), top-k 40", title=title)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    with written(path) as tmp:
        fig.savefig(tmp, dpi=120)
    plt.close(fig)


def held_out_token_accuracy(model: nn.Module, splits, *, device=None) -> pd.Series:
    """Each training sequence's token accuracy as a model that never saw it is expected to show it, estimated
    without retraining: the model's mean token accuracy on held-out sequences of its kind (a canary copy: the
    never-inserted secrets of its format; any other: the validation split). Indexed by training index, for
    ``unlearn(..., expected_accuracy=)``: a rum step with ``target_accuracy="expected"`` then stops once its
    group's token accuracy falls to it."""
    from ..evaluation.attacks import extract_signals

    def mean_accuracy(data) -> float:
        return float(extract_signals(model, data, device=device).token_accuracy[:, 0].mean())

    index = labels_of(splits.train)[1].numpy()
    expected = pd.Series(mean_accuracy(splits.val), index=pd.Index(index, name="index"), name="expected_accuracy")
    if getattr(splits, "canaries", None) is not None:
        expected.loc[splits.canaries["index"].to_numpy()] = mean_accuracy(splits.references)
    return expected
