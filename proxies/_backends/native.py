"""The C++ / CUDA scoring ops of ``csrc/`` (torch custom ops in the ``memunlearn`` namespace).

Importing never raises: if the library is missing or broken, :data:`LOAD_ERROR` says why and how to build it, and
:data:`DEVICES` is empty. Fake (meta) kernels are registered so the ops trace under ``torch.compile`` and pass
``torch.library.opcheck``.

The library is ``proxies/_C.so``, next to the package's files: in the source tree after an editable install
(``pip install --no-build-isolation -e .`` builds it in place), in site-packages after a regular one; where it is
elsewhere, ``importlib`` finds it without importing it (it has no module init: ``torch.ops.load_library`` loads it).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
from torch import Tensor

__all__ = ["DEVICES", "LOAD_ERROR", "learning_events", "signals", "symmetric_kl"]

_HOW_TO_BUILD = ("the C++ ops are not built: run `pip install --no-build-isolation -e .` (or `make install`) with a "
                 "C++ compiler; set FORCE_CUDA=1 and TORCH_CUDA_ARCH_LIST (e.g. 9.0) for the CUDA ops where no GPU "
                 "is visible")
_OPS = ("signals", "learning_events", "symmetric_kl")


def _library_path() -> Path | None:
    # next to the imported package first, so the library always matches the Python code that loads it
    beside = Path(__file__).resolve().parent.parent / "_C.so"
    if beside.is_file():
        return beside
    try:
        spec = importlib.util.find_spec("proxies._C")
    except (ImportError, ValueError):
        spec = None
    return Path(spec.origin) if spec is not None and spec.origin and spec.origin.endswith(".so") else None


def _register_fakes() -> None:
    @torch.library.register_fake("memunlearn::signals")
    def _(logits: Tensor, labels: Tensor) -> Tensor:
        torch._check(logits.dim() == 2 and labels.dim() == 1, lambda: "signals takes logits [N, C] and labels [N]")
        return logits.new_empty((logits.shape[0], 5))

    @torch.library.register_fake("memunlearn::learning_events")
    def _(correct: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        torch._check(correct.dim() == 2, lambda: "learning_events takes correct [E, N]")
        n = correct.shape[1]
        return tuple(correct.new_empty((n,), dtype=torch.int64) for _ in range(3))

    @torch.library.register_fake("memunlearn::symmetric_kl")
    def _(logits_p: Tensor, logits_q: Tensor) -> Tensor:
        torch._check(logits_p.dim() == 2, lambda: "symmetric_kl takes logits [N, C]")
        return logits_p.new_empty((logits_p.shape[0],))


def _load() -> tuple[str | None, frozenset[str]]:
    path = _library_path()
    if path is None:
        return _HOW_TO_BUILD, frozenset()
    try:
        torch.ops.load_library(str(path))
        missing = [op for op in _OPS if not torch._C._dispatch_has_kernel(f"memunlearn::{op}")]
        if missing:
            return f"{path} lacks the ops {missing}; it is stale, rebuild it: {_HOW_TO_BUILD}", frozenset()
        devices = frozenset(key.lower() for key in ("CPU", "CUDA")
                            if all(torch._C._dispatch_has_kernel_for_dispatch_key(f"memunlearn::{op}", key)
                                   for op in _OPS))
        _register_fakes()
    except Exception as err:  # a broken or mismatched build (e.g. another torch version) must not break import
        return f"{path} failed to load ({err}); rebuild it: {_HOW_TO_BUILD}", frozenset()
    return None, devices


LOAD_ERROR, DEVICES = _load()
"""``LOAD_ERROR``: None when the ops are loaded, else why not and how to build them. ``DEVICES``: the device types
with kernels for every op, ``{"cpu"}`` or ``{"cpu", "cuda"}`` (empty when not loaded)."""


def signals(logits: Tensor, labels: Tensor) -> Tensor:
    """``[N, 5]`` softmax signals of ``logits [N, C]`` (float32/64) and int64 ``labels [N]``."""
    return torch.ops.memunlearn.signals(logits, labels)


def learning_events(correct: Tensor) -> dict[str, Tensor]:
    """Forgetting events, first learned and presentations needed (int64 ``[N]``) from bool ``correct [E, N]``."""
    forgetting, first, needed = torch.ops.memunlearn.learning_events(correct)
    return {"forgetting_events": forgetting, "first_learned": first, "presentations_needed": needed}


def symmetric_kl(logits_p: Tensor, logits_q: Tensor) -> Tensor:
    """``[N]`` symmetric KL between the row softmaxes of two ``[N, C]`` logit matrices of one dtype."""
    return torch.ops.memunlearn.symmetric_kl(logits_p, logits_q)
