"""What ``unlearn run`` leaves for a reader: ``report.md``, ``results.json`` and PNG figures.

The figures: log-log ROC curves of a membership attack on the forget set (members) against test examples, one curve
per model; forget accuracy by memorization group before and after unlearning beside the retrained reference; and,
when ground-truth Feldman-Zhang scores exist, each proxy against memorization.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from proxies.files import write_text, written

__all__ = ["METRICS", "plot_group_accuracy", "plot_proxies_vs_memorization", "write_report"]

METRICS = {
    "accuracy": "top-1 accuracy on the forget, retain and test sets (the goal is the retrained column, not 0); for "
                "a language model, exact match: the fraction of sequences whose every token is the argmax given the "
                "true prefix",
    "token_accuracy": "language models: per sequence, the fraction of its tokens that are the argmax given the true "
                      "prefix (open-unlearning's exact memorization), averaged over the forget, retain and test sets",
    "perplexity": "language models: corpus perplexity of the forget, retain and test sets, exp of the mean token "
                  "negative log-likelihood over all their scored tokens",
    "loss_threshold": "an attacker who thresholds the loss to tell forget (members) from test examples: AUC, "
                      "balanced accuracy, TPR at 0.1% / 1% FPR (0.5 AUC: no signal)",
    "loss_logreg": "logistic regression on the loss, forget vs test, balanced, cross-validated accuracy (~0.5 for a "
                   "model that never saw the forget set)",
    "svc": "the unlearning papers' SVC attack on softmax features, trained retain vs test: the fraction of forget "
           "examples it calls non-members (classifiers only)",
    "mia_loss": "language models: the LOSS attack, forget (members) vs test, by the mean token NLL: AUC in "
                "open-unlearning's convention (1: the forget set is far more likely than unseen text, 0.5: no "
                "signal), balanced accuracy, TPR at 0.1% / 1% FPR",
    "mia_zlib": "language models: the zlib attack (Carlini et al. 2021), the NLL over the zlib-compressed length of "
                "the text, forget vs test, as mia_loss",
    "mia_min_k": "language models: Min-K% (Shi et al. 2023, k = 0.4), minus the mean of the 40% lowest token "
                 "log-probabilities, forget vs test, as mia_loss",
    "mia_min_k_plus_plus": "language models: Min-K%++ (Zhang et al. 2024, k = 0.4), Min-K% over token "
                           "log-probabilities normalised by the next-token distribution's mean and spread, forget vs "
                           "test, as mia_loss",
    "mia_reference": "language models: the reference-model attack, per sequence the model's mean token NLL minus the "
                     "retrained model's, forget vs test, as mia_loss",
    "privleak": "language models: MUSE's PrivLeak, ((1 - AUC) - (1 - AUC_retrained)) / (1 - AUC_retrained) * 100 of "
                "the Min-K% (k = 0.4) AUCs (about 0: as the retrained model; down to -100: the forget set still "
                "stands out; positive: over-unlearned)",
    "extraction": "language models: probabilistic discoverable extraction of the forget set (Hayes et al. 2024): the "
                  "fraction of its sequences a sampler reproduces from their prefix with probability >= p in n tries "
                  "(rate), the mean log-probability of a suffix (mean_log_p), over the sequences long enough (scored)",
    "exposure": "language models: the canaries' mean exposure in bits (Carlini et al. 2019), log2 |R| - log2 rank "
                "among never-inserted secrets of their format",
    "lira": "online LiRA from the shadow models (Carlini et al. 2022), forget vs test (a language model's on the "
            "sequences' mean token log-likelihood)",
    "lira_offline": "offline LiRA (OUT shadows only), forget vs test",
    "rmia": "offline RMIA (Zarifzadeh et al. 2024), forget vs test, its population drawn apart from the test x",
    "ulira": "U-LiRA (Hayes et al. 2024): telling the unlearned model from a retrained one on the forget set, from "
             "shadows that trained and unlearned each example (0.5 AUC: indistinguishable, the goal)",
    "forgetting": "the NeurIPS 2023 challenge's forgetting score",
    "tow": "tug of war: the product over forget, retain and test of 1 - |accuracy - the retrained accuracy| "
           "(1: the retrained model's accuracies); for a language model, of its token accuracies",
    "tow_mia": "ToW with the forget term replaced by the SVC attack's (or the loss attack's) gap to retraining",
    "seconds": "wall-clock seconds: training the original, unlearning, retraining the reference",
    "canaries": "the inserted secrets (a text run's): how many are (n=1000, p=0.5)-discoverably extractable under "
                "top-k 40 sampling, their mean exposure in bits (about 1: chance) and PrivLeak of the secrets against "
                "never-inserted ones of their format (0: like retraining)",
}
"""One line for each metric family of the results table, written under it in ``report.md``."""


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_group_accuracy(table: pd.DataFrame, path: str | os.PathLike, *, title: str = "forget accuracy",
                        ylabel: str = "accuracy") -> None:
    """Grouped bars of ``table`` (index: memorization groups, columns: models) saved as a PNG."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.2, 3.6))
    width = 0.8 / max(1, len(table.columns))
    x = np.arange(len(table.index))
    for i, column in enumerate(table.columns):
        ax.bar(x + (i - (len(table.columns) - 1) / 2) * width, table[column].to_numpy(), width, label=column)
    ax.set(xticks=x, xticklabels=[str(g) for g in table.index], ylim=(0, 1.05), ylabel=ylabel,
           xlabel="memorization group of the forget set", title=title)
    ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    with written(path) as tmp:
        fig.savefig(tmp, dpi=120)
    plt.close(fig)


