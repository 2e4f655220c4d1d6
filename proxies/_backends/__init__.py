"""Scoring backends, loaded in this one module. Importing never fails: a backend that cannot load is absent.

- ``torch``: the pure-torch reference (:mod:`.pure_torch`), always present, any device.
- ``numba``: parallel CPU kernels (:mod:`.numba_kernels`), imported on first use.
- ``cpp`` / ``cuda``: the C++ and CUDA torch custom ops of ``csrc/`` (:mod:`.native`), for CPU / CUDA tensors.

``auto`` takes the first available backend of :data:`PREFERENCE` for the tensor's device. The order comes from
``benchmarks/bench_proxies.py`` (see ``benchmarks/README.md``).
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
from types import ModuleType

import torch

from . import pure_torch

log = logging.getLogger("proxies")

PREFERENCE: dict[str, tuple[str, ...]] = {"cpu": ("cpp", "numba", "torch"), "cuda": ("cuda", "torch")}
"""Backends ``auto`` tries, fastest first, per device type."""

_DEVICE_OF = {"cpp": "cpu", "numba": "cpu", "cuda": "cuda"}
_BUILD_HINT = ("build them with `pip install --no-build-isolation -e .` (or `make install`) where a C++ compiler is "
               "available; the CUDA ops also need nvcc and a GPU or FORCE_CUDA=1")
_loaded: dict[str, ModuleType] = {"torch": pure_torch}
_missing: dict[str, str] = {}  # backend -> why it is not available
_warned: set[str] = set()


def _probe() -> None:
    if importlib.util.find_spec("numba") is None:
        _missing["numba"] = "numba is not installed: `pip install numba`"
    try:
        from . import native
    except Exception as err:  # a broken build must not break `import proxies`
        reason = f"the C++/CUDA ops failed to load ({err}); rebuild them: {_BUILD_HINT}"
        _missing["cpp"] = _missing["cuda"] = reason
        return
    if native.LOAD_ERROR is not None:
        _missing["cpp"] = _missing["cuda"] = native.LOAD_ERROR
        return
    for name in ("cpp", "cuda"):
        if _DEVICE_OF[name] not in native.DEVICES:
            _missing[name] = f"the extension was built without {_DEVICE_OF[name].upper()} ops; {_BUILD_HINT}"
        elif name == "cuda" and not torch.cuda.is_available():
            _missing[name] = "the CUDA ops are built but no CUDA device is visible"
        else:
            _loaded[name] = native


_probe()


def available() -> list[str]:
    """Backends usable on this machine, e.g. ``["torch", "numba", "cpp"]``."""
    return [name for name in ("torch", "numba", "cpp", "cuda") if name not in _missing]


def _module(name: str) -> ModuleType:
    if name not in _loaded:  # numba: imported (and its cached kernels loaded) on first use
        _loaded[name] = importlib.import_module(f".{name}_kernels", __name__)
    return _loaded[name]


def resolve(backend: str, device_type: str) -> ModuleType:
    """The module whose kernels run ``backend`` on tensors of ``device_type``."""
    if backend == "auto":
        order = PREFERENCE.get(device_type, ("torch",))
        for name in order:
            if name not in _missing:
                if name != order[0] and device_type not in _warned:
                    _warned.add(device_type)
                    log.info("Defaulting to the %r backend on %s: %r is unavailable (%s)", name, device_type,
                             order[0], _missing[order[0]])
                return _module(name)
        return pure_torch
    if backend == "torch":
        return pure_torch
    if backend not in _DEVICE_OF:
        raise ValueError(f"unknown backend {backend!r}; expected 'auto' or one of {['torch', *_DEVICE_OF]}")
    if backend in _missing:
        raise ModuleNotFoundError(f"backend {backend!r} is not available: {_missing[backend]}")
    if _DEVICE_OF[backend] != device_type:
        raise ValueError(f"backend {backend!r} runs on {_DEVICE_OF[backend]} tensors, got {device_type} tensors")
    return _module(backend)
