"""The deletion ledger of a run folder: ``ledger.jsonl``, one JSON line per deletion request, that an auditor can
check against the files on disk.

``unlearn run`` writes the first entry (its forget set, unlearned from ``model.pt`` into ``unlearned.pt``); each
``unlearn request`` appends one (the new forget set, unlearned from the latest model into
``requests/<NNN>/unlearned.pt``). An entry holds the request's training indices and their digest
(:func:`ids_digest`), the sha256 of the model before and after, of the retrained reference and of the forget list,
the method and its plan, the evaluation's metrics and the times. Two chains bind the entries: each entry's model
*before* is the previous entry's model *after*, and each entry holds the sha256 of the previous line as written, so
that no entry can be changed, dropped or reordered unseen. :func:`verify` recomputes both chains and every file's
hash.

>>> ids_digest([3, 1, 2]) == ids_digest([1, 2, 3])  # the set of indices, however they were listed
True
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

from proxies.files import write_text

__all__ = ["LEDGER", "Ledger", "LedgerError", "file_digest", "ids_digest", "verify"]

LEDGER = "ledger.jsonl"
REQUESTS_TABLE = "deletion requests (ledger.jsonl)"
"""The report's section listing every request, rewritten by each request."""
FILES = ("before", "after", "reference", "forget")
"""What each entry's ``files`` names, by role: the model unlearned from, the model it became, the model retrained
without every example deleted so far, and the CSV listing the request's examples."""


class LedgerError(ValueError):
    """A ledger that does not verify: broken chains, files that differ from the ones it records, or a request it
    cannot take (an example already deleted)."""


