"""The seam between the engine and a kind of example (proxies.tasks): Classification against its definitions, and
every path that turns a model's output into a loss, a correctness, random targets, predictions or attack signals
going through the task its data carries (a spy task, here classification itself, sees every call)."""

from __future__ import annotations

import collections

import numpy as np
import pytest
import torch
from torch.utils.data import Subset

import proxies
from proxies import IndexedDataset
from proxies.tasks import CLASSIFICATION, Classification, Task, task_of
from unlearn import create_model, unlearn
from unlearn.evaluation.attacks import extract_signals

METHODS = ("finetune", "influence", "l1_sparse", "neggrad", "neggrad_plus", "npo", "random_label", "salun", "scrub",
           "sga", "simnpo", "tau")
NEVER_STOP = {"sga": {"stop_below": 0.0}, "tau": {"snapshot_below": 0.0, "stop_below": 0.0, "descent_epochs": 1}}
"""Settings that keep sga and tau stepping on an untrained model (whose forget accuracy is below their defaults'
thresholds, where they would stop before any step)."""


def test_classification_is_the_cross_entropy_of_the_logits():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 3.0]], dtype=torch.float64)
    labels = torch.tensor([0, 1])
    by_hand = torch.tensor([-(2.0 - np.log(np.exp(2.0) + 1 + np.exp(-1.0))),
                            -(0.5 - np.log(2 * np.exp(0.5) + np.exp(3.0)))], dtype=torch.float64)
    torch.testing.assert_close(CLASSIFICATION.loss(logits, labels, reduction="none"), by_hand)
    torch.testing.assert_close(CLASSIFICATION.loss(logits, labels), by_hand.mean())
    torch.testing.assert_close(CLASSIFICATION.loss(logits, labels, reduction="sum"), by_hand.sum())
    assert CLASSIFICATION.correct(logits, labels).tolist() == [True, False]
    assert CLASSIFICATION.width(logits) == 3
    assert isinstance(CLASSIFICATION, Task)


def test_distillation_divergence_is_the_tempered_kl():
    student, teacher, t = torch.tensor([[1.0, 0.0, 2.0]]), torch.tensor([[0.0, 1.0, 1.0]]), 2.0
    p = torch.softmax(teacher / t, 1)
    q = torch.softmax(student / t, 1)
    by_hand = t**2 * (p * (p.log() - q.log())).sum()
    torch.testing.assert_close(CLASSIFICATION.divergence(student, teacher, t), by_hand)


def test_wrong_targets_are_uniform_over_the_other_classes():
    targets = torch.tensor([0, 3, 5] * 4000)
    drawn = CLASSIFICATION.wrong_targets(targets, 6, torch.Generator().manual_seed(0))
    assert (drawn != targets).all() and ((drawn >= 0) & (drawn < 6)).all()
    for label in (0, 3, 5):
        counts = np.bincount(drawn[targets == label].numpy(), minlength=6)
        others = np.delete(counts, label)
        assert counts[label] == 0 and others.min() > 0.8 * others.mean()  # 4000 draws over 5 classes: ~800 each


def test_the_model_check_says_what_it_expected():
    labels = torch.tensor([0, 4])
    assert CLASSIFICATION.check(torch.zeros(2, 5), labels, 2) == 5
    with pytest.raises(ValueError, match=r"logits \[batch, classes\], got \(2, 5, 1\)"):
        CLASSIFICATION.check(torch.zeros(2, 5, 1), labels, 2)
    with pytest.raises(ValueError, match=r"returns 3 logits but the labels span \[0, 4\]"):
        CLASSIFICATION.check(torch.zeros(2, 3), labels, 2)
    with pytest.raises(ValueError, match="got tuple"):
        CLASSIFICATION.check((torch.zeros(2, 5),), labels, 2)


class Spy(Classification):
    """Classification that counts what the engine asks of it."""

    def __init__(self) -> None:
        self.calls = collections.Counter()

    def __getattribute__(self, name):
        if name in ("forward", "loss", "correct", "width", "check", "wrong_targets", "divergence", "signals"):
            object.__getattribute__(self, "calls")[name] += 1
        return object.__getattribute__(self, name)


