"""NPO and SimNPO: unlearning by a preference loss that has the forget set's likelihood fall, and then saturates,
where gradient ascent on it would go on without bound.

- **NPO**, Negative Preference Optimization (Zhang et al. 2024, arXiv 2404.05868):
  ``L_F = -(2/beta) log sigmoid(-beta [log pi(y|x) - log pi_ref(y|x)])``, ``log pi(y|x)`` a sequence's *sum* of
  token log-probabilities (not length-normalised) and ``pi_ref`` a frozen copy of the model unlearning starts from.
  At ``pi = pi_ref`` it equals ``(2/beta) log 2`` and its gradient is that of gradient ascent on the summed NLL;
  it fades as ``pi`` falls below ``pi_ref``.
- **SimNPO** (Fan et al. 2024, arXiv 2410.07163): ``L_F = -(2/beta) log sigmoid(beta [NLL(y|x)/|y| - delta])``, the
  *length-normalised* NLL and no reference model (the paper writes the margin as ``gamma = beta * delta``).

Each method minimises ``forget_weight * mean L_F + retain_weight * NLL(retain)`` over the batches of the forget set,
with a batch of the retain set drawn alongside each (open-unlearning's ``ForgetRetainDataset`` anchors on the forget
set the same way; it draws every retain example uniformly at random, where here the retain set is walked in a fresh
random order, pass after pass across the epochs, so no retain example is used twice before every other has been).
The batch means and the weights are open-unlearning's (``trainer/unlearn/npo.py``, ``simnpo.py``,
``configs/trainer/NPO.yaml``, ``SimNPO.yaml``): NPO ``beta`` 0.1, forget weight (its ``gamma``) 1, retain weight
(its ``alpha``) 1; SimNPO ``beta`` 4.5, ``delta`` 0, forget weight 0.125, retain weight 1. One difference: the
retain NLL here is the mean over sequences of each one's mean token NLL (:class:`~proxies.sequences.CausalLM`'s
loss, every sequence weighing the same), where Hugging Face's ``outputs.loss`` averages over the batch's tokens.

Both run on either kind of data, through the data's task: on token sequences as above; on classification data a
label is a one-token "sequence", so ``log pi(y|x)`` is the log-probability of the label (minus the cross-entropy)
and ``|y| = 1``. That is the same preference loss on the one likelihood a classifier has, and is meaningful there
(NPO's paper motivates it as bounded gradient ascent, which is a classifier's ``neggrad``). A task of another kind
counts its per-example loss as the NLL of one target.

Optimizer: the defaults below are SGD settings chosen on ``tiny_gpt`` (see the configs); LM unlearning usually
runs AdamW at lr 1e-5, which ``optimizer="adamw"`` gives (:class:`~unlearn.algorithms.sgd.SGDConfig`). They are
a language model's: on a classifier they do little (a digits CNN keeps its forget accuracy of 1.0 under either
method's defaults; NPO at lr 0.05 takes it to 0.99), so set ``lr`` and ``epochs`` there.

>>> import torch
>>> round(float(npo_loss(torch.tensor([-5.0]), torch.tensor([-5.0]), beta=0.1)), 4)  # (2/beta) log 2
13.8629
>>> round(float(simnpo_loss(torch.tensor([0.0]), beta=4.5)), 4)  # (2/beta) log 2 at zero NLL
0.3081
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset

from proxies.sequences import CausalLM, token_log_probs
from proxies.tasks import Task, task_of

from .._checks import real
from .registry import register_method
from .sgd import SGDConfig, run_sgd, shuffled

__all__ = ["NPOConfig", "SimNPOConfig", "frozen_reference", "log_likelihood", "npo", "npo_loss", "simnpo",
           "simnpo_loss"]


def npo_loss(log_p: Tensor, log_p_ref: Tensor, beta: float) -> Tensor:
    """NPO's forget loss per example: ``-(2/beta) log sigmoid(-beta (log_p - log_p_ref))``.

    Args:
        log_p: ``log pi(y|x)`` under the model being unlearned, ``[B]`` (a sequence's sum of token log-probs).
        log_p_ref: the same under the frozen reference, ``[B]``.
        beta: the inverse temperature, > 0.

    Returns:
        ``[B]``: ``(2/beta) log 2`` where the two agree, falling towards 0 as ``log_p`` falls below ``log_p_ref``.
    """
    return -(2.0 / beta) * F.logsigmoid(-beta * (log_p - log_p_ref))


def simnpo_loss(nll_mean: Tensor, beta: float, delta: float = 0.0) -> Tensor:
    """SimNPO's forget loss per example: ``-(2/beta) log sigmoid(beta (nll_mean - delta))``.

    Args:
        nll_mean: the length-normalised NLL ``-log pi(y|x) / |y|``, ``[B]``.
        beta: the inverse temperature, > 0.
        delta: the margin (the paper's ``gamma / beta``).

    Returns:
        ``[B]``: falling towards 0 as the NLL rises (minimising it pushes the forget likelihood down).
    """
    return -(2.0 / beta) * F.logsigmoid(beta * (nll_mean - delta))


def log_likelihood(task: Task, output: Tensor, targets: Tensor) -> Tensor:
    """``log pi(y|x)`` of each example, ``[B]``: the sum of a sequence's scored token log-probabilities
    (:class:`~proxies.sequences.CausalLM`), else minus the task's per-example loss (a classifier's ``log p_y``)."""
    if isinstance(task, CausalLM):
        log_probs, _ = token_log_probs(output, targets)
        return log_probs.sum(1)
    return -task.loss(output, targets, reduction="none")


def frozen_reference(model: nn.Module) -> nn.Module:
    """A copy of ``model`` in eval mode whose parameters take no gradient (NPO's ``pi_ref``)."""
    reference = copy.deepcopy(model).eval()
    for p in reference.parameters():
        p.requires_grad_(False)
    return reference


def _check_weights(config) -> None:
    real("beta", config.beta, low=0.0, low_open=True)
    real("forget_weight", config.forget_weight, low=0.0, low_open=True)
    real("retain_weight", config.retain_weight, low=0.0)


@dataclass
class NPOConfig(SGDConfig):
    """NPO's settings. ``beta``, ``forget_weight`` and ``retain_weight`` are open-unlearning's (``NPO.yaml``:
    ``beta`` 0.1, ``gamma`` 1, ``alpha`` 1); so are 10 epochs of batches of 32 (its 8 per device x 4 accumulation
    steps) and no weight decay. The lr is plain SGD's (no momentum), chosen on ``tiny_gpt`` (1 layer, width 32)
    trained on 300 fortunes and 4 canaries of 10 copies each: lr 1e-3 takes the canaries' mean token NLL from 0.25
    to 2.2, past the 1.8 of secrets never inserted, in under a second, while the retain NLL goes from 3.13 to 3.20.
    NPO's forget gradient at the start is that of ascent on the *summed* token NLL, tens of times the mean's, hence
    an lr ten times ``neggrad``'s."""

    beta: float = 0.1
    forget_weight: float = 1.0  # open-unlearning's gamma
    retain_weight: float = 1.0  # open-unlearning's alpha: weight of NLL(retain); 0 leaves the retain set out
    epochs: int = 10
    lr: float = 1e-3
    batch_size: int = 32
    momentum: float = 0.0
    weight_decay: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_weights(self)


@dataclass
class SimNPOConfig(SGDConfig):
    """SimNPO's settings. ``beta``, ``delta``, ``forget_weight`` and ``retain_weight`` are open-unlearning's
    (``SimNPO.yaml``, from the authors' TOFU config: ``beta`` 4.5, ``delta`` 0, ``gamma`` 0.125, ``alpha`` 1);
    ``delta`` is the paper's margin ``gamma / beta``, >= 0. The optimizer's were chosen on ``tiny_gpt`` as
    :class:`NPOConfig`'s: its forget gradient is ``2 sigmoid(-beta (NLL - delta))`` times the weight 0.125 per unit
    of mean token NLL, small beside the retain term's, and fading once the NLL passes a few ``1/beta``, so it takes
    SGD with momentum 0.9 at lr 0.05 for 40 epochs of batches of 32 (two seconds there) to take the canaries' NLL
    from 0.25 to 0.9 with the retain NLL unchanged (3.13 to 3.14); a larger lr raises the retain NLL first."""

    beta: float = 4.5
    delta: float = 0.0
    forget_weight: float = 0.125  # open-unlearning's gamma (npo_coeff of the authors' code)
    retain_weight: float = 1.0  # open-unlearning's alpha
    epochs: int = 40
    lr: float = 0.05
    batch_size: int = 32
    momentum: float = 0.9
    weight_decay: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_weights(self)
        real("delta", self.delta, low=0.0)


def _retain_batches(retain: Dataset, config, generator: torch.Generator,
                    device: torch.device) -> Iterator[tuple[Tensor, Tensor] | None]:
    """The retain batches to go beside the forget batches, one each, across all epochs: the retain set in a fresh
    random order, pass after pass (``None`` forever with ``retain_weight`` 0: the retain set is never read)."""
    if config.retain_weight == 0:
        while True:
            yield None
    if len(retain) == 0:
        raise ValueError("the retain set is empty: set retain_weight=0 to unlearn without one")
    while True:
        yield from shuffled(retain, config.batch_size, generator, device)


def _retain_term(model: nn.Module, task: Task, retain_batch, config) -> Tensor | float:
    if retain_batch is None:
        return 0.0
    x, y = retain_batch
    return config.retain_weight * task.loss(task.forward(model, x), y)


@register_method("npo", config=NPOConfig, epoch="forget")
def npo(model, forget, retain, config: NPOConfig, *, seed, device):
    """Negative preference optimisation against a frozen copy of the start, plus the retain NLL."""
    reference = frozen_reference(model)
    generator = torch.Generator().manual_seed(seed)
    task = task_of(forget)
    retain_batches = _retain_batches(retain, config, generator, device)

    def losses(epoch):
        for (x, y), retain_batch in zip(shuffled(forget, config.batch_size, generator, device), retain_batches,
                                        strict=False):  # the retain batches never end
            with torch.no_grad():
                log_p_ref = log_likelihood(task, task.forward(reference, x), y)
            log_p = log_likelihood(task, task.forward(model, x), y)
            forget_term = npo_loss(log_p, log_p_ref, config.beta).mean()
            yield config.forget_weight * forget_term + _retain_term(model, task, retain_batch, config)

    return run_sgd(model, config, losses, seed=seed, forget=forget)


@register_method("simnpo", config=SimNPOConfig, epoch="forget")
def simnpo(model, forget, retain, config: SimNPOConfig, *, seed, device):
    """SimNPO: NPO without a reference, on the length-normalised NLL, plus the retain NLL."""
    generator = torch.Generator().manual_seed(seed)
    task = task_of(forget)
    retain_batches = _retain_batches(retain, config, generator, device)

    def losses(epoch):
        for (x, y), retain_batch in zip(shuffled(forget, config.batch_size, generator, device), retain_batches,
                                        strict=False):  # the retain batches never end
            nll_mean = task.loss(task.forward(model, x), y, reduction="none")
            forget_term = simnpo_loss(nll_mean, config.beta, config.delta).mean()
            yield config.forget_weight * forget_term + _retain_term(model, task, retain_batch, config)

    return run_sgd(model, config, losses, seed=seed, forget=forget)
