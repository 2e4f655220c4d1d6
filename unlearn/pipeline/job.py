"""``unlearn run`` as a library call: :func:`run` takes a :class:`RunConfig` and returns a :class:`RunResult`;
:func:`train_original`, :func:`run_proxies` and :func:`run_attack` are ``unlearn train``, ``proxies`` and ``attack``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

import proxies

from ..attacks import DEFAULT_ATTACKS, NotApplicable
from ..data import labels_of
from ..selection import parse_forget_spec, select_forget
from ..subset_models import train_subset_models
from ..training import load_checkpoint
from .config import DEFAULT_PROXIES, RunConfig
from .folder import RunFolder, locked
from .scores import group_of, per_example_scores, subset
from .stages import (
    _PROGRESS,
    check_method_config,
    compute_proxies,
    digest,
    forget_stage,
    load_run,
    memorization_stage,
    method_config_of,
    model_fn_of,
    plan_groups,
    proxies_stage,
    proxy_series,
    recipe_of,
    reference_stage,
    rum_facts,
    say,
    set_progress,
    shadow_stage,
    skipped_request_rows,
    train_stage,
    trained_run,
    unlearn_stage,
)

__all__ = ["RUN_OUTPUTS", "RUN_STAGES", "RunResult", "run", "run_attack", "run_proxies", "train_original"]


RUN_STAGES = {"train": (), "proxies": ("proxies.csv",), "forget": ("forget.csv",), "reference": ("reference.pt",),
              "unlearn": ("unlearned.pt", "plan.csv")}
"""The stages of ``unlearn run`` in order, with the files each writes (training keeps its own, to resume from)."""

RUN_OUTPUTS = ("report.md", "results.json", "scores.csv", "roc.png", "forget_accuracy_by_group.png",
               "proxies_vs_memorization.png", "config.toml")
"""What the evaluation writes from all the stages: removed as soon as any stage is redone."""



@dataclass
class RunResult:
    """What :func:`run` leaves: the results table (metrics by model), the unlearning plan, the per-example scores
    (every training example: proxies, forget set, group, per-model attack scores) and the folder holding it all."""

    results: pd.DataFrame
    plan: pd.DataFrame
    scores: pd.DataFrame
    folder: Path


def run(config: RunConfig | None = None, out: str | os.PathLike | None = None, *, progress: bool = True) -> RunResult:
    """Run ``unlearn run``'s stages: train (with the recorder), proxies, forget set, retrained reference,
    unlearning, attacks, report; with the same reuse, refusal and ``force`` rules as the command.

    Args:
        config: the settings (default: :class:`RunConfig`'s, the command's defaults).
        out: the output folder (default: ``config.out``, else ``runs/<dataset>``); the folder is locked while the
            run lives and gets the resolved settings in ``config.toml``.
        progress: print each stage's messages and show progress bars.

    Raises:
        ValueError: bad settings (named as the command-line options), checked before any work; a folder in use
            or holding another run (unless ``config.force``).
    """
    config = _settled(config, out)
    device = config.check()  # every stage, trained or reused, runs its models here
    with _session(config.folder, progress):  # a second run on the same folder is refused while this one lives
        return _run(config, config.folder, device)


def _settled(config: RunConfig | None, out) -> RunConfig:
    """A copy of ``config`` (the defaults when None) with ``out``, when given, as its folder."""
    config = dataclasses.replace(config or RunConfig())
    if out is not None:
        config.out = str(out)
    return config


@contextmanager
def _session(folder: Path, progress: bool):
    """The body holds ``folder``'s lock, and the stages speak (and show bars) only with ``progress``."""
    token = set_progress(progress)
    try:
        with locked(folder):
            yield
    finally:
        _PROGRESS.reset(token)


