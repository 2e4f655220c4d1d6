"""Per-example memorization-score proxies.

>>> import proxies
>>> "confidence" in proxies.available() and "torch" in proxies.backends()
True
"""

from . import learning_speed  # noqa: F401  (registers the recording-based proxies)
from ._backends import available as backends
from .kernels import learning_events, signals, symmetric_kl
from .recording import TrainingRecorder
from .registry import Proxy, available, compute, get_proxy, register_proxy

RECORDING_PROXIES = ("confidence", "max_confidence", "negative_entropy", "accuracy", "forgetting_events",
                     "first_learned", "presentations_needed", "csl")

__all__ = [
    "RECORDING_PROXIES",
    "Proxy",
    "TrainingRecorder",
    "available",
    "backends",
    "compute",
    "get_proxy",
    "learning_events",
    "register_proxy",
    "signals",
    "symmetric_kl",
]
