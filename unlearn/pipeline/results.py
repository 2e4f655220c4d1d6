"""The last stage of ``unlearn run``: attack the original, unlearned and retrained models, and write the results
(``results.json`` and ``report.md``, ``scores.csv``, the figures and ``config.toml``)."""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from proxies.files import write_text, written

from ..algorithms.rum.grouping import group_of
from ..data.selection import parse_forget_spec
from ..data.sources import labels_of
from ..evaluation.attacks import NotApplicable, extract_signals, priv_leak_of
from ..evaluation.evaluator import evaluate, evaluate_ulira
from ..evaluation.metrics import plot_roc
from ..evaluation.report import plot_group_accuracy, plot_proxies_vs_memorization, write_report
from .canaries import EXTRACTION, canary_table, plot_canaries
from .config import RunConfig
from .folder import RunFolder
from .ledger import REQUESTS_TABLE, Ledger, LedgerError, file_digest, ids_digest
from .scores import per_example_scores
from .stages import (
    Request,
    Trained,
    Unlearned,
    klom_stage,
    method_config_of,
    plan_groups,
    proxy_series,
    shadow_stage,
    with_shadow_attacks,
)

__all__ = ["RunResult", "evaluation_stage", "model_digests", "record_run"]


@dataclass
class RunResult:
    """What :func:`unlearn.pipeline.run` leaves: the results table (metrics by model), the unlearning plan, the
    per-example scores (every training example: proxies, forget set, group, per-model attack scores) and the folder
    holding it all."""

    results: pd.DataFrame
    plan: pd.DataFrame
    scores: pd.DataFrame
    folder: Path


def evaluation_stage(config: RunConfig, folder: RunFolder, trained: Trained, table: pd.DataFrame,
                     memorization: pd.Series | None, request: Request, reference, unlearned: Unlearned,
                     device) -> RunResult:
    """Attack the three models, tabulate every example, draw the figures and write the report."""
    shadows, unlearned_shadows = shadow_stage(config, trained.splits, trained.settings, folder.path)
    attacks = with_shadow_attacks(config.attacks, shadows)
    models = {"original": trained.model, "unlearned": unlearned.model, "retrained": reference}
    # each model predicted once per split; the report, scores.csv and the ROC figure all score these signals
    signals = signals_of(models, trained.splits, shadows, device)
    results, examples, not_computed = attack_models(config, trained, request, models, shadows, unlearned_shadows,
                                                    signals, attacks, device)
    klom_models = klom_stage(config, trained.splits, trained.settings, request, folder.path)
    if klom_models is not None:  # each group's 95th percentile, and every training example's KLoM
        for group, row in klom_models.summary().iterrows():
            results.loc[f"klom.p95.{group}", ["original", "unlearned"]] = [row["original"], row["unlearned"]]
        per_example = klom_models.scores().query("group != 'validation'").set_index("index")
        examples = examples.join(per_example[["klom", "klom_original"]])
    stage_seconds = {stage: folder.seconds(stage) for stage in ("train", "proxies", "reference", "unlearn")}
    results.loc["seconds", ["original", "unlearned", "retrained"]] = [stage_seconds["train"],
                                                                      stage_seconds["unlearn"],
                                                                      stage_seconds["reference"]]
    scores, per_group = _per_example(config, trained, table, memorization, request, unlearned, examples, models)
    with written(folder.path / "scores.csv") as tmp:
        scores.to_csv(tmp)
    figures = _figures(config, folder.path, trained, table, memorization, request, models, shadows, signals,
                       scores, per_group, device)
    canaries = None
    if getattr(trained.splits, "canaries", None) is not None:  # a text run with canaries: each, before and after
        canaries = canary_table(models, trained.splits, device=device)
        for name in models:
            results.loc["canaries.extractable", name] = float(canaries[f"extractable_{name}"].sum())
            results.loc["canaries.exposure", name] = float(canaries[f"exposure_{name}"].mean())
        for name in ("original", "unlearned"):  # MUSE's PrivLeak with a holdout of the secrets' own kind
            results.loc["canaries.privleak", name] = priv_leak_of(models[name], models["retrained"],
                                                                  trained.splits.canary_secrets,
                                                                  trained.splits.references, device=device)
        plot_canaries(canaries, list(models), folder.path / "canaries.png",
                      title=f"the {len(canaries)} canaries' extraction probability")
        figures["each canary's extraction probability, by copies in training"] = "canaries.png"
    ratio = stage_seconds["unlearn"] / stage_seconds["reference"]
    facts = _facts(config, trained, request, unlearned, attacks, not_computed, unlearned_shadows is not None, ratio)
    accuracy = "forget token accuracy" if trained.kind == "text" else "forget accuracy"
    tables = {"results": results, f"{accuracy} by memorization group": per_group,
              "unlearning plan": unlearned.plan.drop(columns=["config", "indices"])}
    if canaries is not None:
        tables["canaries by copies in training"] = canaries
    ledger = record_run(folder.path, request, config.forget, config.method, unlearned.plan, results, stage_seconds)
    digests = model_digests(folder.path)
    tables["files (sha256)"] = pd.DataFrame({"file": list(digests), "sha256": list(digests.values())})
    tables[REQUESTS_TABLE] = ledger.table()
    write_report(folder.path, {"run": facts, "seconds": stage_seconds, "time_vs_retrain": ratio, "files": digests,
                               "request": {"examples": len(request.ids), "ids_sha256": ids_digest(request.ids)},
                               "ledger": {"request": 1, "line_sha256": Ledger.line_digest(ledger.entries[0])}},
                 tables, figures)
    write_text(folder.path / "config.toml", config.to_toml())  # last, beside the outputs it made: a refused or
    # failed run leaves none (RUN_OUTPUTS), so the file always describes the folder's results
    results.attrs["per_group"] = per_group
    results.attrs["summary"] = (f"unlearning took {stage_seconds['unlearn']:.1f} s, {ratio:.1%} of retraining "
                                f"({stage_seconds['reference']:.1f} s); ToW {results.loc['tow', 'unlearned']:.3f} "
                                f"(the original model: {results.loc['tow', 'original']:.3f})\n"
                                f"wrote report.md, results.json, scores.csv and {len(figures)} figures to "
                                f"{folder.path}")
    return RunResult(results=results, plan=unlearned.plan, scores=scores, folder=folder.path)


