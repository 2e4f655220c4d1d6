"""The causal-LM task and the per-sequence signals, against per-token loops written from their definitions, on real
fortunes scored by a small GPT-2."""

import math

import numpy as np
import pytest
import torch

from proxies import TrainingRecorder
from proxies.batching import IndexedDataset, batches
from proxies.sequences import (
    IGNORE_INDEX,
    SEQUENCE_COLUMNS,
    CausalLM,
    sequence_fingerprint,
    sequence_signals,
)
from tests.conftest import requires_fortunes
from unlearn.models import create_model


@pytest.fixture(scope="module")
def text(fortunes):
    """24 real fortunes shorter than the longest kept (padded, some with an unscored prefix), a small GPT-2 (in eval
    mode: no dropout) and its logits."""
    ids, labels, _ = next(batches(fortunes.train, 200))
    short = ((labels != IGNORE_INDEX).sum(1) < fortunes.max_tokens - 4).nonzero()[:24, 0]
    ids, labels = ids[short], labels[short].clone()
    labels[::3, :4] = IGNORE_INDEX  # every third sequence leaves its first tokens unscored
    torch.manual_seed(0)
    model = create_model("tiny_gpt", vocab_size=fortunes.vocab_size, n_positions=fortunes.max_tokens, n_embd=32,
                         n_layer=1, n_head=2).eval()
    return model, ids, labels, model(ids).logits.detach()


def per_token_reference(logits, labels):
    """Each sequence's columns from a loop over its scored tokens: position t predicts token t+1."""
    rows = []
    for b in range(len(labels)):
        tokens = []
        for t in range(labels.shape[1] - 1):
            y = int(labels[b, t + 1])
            if y == IGNORE_INDEX:
                continue
            p = torch.softmax(logits[b, t].double(), 0)
            tokens.append((float(p[y]), float(p.max()), float(-(p * p.log()).sum()), -math.log(float(p[y])),
                           float(int(logits[b, t].argmax()) == y)))
        tokens = np.array(tokens)
        accuracy = tokens[:, 4].mean()
        rows.append([*tokens[:, :4].mean(0), float(accuracy == 1.0), accuracy])
    return np.array(rows)


@requires_fortunes
def test_sequence_signals_match_a_per_token_loop(text):
    _, _, labels, logits = text
    got = sequence_signals(logits, labels).numpy()
    np.testing.assert_allclose(got, per_token_reference(logits, labels), rtol=2e-5, atol=2e-6)
    assert got.shape == (len(labels), len(SEQUENCE_COLUMNS))


@requires_fortunes
def test_loss_correct_and_the_models_own_loss(text):
    model, ids, labels, logits = text
    task = CausalLM()
    reference = per_token_reference(logits, labels)
    per_sequence = task.loss(logits, labels, reduction="none")
    np.testing.assert_allclose(per_sequence.numpy(), reference[:, 3], rtol=1e-5)
    torch.testing.assert_close(task.loss(logits, labels), per_sequence.mean())
    torch.testing.assert_close(task.loss(logits, labels, reduction="sum"), per_sequence.sum())
    assert task.correct(logits, labels).tolist() == (reference[:, 4] == 1).tolist()
    # one sequence alone: Hugging Face's own loss (a mean over its scored tokens) is the same number
    hf = model(ids[:1], labels=labels[:1]).loss
    torch.testing.assert_close(per_sequence[0], hf.detach(), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="reduction"):
        task.loss(logits, labels, reduction="token")


@requires_fortunes
def test_trimming_trailing_padding_changes_nothing(text, fortunes):
    model, ids, labels, _ = text
    pad = fortunes.tokenizer.pad_token_id
    trimmed = CausalLM(pad_id=pad).forward(model, ids)
    full = CausalLM().forward(model, ids)
    assert trimmed.shape[1] < full.shape[1]  # fortunes are shorter than the longest sequence kept
    task = CausalLM(pad_id=pad)
    torch.testing.assert_close(task.loss(trimmed, labels, reduction="none"), task.loss(full, labels, reduction="none"))
    torch.testing.assert_close(sequence_signals(trimmed, labels), sequence_signals(full, labels))


