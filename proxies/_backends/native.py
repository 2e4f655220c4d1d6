"""The C++ / CUDA scoring ops of ``csrc/`` (torch custom ops in the ``memunlearn`` namespace).

Loading never raises: if the library is missing or broken, :data:`LOAD_ERROR` says why and how to build it, and
:data:`DEVICES` is empty. Fake (meta) kernels are registered so the ops work under ``torch.compile`` and pass
``torch.library.opcheck``.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
from torch import Tensor

__all__ = ["DEVICES", "LOAD_ERROR", "learning_events", "signals", "symmetric_kl"]

_HOW_TO_BUILD = ("the C++ ops are not built: run `pip install --no-build-isolation -e .` (or `make install`) with a "
                 "C++ compiler; for the CUDA ops also set FORCE_CUDA=1 and TORCH_CUDA_ARCH_LIST where no GPU is "
                 "visible")


def _library_path() -> Path | None:
    spec = importlib.util.find_spec("proxies._C")
    if spec is not None and spec.origin:
        return Path(spec.origin)
    here = Path(__file__).resolve().parent.parent
    found = sorted(here.glob("_C*.so"))
    return found[0] if found else None


def _load() -> tuple[str | None, frozenset[str]]:
    path = _library_path()
    if path is None:
        return _HOW_TO_BUILD, frozenset()
    try:
        torch.ops.load_library(str(path))
    except (OSError, RuntimeError) as err:
        return f"{path} failed to load ({err}); rebuild it: {_HOW_TO_BUILD}", frozenset()
    devices = {key.lower() for key in ("CPU", "CUDA")
               if torch._C._dispatch_has_kernel_for_dispatch_key("memunlearn::signals", key)}
    return None, frozenset(devices)


LOAD_ERROR, DEVICES = _load()

if LOAD_ERROR is None:

    @torch.library.register_fake("memunlearn::signals")
    def _signals_fake(logits: Tensor, labels: Tensor) -> Tensor:
        return logits.new_empty((logits.shape[0], 5))

    @torch.library.register_fake("memunlearn::learning_events")
    def _learning_events_fake(correct: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        n = correct.shape[1]
        return tuple(correct.new_empty((n,), dtype=torch.int64) for _ in range(3))

    @torch.library.register_fake("memunlearn::symmetric_kl")
    def _symmetric_kl_fake(logits_p: Tensor, logits_q: Tensor) -> Tensor:
        return logits_p.new_empty((logits_p.shape[0],))


def signals(logits: Tensor, labels: Tensor) -> Tensor:
    return torch.ops.memunlearn.signals(logits, labels)


def learning_events(correct: Tensor) -> dict[str, Tensor]:
    forgetting, first, needed = torch.ops.memunlearn.learning_events(correct)
    return {"forgetting_events": forgetting, "first_learned": first, "presentations_needed": needed}


def symmetric_kl(logits_p: Tensor, logits_q: Tensor) -> Tensor:
    return torch.ops.memunlearn.symmetric_kl(logits_p, logits_q)
