"""Evaluation: :func:`evaluate` (accuracies, membership-inference attacks and ToW beside a retrained reference,
:mod:`.evaluator`), the attacks on signals extracted once (:mod:`.attacks`), the unlearning metrics
(:mod:`.metrics`), shadow models (:mod:`.shadows`), what it reports of a causal language model
(:mod:`.language`) and the run report (:mod:`.report`)."""

from .evaluator import evaluate, evaluate_ulira

__all__ = ["evaluate", "evaluate_ulira"]
