"""Forget sets: which training examples a deletion request removes.

A request is written as a short spec, the form the ``unlearn run --forget`` option takes:

- ``random:F`` a seeded random fraction ``F`` of the training set (``random:N``, an integer, takes N examples);
- ``high:N`` / ``low:N`` the N most / least memorized examples;
- ``mixed:N`` N examples, a third each from the least memorized, those nearest the median and the most memorized;
- ``ids:FILE`` the training examples listed in a file (a real request): integers separated by commas, spaces or
  newlines, or a CSV whose header has an ``index`` column (training indices, as in ``scores.csv``), a
  ``source_row`` column (rows of the dataset's official training file) or, for an ``imagefolder:``, a ``path``
  column (image files, ``CLASS/IMAGE.png`` relative to the folder, or any path ending so);
- ``canaries`` every inserted copy of every canary of a text dataset loaded with canaries (a leaked secret, and all
  its copies, must go).

Memorization comes from a score Series indexed by training index with higher = more memorized (negate a
confidence-like proxy first, or pass it with ``attrs["higher_is_memorized"] = False`` as :func:`proxies.compute`
returns it). Ties are broken at random with the seed: many examples share a memorization score of exactly 0.

>>> scores = pd.Series([0.9, 0.1, 0.5, 0.3, 0.7], name="memorization")
>>> select_forget("high:2", scores).tolist()
[0, 4]
>>> select_forget("mixed:3", scores).tolist()
[0, 1, 2]
>>> parse_forget_spec("random:0.1")
ForgetSpec(kind='random', size=0.1, path=None)
"""

from __future__ import annotations

import math
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

__all__ = ["FORGET_KINDS", "ForgetSpec", "parse_forget_spec", "read_ids", "select_forget"]

FORGET_KINDS = ("random", "high", "low", "mixed", "ids", "canaries")
"""The forms a forget spec takes: ``kind:N`` (``random:F`` also takes a fraction), ``ids:FILE`` or ``canaries``."""


@dataclass(frozen=True)
class ForgetSpec:
    """A parsed forget spec: ``kind``, ``size`` (a count, or a fraction in (0, 1) for random) or ``path``."""

    kind: str
    size: float | int | None = None
    path: Path | None = None

    @property
    def needs_scores(self) -> bool:
        return self.kind in ("high", "low", "mixed")


def parse_forget_spec(spec: str) -> ForgetSpec:
    """Parse ``random:0.1``, ``high:50``, ``low:50``, ``mixed:60``, ``ids:FILE`` or ``canaries``.

    Raises:
        ValueError: anything else, with the accepted forms in the message.
    """
    if not isinstance(spec, str):
        raise TypeError(f"forget spec must be a string, got {type(spec).__name__}")
    if spec == "canaries":
        return ForgetSpec(spec)
    kind, sep, value = spec.partition(":")
    forms = "random:FRACTION, random:N, high:N, low:N, mixed:N, ids:FILE or canaries"
    if not sep or kind not in FORGET_KINDS or not value:
        raise ValueError(f"bad forget spec {spec!r}; expected {forms}")
    if kind == "ids":
        return ForgetSpec(kind, path=Path(value))
    try:
        number = float(value)
    except ValueError:
        raise ValueError(f"bad forget spec {spec!r}: {value!r} is not a number; expected {forms}") from None
    if not math.isfinite(number):
        raise ValueError(f"bad forget spec {spec!r}: expected a finite number of examples; expected {forms}")
    if kind == "random" and 0.0 < number < 1.0:
        return ForgetSpec(kind, size=number)
    if kind == "random" and not value.strip().lstrip("+").isdigit() and number == int(number):
        raise ValueError(f"bad forget spec {spec!r}: a fraction lies in (0, 1) and a number of examples is written "
                         f"as a whole number (random:{int(number)} takes that many examples)")
    if number != int(number) or number < 1:
        raise ValueError(f"bad forget spec {spec!r}: expected a whole number of examples >= 1"
                         + (" or a fraction in (0, 1)" if kind == "random" else ""))
    return ForgetSpec(kind, size=int(number))