def signals_of(models: dict, splits, shadows, device) -> dict:
    """Each model's signals on the training and test splits (with the shadows' queries, when there are shadows)."""
    queries = shadows.queries if shadows is not None else ("identity",)
    return {name: {split: extract_signals(model, data, queries=queries, device=device)
                   for split, data in (("train", splits.train), ("test", splits.test))}
            for name, model in models.items()}


def model_digests(folder: Path) -> dict[str, str]:
    """The sha256 of every model file of a run folder and of its forget list, by path inside it."""
    names = ["model.pt", *sorted(p.relative_to(folder).as_posix() for p in (folder / "checkpoints").glob("epoch-*.pt")),
             "reference.pt", "unlearned.pt", "forget.csv"]
    return {name: file_digest(folder / name) for name in names if (folder / name).is_file()}


def record_run(folder: Path, request: Request, forget: str, method: str, plan: pd.DataFrame, results: pd.DataFrame,
               seconds: dict) -> Ledger:
    """The folder's ledger, its first entry (the run's request) written when it has none; a ledger whose first
    entry is not this run's is refused."""
    ledger = Ledger(folder)
    files = {"before": "model.pt", "after": "unlearned.pt", "reference": "reference.pt", "forget": "forget.csv"}
    if not ledger.entries:
        ledger.append(ledger.entry(ids=request.ids, forget=forget, files=files, method=method, plan=plan,
                                   metrics=results[["unlearned", "retrained"]],
                                   seconds={"unlearn": seconds["unlearn"], "reference": seconds["reference"]}))
        return ledger
    first = ledger.entries[0]
    if first["ids_sha256"] != ids_digest(request.ids) or any(
            first["files"][role]["sha256"] != file_digest(folder / path) for role, path in files.items()):
        raise LedgerError(f"{ledger.path}'s first request is not what {folder} holds (`unlearn verify {folder}` "
                          "shows which file differs): restore the file, or delete unlearned.pt to unlearn again and "
                          "start a new ledger")
    return ledger