def _run(config: RunConfig, out: Path, device) -> RunResult:
    from ..attacks import extract_signals
    from ..evaluation import evaluate, evaluate_ulira
    from ..metrics import plot_roc
    from ..report import plot_group_accuracy, plot_proxies_vs_memorization, write_report

    spec = parse_forget_spec(config.forget)  # a bad spec fails before any training
    if config.fz_models < 0 or config.shadows < 0:
        raise ValueError("--fz-models and --shadows must be >= 0")
    if config.shadows and (config.shadows < 4 or config.shadows % 2):
        raise ValueError(f"--shadows must be an even number >= 4 (RMIA holds one out), got {config.shadows}")
    select_by = config.select_by or ("memorization" if config.fz_models else config.proxy)
    if select_by == "memorization" and not config.fz_models:
        raise ValueError("--select-by memorization needs ground-truth scores: add --fz-models K")
    if config.proxy not in config.proxies:
        raise ValueError(f"--proxy {config.proxy} must be one of the --proxies {config.proxies}")
    if select_by not in (*config.proxies, "memorization"):
        raise ValueError(f"--select-by must be memorization or one of the --proxies {config.proxies}, "
                         f"got {select_by!r}")
    if spec.kind == "ids" and not spec.path.is_file():
        raise ValueError(f"--forget {config.forget}: no such file {spec.path}")
    if config.policy and config.method != "rum":
        raise ValueError(f"--policy is for --method rum, not {config.method}")
    check_method_config(config.method, config.method_config)  # a misspelt setting fails before any work

    folder = RunFolder(out, force=config.force, order=RUN_STAGES, outputs=RUN_OUTPUTS)
    say("[1/6] original model")
    splits, original, recorder, checkpoints, settings, seconds = train_stage(config, out, device, folder)
    after_train = digest(settings)
    if seconds is not None:
        folder.finish("train", {"config": after_train}, seconds=seconds)
    model_fn, recipe = model_fn_of(settings, splits), recipe_of(settings)

    say("\n[2/6] memorization proxies")
    table = proxies_stage(folder, splits, recorder, checkpoints, after_train, config.proxies)
    memorization = memorization_stage(config, splits, settings, out)
    with pd.option_context("display.width", 160, "display.max_columns", 20, "display.precision", 3):
        say(f"most memorized by {config.proxy} (the first {config.rows} of {len(table)}; scores.csv has all):")
        ranked = proxy_series(table, config.proxy)
        order = ranked.sort_values(ascending=not ranked.attrs["higher_is_memorized"]).index[:config.rows]
        say(table.loc[order].to_string())

    say("\n[3/6] forget set")
    ranking = memorization if select_by == "memorization" else proxy_series(table, select_by)
    if spec.needs_scores and ranking.isna().any():
        say(f"{int(ranking.isna().sum())} examples have no {select_by} score (with few subset models, some are "
            "in all or none of them) and are not ranked")
        ranking = ranking.dropna()
    skipped = skipped_request_rows(spec, splits)
    forget_ids = forget_stage(folder, config.forget, ranking, splits, config.seed, after_train, select_by,
                              config.fz_models)
    forget = subset(splits.train, forget_ids)
    retain = subset(splits.train, np.setdiff1d(labels_of(splits.train)[1].numpy(), forget_ids))
    say(f"forget {len(forget)} of {len(splits.train)} training examples ({config.forget}"
          + (f", ranked by {select_by}" if spec.needs_scores else "") + ")")
    after_forget = folder.digest("forget")

    say("\n[4/6] retrained reference")
    reference = reference_stage(folder, retain, model_fn, recipe, config.seed, device, after_forget)
    say(f"\n[5/6] unlearning ({config.method})")
    unlearned, plan = unlearn_stage(folder, config, original, forget, retain, table, recorder, model_fn,
                                    after_forget, device, method_config_of(config, settings))
    say(plan.drop(columns=["config", "indices"]).to_string(index=False))

    say("\n[6/6] evaluation")
    shadows, unlearned_shadows = shadow_stage(config, splits, settings, out)
    attacks = list(dict.fromkeys([*config.attacks, *(["lira", "rmia"] if shadows is not None else [])]))
    models = {"original": original, "unlearned": unlearned, "retrained": reference}
    queries = shadows.queries if shadows is not None else ("identity",)
    # each model predicted once per split; the report, scores.csv and the ROC figure all score these signals
    signals = {name: {split: extract_signals(model, data, queries=queries, device=device)
                      for split, data in (("train", splits.train), ("test", splits.test))}
               for name, model in models.items()}
    common = {"forget": forget, "retain": retain, "test": splits.test, "reference": reference, "attacks": attacks,
              "shadows": shadows, "seed": config.seed, "device": device,
              "signals": {**signals, "reference": signals["retrained"]}}
    results = evaluate({"original": original, "unlearned": unlearned}, **common)
    not_computed = dict(results.attrs.get("not_computed", {}))
    results = results.rename(columns={"reference": "retrained"})
    examples = per_example_scores(models, splits.train, shadows=shadows, device=device, signals=signals)
    if unlearned_shadows is not None:
        try:
            summary, ulira_scores = evaluate_ulira(unlearned, reference, forget=forget, shadows=unlearned_shadows,
                                                   device=device, signals=signals)
        except NotApplicable as err:
            not_computed["ulira"] = str(err)
        else:
            for key, value in summary.items():
                results.loc[f"ulira.{key}", "unlearned"] = value
            examples = examples.join(ulira_scores.add_prefix("ulira_"))
    for name, reason in not_computed.items():
        warnings.warn(f"{name} not computed: {reason}", stacklevel=1)
    stage_seconds = {stage: folder.seconds(stage) for stage in ("train", "proxies", "reference", "unlearn")}
    results.loc["seconds", ["original", "unlearned", "retrained"]] = [stage_seconds["train"],
                                                                      stage_seconds["unlearn"],
                                                                      stage_seconds["reference"]]

    # rum's groups are the plan's; for any other method the report groups the forget set by the same rule
    groups = (plan_groups(plan, forget_ids) if config.method == "rum"
              else group_of(proxy_series(table, config.proxy), forget_ids, grouping=config.grouping))
    scores = table.copy()
    scores.insert(0, "label", labels_of(splits.train)[0].numpy())
    if splits.train_rows is not None:
        scores.insert(1, "source_row", splits.train_rows.numpy())
    if memorization is not None:
        scores["memorization"] = memorization
    scores["forget"] = scores.index.isin(forget_ids)
    scores["group"] = groups
    scores = scores.join(examples)
    scores.to_csv(out / "scores.csv")
    per_group = scores.loc[forget_ids].groupby("group")[[f"correct_{m}" for m in models]].mean()
    per_group = per_group.reindex([g for g in ("low", "medium", "high") if g in per_group.index])
    per_group.columns = list(models)
    per_group.insert(0, "examples", groups.value_counts().reindex(per_group.index))

    figures = {"membership inference ROC (forget vs test)": "roc.png",
               f"forget accuracy by {config.proxy} group": "forget_accuracy_by_group.png"}
    test_scores = per_example_scores(models, splits.test, shadows=shadows, split="test", device=device,
                                     signals=signals)
    kind = "lira" if shadows is not None else "loss"
    sign = 1.0 if kind == "lira" else -1.0  # a low loss marks a member
    curves = {name: (sign * np.r_[scores.loc[forget_ids, f"{kind}_{name}"].to_numpy(),
                                  test_scores[f"{kind}_{name}"].to_numpy()],
                     np.r_[np.ones(len(forget_ids)), np.zeros(len(test_scores))]) for name in models}
    plot_roc(curves, out / "roc.png", title=f"{'LiRA' if kind == 'lira' else 'loss'} attack: forget vs test")
    plot_group_accuracy(per_group[list(models)], out / "forget_accuracy_by_group.png",
                        title=f"forget accuracy by {config.proxy} group")
    if memorization is not None:
        plot_proxies_vs_memorization(table, memorization, out / "proxies_vs_memorization.png")
        figures["proxies against Feldman-Zhang memorization"] = "proxies_vs_memorization.png"

    ratio = stage_seconds["unlearn"] / stage_seconds["reference"]
    facts = {"dataset": config.dataset, "model": settings["model"], "training examples": len(splits.train),
             "forget": f"{config.forget} ({len(forget_ids)} examples" + (f", by {select_by})" if spec.needs_scores
                                                                       else ")"),
             "method": config.method + (f" scheduled by {config.proxy}" if config.method == "rum" else ""),
             **rum_facts(config, table),
             "method settings": json.dumps(method_config_of(config, settings)) if config.method_config
             else "defaults",
             "training recipe": ", ".join(f"{k} {v}" for k, v in recipe.items()), "seed": config.seed,
             **({"skipped from the request": skipped} if skipped else {}),
             **({"not computed": "; ".join(f"{k} ({v})" for k, v in not_computed.items())} if not_computed else {}),
             "attacks": ", ".join(attacks) + (" and U-LiRA" if unlearned_shadows is not None else ""),
             "shadow models": config.shadows, "subset models (FZ)": config.fz_models,
             "unlearning time vs retraining": f"{ratio:.1%}"}
    tables = {"results": results, "forget accuracy by memorization group": per_group,
              "unlearning plan": plan.drop(columns=["config", "indices"])}
    write_report(out, {"run": facts, "seconds": stage_seconds, "time_vs_retrain": ratio}, tables, figures)
    (out / "config.toml").write_text(config.to_toml())  # last, beside the outputs it made: a refused or failed
    # run leaves none (RUN_OUTPUTS), so the file always describes the folder's results
    results.attrs["per_group"] = per_group
    results.attrs["summary"] = (f"unlearning took {stage_seconds['unlearn']:.1f} s, {ratio:.1%} of retraining "
                                f"({stage_seconds['reference']:.1f} s); ToW {results.loc['tow', 'unlearned']:.3f} "
                                f"(the original model: {results.loc['tow', 'original']:.3f})\n"
                                f"wrote report.md, results.json, scores.csv and {len(figures)} figures to {out}")
    return RunResult(results=results, plan=plan, scores=scores, folder=out)