def read_ids(path: str | os.PathLike, *, source_rows: np.ndarray | None = None,
             source_paths: list[str] | None = None) -> np.ndarray:
    """Training indices listed in a file (see the module doc), sorted, duplicates dropped.

    Args:
        path: the file.
        source_rows: the official training-file row of each training example, to translate a ``source_row`` column.
        source_paths: each training example's file (``Splits.train_paths``), to translate a ``path`` column.

    Raises:
        ValueError: unreadable content, an empty list, or ``source_row`` values none of which is in the training
            split (those that are not are skipped with a warning: the model never trained on them).
        OSError: a missing or unreadable file.
    """
    path = Path(path)
    text = path.read_text()
    first = next(iter(re.split(r"[\s,;]+", text.strip())), "")
    if first and not _is_number(first):  # a header: read it as a CSV
        table = pd.read_csv(path)
        if "index" in table.columns:
            ids = table["index"].to_numpy()
        elif "source_row" in table.columns:
            if source_rows is None:
                raise ValueError(f"{path}: a source_row column needs the dataset's training rows")
            position = {int(r): i for i, r in enumerate(source_rows)}
            ids = _translated(path, "source rows", [int(r) for r in table["source_row"]], position.get)
        elif "path" in table.columns:
            if source_paths is None:
                raise ValueError(f"{path}: a path column names the images of an imagefolder: dataset; this one has "
                                 "no files (use index or source_row)")
            position = {p: i for i, p in enumerate(source_paths)}
            ids = _translated(path, "paths", [str(p) for p in table["path"]],
                              lambda p: _by_path(p, position))
        else:
            raise ValueError(f"{path}: a CSV of ids needs an 'index', 'source_row' or 'path' column, got "
                             f"{list(table.columns)}")
    else:
        lines = [[t for t in re.split(r"[\s,;]+", line) if t] for line in text.splitlines()]
        for number, tokens in enumerate(lines, 1):
            bad = next((t for t in tokens if not t.lstrip("-").isdigit()), None)
            if bad is not None:
                raise ValueError(f"{path}, line {number}: expected integer training indices, found {bad!r}"
                                 + (" (indices are written as whole numbers: 1, not 1.0)" if _is_number(bad) else ""))
        ids = [int(t) for tokens in lines for t in tokens]
    ids = np.asarray(ids)
    if len(ids) == 0:
        raise ValueError(f"{path} lists no training indices")
    if ids.dtype == object:  # a CSV column pandas could not read as numbers
        row = next((i for i, v in enumerate(ids.tolist()) if not str(v).strip().lstrip("-").isdigit()), None)
        if row is not None:
            raise ValueError(f"{path}, line {row + 2}: expected integer training indices, found {ids[row]!r}")
    if ids.dtype == object or np.issubdtype(ids.dtype, np.integer):
        too_big = [int(i) for i in ids.tolist() if not -(2**63) <= int(i) < 2**63]
        if too_big:
            raise ValueError(f"{path}: {too_big[0]} is no training index (too large for any dataset)")
    if not np.issubdtype(ids.dtype, np.integer) and ids.dtype != object:
        row = next((i for i, v in enumerate(ids.tolist()) if not float(v).is_integer()), 0)
        raise ValueError(f"{path}, line {row + 2}: expected integer training indices, got {ids.tolist()[row]!r} "
                         f"(a {ids.dtype} column); indices are written as whole numbers: 1, not 1.0")
    ids = np.asarray(ids, dtype=np.int64)
    unique = np.unique(ids)
    if len(unique) < len(ids):
        warnings.warn(f"{path}: {len(ids) - len(unique)} ids are listed more than once (e.g. "
                      f"{int(pd.Series(ids).value_counts().index[0])}); each is removed once", stacklevel=2)
    return unique


def _translated(path: Path, what: str, names: list, index_of) -> np.ndarray:
    """The training indices of ``names`` (source rows or files); those the model never trained on are skipped with
    a warning (held out for validation or test, or outside the training subset), and none at all is refused."""
    found = [index_of(name) for name in names]
    unknown = [name for name, i in zip(names, found, strict=True) if i is None]
    if len(unknown) == len(names):
        raise ValueError(f"{path}: none of its {len(names)} {what} is in the training split (e.g. {unknown[0]})")
    if unknown:  # the model never trained on them: nothing to do
        warnings.warn(f"{path}: {len(unknown)} of {len(names)} {what} were never trained on (e.g. {unknown[0]}: "
                      "held out for validation or test, or outside the training subset); they are skipped",
                      stacklevel=3)
    return np.array([i for i in found if i is not None], dtype=np.int64)