def attack_models(config: RunConfig, trained: Trained, request: Request, models: dict, shadows, unlearned_shadows,
                  signals: dict, attacks: list[str], device) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, str]]:
    """The results table (metrics by model), every training example's attack scores, and what was not computed."""
    splits = trained.splits
    common = {"forget": request.forget, "retain": request.retain, "test": splits.test, "reference": models["retrained"],
              "attacks": attacks, "shadows": shadows, "seed": config.seed, "device": device,
              "signals": {**signals, "reference": signals["retrained"]}}
    if trained.kind == "text":  # the language-model rows: zlib needs the text, extraction its lengths
        common |= {"tokenizer": splits.tokenizer, "extraction": extraction_settings(config, splits)}
    results = evaluate({"original": models["original"], "unlearned": models["unlearned"]}, **common)
    not_computed = dict(results.attrs.get("not_computed", {}))
    results = results.rename(columns={"reference": "retrained"})
    examples = per_example_scores(models, splits.train, shadows=shadows, device=device, signals=signals)
    if unlearned_shadows is not None:
        try:
            summary, ulira_scores = evaluate_ulira(models["unlearned"], models["retrained"], forget=request.forget,
                                                   shadows=unlearned_shadows, device=device, signals=signals)
        except NotApplicable as err:
            not_computed["ulira"] = str(err)
        else:
            for key, value in summary.items():
                results.loc[f"ulira.{key}", "unlearned"] = value
            examples = examples.join(ulira_scores.add_prefix("ulira_"))
    for name, reason in not_computed.items():
        warnings.warn(f"{name} not computed: {reason}", stacklevel=1)
    return results, examples, not_computed


def extraction_settings(config: RunConfig, splits) -> dict:
    """How a text run tests the forget set for extraction: each sequence's digits from its prefix "my PIN is" for
    the canary request (:attr:`~unlearn.data.text.TextSplits.canary_lengths`), else its 8 tokens after the first 8
    (bos included); with top-k 40 sampling (:data:`~.canaries.EXTRACTION`)."""
    prefix, suffix = splits.canary_lengths if config.forget == "canaries" else (8, 8)
    return {"prefix_length": prefix, "suffix_length": suffix, **EXTRACTION}