@contextmanager
def _trained_folder(folder: Path, root, device, progress: bool):
    """A folder written by ``unlearn train`` or ``run``, locked for the body: its settings, splits, recording and
    checkpoints, with the models on ``device`` (or CUDA when there is one)."""
    trained_run(folder)
    with _session(folder, progress):
        device = RunConfig(device=device).resolved_device()
        settings, splits, _, recorder, checkpoints = load_run(folder, root, device)
        yield settings, splits, recorder, checkpoints, device


def run_proxies(folder: str | os.PathLike, names=None, *, fz_models: int = 0, root=None, device=None,
                farm: str = "local", farm_options: dict | None = None, to: str | os.PathLike | None = None,
                progress: bool = True) -> pd.DataFrame:
    """``unlearn proxies``: the named proxies (default: the recording-based ones and loss curvature) of a folder
    written by ``unlearn train`` or ``run``, written as a CSV (default ``<folder>/proxy_scores.csv``); with
    ``fz_models`` also Feldman-Zhang memorization and C-scores from that many subset models (cached in the folder).
    """
    folder = Path(folder)
    with _trained_folder(folder, root, device, progress) as (settings, splits, recorder, checkpoints, device):
        names = list(names or DEFAULT_PROXIES)
        subset_models = None
        if fz_models:
            subset_models = train_subset_models(
                splits.train, model_fn_of(settings, splits), k=fz_models, folder=folder / "subset-models",
                seed=settings["seed"], farm=farm, farm_options=farm_options or {}, **recipe_of(settings))
            names += [n for n in ("memorization", "c_score") if n not in names]
        table = compute_proxies(names, splits, recorder, checkpoints, subset_models)
        table.to_csv(Path(to) if to is not None else folder / "proxy_scores.csv")
        return table