def plot_proxies_vs_memorization(scores: pd.DataFrame, memorization: pd.Series, path: str | os.PathLike) -> None:
    """One scatter per proxy column of ``scores`` against the memorization score, Spearman's rho in each title."""
    plt = _pyplot()
    columns = list(scores.columns)
    cols = min(4, len(columns))
    rows = -(-len(columns) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.0 * cols, 2.6 * rows), squeeze=False)
    y = memorization.reindex(scores.index).to_numpy(dtype=float)
    for ax, column in zip(axes.flat, columns, strict=False):
        x = scores[column].to_numpy(dtype=float)
        finite = np.isfinite(x) & np.isfinite(y)  # few subset models leave some examples without a score
        rho = stats.spearmanr(x[finite], y[finite]).statistic
        ax.scatter(x[finite], y[finite], s=3, alpha=0.4, linewidths=0)
        ax.set(title=f"{column} (rho {rho:+.2f})", xlabel=column, ylabel="memorization")
        ax.title.set_fontsize(9)
    for ax in list(axes.flat)[len(columns):]:
        ax.axis("off")
    fig.tight_layout()
    with written(path) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)


def write_report(folder: str | os.PathLike, results: dict, tables: dict[str, pd.DataFrame],
                 figures: dict[str, str]) -> None:
    """Write ``results.json`` (``results`` plus every table as records) and ``report.md`` (a heading, the run's
    facts from ``results["run"]``, each table as markdown and each figure by file name)."""
    folder = Path(folder)
    positional = {name: isinstance(t.index, pd.RangeIndex) for name, t in tables.items()}  # no index to keep
    payload = {**results, "tables": {name: json.loads((t if positional[name] else t.reset_index())
                                                      .to_json(orient="records"))
                                     for name, t in tables.items()}}
    write_text(folder / "results.json", json.dumps(payload, indent=2) + "\n")
    lines = [f"# Unlearning report: {results['run'].get('dataset', '')}", ""]
    lines += [f"- **{key}**: {value}" for key, value in results["run"].items()]
    for name, table in tables.items():
        lines += ["", f"## {name}", "", table.to_markdown(floatfmt=".4g", index=not positional[name]), ""]
        if name == "results":
            families = dict.fromkeys(str(metric).split(".")[0] for metric in table.index)
            lines += [f"- **{family}**: {METRICS[family]}" for family in families if family in METRICS]
    for name, file in figures.items():
        lines += ["", f"## {name}", "", f"![{name}]({file})", ""]
    write_text(folder / "report.md", "\n".join(lines) + "\n")