def _digits_with(task, digits, n=80):
    data = IndexedDataset(digits.train.inputs[:n], digits.train.targets[:n], task=task)
    return Subset(data, range(20)), Subset(data, range(20, n))


def test_a_dataset_carries_its_task_through_subsets_copies_and_joins(digits):
    spy = Spy()
    forget, retain = _digits_with(spy, digits)
    assert task_of(forget) is spy and task_of(digits.train) is CLASSIFICATION
    assert task_of(proxies.batching.examples(forget)) is spy
    assert task_of(proxies.batching.take(proxies.batching.examples(retain), [0, 2])) is spy
    assert task_of(proxies.batching.join(forget, retain)) is spy
    with pytest.raises(ValueError, match="two tasks"):
        proxies.batching.join(forget, Subset(digits.train, range(5)))


@pytest.mark.parametrize("method", METHODS)
def test_every_method_goes_through_the_task_and_unlearns_as_before(digits, method):
    torch.manual_seed(0)
    model = create_model("digits_cnn", num_classes=10, in_channels=1)
    spy = Spy()
    options = {"epochs": 1, **NEVER_STOP.get(method, {})} if method != "influence" else {}
    seen = unlearn(model, forget=_digits_with(spy, digits)[0], retain=_digits_with(spy, digits)[1], method=method,
                   seed=3, **options)
    plain = unlearn(model, forget=_digits_with(None, digits)[0], retain=_digits_with(None, digits)[1],
                    method=method, seed=3, **options)
    assert spy.calls["forward"] > 0 and spy.calls["loss"] + spy.calls["divergence"] > 0
    assert spy.calls["check"] == 1  # unlearn()'s model check
    if method in ("random_label", "salun"):
        assert spy.calls["wrong_targets"] > 0
    for (name, a), b in zip(seen.model.state_dict().items(), plain.model.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_predictions_proxies_and_attack_signals_go_through_the_task(digits):
    torch.manual_seed(0)
    model = create_model("digits_cnn", num_classes=10, in_channels=1)
    spy = Spy()
    data, plain = _digits_with(spy, digits, n=50)[1], _digits_with(None, digits, n=50)[1]
    torch.testing.assert_close(proxies.predict(model, data)[0], proxies.predict(model, plain)[0], rtol=0, atol=0)
    assert spy.calls["forward"] > 0
    for name in ("loss_curvature", "gradient_norm"):
        before = dict(spy.calls)
        np.testing.assert_array_equal(proxies.compute(name, model=model, data=data, progress=False),
                                      proxies.compute(name, model=model, data=plain, progress=False))
        assert spy.calls["loss"] > before.get("loss", 0), name
    np.testing.assert_array_equal(extract_signals(model, data).phi, extract_signals(model, plain).phi)


def test_training_and_its_recording_go_through_the_task(digits):
    from unlearn import train

    spy, runs = Spy(), []
    for task in (spy, None):
        data = _digits_with(task, digits)[1]
        recorder = proxies.TrainingRecorder(len(digits.train), task=task)
        torch.manual_seed(0)
        model, history = train(create_model("digits_cnn", num_classes=10, in_channels=1), data, epochs=1,
                               batch_size=32, recorder=recorder, progress=False)
        runs.append((model, history, recorder))
    assert spy.calls["forward"] == spy.calls["loss"] == 2 and spy.calls["correct"] == 2  # 60 examples, batch 32
    assert spy.calls["signals"] == 1  # once per epoch, over the epoch's buffer
    (seen, seen_history, seen_recording), (plain, plain_history, plain_recording) = runs
    assert all(torch.equal(a, b) for a, b in zip(seen.state_dict().values(), plain.state_dict().values(), strict=True))
    assert seen_history["accuracy"].tolist() == plain_history["accuracy"].tolist()
    np.testing.assert_array_equal(seen_recording.values, plain_recording.values)


def test_a_task_without_attack_signals_is_refused_by_name(digits):
    class Sequences(Classification):
        name = "token_sequences"

    data = _digits_with(Sequences(), digits)[0]
    with pytest.raises(ValueError, match="unknown task's attack signals 'token_sequences'"):
        extract_signals(create_model("digits_cnn", num_classes=10, in_channels=1), data)
