"""Proxies by name: ``@register_proxy`` fills the registry, :func:`compute` runs any of them.

Every proxy returns one value per training example as a pandas Series indexed by training-set index, and declares
whether a higher value means *more* memorized (the confidence family does not: a confidently learned example is
typical, so its sign flips), on every kind of example or by kind (on token sequences the confidence family's sign
is the images' reversed: a fortune is one of a kind, and what a model gets right of it it gets right because it
saw it). :func:`compute` records the direction for the examples it scored.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from .registries import Registry

__all__ = ["ENTRY_POINT_GROUP", "Proxy", "available", "compute", "get_proxy", "higher_is_memorized", "register_proxy"]

ENTRY_POINT_GROUP = "unlearn.proxies"
"""Outside packages add proxies through this entry-point group: each entry point names a module whose import
registers them."""


@dataclass(frozen=True)
class Proxy:
    """A registered proxy: ``fn(**inputs, **options) -> np.ndarray [N]``."""

    name: str
    fn: Callable[..., np.ndarray]
    higher_is_memorized: bool
    needs: tuple[str, ...]
    description: str
    tasks: tuple[str, ...] | None = None
    """The kinds of example it scores (:attr:`proxies.tasks.Task.name`); None: any."""
    directions: Mapping[str, bool] = field(default_factory=dict)
    """Where the direction differs by the kind of example: ``{task name: higher_is_memorized}``."""

    def scores(self, task: str) -> bool:
        """Whether it scores examples of the task named ``task``."""
        return self.tasks is None or task in self.tasks

    def higher_is_memorized_on(self, task: str | None) -> bool:
        """The direction on examples of the task named ``task`` (None: :attr:`higher_is_memorized`).

        >>> get_proxy("confidence").higher_is_memorized_on("classification")
        False
        >>> get_proxy("confidence").higher_is_memorized_on("causal_lm")
        True
        """
        return self.directions.get(task, self.higher_is_memorized) if task is not None else self.higher_is_memorized


_PROXIES: Registry[Proxy] = Registry("proxy", ENTRY_POINT_GROUP)


def register_proxy(name: str, *, higher_is_memorized: bool, needs: Iterable[str], tasks: Iterable[str] | None = None,
                   directions: Mapping[str, bool] | None = None, force: bool = False):
    """Register ``fn`` as proxy ``name``; ``needs`` names the keyword inputs it requires (e.g. ``("recording",)``),
    ``tasks`` the kinds of example it scores (e.g. ``("causal_lm",)``; None: any), ``directions`` the kinds of
    example on which a higher score means *less* memorized where ``higher_is_memorized`` says more, or the other way
    (``{"causal_lm": True}``: on token sequences the confidence family points the other way, benchmarks/README.md).

    ``fn`` returns an array ``[N]`` (indexed 0..N-1) or a Series indexed by training index; :func:`compute` passes
    it only the keyword arguments its signature accepts.
    """

    def decorator(fn: Callable[..., np.ndarray]) -> Callable[..., np.ndarray]:
        doc = (fn.__doc__ or "").strip().splitlines()
        _PROXIES.register(name, Proxy(name, fn, higher_is_memorized, tuple(needs), doc[0] if doc else "",
                                      None if tasks is None else tuple(tasks), dict(directions or {})), force=force)
        return fn

    return decorator


def available() -> list[str]:
    """Names of the registered proxies (built-in and plugins'), in registration order."""
    return list(_PROXIES)


def get_proxy(name: str) -> Proxy:
    """The proxy registered as ``name``.

    Raises:
        ValueError: an unknown name, with the names there are.
    """
    return _PROXIES.get(name)


def _accepted(fn: Callable, inputs: dict) -> dict:
    """The keyword arguments of ``inputs`` that ``fn`` takes (all of them if it takes ``**kwargs``)."""
    parameters = inspect.signature(fn).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return inputs
    return {k: v for k, v in inputs.items() if k in parameters}


def _check_inputs(inputs: dict) -> None:
    """Refuse a keyword no registered proxy takes (a misspelt option would otherwise be dropped silently). Inputs
    one proxy takes and another does not pass: callers hand every proxy all they have."""
    known = set()
    for proxy in _PROXIES.values():
        parameters = inspect.signature(proxy.fn).parameters.values()
        if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
            return
        known |= set(proxy.needs) | {p.name for p in parameters}
    unknown = sorted(set(inputs) - known)
    if unknown:
        raise TypeError(f"no proxy takes {unknown}; proxies take {sorted(known)}")


def _task_name(inputs: dict) -> str | None:
    """The kind of example the inputs hold (:attr:`proxies.tasks.Task.name`): the recording's, else the data's;
    None when neither says."""
    from .tasks import task_of

    recording = inputs.get("recording")
    if recording is not None:
        task = getattr(recording, "task", None)
        return "classification" if task is None else task.name
    for key in ("data", "canaries"):
        if inputs.get(key) is not None:
            return task_of(inputs[key]).name
    return None


def higher_is_memorized(scores: pd.Series, task: str | None = None) -> bool:
    """Whether a higher score means more memorized: the direction :func:`compute` records in
    ``scores.attrs["higher_is_memorized"]`` (a bool on one proxy's Series, a ``{column: bool}`` dict on a table,
    which a column taken from it carries along), else, for a Series named after a registered proxy (a column read
    back from ``scores.csv``, or one that lost its ``attrs`` in a join), that proxy's direction on examples of
    ``task`` (None: its registered one).

    >>> higher_is_memorized(pd.Series([0.9, 0.2], name="confidence"))
    False

    Raises:
        ValueError: scores whose direction neither says (name it with ``higher_is_memorized=``, or set
            ``scores.attrs["higher_is_memorized"]``), a dict that has no entry for the Series' name, or a direction
            that is not a bool.
    """
    direction = scores.attrs.get("higher_is_memorized")
    if direction is None:
        if isinstance(scores.name, str) and scores.name in available():
            return get_proxy(scores.name).higher_is_memorized_on(task)
        raise ValueError(f"the scores{f' {scores.name!r}' if scores.name is not None else ''} do not say which way "
                         "they point: pass higher_is_memorized=True if a higher score means more memorized (e.g. "
                         "Feldman-Zhang memorization, CSL) or False if less (confidence, c_score), or name the "
                         "Series after its proxy")
    if isinstance(direction, Mapping):
        if scores.name not in direction:
            raise ValueError(f"scores.attrs['higher_is_memorized'] gives directions for {sorted(map(str, direction))} "
                             f"but the scores Series is named {scores.name!r}: pass one column of the table")
        direction = direction[scores.name]
    if not isinstance(direction, (bool, np.bool_)):
        raise ValueError(f"scores.attrs['higher_is_memorized'] must be True or False, got {direction!r}")
    return bool(direction)


def compute(names: str | Iterable[str], **inputs) -> pd.Series | pd.DataFrame:
    """Compute one proxy (a Series) or several (a DataFrame with one column each), indexed by training index.

    Args:
        names: a proxy name or several; see :func:`available`.
        **inputs: what the proxies need (``recording=``, ``model=``, ``data=``...) and their options.

    The Series ``attrs["higher_is_memorized"]`` (a DataFrame: a dict by column) tells the direction.

    >>> import torch
    >>> from proxies import TrainingRecorder
    >>> rec = TrainingRecorder(2); rec.start_epoch()
    >>> rec.record(torch.tensor([[2.0, 0.0], [0.0, 2.0]]), torch.tensor([0, 0]), torch.tensor([0, 1])); rec.end_epoch()
    >>> compute("accuracy", recording=rec).tolist()
    [1.0, 0.0]
    """
    _check_inputs(inputs)
    if isinstance(names, str):
        proxy = get_proxy(names)
        missing = [k for k in proxy.needs if inputs.get(k) is None]
        if missing:
            raise ValueError(f"proxy {proxy.name!r} needs {', '.join(f'{k}=' for k in missing)}")
        task = _task_name(inputs)
        if task is not None and not proxy.scores(task):
            raise ValueError(f"proxy {proxy.name!r} scores {' and '.join(proxy.tasks)} examples, not {task}; "
                             f"expected one of {[n for n in available() if get_proxy(n).scores(task)]}")
        values = proxy.fn(**_accepted(proxy.fn, inputs))
        if isinstance(values, pd.Series):
            series = values.rename(proxy.name).rename_axis("index")
        else:
            values = np.asarray(values)
            series = pd.Series(values, index=pd.RangeIndex(len(values), name="index"), name=proxy.name)
        series.attrs["higher_is_memorized"] = proxy.higher_is_memorized_on(_task_name(inputs))
        return series
    names = list(names)
    if not names:
        raise ValueError(f"names is empty: name at least one proxy of {available()}")
    columns = [compute(name, **inputs) for name in names]
    frame = pd.concat(columns, axis=1)
    frame.attrs["higher_is_memorized"] = {c.name: c.attrs["higher_is_memorized"] for c in columns}
    return frame
