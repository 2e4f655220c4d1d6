"""``unlearn run`` as a library call: :func:`run` takes a :class:`RunConfig` and returns a :class:`RunResult`;
:func:`train_original`, :func:`run_proxies` and :func:`run_attack` are ``unlearn train``, ``proxies`` and ``attack``.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
from torch import nn

import proxies
from proxies.files import write_text, written

from ..data.selection import parse_forget_spec, select_forget
from ..data.sources import labels_of
from ..evaluation.attacks import DEFAULT_ATTACKS
from ..farm.subset_models import train_subset_models
from ..training.trainer import load_checkpoint
from .canaries import held_out_token_accuracy
from .config import RunConfig
from .folder import RunFolder, locked
from .results import RunResult, evaluation_stage
from .scores import subset
from .stages import (
    Request,
    Trained,
    Unlearned,
    canary_ids,
    compute_proxies,
    digest,
    forget_stage,
    load_run,
    memorization_stage,
    method_config_of,
    model_fn_of,
    proxies_stage,
    proxy_series,
    recipe_of,
    reference_stage,
    request_names,
    reset_progress,
    say,
    set_progress,
    skipped_request_rows,
    train_stage,
    trained_run,
    unlearn_stage,
    with_shadow_attacks,
)

__all__ = ["RUN_OUTPUTS", "RUN_STAGES", "RunResult", "run", "run_attack", "run_proxies", "train_original"]


RUN_STAGES = {"train": (), "proxies": ("proxies.csv",), "forget": ("forget.csv",), "reference": ("reference.pt",),
              "unlearn": ("unlearned.pt", "plan.csv")}
"""The stages of ``unlearn run`` in order, with the files each writes (training keeps its own, to resume from)."""

RUN_OUTPUTS = ("report.md", "results.json", "scores.csv", "roc.png", "forget_accuracy_by_group.png",
               "proxies_vs_memorization.png", "canaries.png", "config.toml", "ledger.jsonl", "requests")
"""What the evaluation writes from all the stages, and the deletion requests made on its model: removed as soon as
any stage is redone (the ledger's entries are deletions from models that are gone)."""


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
        reset_progress(token)


def _original(config: RunConfig, folder: RunFolder, device) -> Trained:
    say("[1/6] original model")
    splits, model, recorder, checkpoints, settings, seconds = train_stage(config, folder.path, device, folder)
    after = digest(settings)
    if seconds is not None:
        folder.finish("train", {"config": after}, seconds=seconds)
    return Trained(splits, model, recorder, checkpoints, settings, after)


def _scores(config: RunConfig, folder: RunFolder, trained: Trained) -> tuple[pd.DataFrame, pd.Series | None]:
    say("\n[2/6] memorization proxies")
    table = proxies_stage(folder, trained.splits, trained.recorder, trained.checkpoints, trained.digest,
                          config.proxies)
    memorization = memorization_stage(config, trained.splits, trained.settings, folder.path)
    with pd.option_context("display.width", 160, "display.max_columns", 20, "display.precision", 3):
        say(f"most memorized by {config.proxy} (the first {config.rows} of {len(table)}; scores.csv has all):")
        ranked = proxy_series(table, config.proxy, config.task)
        order = ranked.sort_values(ascending=not ranked.attrs["higher_is_memorized"]).index[:config.rows]
        say(table.loc[order].to_string())
    return table, memorization


def _request(config: RunConfig, folder: RunFolder, trained: Trained, table: pd.DataFrame,
             memorization: pd.Series | None) -> Request:
    say("\n[3/6] forget set")
    spec, select_by, splits = parse_forget_spec(config.forget), config.ranked_by, trained.splits
    ranking = memorization if select_by == "memorization" else proxy_series(table, select_by, config.task)
    if spec.needs_scores and ranking.isna().any():
        say(f"{int(ranking.isna().sum())} examples have no {select_by} score (with few subset models, some are "
            "in all or none of them) and are not ranked")
        ranking = ranking.dropna()
    ids = forget_stage(folder, config.forget, ranking, splits, config.seed, trained.digest, select_by,
                       config.fz_models)
    forget = subset(splits.train, ids)
    retain = subset(splits.train, np.setdiff1d(labels_of(splits.train)[1].numpy(), ids))
    say(f"forget {len(forget)} of {len(splits.train)} training examples ({config.forget}"
        + (f", ranked by {select_by}" if spec.needs_scores else "") + ")")
    return Request(ids, forget, retain, select_by if spec.needs_scores else None,
                   skipped_request_rows(spec, splits), folder.digest("forget"))


def _reference(config: RunConfig, folder: RunFolder, trained: Trained, request: Request, device) -> nn.Module:
    say("\n[4/6] retrained reference")
    return reference_stage(folder, request.retain, trained.model_fn, trained.recipe, config.seed, device,
                           request.digest)


def _unlearned(config: RunConfig, folder: RunFolder, trained: Trained, table: pd.DataFrame, request: Request,
               device) -> Unlearned:
    say(f"\n[5/6] unlearning ({config.method})")
    expected = None
    if trained.kind == "text":  # a step stopping at "expected": the token accuracy of held-out sequences of its kind
        expected = functools.partial(held_out_token_accuracy, trained.model, trained.splits, device=device)
    unlearned = unlearn_stage(folder, config, trained.model, request.forget, request.retain, table,
                              trained.recorder, trained.model_fn, request.digest, device,
                              method_config_of(config, trained.settings), expected)
    say(unlearned.plan.drop(columns=["config", "indices"]).to_string(index=False))
    return unlearned


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
        folder = RunFolder(config.folder, force=config.force, order=RUN_STAGES, outputs=RUN_OUTPUTS)
        trained = _original(config, folder, device)
        table, memorization = _scores(config, folder, trained)
        request = _request(config, folder, trained, table, memorization)
        reference = _reference(config, folder, trained, request, device)
        unlearned = _unlearned(config, folder, trained, table, request, device)
        say("\n[6/6] evaluation")
        return evaluation_stage(config, folder, trained, table, memorization, request, reference, unlearned, device)


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
        names = list(names or RunConfig(dataset=settings["dataset"]).proxies)  # the defaults for its kind of data
        subset_models = None
        if fz_models:
            subset_models = train_subset_models(
                splits.train, model_fn_of(settings, splits), k=fz_models, folder=folder / "subset-models",
                seed=settings["seed"], farm=farm, farm_options=farm_options or {}, **recipe_of(settings))
            names += [n for n in ("memorization", "c_score") if n not in names]
        table = compute_proxies(names, splits, recorder, checkpoints, subset_models)
        with written(Path(to) if to is not None else folder / "proxy_scores.csv") as tmp:
            table.to_csv(tmp)
        return table


def run_attack(folder: str | os.PathLike, *, checkpoint: str | os.PathLike | None = None, forget: str | None = None,
               select_by: str = "confidence", attacks=DEFAULT_ATTACKS, shadows: int = 0, root=None, device=None,
               farm: str = "local", farm_options: dict | None = None, progress: bool = True) -> pd.DataFrame:
    """``unlearn attack``: attack a saved model (default: the folder's ``unlearned.pt``) on the folder's forget set
    (or a ``forget`` spec, ranked by the recording's ``select_by`` proxy), beside the folder's retrained reference
    when it has one; writes ``attack-<model>.json`` to the folder and returns :func:`unlearn.evaluate`'s table."""
    from ..evaluation.evaluator import evaluate
    from ..evaluation.shadows import train_shadow_models

    folder = Path(folder)
    with _trained_folder(folder, root, device, progress) as (settings, splits, recorder, _, device):
        model_fn = model_fn_of(settings, splits)
        checkpoint = Path(checkpoint) if checkpoint is not None else folder / "unlearned.pt"
        model = load_checkpoint(model_fn(), checkpoint, device).eval()  # unreadable: a one-line ValueError
        if forget is not None:
            spec = parse_forget_spec(forget)
            ranking = None
            if spec.needs_scores:
                ranking = proxies.compute(select_by, recording=recorder)  # with its direction on these examples
            forget_ids = select_forget(spec, ranking, num_train=len(splits.train), seed=settings["seed"],
                                       canaries=canary_ids(splits), **request_names(splits))
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
        names = with_shadow_attacks(attacks, shadow_models)
        report = evaluate(model, forget=forget_set, retain=retain, test=splits.test, reference=reference,
                          attacks=names, shadows=shadow_models, seed=settings["seed"])
        target = folder / f"attack-{checkpoint.stem}.json"
        write_text(target, json.dumps({"checkpoint": str(checkpoint), "forget": len(forget_ids),
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