def _per_example(config: RunConfig, trained: Trained, table: pd.DataFrame, memorization: pd.Series | None,
                 request: Request, unlearned: Unlearned, examples: pd.DataFrame,
                 models: dict) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``scores.csv``'s table (every training example) and the forget set's accuracy by memorization group."""
    # a plan that unlearned the forget set by groups (rum's memorization groups) gives the report its groups; for
    # a plan of one step the report groups the forget set by the run's proxy, with the same rule
    grouped = set(unlearned.plan["group"]) != {"all"}
    groups = (plan_groups(unlearned.plan, request.ids) if grouped
              else group_of(proxy_series(table, config.proxy, config.task), request.ids, grouping=config.grouping))
    train = trained.splits.train
    scores = table.copy()
    labels = labels_of(train)[0]
    if labels.ndim == 1:
        scores.insert(0, "label", labels.numpy())
    else:  # token sequences: their text, and which canary (and how often inserted) where one is
        scores.insert(0, "text", _texts(trained.splits))
    if trained.splits.train_rows is not None:
        scores.insert(1, "source_row", trained.splits.train_rows.numpy())
    if getattr(trained.splits, "train_paths", None) is not None:  # an image folder's: how its requests name images
        scores.insert(2, "path", trained.splits.train_paths)
    canaries = getattr(trained.splits, "canaries", None)
    if canaries is not None:
        scores = scores.join(canaries.set_index("index")[["canary", "repeats"]])
    if memorization is not None:
        scores["memorization"] = memorization
    scores["forget"] = scores.index.isin(request.ids)
    scores["group"] = groups
    scores = scores.join(examples)
    measure = "token_accuracy" if trained.kind == "text" else "correct"
    per_group = scores.loc[request.ids].groupby("group")[[f"{measure}_{m}" for m in models]].mean()
    # least memorized group first: ordered by the groups' mean score, pointing the usual way
    ranked = proxy_series(table, config.proxy, config.task)
    sign = 1.0 if ranked.attrs["higher_is_memorized"] else -1.0
    level = (sign * ranked.loc[request.ids]).groupby(groups.loc[request.ids]).mean()
    per_group = per_group.loc[level.sort_values(kind="stable").index]
    per_group.columns = list(models)
    per_group.insert(0, "examples", groups.value_counts().reindex(per_group.index))
    return scores, per_group


def _texts(splits) -> list[str]:
    """Each training sequence decoded (special tokens and the unscored padding left out)."""
    from proxies.sequences import IGNORE_INDEX

    labels = labels_of(splits.train)[0]
    return [splits.tokenizer.decode(row[row != IGNORE_INDEX].tolist(), skip_special_tokens=True) for row in labels]


def _figures(config: RunConfig, out: Path, trained: Trained, table: pd.DataFrame, memorization, request: Request,
             models: dict, shadows, signals: dict, scores: pd.DataFrame, per_group: pd.DataFrame,
             device) -> dict[str, str]:
    """Draw the ROC of the forget set against the test set, the forget accuracy by group and, with Feldman-Zhang
    scores, the proxies against them; their titles and file names."""
    measure = "token accuracy" if trained.kind == "text" else "accuracy"
    figures = {"membership inference ROC (forget vs test)": "roc.png",
               f"forget {measure} by {config.proxy} group": "forget_accuracy_by_group.png"}
    test_scores = per_example_scores(models, trained.splits.test, shadows=shadows, split="test", device=device,
                                     signals=signals)
    kind = "lira" if shadows is not None else "loss"
    sign = 1.0 if kind == "lira" else -1.0  # a low loss marks a member
    curves = {name: (sign * np.r_[scores.loc[request.ids, f"{kind}_{name}"].to_numpy(),
                                  test_scores[f"{kind}_{name}"].to_numpy()],
                     np.r_[np.ones(len(request.ids)), np.zeros(len(test_scores))]) for name in models}
    plot_roc(curves, out / "roc.png", title=f"{'LiRA' if kind == 'lira' else 'loss'} attack: forget vs test")
    plot_group_accuracy(per_group[list(models)], out / "forget_accuracy_by_group.png",
                        title=f"forget {measure} by {config.proxy} group", ylabel=measure)
    if memorization is not None:
        plot_proxies_vs_memorization(table, memorization, out / "proxies_vs_memorization.png")
        figures["proxies against Feldman-Zhang memorization"] = "proxies_vs_memorization.png"
    return figures


def _facts(config: RunConfig, trained: Trained, request: Request, unlearned: Unlearned, attacks: list[str],
           not_computed: dict[str, str], ulira: bool, ratio: float) -> dict:
    """The report's facts about the run: data, request, method (and what it noted of its plan), attacks, cost."""
    needs_scores = parse_forget_spec(config.forget).needs_scores
    scheduled = unlearned.scheduled_by
    return {"dataset": config.dataset, "model": trained.settings["model"],
            "training examples": len(trained.splits.train),
            "forget": f"{config.forget} ({len(request.ids)} examples"
                      + (f", by {request.ranked_by})" if needs_scores else ")"),
            "method": config.method + (f" scheduled by {scheduled}" if scheduled else ""),
            **unlearned.notes,
            "method settings": json.dumps(method_config_of(config, trained.settings)) if config.method_config
            else "defaults",
            "training recipe": ", ".join(f"{k} {v}" for k, v in trained.recipe.items()), "seed": config.seed,
            **({"skipped from the request": request.skipped} if request.skipped else {}),
            **({"not computed": "; ".join(f"{k} ({v})" for k, v in not_computed.items())} if not_computed else {}),
            "attacks": ", ".join(attacks) + (" and U-LiRA" if ulira else ""),
            "shadow models": config.shadows, "subset models (FZ)": config.fz_models,
            **({"KLoM models": f"{config.klom} originals that unlearn, {config.klom} oracles"} if config.klom else {}),
            "unlearning time vs retraining": f"{ratio:.1%}"}