def _by_path(name: str, position: dict[str, int]) -> int | None:
    """The training index of the file ``name``: as written (``CLASS/IMAGE.png``) or any path that ends so (an
    absolute one)."""
    parts = Path(name).as_posix().split("/")
    return next((position[key] for key in ("/".join(parts[k:]) for k in range(len(parts))) if key in position),
                None)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _memorization(scores: pd.Series) -> pd.Series:
    import proxies

    if not isinstance(scores, pd.Series):
        raise TypeError(f"scores must be a pandas Series indexed by training index, got {type(scores).__name__}")
    values = scores.astype(float)
    if not np.isfinite(values.to_numpy()).all():
        raise ValueError("scores must be finite to rank examples by memorization")
    return values if proxies.higher_is_memorized(scores) else -values


def select_forget(spec: str | ForgetSpec, scores: pd.Series | None = None, *, num_train: int | None = None,
                  seed: int = 0, source_rows: np.ndarray | None = None, source_paths: list[str] | None = None,
                  canaries: np.ndarray | None = None, candidates: np.ndarray | None = None) -> np.ndarray:
    """The training indices a forget spec selects, sorted.

    Args:
        spec: a spec string or :class:`ForgetSpec`.
        scores: memorization (or a proxy) per training example, indexed by training index; needed by high / low /
            mixed (which must know the scores' direction: from ``attrs["higher_is_memorized"]``, as
            :func:`proxies.compute` sets it, or the name of a registered proxy), and its index is the training set
            for the other kinds.
        num_train: the training-set size, when no ``scores`` are given.
        seed: seed of random selection and of tie breaking.
        source_rows: official training-file rows of the training examples (for ``ids:`` files by source row).
        source_paths: the training examples' files (for ``ids:`` files by path).
        canaries: the training indices of the canary copies (``splits.canaries["index"]``), for ``canaries``.
        candidates: the training indices the spec chooses among (default: all); sizes and fractions count them, and
            the examples it names (``ids``, ``canaries``) must be among them (a request on a model some examples
            were already deleted from chooses among the others).

    Raises:
        ValueError: a bad spec, a size that leaves nothing to retain, or ids outside the training set.
    """
    spec = parse_forget_spec(spec) if isinstance(spec, str) else spec
    if scores is not None:
        index = scores.index.to_numpy()
    elif num_train is not None:
        index = np.arange(num_train)
    else:
        raise ValueError("select_forget needs scores= or num_train=")
    if candidates is not None:
        index = np.intersect1d(index, np.asarray(candidates, dtype=np.int64))
        if scores is not None:
            scores = scores.loc[index]
    n = len(index)
    if spec.kind == "canaries":
        if canaries is None or len(canaries) == 0:
            raise ValueError("forget spec canaries removes the canaries of a text dataset loaded with some "
                             "(--canaries K); this training set has none")
        ids = np.unique(np.asarray(canaries, dtype=np.int64))
        if len(ids) >= n or not np.isin(ids, index).all():
            raise ValueError(f"the {len(ids)} canary copies must be some, not all, of the {n} training examples")
        return ids
    if spec.kind == "ids":
        ids = read_ids(spec.path, source_rows=source_rows, source_paths=source_paths)
        outside = ids[~np.isin(ids, index)]
        if len(outside):
            raise ValueError(f"{spec.path}: {len(outside)} ids are not training indices (e.g. {int(outside[0])}; "
                             f"the training set has {n} examples, indices as in scores.csv)")
        if len(ids) == n:
            raise ValueError(f"{spec.path} lists every training example: nothing would be retained")
        return ids
    size = round(spec.size * n) if isinstance(spec.size, float) else spec.size
    limit = n - 1  # something must be retained
    if not 1 <= size <= limit:
        raise ValueError(f"forget spec {spec.kind}:{spec.size} asks for {size} of {n} training examples; "
                         f"expected 1 to {limit}")
    rng = np.random.default_rng(seed)
    if spec.kind == "random":
        return np.sort(rng.choice(index, size, replace=False))
    if scores is None:
        raise ValueError(f"forget spec {spec.kind}:{spec.size} ranks by memorization: pass scores=")
    memorization = _memorization(scores)
    shuffled = memorization.iloc[rng.permutation(n)]
    order = shuffled.sort_values(kind="stable").index.to_numpy()
    if spec.kind == "low":
        return np.sort(order[:size])
    if spec.kind == "high":
        return np.sort(order[-size:])
    per_group = [size // 3 + (i < size % 3) for i in range(3)]  # low, medium, high
    low, high = order[:per_group[0]], order[n - per_group[2]:]
    rest = order[per_group[0]:n - per_group[2]]
    nearest_median = np.argsort(np.abs(memorization.loc[rest].to_numpy() - memorization.median()), kind="stable")
    return np.sort(np.concatenate([low, rest[nearest_median[:per_group[1]]], high]))
