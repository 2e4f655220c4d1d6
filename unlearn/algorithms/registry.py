"""The registry of unlearning methods.

A method is ``fn(model, forget, retain, config, *, seed, device) -> nn.Module`` plus a config dataclass whose
defaults are the published anchors' values. ``fn`` receives a private copy of the user's model (already on
``device``) and in-memory :class:`~unlearn.data.IndexedDataset` forget and retain sets; it may change the copy in
place and returns the unlearned model.

Register one with ``@register_method("name", config=MyConfig)``. Packages outside this one add methods through the
entry-point group ``unlearn.methods``: each entry point names a module whose import registers them.

:func:`unlearn.unlearn` passes a keyword that names a field of the method's config into the config (overriding
``config=``'s), and one that the registration lists in ``inputs=`` (data the method takes beyond the shared
``model``, ``forget``, ``retain``, ``config``, ``seed`` and ``device``, e.g. ``rum``'s ``scores=``) to ``fn`` as a
keyword; it refuses any other. ``fn`` may instead return an :class:`~unlearn.unlearning.UnlearnResult`, for a
method that makes its own plan of several steps (``rum``: one per memorization group).

>>> "finetune" in methods()
True
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from proxies.registries import Registry

__all__ = ["NOOP", "SHARED_INPUTS", "Method", "get_method", "make_config", "methods", "register_method", "takers"]

ENTRY_POINT_GROUP = "unlearn.methods"


@dataclass(frozen=True)
class Method:
    name: str
    fn: Callable
    config: type
    description: str
    inputs: tuple[str, ...] = ()
    """Keywords ``fn`` takes beyond the shared ones (see the module doc)."""
    epoch: str = "both"
    """What one epoch of the method passes over: ``"forget"``, ``"retain"`` or ``"both"`` sets, its cost model
    (:func:`unlearn.algorithms.rum.plan_cost`)."""

    def settings(self) -> list[str]:
        """The names of the config's fields, in declaration order."""
        return [f.name for f in dataclasses.fields(self.config)]

    def takes(self, keyword: str) -> bool:
        """Whether :func:`unlearn.unlearn` passes ``keyword`` to this method: an input or a setting of its config."""
        return keyword in self.inputs or keyword in self.settings()


_METHODS: Registry[Method] = Registry("unlearning method", ENTRY_POINT_GROUP)

NOOP = "noop"
"""The method name of a plan step that leaves its examples as they are (e.g. a rum group its policy leaves alone):
no method may be registered under it."""
SHARED_INPUTS = ("model", "forget", "retain", "method", "config", "seed", "device")
"""The keywords of :func:`unlearn.unlearn` that every method shares; no method may declare them as its own."""


EPOCHS = ("forget", "retain", "both")


def register_method(name: str, *, config: type, inputs: tuple[str, ...] = (), epoch: str = "both",
                    force: bool = False):
    """Register an unlearning function under ``name`` with its config dataclass; duplicates are refused.

    Args:
        name: the method's name (``method=`` of :func:`unlearn.unlearn`).
        config: the dataclass of its settings, whose defaults are the method's.
        inputs: keywords ``fn`` takes beyond the shared ones (see the module doc); none may be a shared keyword
            or a field of ``config``.
        epoch: what one epoch (``config.epochs``) passes over: the ``"forget"`` set (e.g. gradient ascent), the
            ``"retain"`` set (fine-tuning), or ``"both"`` (the default, and the upper bound): how a plan's cost is
            estimated before it runs.
        force: replace a method already registered under ``name``.
    """
    if not dataclasses.is_dataclass(config):
        raise TypeError(f"config of method {name!r} must be a dataclass, got {config!r}")
    if epoch not in EPOCHS:
        raise ValueError(f"epoch of method {name!r} must be one of {EPOCHS}, got {epoch!r}")
    if name == NOOP:
        raise ValueError(f"{name!r} names a step that leaves its examples alone; register the method under another")
    inputs = tuple(inputs)
    fields = {f.name for f in dataclasses.fields(config)}
    clash = [i for i in inputs if not isinstance(i, str) or i in SHARED_INPUTS or i in fields]
    if clash:
        raise ValueError(f"inputs of method {name!r} must be keywords other than the shared ones "
                         f"{list(SHARED_INPUTS)} and its config's fields; got {clash}")

    def decorator(fn: Callable) -> Callable:
        doc = (fn.__doc__ or "").strip().splitlines()
        _METHODS.register(name, Method(name, fn, config, doc[0] if doc else "", inputs, epoch), force=force)
        return fn

    return decorator


def methods() -> list[str]:
    """Names of the registered unlearning methods (built-in, ``"rum"`` among them, and plugins)."""
    return _METHODS.names()


def get_method(name: str) -> Method:
    """The method registered as ``name``.

    Raises:
        ValueError: an unknown name, with the names there are.
    """
    return _METHODS.get(name)


def takers(keyword: str) -> list[str]:
    """The registered methods that take ``keyword``, as a setting of their config or as an input.

    >>> takers("policy"), takers("scores")
    (['rum'], ['rum'])
    """
    return [name for name in methods() if get_method(name).takes(keyword)]


def make_config(method: Method, overrides: Any = None):
    """The method's config: its defaults, a dict of overrides, or a config instance of the right type."""
    if overrides is None:
        return method.config()
    if isinstance(overrides, method.config):
        return overrides
    if isinstance(overrides, Mapping):
        known = set(method.settings())
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ValueError(f"unknown settings {unknown} for method {method.name!r}; expected some of {sorted(known)}")
        return method.config(**overrides)
    raise TypeError(f"config for {method.name!r} must be a dict or {method.config.__name__}, "
                    f"got {type(overrides).__name__}")
