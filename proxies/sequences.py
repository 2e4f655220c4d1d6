"""Token sequences for causal language models: the :class:`CausalLM` task and the per-sequence signals.

Hugging Face's conventions hold throughout. An example is ``(input_ids [T], labels [T], index)``; ``labels`` equals
``input_ids`` where a token is scored and -100 elsewhere (padding, an unscored prefix). The model maps ``input_ids
[B, T]`` to logits ``[B, T, V]`` (or an output with ``.logits``), and the logits at position t predict token t+1, so
every loss and signal compares ``logits[:, :-1]`` with ``labels[:, 1:]`` (:func:`next_token`).

A sequence's signals, from one forward pass (:func:`sequence_signals`, columns :data:`SEQUENCE_COLUMNS`):

- ``confidence``, ``max_confidence``, ``entropy``: the means over its scored tokens of the label's probability, the
  largest probability and the entropy of the next-token distribution (the confidence family, per token);
- ``loss``: the mean token negative log-likelihood, i.e. minus the mean token log-probability;
- ``correct``: exact match, 1 when every scored token is the argmax given the true prefix (the learning event of
  exact memorization);
- ``token_accuracy``: the fraction of scored tokens that are the argmax (open-unlearning's exact memorization).

>>> logits = torch.tensor([[[0.0, 4.0], [4.0, 0.0], [0.0, 0.0]]])   # one sequence, 3 positions, 2 tokens
>>> labels = torch.tensor([[-100, 1, 1]])                            # tokens 1 and 2 scored
>>> CAUSAL_LM.correct(logits, labels).tolist(), round(CAUSAL_LM.loss(logits, labels).item(), 4)
([False], 2.0181)
>>> dict(zip(SEQUENCE_COLUMNS, sequence_signals(logits, labels)[0].tolist()))["token_accuracy"]
0.5
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import kernels
from .kernels import SIGNAL_COLUMNS
from .tasks import task_of

__all__ = ["CAUSAL_LM", "IGNORE_INDEX", "SEQUENCE_COLUMNS", "CausalLM", "causal_task_of", "input_embeddings",
           "next_token",
           "scored_lengths", "sequence_fingerprint", "sequence_signals", "token_log_probs"]

IGNORE_INDEX = -100
"""The label of a token that is not scored (Hugging Face's and ``F.cross_entropy``'s default)."""

SEQUENCE_COLUMNS = (*SIGNAL_COLUMNS, "token_accuracy")
"""The recorder's columns for token sequences: the classification columns, per sequence, and the token accuracy."""


def logits_of(output) -> Tensor:
    """The logits of a model's output: the tensor itself, or its ``.logits`` (a ``transformers`` output)."""
    return output if isinstance(output, Tensor) else getattr(output, "logits", output)


