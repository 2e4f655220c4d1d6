"""``unlearn run`` as a library: its settings (:class:`RunConfig`, TOML in and out), :func:`run` and the other
commands' calls, the stages they are made of, the run folder that lets a rerun reuse them, and the deletion ledger
(:func:`request`, :func:`verify`).

>>> from unlearn.pipeline import RunConfig, run
>>> config = RunConfig(train_size=100, epochs=1, checkpoints=1, proxies=["confidence"], forget="random:10")
>>> config.training_recipe().epochs, config.folder.as_posix()
(1, 'runs/digits')
"""

from ..algorithms.rum.grouping import group_of
from .config import DEFAULT_PROXIES, RunConfig
from .deletion import request
from .folder import FolderInUseError, RunFolder, locked
from .job import RUN_OUTPUTS, RUN_STAGES, RunResult, run, run_attack, run_proxies, train_original
from .ledger import Ledger, LedgerError, verify
from .scores import per_example_scores, subset

__all__ = [
    "DEFAULT_PROXIES",
    "RUN_OUTPUTS",
    "RUN_STAGES",
    "FolderInUseError",
    "Ledger",
    "LedgerError",
    "RunConfig",
    "RunFolder",
    "RunResult",
    "group_of",
    "locked",
    "per_example_scores",
    "request",
    "run",
    "run_attack",
    "run_proxies",
    "subset",
    "train_original",
    "verify",
]
