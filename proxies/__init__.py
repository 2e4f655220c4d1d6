"""Per-example memorization-score proxies: the scoring layer, which never imports ``unlearn`` (the engine above it).

>>> import proxies
>>> "confidence" in proxies.available() and "torch" in proxies.backends()
True
"""

from . import learning_speed  # noqa: F401  (the modules below register their proxies)
from ._backends import available as backends
from .batching import IndexedDataset
from .curvature import loss_curvature
from .gradients import gradient_norm
from .holdout import holdout_retraining
from .kernels import learning_events, signals, symmetric_kl
from .memorization import SubsetModels, feldman_zhang
from .predictions import predict
from .recording import TrainingRecorder
from .registry import Proxy, available, compute, get_proxy, higher_is_memorized, register_proxy

# the memorization proxies read off a recording; early_accuracy, also read off one, estimates held-out accuracy
# (a stopping target for unlearning) rather than memorization, and is not among them
RECORDING_PROXIES = ("confidence", "max_confidence", "negative_entropy", "accuracy", "forgetting_events",
                     "first_learned", "presentations_needed", "csl")

__all__ = [
    "RECORDING_PROXIES",
    "IndexedDataset",
    "Proxy",
    "SubsetModels",
    "TrainingRecorder",
    "available",
    "backends",
    "compute",
    "feldman_zhang",
    "get_proxy",
    "gradient_norm",
    "higher_is_memorized",
    "holdout_retraining",
    "learning_events",
    "loss_curvature",
    "predict",
    "register_proxy",
    "signals",
    "symmetric_kl",
]