def run_attack(folder: str | os.PathLike, *, checkpoint: str | os.PathLike | None = None, forget: str | None = None,
               select_by: str = "confidence", attacks=DEFAULT_ATTACKS, shadows: int = 0, root=None, device=None,
               farm: str = "local", farm_options: dict | None = None, progress: bool = True) -> pd.DataFrame:
    """``unlearn attack``: attack a saved model (default: the folder's ``unlearned.pt``) on the folder's forget set
    (or a ``forget`` spec, ranked by the recording's ``select_by`` proxy), beside the folder's retrained reference
    when it has one; writes ``attack-<model>.json`` to the folder and returns :func:`unlearn.evaluate`'s table."""
    from ..evaluation import evaluate
    from ..shadows import train_shadow_models

    folder = Path(folder)
    with _trained_folder(folder, root, device, progress) as (settings, splits, recorder, _, device):
        model_fn = model_fn_of(settings, splits)
        checkpoint = Path(checkpoint) if checkpoint is not None else folder / "unlearned.pt"
        model = load_checkpoint(model_fn(), checkpoint, device).eval()  # unreadable: a one-line ValueError
        if forget is not None:
            spec = parse_forget_spec(forget)
            ranking = None
            if spec.needs_scores:
                ranking = proxy_series(proxies.compute([select_by], recording=recorder), select_by)
            forget_ids = select_forget(spec, ranking, num_train=len(splits.train), seed=settings["seed"],
                                       source_rows=splits.train_rows.numpy())
        elif (folder / "forget.csv").is_file():
            forget_ids = pd.read_csv(folder / "forget.csv")["index"].to_numpy()
        else:
            raise ValueError(f"{folder} has no forget.csv: pass --forget SPEC")
        forget_set = subset(splits.train, forget_ids)
        retain = subset(splits.train, np.setdiff1d(labels_of(splits.train)[1].numpy(), forget_ids))
        reference = None
        if forget is None and (folder / "reference.pt").is_file():
            reference = load_checkpoint(model_fn(), folder / "reference.pt", device).eval()
        shadow_models = None
        if shadows:
            shadow_models = train_shadow_models(splits.train, splits.test, model_fn, k=shadows,
                                                folder=folder / "shadows", queries=splits.queries,
                                                seed=settings["seed"], farm=farm, farm_options=farm_options or {},
                                                **recipe_of(settings))
        names = list(dict.fromkeys([*attacks, *(["lira", "rmia"] if shadow_models is not None else [])]))
        report = evaluate(model, forget=forget_set, retain=retain, test=splits.test, reference=reference,
                          attacks=names, shadows=shadow_models, seed=settings["seed"])
        target = folder / f"attack-{checkpoint.stem}.json"
        target.write_text(json.dumps({"checkpoint": str(checkpoint), "forget": len(forget_ids),
                                      "forget_ids": [int(i) for i in forget_ids], "attacks": names,
                                      "report": report.to_dict()}, indent=2) + "\n")
        report.attrs["written"] = str(target)
        return report


def train_original(config: RunConfig | None = None, out: str | os.PathLike | None = None, *,
                   progress: bool = True):
    """``unlearn train``: train (or reuse) the original model with the recorder into ``out``; returns the splits,
    the model and its recording."""
    config = _settled(config, out)
    device = config.check()
    with _session(config.folder, progress):
        splits, model, recorder, _, _, _ = train_stage(config, config.folder, device)
        return splits, model, recorder
