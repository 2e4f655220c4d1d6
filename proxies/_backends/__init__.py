"""Scoring backends, loaded in this one module. Importing never fails: a backend that cannot load is absent.

``torch`` (the reference) is always present.
"""

from __future__ import annotations

import logging
from types import ModuleType

from . import reference

log = logging.getLogger("proxies")

_LOADED: dict[str, ModuleType] = {"torch": reference}
_HOW_TO_GET: dict[str, str] = {}
# fastest first, per device type
_PREFERENCE = {"cpu": ["torch"], "cuda": ["torch"]}


def available() -> list[str]:
    return list(_LOADED)


def resolve(backend: str, device_type: str) -> ModuleType:
    """The module implementing the kernels for ``backend`` on ``device_type``."""
    if backend == "auto":
        for name in _PREFERENCE.get(device_type, ["torch"]):
            if name in _LOADED:
                return _LOADED[name]
        return reference
    if backend not in _PREFERENCE["cpu"] + _PREFERENCE["cuda"] + list(_HOW_TO_GET):
        known = sorted(set(_PREFERENCE["cpu"]) | set(_HOW_TO_GET))
        raise ValueError(f"unknown backend {backend!r}; expected 'auto' or one of {known}")
    if backend not in _LOADED:
        raise ModuleNotFoundError(f"backend {backend!r} is not available here: {_HOW_TO_GET.get(backend, '')}")
    return _LOADED[backend]
