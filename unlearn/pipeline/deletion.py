"""Further deletion requests on a finished run: ``unlearn request RUN --forget SPEC`` as :func:`request`.

A request unlearns new examples from the folder's *latest* model (the ledger's last model after), retrains the
reference without every example deleted so far, evaluates the two beside the model it started from, and appends one
entry to ``RUN/ledger.jsonl`` (:mod:`.ledger`). Its files go to ``RUN/requests/<NNN>/``: ``forget.csv``,
``reference.pt``, ``unlearned.pt``, ``plan.csv``, ``results.json`` and ``report.md``; the run's own ``report.md``
and ``results.json`` list every request. An interrupted request resumes from the stages it finished.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd

from proxies.files import write_text, written

from ..data.selection import parse_forget_spec, read_ids, select_forget
from ..data.sources import labels_of
from ..evaluation.report import write_report
from ..training.trainer import load_checkpoint
from .canaries import held_out_token_accuracy
from .config import RunConfig
from .folder import RunFolder
from .job import _session
from .ledger import REQUESTS_TABLE, Ledger, LedgerError, ids_digest
from .results import RunResult, attack_models, model_digests, signals_of
from .scores import subset
from .stages import (
    Request,
    Trained,
    canary_ids,
    digest,
    forget_table,
    load_run,
    memorization_stage,
    method_config_of,
    model_fn_of,
    proxy_series,
    reference_stage,
    request_names,
    say,
    shadow_stage,
    skipped_request_rows,
    unlearn_stage,
    with_shadow_attacks,
)

__all__ = ["REQUEST_STAGES", "request"]

REQUEST_STAGES = {"forget": ("forget.csv",), "reference": ("reference.pt",), "unlearn": ("unlearned.pt", "plan.csv")}
"""The stages of a request, with the files each writes to its folder ``RUN/requests/<NNN>``."""


def _request_config(folder: Path, forget: str, method, method_config, root, device) -> RunConfig:
    """The run's settings (its ``config.toml``) with this request's forget set, method and machine."""
    if not (folder / "config.toml").is_file():
        raise ValueError(f"{folder} holds no finished `unlearn run` (no config.toml): run `unlearn run --out "
                         f"{folder}` first")
    parse_forget_spec(forget)  # a bad spec, before anything is read
    config = RunConfig.from_toml(folder / "config.toml")
    changes = {"out": str(folder), "forget": forget, "force": False, "klom": 0}
    if method is not None:
        changes |= {"method": method, "method_config": dict(method_config or {}), "policy": None}
    elif method_config is not None:
        changes["method_config"] = dict(method_config)
    changes |= {k: v for k, v in (("root", root), ("device", device)) if v is not None}
    return dataclasses.replace(config, **changes)


def _named(spec, splits, ledger: Ledger) -> np.ndarray | None:
    """The examples an ``ids`` or ``canaries`` request names; one deleted before is refused."""
    named = (read_ids(spec.path, **request_names(splits)) if spec.kind == "ids"
             else canary_ids(splits) if spec.kind == "canaries" else None)
    again = ledger.already_deleted(named) if named is not None else {}
    if again:
        index, number = next(iter(again.items()))
        raise LedgerError(f"{len(again)} of the request's {len(named)} examples were deleted already (index "
                          f"{index} by request {number}); a request names examples the model still holds")
    return named


def _forget(config: RunConfig, folder: Path, run: RunFolder, trained: Trained, table: pd.DataFrame,
            ledger: Ledger, named: np.ndarray | None) -> Request:
    """The request's examples (``named``: those an ids or canaries request names, checked by :func:`_named`),
    chosen among those not deleted yet."""
    splits, spec = trained.splits, parse_forget_spec(config.forget)
    deleted = ledger.deleted
    ranking = None
    if spec.needs_scores:
        memorization = (memorization_stage(config, splits, trained.settings, folder)
                        if config.ranked_by == "memorization" else None)
        ranking = memorization if memorization is not None else proxy_series(table, config.ranked_by, config.task)
        ranking = ranking.dropna()
    settings = {"after": ledger.entries[-1]["files"]["after"]["sha256"], "deleted": ids_digest(deleted),
                "spec": config.forget, "seed": config.seed,
                "select_by": config.ranked_by if spec.needs_scores else None,
                **({"ids_sha256": ids_digest(named)} if named is not None else {})}
    path = run.path / "forget.csv"
    if run.reusable("forget", settings, ["forget.csv"]):
        ids = pd.read_csv(path)["index"].to_numpy()
    else:
        with run.timed("forget", settings):
            ids = select_forget(spec, ranking, num_train=len(splits.train), seed=config.seed,
                                canaries=canary_ids(splits), **request_names(splits),
                                candidates=np.setdiff1d(np.arange(len(splits.train)), deleted))
            with written(path) as tmp:
                forget_table(splits, ids).to_csv(tmp, index=False)
    forget = subset(splits.train, ids)
    retain = subset(splits.train, np.setdiff1d(labels_of(splits.train)[1].numpy(), np.union1d(deleted, ids)))
    say(f"forget {len(ids)} more of the {len(splits.train)} training examples ({config.forget}); the reference "
        f"retrains without all {len(deleted) + len(ids)} deleted so far")
    return Request(ids, forget, retain, config.ranked_by if spec.needs_scores else None,
                   skipped_request_rows(spec, splits), run.digest("forget"))


def request(folder: str | os.PathLike, forget: str, *, method: str | None = None, method_config: dict | None = None,
            root=None, device=None, progress: bool = True) -> RunResult:
    """Delete further examples from a finished run's latest model (``unlearn request``); see the module doc.

    Args:
        folder: a folder a finished ``unlearn run`` wrote (it holds ``ledger.jsonl``).
        forget: the examples, as ``unlearn run --forget`` (``ids:FILE``, ``random:N``, ``high:N``, ...), chosen
            among those not deleted yet; sizes and fractions count those.
        method, method_config: how to unlearn (default: the run's method and settings).
        root, device: the dataset folder and the models' device (default: the run's).
        progress: print each stage's messages and show progress bars.

    Returns:
        the request's results table (columns ``before``, ``unlearned``, ``retrained``), its plan, no per-example
        scores, and its folder.

    Raises:
        LedgerError: an example already deleted, or a ledger that does not verify (checked before any work).
        ValueError: a bad spec or method, or a folder without a finished run.
    """
    folder = Path(folder)
    config = _request_config(folder, forget, method, method_config, root, device)
    device = config.check()
    with _session(folder, progress):
        ledger = Ledger(folder)
        if not ledger.entries:
            raise ValueError(f"{folder} has no ledger.jsonl (a run older than the ledger): rerun its `unlearn run "
                             f"--config {folder / 'config.toml'}`, which reuses every stage and writes it")
        ledger.check()  # the chains, and every model recorded is the file on disk
        settings, splits, _, recorder, checkpoints = load_run(folder, config.root, device)
        named = _named(parse_forget_spec(config.forget), splits, ledger)  # before any work
        number = len(ledger) + 1
        run = RunFolder(folder / "requests" / f"{number:03d}", force=True, order=REQUEST_STAGES,
                        outputs=("report.md", "results.json"))  # unfinished, not in the ledger: redone at will
        model_fn = model_fn_of(settings, splits)
        before = load_checkpoint(model_fn(), ledger.current, device).eval()
        trained = Trained(splits, before, recorder, checkpoints, settings, digest(settings))
        table = pd.read_csv(folder / "proxies.csv", index_col="index")
        say(f"[1/4] request {number}: forget set ({len(ledger.deleted)} examples deleted by {len(ledger)} "
            f"request(s); unlearning from {ledger.current.relative_to(folder)})")
        chosen = _forget(config, folder, run, trained, table, ledger, named)
        say("\n[2/4] retrained reference")
        reference = reference_stage(run, chosen.retain, model_fn, trained.recipe, config.seed, device, chosen.digest)
        say(f"\n[3/4] unlearning ({config.method})")
        expected = None
        if trained.kind == "text":
            expected = functools.partial(held_out_token_accuracy, before, splits, device=device)
        unlearned = unlearn_stage(run, config, before, chosen.forget, chosen.retain, table, recorder, model_fn,
                                  chosen.digest, device, method_config_of(config, settings), expected)
        say("\n[4/4] evaluation")
        return _evaluate(config, folder, run, ledger, trained, table, chosen, reference, unlearned, device)


def _evaluate(config: RunConfig, folder: Path, run: RunFolder, ledger: Ledger, trained: Trained, table, chosen,
              reference, unlearned, device) -> RunResult:
    """Attack the models before and after the request beside the new reference, write the request's report and
    append its ledger entry; then list every request in the run's report."""
    shadows, unlearned_shadows = shadow_stage(config, trained.splits, trained.settings, folder)
    attacks = with_shadow_attacks(config.attacks, shadows)
    models = {"original": trained.model, "unlearned": unlearned.model, "retrained": reference}
    signals = signals_of(models, trained.splits, shadows, device)
    results, _, not_computed = attack_models(config, trained, chosen, models, shadows, unlearned_shadows, signals,
                                             attacks, device)
    results = results.rename(columns={"original": "before"})
    seconds = {"unlearn": run.seconds("unlearn"), "reference": run.seconds("reference")}
    results.loc["seconds", ["unlearned", "retrained"]] = [seconds["unlearn"], seconds["reference"]]
    inside = run.path.relative_to(folder).as_posix()
    entry = ledger.entry(ids=chosen.ids, forget=config.forget, method=config.method, plan=unlearned.plan,
                         files={"before": ledger.current.relative_to(folder).as_posix(),
                                "after": f"{inside}/unlearned.pt", "reference": f"{inside}/reference.pt",
                                "forget": f"{inside}/forget.csv"},
                         metrics=results[["unlearned", "retrained"]], seconds=seconds)
    digests = model_digests(run.path)
    facts = {"dataset": config.dataset, "request": entry["request"], "forget": f"{config.forget} "
             f"({len(chosen.ids)} examples; {entry['deleted_so_far']} deleted in all)",
             "unlearned from": entry["files"]["before"]["path"], "method": config.method, **unlearned.notes,
             "attacks": ", ".join(attacks), "request (ids sha256)": entry["ids_sha256"],
             **({"skipped from the request": chosen.skipped} if chosen.skipped else {}),
             **({"not computed": "; ".join(f"{k} ({v})" for k, v in not_computed.items())} if not_computed else {})}
    tables = {"results": results, "unlearning plan": unlearned.plan.drop(columns=["config", "indices"]),
              "files (sha256)": pd.DataFrame({"file": list(digests), "sha256": list(digests.values())})}
    write_report(run.path, {"run": facts, "seconds": seconds, "files": digests,
                            "request": {"examples": len(chosen.ids), "ids_sha256": entry["ids_sha256"]},
                            "ledger": {"request": entry["request"], "line_sha256": Ledger.line_digest(entry)}},
                 tables, {})
    ledger.append(entry)
    list_requests(folder, ledger)
    results.attrs["summary"] = (f"request {entry['request']}: {len(chosen.ids)} examples unlearned in "
                                f"{seconds['unlearn']:.1f} s ({seconds['unlearn'] / seconds['reference']:.1%} of "
                                f"retraining); ToW {results.loc['tow', 'unlearned']:.3f} (before: "
                                f"{results.loc['tow', 'before']:.3f})\nthe latest model is "
                                f"{entry['files']['after']['path']} (sha256 {entry['files']['after']['sha256'][:12]}"
                                f"...); wrote {inside} and appended to {ledger.path}")
    return RunResult(results=results, plan=unlearned.plan, scores=pd.DataFrame(), folder=run.path)


def list_requests(folder: Path, ledger: Ledger) -> None:
    """Rewrite the run's report section and ``results.json`` table that list the deletion requests."""
    table = ledger.table()
    report = folder / "report.md"
    if report.is_file():
        text = report.read_text()
        heading = f"\n## {REQUESTS_TABLE}\n"
        start = text.find(heading)
        end = text.find("\n## ", start + len(heading)) if start >= 0 else -1
        section = f"{heading}\n{table.to_markdown(floatfmt='.4g', index=False)}\n"
        text = (text[:start] + section + (text[end:] if end >= 0 else "") if start >= 0
                else text + section)
        write_text(report, text)
    results = folder / "results.json"
    if results.is_file():
        payload = json.loads(results.read_text())
        payload.setdefault("tables", {})[REQUESTS_TABLE] = json.loads(table.to_json(orient="records"))
        write_text(results, json.dumps(payload, indent=2) + "\n")