def test_signals_of_a_sequence_without_scored_tokens_or_with_a_nan_logit_are_nan():
    logits = torch.zeros(3, 4, 5)
    logits[2, 1, 0] = float("nan")
    labels = torch.tensor([[-100, -100, -100, -100], [-100, 1, 2, 3], [-100, 1, 2, 3]])
    out = sequence_signals(logits, labels)
    assert out[0].isnan().all() and out[2].isnan().all()
    assert not out[1].isnan().any()


def test_check_refuses_what_cannot_score_token_sequences():
    task, labels = CausalLM(), torch.tensor([[5, 6, 7], [5, 6, -100]])
    with pytest.raises(ValueError, match=r"logits \[batch, tokens, vocab\].*got \(2, 10\)"):
        task.check(torch.zeros(2, 10), labels, 2)
    with pytest.raises(ValueError, match="all -100"):
        task.check(torch.zeros(2, 3, 10), torch.full((2, 3), -100), 2)
    with pytest.raises(ValueError, match="vocabulary has 6 tokens: a tokenizer of another vocabulary"):
        task.check(torch.zeros(2, 3, 6), labels, 2)
    assert task.check(torch.zeros(2, 3, 10), labels, 2) == 10
    with pytest.raises(ValueError, match="pad_id"):
        CausalLM(pad_id=-1)


def test_wrong_targets_change_every_scored_token_and_keep_the_rest():
    labels = torch.tensor([[-100, 3, 4, -100], [-100, 0, 9, 9]])
    wrong = CausalLM().wrong_targets(labels, 10, torch.Generator().manual_seed(0))
    scored = labels != -100
    assert (wrong[~scored] == -100).all() and (wrong[scored] != labels[scored]).all()
    assert ((wrong[scored] >= 0) & (wrong[scored] < 10)).all()


def test_fingerprints_tell_sequences_apart_and_ignore_the_device():
    labels = torch.tensor([[-100, 3, 4, -100], [-100, 4, 3, -100], [-100, 3, 4, -100]])
    fingerprint = sequence_fingerprint(labels)
    assert fingerprint[0] == fingerprint[2] != fingerprint[1] and (fingerprint >= 0).all()
    modulus, base = 2**31 - 1, 1_000_003  # the polynomial hash, in Python's exact integers
    expected = [sum((y + 101) * base**t for t, y in enumerate(row)) % modulus for row in labels.tolist()]
    assert fingerprint.tolist() == expected


@requires_fortunes
def test_the_recorder_keeps_each_sequences_signals_and_refuses_other_sequences(text, tmp_path):
    _, _, labels, logits = text
    recorder = TrainingRecorder(30)  # no task named: the [B, T, V] logits say it
    recorder.start_epoch()
    index = torch.arange(len(labels)) + 3
    recorder.record(logits[:10], labels[:10], index[:10])
    recorder.record(logits[10:], labels[10:], index[10:])
    recorder.end_epoch()
    assert recorder.columns == SEQUENCE_COLUMNS and recorder.num_classes == logits.shape[-1]
    np.testing.assert_allclose(recorder.values[0, 3:27], sequence_signals(logits, labels).numpy(), rtol=1e-6)
    assert np.isnan(recorder.values[0, :3]).all()
    recorder.check_matches(index, labels)
    with pytest.raises(ValueError, match="made on another training set"):
        recorder.check_matches(index, labels.roll(1, 0))
    recorder.save(tmp_path / "rec.npz")
    loaded = TrainingRecorder.load(tmp_path / "rec.npz")
    assert loaded.columns == SEQUENCE_COLUMNS
    np.testing.assert_array_equal(loaded["token_accuracy"], recorder["token_accuracy"])
    loaded.check_matches(index, labels)
    with pytest.raises(ValueError, match=r"\[B, T, V\] \(token sequences\)"):
        recorder.start_epoch()
        recorder.record(logits[:, 0], labels[:, 0], index)


