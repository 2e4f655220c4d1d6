"""Unlearning methods: the registry (:mod:`.registry`), the plan a run follows (:mod:`.plan`), the SGD settings
and loop the gradient-based methods share (:mod:`.sgd`), the built-in methods (one file each) and ``rum``
(:mod:`.rum`), which unlearns each memorization group with its own method. Importing this package registers the
built-in methods. (The package is ``algorithms``, not ``methods``: :func:`unlearn.methods` lists them.)

>>> "finetune" in methods() and "rum" in methods()
True
"""

from . import (  # noqa: F401  (each registers its method)
    finetune,
    influence,
    l1_sparse,
    neggrad,
    neggrad_plus,
    npo,
    random_label,
    retrain,
    rum,
    salun,
    scrub,
    sga,
    sharp_minmax,
)
from .plan import PlanStep, UnlearnResult, run_step
from .registry import NOOP, SHARED_INPUTS, Method, get_method, make_config, methods, register_method, takers

__all__ = ["NOOP", "SHARED_INPUTS", "Method", "PlanStep", "UnlearnResult", "get_method", "make_config", "methods",
           "register_method", "run_step", "takers"]