def next_token(logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """``(logits[:, :-1], labels[:, 1:])``: each position's prediction beside the token it predicts. Labels longer
    than the logits (a batch whose trailing padding the model was not shown) are cut to them."""
    labels = labels[:, :logits.shape[1]]
    return logits[:, :-1], labels[:, 1:]


def scored_lengths(labels: Tensor) -> Tensor:
    """How many tokens of each sequence are scored, ``[B]`` long: labels other than -100 after the first position
    (the first token has no prefix to be predicted from)."""
    return (labels[:, 1:] != IGNORE_INDEX).sum(1)


def token_log_probs(logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """``(log_probs [B, T-1], scored [B, T-1])``: the log-probability of each next token under the model (0 where not
    scored) and which are scored, in float32."""
    logits, labels = next_token(logits, labels)
    scored = labels != IGNORE_INDEX
    log_probs = torch.log_softmax(logits.float(), dim=-1)
    picked = log_probs.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return picked.masked_fill(~scored, 0.0), scored


def sequence_signals(logits: Tensor, labels: Tensor, *, backend: str = "auto") -> Tensor:
    """Each sequence's signals ``[B, 6]`` float32 (columns :data:`SEQUENCE_COLUMNS`; see the module doc): the
    scored tokens' softmax signals from :func:`proxies.kernels.signals` (its fast kernels), averaged per sequence.
    A sequence with no scored token, or a non-finite logit at a scored position, gets NaN in every column.
    """
    logits = logits_of(logits).detach()
    batch, length, width = logits.shape
    # the token each position predicts (-100 at the last); the kernels score every position of the logits as they
    # are (a view, no copy: copying out the scored positions cost more than scoring the others), then the
    # unscored ones are dropped
    predicted = torch.full((batch, length), IGNORE_INDEX, dtype=torch.long, device=labels.device)
    predicted[:, :-1] = labels[:, 1:length]
    predicted = predicted.to(logits.device)
    scored = predicted != IGNORE_INDEX
    per_token = kernels.signals(logits.reshape(-1, width), predicted.clamp(min=0).reshape(-1), backend=backend,
                                check_finite=False).float().view(batch, length, -1)
    sums = per_token.masked_fill(~scored[..., None], 0.0).sum(1)
    counts = scored.sum(1).float()
    correct = SIGNAL_COLUMNS.index("correct")
    token_accuracy = sums[:, correct] / counts
    means = sums / counts[:, None]
    # exact match: every scored token right (a NaN token, from a non-finite logit, makes the sum NaN)
    means[:, correct] = (sums[:, correct] == counts).float().masked_fill(sums[:, correct].isnan(), float("nan"))
    out = torch.cat([means, token_accuracy[:, None]], dim=1)
    return out.masked_fill((counts == 0)[:, None], float("nan"))


_HASH_MODULUS, _HASH_BASE = 2_147_483_647, 1_000_003


def sequence_fingerprint(labels: Tensor) -> Tensor:
    """A non-negative int64 hash of each label sequence ``[B, T] -> [B]`` (the same on every device), which a
    recording keeps to refuse another training set's sequences, as it keeps a class label for an image."""
    labels = labels.long()
    terms = (labels + 101) % _HASH_MODULUS * _powers(labels.shape[1]).to(labels.device) % _HASH_MODULUS
    return terms.sum(1) % _HASH_MODULUS


@functools.cache
def _powers(length: int) -> Tensor:
    """``_HASH_BASE ** t mod _HASH_MODULUS`` for t < length (each below 2^31: a product of two fits in int64)."""
    powers = [1]
    for _ in range(1, length):
        powers.append(powers[-1] * _HASH_BASE % _HASH_MODULUS)
    return torch.tensor(powers, dtype=torch.long)


def input_embeddings(model: nn.Module) -> nn.Module:
    """The module that embeds a causal LM's tokens: ``model.get_input_embeddings()`` (``transformers``), else its
    first ``nn.Embedding``.

    Raises:
        ValueError: a model with neither.
    """
    getter = getattr(model, "get_input_embeddings", None)
    embedding = getter() if callable(getter) else None
    if embedding is None:
        embedding = next((m for m in model.modules() if isinstance(m, nn.Embedding)), None)
    if embedding is None:
        raise ValueError(f"{type(model).__name__} has no token embedding (get_input_embeddings() or an "
                         "nn.Embedding): the input-gradient signals of token sequences are taken at its output")
    return embedding


class CausalLM:
    """Token sequences scored by a causal language model (the module doc).

    Args:
        pad_id: the padding token. Given it, a batch is shown to the model without its trailing columns of padding
            (a causal model's logits at the real tokens do not depend on padding after them, so the loss and the
            signals are those of the full batch, for less compute).
    """

    name = "causal_lm"
    columns = SEQUENCE_COLUMNS

    def __init__(self, pad_id: int | None = None) -> None:
        if pad_id is not None and (isinstance(pad_id, bool) or not isinstance(pad_id, int) or pad_id < 0):
            raise ValueError(f"pad_id must be a token id >= 0 or None, got {pad_id!r}")
        self.pad_id = pad_id

    def forward(self, model: nn.Module, inputs: Tensor) -> Tensor:
        """``model(input_ids)``'s logits ``[B, T', V]``, ``T'`` the batch's length without trailing padding."""
        if self.pad_id is not None and inputs.ndim == 2 and inputs.shape[1] > 1:
            real = (inputs != self.pad_id).any(0)
            length = int(real.nonzero().max()) + 1 if bool(real.any()) else 1
            inputs = inputs[:, :max(length, 2)]
        return logits_of(model(inputs))

    def loss(self, output: Tensor, targets: Tensor, reduction: str = "mean") -> Tensor:
        """Each sequence's mean token NLL (``"none"``), or their mean or sum over the batch. Every sequence weighs
        the same, as every image does, where Hugging Face's loss averages over the batch's tokens."""
        logits, labels = next_token(output, targets)
        tokens = F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), reduction="none",
                                 ignore_index=IGNORE_INDEX).view(labels.shape)
        per_sequence = tokens.sum(1) / scored_lengths(targets[:, :output.shape[1]]).clamp(min=1)
        if reduction == "none":
            return per_sequence
        if reduction == "sum":
            return per_sequence.sum()
        if reduction == "mean":
            return per_sequence.mean()
        raise ValueError(f"reduction must be 'none', 'mean' or 'sum', got {reduction!r}")

    def correct(self, output: Tensor, targets: Tensor) -> Tensor:
        """Exact match: every scored token is the argmax given the true prefix, ``[B]`` bool."""
        logits, labels = next_token(output, targets)
        right = (logits.argmax(-1) == labels) | (labels == IGNORE_INDEX)
        return right.all(1) & (labels != IGNORE_INDEX).any(1)

    def width(self, output: Tensor) -> int:
        """The vocabulary size."""
        return int(output.shape[-1])

    def check(self, output: object, targets: Tensor, batch: int) -> int:
        output = logits_of(output)
        if not isinstance(output, Tensor) or output.ndim != 3 or output.shape[0] != batch:
            shape = tuple(output.shape) if isinstance(output, Tensor) else type(output).__name__
            raise ValueError(f"model must return logits [batch, tokens, vocab] for token sequences (a causal LM), "
                             f"got {shape}")
        if targets.ndim != 2:
            raise ValueError(f"labels of token sequences must be [batch, tokens], got {list(targets.shape)}")
        scored = targets[targets != IGNORE_INDEX]
        if not scored.numel() or not bool((targets[:, 1:] != IGNORE_INDEX).any()):
            raise ValueError("the labels are all -100 (or score only the first token): no token is scored")
        if int(scored.min()) < 0 or int(scored.max()) >= output.shape[-1]:
            raise ValueError(f"the labels hold token ids in [{int(scored.min())}, {int(scored.max())}] but the model's "
                             f"vocabulary has {output.shape[-1]} tokens: a tokenizer of another vocabulary?")
        return self.width(output)

    @torch.no_grad()
    def probe(self, model: nn.Module, examples) -> None:
        """Read ``(inputs, labels)`` of a few examples; refuse token ids past the model's embedding (a tokenizer of
        another vocabulary), then run the model on them (eval mode, restored) and refuse an output that is not a
        causal LM's for these labels."""
        inputs, targets = examples()
        try:
            rows = input_embeddings(model).num_embeddings
        except (ValueError, AttributeError):
            rows = None
        if rows is not None and inputs.numel() and int(inputs.max()) >= rows:
            raise ValueError(f"the data's token ids reach {int(inputs.max())} but the model embeds {rows} tokens: "
                             "a tokenizer of another vocabulary than the model's? (create_model('tiny_gpt', "
                             "vocab_size=splits.vocab_size))")
        was_training = model.training
        model.eval()
        try:
            output = self.forward(model, inputs)
        finally:
            model.train(was_training)
        self.check(output, targets.to(inputs.device), len(inputs))

    def wrong_targets(self, targets: Tensor, width: int, generator: torch.Generator) -> Tensor:
        """A uniformly random other token at each scored position (drawn on the CPU by ``generator``), -100 kept."""
        shift = torch.randint(1, width, targets.shape, generator=generator).to(targets.device)
        scored = targets != IGNORE_INDEX
        return torch.where(scored, (targets.clamp(min=0) + shift) % width, targets)

    def divergence(self, student: Tensor, teacher: Tensor, temperature: float) -> Tensor:
        """``T^2 * KL(softmax(teacher/T) || softmax(student/T))`` per position, averaged over the positions."""
        log_student = F.log_softmax(student.flatten(0, -2).float() / temperature, dim=-1)
        target = F.softmax(teacher.flatten(0, -2).float() / temperature, dim=-1)
        return F.kl_div(log_student, target, reduction="batchmean") * temperature**2

    def record(self, output: Tensor, targets: Tensor) -> Tensor:
        """What the recorder keeps of a batch: its sequences' signals ``[B, 6]``, reduced at once (an epoch's
        token logits would not fit in memory)."""
        return sequence_signals(output, targets)

    def signals(self, recorded: Tensor, fingerprints: Tensor, **options) -> Tensor:
        """The epoch's columns: what :meth:`record` kept, as it is."""
        return recorded.float()

    def fingerprint(self, targets: Tensor) -> Tensor:
        return sequence_fingerprint(targets)

    def watch_input(self, model: nn.Module, inputs: Tensor):
        """``(inputs, gradient)``: ``gradient()``, after the backward pass of one forward on ``inputs``, returns the
        gradient at the model's input embeddings ``[B, T, d]`` (the input gradient of a token sequence)."""
        kept: list[Tensor] = []

        def keep(module, args, out):
            out.retain_grad()
            kept.append(out)
            handle.remove()

        handle = input_embeddings(model).register_forward_hook(keep)

        def gradient() -> Tensor | None:
            handle.remove()
            return kept[0].grad if kept else None

        return inputs, gradient

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CausalLM) and other.pad_id == self.pad_id

    def __hash__(self) -> int:
        return hash((CausalLM, self.pad_id))

    def __repr__(self) -> str:
        return f"CausalLM(pad_id={self.pad_id})"


CAUSAL_LM = CausalLM()
"""The causal-LM task with no padding token to trim."""


def causal_task_of(data) -> CausalLM:
    """The data's :class:`CausalLM` task (it trims trailing padding), else :data:`CAUSAL_LM` (nothing to trim)."""
    task = task_of(data)
    return task if isinstance(task, CausalLM) else CAUSAL_LM