@requires_fortunes
def test_input_gradients_of_a_sequence_are_taken_at_its_embeddings(text):
    model, ids, labels, _ = text
    task, batch = CausalLM(), slice(0, 6)
    shown, gradient = task.watch_input(model, ids[batch])
    task.loss(task.forward(model, shown), labels[batch]).backward()
    got = (gradient() * 6).flatten(1).pow(2).sum(1)  # the loss is a mean over the batch: x 6 per sequence
    for b in range(6):  # one sequence's own loss, alone
        embedded = model.get_input_embeddings()(ids[b:b + 1]).detach().requires_grad_()
        loss = task.loss(model(inputs_embeds=embedded).logits, labels[b:b + 1])
        (own,) = torch.autograd.grad(loss, embedded)
        torch.testing.assert_close(got[b], own.pow(2).sum(), rtol=1e-4, atol=1e-8)


def test_a_dataset_of_sequences_needs_its_task_to_hold_2d_targets():
    ids = torch.zeros(4, 6, dtype=torch.long)
    with pytest.raises(ValueError, match=r"expected targets \[N\]"):
        IndexedDataset(ids, ids)
    assert IndexedDataset(ids, ids, task=CausalLM())[1][1].shape == (6,)


@requires_fortunes
def test_a_proxy_points_the_way_memorization_runs_on_the_examples_it_scored(text, digits):
    """On sequences the confidence family and CSL point the other way than on images (benchmarks/README.md): the
    direction :func:`proxies.compute` records follows the recording's kind of example, and a proxy of one kind of
    example refuses the other before any work."""
    import proxies

    model, ids, labels, logits = text
    sequences = TrainingRecorder(len(labels))
    sequences.start_epoch()
    sequences.record(logits, labels, torch.arange(len(labels)))
    sequences.end_epoch()
    images = TrainingRecorder(4)
    images.start_epoch()
    images.record(torch.randn(4, 10), torch.arange(4), torch.arange(4))
    images.end_epoch()
    expected = {"confidence": (False, True), "accuracy": (False, True), "csl": (True, False),
                "loss_iqr": (True, True), "forgetting_events": (True, True)}
    for name, (on_images, on_sequences) in expected.items():
        assert proxies.compute(name, recording=images).attrs["higher_is_memorized"] is on_images, name
        assert proxies.compute(name, recording=sequences).attrs["higher_is_memorized"] is on_sequences, name
        assert proxies.get_proxy(name).higher_is_memorized_on("causal_lm") is on_sequences
    data = IndexedDataset(ids, labels, task=CausalLM(pad_id=1))
    for name in ("loss_curvature", "gradient_norm", "memorization_estimate"):
        with pytest.raises(ValueError, match=f"{name}' scores classification examples, not causal_lm"):
            proxies.compute(name, model=model, data=data, recording=sequences)
    with pytest.raises(ValueError, match="scores causal_lm examples, not classification"):
        proxies.compute("exact_memorization", model=model, data=digits.train)


@requires_fortunes
def test_a_target_accuracy_on_sequences_is_their_mean_token_accuracy(text):
    """What an unlearning step's ``target_accuracy`` compares on sequences: each sequence's fraction of tokens whose
    argmax from the true prefix is right (open-unlearning's exact memorization), averaged over sequences."""
    from unlearn.algorithms.sgd import forget_accuracy

    model, ids, labels, logits = text
    data = IndexedDataset(ids, labels, task=CausalLM(pad_id=1))
    expected = per_token_reference(logits, labels)[:, SEQUENCE_COLUMNS.index("token_accuracy")].mean()
    assert forget_accuracy(model, data, torch.device("cpu")) == pytest.approx(expected, abs=1e-6)
