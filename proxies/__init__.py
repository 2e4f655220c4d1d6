"""Per-example memorization-score proxies: the scoring layer, which never imports ``unlearn`` (the engine above it).

>>> import proxies
>>> "confidence" in proxies.available() and "torch" in proxies.backends()
True
"""

from . import estimate, learning_speed, training_traces  # noqa: F401  (these and the modules below register proxies)
from ._backends import available as backends
from .batching import IndexedDataset
from .curvature import loss_curvature
from .exposure import exposure, exposure_from_perplexities, log_perplexities
from .extraction import (
    discoverable_extraction,
    exact_memorization,
    extraction_probability,
    extraction_strength,
    samples_needed,
)
from .gradients import gradient_norm
from .holdout import holdout_retraining
from .kernels import learning_events, signals, symmetric_kl
from .memorization import SubsetModels, feldman_zhang
from .predictions import predict
from .recording import TrainingRecorder
from .registries import Registry
from .registry import _PROXIES as _proxy_registry
from .registry import Proxy, available, compute, get_proxy, higher_is_memorized, register_proxy
from .replay import replay

# this package's memorization proxies read off a recording, in registration order; early_accuracy, also read off
# one, estimates held-out accuracy (a stopping target for unlearning) rather than memorization, and is not among
# them; nor is token_accuracy, which only a recording of token sequences has
RECORDING_PROXIES = tuple(name for name, proxy in _proxy_registry.registered().items()
                          if "recording" in proxy.needs and name not in ("early_accuracy", "token_accuracy"))

__all__ = [
    "RECORDING_PROXIES",
    "IndexedDataset",
    "Proxy",
    "Registry",
    "SubsetModels",
    "TrainingRecorder",
    "available",
    "backends",
    "compute",
    "discoverable_extraction",
    "exact_memorization",
    "exposure",
    "exposure_from_perplexities",
    "extraction_probability",
    "extraction_strength",
    "feldman_zhang",
    "get_proxy",
    "gradient_norm",
    "higher_is_memorized",
    "holdout_retraining",
    "learning_events",
    "log_perplexities",
    "loss_curvature",
    "predict",
    "register_proxy",
    "replay",
    "samples_needed",
    "signals",
    "symmetric_kl",
]