def file_digest(path: str | os.PathLike) -> str:
    """The sha256 of a file's bytes, in hex (``sha256sum``'s)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def ids_digest(ids) -> str:
    """The sha256 of a request's training indices: of their ascending decimal values joined by commas, in ASCII
    (``printf 1,5,9 | sha256sum`` for indices 9, 1, 5)."""
    values = np.unique(np.asarray(ids, dtype=np.int64))
    return hashlib.sha256(",".join(map(str, values.tolist())).encode()).hexdigest()


def _finite(value):
    """JSON has no NaN: a metric that was not computed is recorded as null."""
    return None if isinstance(value, float) and not math.isfinite(value) else value


class Ledger:
    """The entries of ``folder/ledger.jsonl`` (none when the file is missing), as read, unverified; see the
    module doc."""

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)
        self.path = self.folder / LEDGER
        self.lines = self.path.read_text().splitlines() if self.path.is_file() else []
        self.entries: list[dict] = []
        for number, line in enumerate(self.lines, 1):
            try:
                entry = json.loads(line)
                if not isinstance(entry, dict) or not isinstance(entry.get("files"), dict):
                    raise ValueError("not a request's entry")
            except ValueError as err:
                raise LedgerError(f"{self.path}, line {number}, is unreadable ({err})") from None
            self.entries.append(entry)

    def __len__(self) -> int:
        return len(self.entries)

    @property
    def deleted(self) -> np.ndarray:
        """Every training index deleted so far, sorted."""
        return np.unique(np.concatenate([np.asarray(e["ids"], dtype=np.int64) for e in self.entries] or
                                        [np.zeros(0, np.int64)]))

    @property
    def current(self) -> Path:
        """The latest model: the last entry's model after."""
        if not self.entries:
            raise LedgerError(f"{self.path} has no entries: the folder holds no finished `unlearn run`")
        return self.folder / self.entries[-1]["files"]["after"]["path"]

    def already_deleted(self, ids) -> dict[int, int]:
        """The ``ids`` some earlier request deleted, each with the number of that request."""
        found = {}
        for entry in self.entries:
            for i in np.intersect1d(np.asarray(ids, dtype=np.int64), entry["ids"]).tolist():
                found[int(i)] = int(entry["request"])
        return found

    def entry(self, *, ids, forget: str, files: dict[str, str], method: str, plan: pd.DataFrame,
              metrics: pd.DataFrame, seconds: dict) -> dict:
        """A new entry for these ids: ``files`` maps each role of :data:`FILES` to a path inside the folder."""
        if set(files) != set(FILES):
            raise ValueError(f"an entry names the files {FILES}, got {sorted(files)}")
        ids = np.unique(np.asarray(ids, dtype=np.int64))
        columns = [c for c in ("group", "method", "examples") if c in plan.columns]
        return {
            "request": len(self.entries) + 1,
            "time": datetime.now(UTC).isoformat(timespec="seconds"),
            "forget": forget,
            "examples": len(ids),
            "ids": ids.tolist(),
            "ids_sha256": ids_digest(ids),
            "deleted_so_far": int(len(np.union1d(self.deleted, ids))),
            "method": method,
            "plan": json.loads(plan[columns].to_json(orient="records")),
            "files": {role: {"path": Path(path).as_posix(), "sha256": file_digest(self.folder / path)}
                      for role, path in files.items()},
            "metrics": {column: {str(k): _finite(float(v)) for k, v in metrics[column].dropna().items()}
                        for column in metrics.columns},
            "seconds": {k: _finite(None if v is None else round(float(v), 3)) for k, v in seconds.items()},
            "previous": hashlib.sha256(self.lines[-1].encode()).hexdigest() if self.lines else None,
        }

    @staticmethod
    def line_digest(entry: dict) -> str:
        """The sha256 of ``entry``'s line as :meth:`append` writes it: what the request's ``results.json`` records
        (``ledger.line_sha256``), so that an edit of the last line, which no later line hashes, is seen too."""
        return hashlib.sha256(json.dumps(entry, sort_keys=True).encode()).hexdigest()

    def append(self, entry: dict) -> None:
        """Add ``entry`` (from :meth:`entry`) as the ledger's last line; the file is written whole."""
        line = json.dumps(entry, sort_keys=True)
        write_text(self.path, "\n".join([*self.lines, line]) + "\n")
        self.lines.append(line)
        self.entries.append(entry)

    def problems(self) -> list[list[str]]:
        """For each entry, what does not verify (an empty list when all does): a broken chain of lines or of
        models, and every file whose bytes differ from the ones recorded."""
        found = []
        for k, entry in enumerate(self.entries):
            wrong = []
            if entry.get("request") != k + 1:
                wrong.append(f"it is numbered {entry.get('request')} on line {k + 1}")
            previous = hashlib.sha256(self.lines[k - 1].encode()).hexdigest() if k else None
            if entry.get("previous") != previous:
                wrong.append("the previous line is not the one it was appended after (the ledger was edited)")
            if k and entry["files"].get("before", {}).get("sha256") != \
                    self.entries[k - 1]["files"].get("after", {}).get("sha256"):
                wrong.append(f"its model before is not request {k}'s model after (the chain of models is broken)")
            if entry.get("ids_sha256") != ids_digest(entry.get("ids", [])):
                wrong.append("its ids do not match their digest")
            results = self._results_of(entry)
            recorded = _recorded_line(results)
            if recorded is not None and recorded != hashlib.sha256(self.lines[k].encode()).hexdigest():
                wrong.append(f"its line is not the one {results.relative_to(self.folder).as_posix()} recorded (the "
                             "ledger was edited)")
            for role in FILES:
                record = entry["files"].get(role)
                if record is None:
                    wrong.append(f"it records no {role} file")
                    continue
                path = self.folder / record["path"]
                if not path.is_file():
                    wrong.append(f"{record['path']} ({role}) is missing")
                elif file_digest(path) != record["sha256"]:
                    wrong.append(f"{record['path']} ({role}) differs from the file the ledger recorded")
            found.append(wrong)
        return found

    def _results_of(self, entry: dict) -> Path:
        """The ``results.json`` written beside the request's model after (the run's, or its request folder's)."""
        return (self.folder / entry["files"].get("after", {}).get("path", "")).parent / "results.json"

    def check(self) -> None:
        """Raise :class:`LedgerError` naming what does not verify, if anything."""
        wrong = [f"request {k}: {'; '.join(w)}" for k, w in enumerate(self.problems(), 1) if w]
        if wrong:
            raise LedgerError(f"{self.path} does not verify ({' | '.join(wrong)}); `unlearn verify "
                              f"{self.folder}` lists every check")

    def table(self) -> pd.DataFrame:
        """One row per request: when, what, how many examples (and in all), method, the model it left and its
        digest's first 12 digits, the unlearned model's ToW where measured."""
        rows = [{"request": e["request"], "time": e["time"], "forget": e["forget"], "examples": e["examples"],
                 "deleted so far": e["deleted_so_far"], "method": e["method"], "model": e["files"]["after"]["path"],
                 "sha256": e["files"]["after"]["sha256"][:12],
                 "tow": e["metrics"].get("unlearned", {}).get("tow")} for e in self.entries]
        return pd.DataFrame(rows, columns=["request", "time", "forget", "examples", "deleted so far", "method",
                                           "model", "sha256", "tow"])


def _recorded_line(path: Path) -> str | None:
    """The ledger line's sha256 a ``results.json`` recorded, if it did."""
    try:
        recorded = json.loads(path.read_text()).get("ledger", {}).get("line_sha256")
    except (OSError, ValueError, AttributeError):
        return None
    return recorded if isinstance(recorded, str) else None


def verify(folder: str | os.PathLike) -> pd.DataFrame:
    """Check a run folder's ledger: both chains and every recorded file's sha256, per request. One row per request
    (its number, examples, model after and ``verified``, with ``problems`` saying what failed); ``attrs["ok"]`` is
    True when every request verifies and ``attrs["current"]`` names the latest model.

    Raises:
        LedgerError: the folder has no ledger, or a line of it is unreadable.
    """
    ledger = Ledger(folder)
    if not ledger.entries:
        raise LedgerError(f"{Path(folder)} has no {LEDGER}: it is written by `unlearn run` and `unlearn request`")
    problems = ledger.problems()
    table = pd.DataFrame({"request": [e["request"] for e in ledger.entries],
                          "examples": [e["examples"] for e in ledger.entries],
                          "model": [e["files"]["after"]["path"] for e in ledger.entries],
                          "verified": [not p for p in problems],
                          "problems": ["; ".join(p) for p in problems]})
    table.attrs["ok"] = bool(table["verified"].all())
    table.attrs["current"] = str(ledger.current)
    return table
