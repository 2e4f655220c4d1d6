"""Files written whole: each output goes to a temporary name beside its final one and is renamed over it once
complete (``os.replace``, atomic on one filesystem), so a crash, a full disk or Ctrl-C mid-write leaves the previous
file, or none, never a torn one that a later run would read as finished.

>>> import tempfile, pathlib
>>> path = pathlib.Path(tempfile.mkdtemp()) / "scores.csv"
>>> with written(path) as tmp:
...     _ = tmp.write_text("index,score\\n0,1.0\\n")
>>> path.read_text().splitlines()[-1], [p.name for p in path.parent.iterdir()]
('0,1.0', ['scores.csv'])
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

__all__ = ["write_text", "written"]


@contextlib.contextmanager
def written(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path to write to in the body: a file of the same name (matplotlib and numpy choose formats by its
    suffix, ``torch.save`` names its archive by its stem, so the bytes do not depend on the temporary name) inside a
    hidden folder beside ``path``; renamed over ``path`` when the body returns, removed when it raises."""
    path = Path(path)
    folder = path.with_name(f".{path.name}.{os.getpid()}.partial")
    folder.mkdir(exist_ok=True)
    tmp = folder / path.name
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
        folder.rmdir()


def write_text(path: str | os.PathLike, text: str) -> None:
    """``Path(path).write_text(text)``, written whole."""
    with written(path) as tmp:
        tmp.write_text(text)
