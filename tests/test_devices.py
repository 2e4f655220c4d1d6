"""Device decisions, checked without a GPU: what moves where. ``meta`` tensors stand in for another device (a copy
onto them works, reading values back does not), so each probe model hands its outputs back on the CPU."""

import numpy as np
import pytest
import torch
from torch import nn

import proxies
from proxies import TrainingRecorder
from proxies.devices import model_device, model_on
from unlearn.attacks.signals import predict_queries
from unlearn.data import IndexedDataset
from unlearn.training import predict

META = torch.device("meta")


class Probe(nn.Module):
    """A linear-shaped model that logs where its weights and its inputs are, and answers zeros on the CPU."""

    def __init__(self, log: list):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(2, 4))
        self.log = log  # shared by copies (deepcopy keeps a list it is told to share: see __deepcopy__)

    def __deepcopy__(self, memo):
        clone = Probe(self.log)
        clone.weight = nn.Parameter(self.weight.detach().clone())
        return clone

    def forward(self, x):
        self.log.append((self.weight.device.type, x.device.type))
        return torch.zeros(len(x), 2)


@pytest.fixture
def data():
    g = torch.Generator().manual_seed(0)
    return IndexedDataset(torch.randn(6, 4, generator=g), torch.tensor([0, 1, 0, 1, 1, 0]))


def test_model_on_copies_only_when_the_model_is_elsewhere():
    model = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    assert model_on(model, None) is model and model_on(model, "cpu") is model
    moved = model_on(model, "meta")
    assert moved is not model and model_device(moved) == META
    assert all(t.device.type == "cpu" for t in (*model.parameters(), *model.buffers()))
    assert model_device(nn.ReLU()) == torch.device("cpu")  # no parameters: the CPU


@pytest.mark.parametrize("fn", [predict, lambda m, d, device: predict_queries(m, d, ("identity",), device=device)],
                         ids=["predict", "predict_queries"])
def test_prediction_runs_a_copy_of_the_model_where_device_says(data, fn):
    log = []
    model = Probe(log)
    logits, labels, index = fn(model, data, device="meta")
    assert log and set(log) == {("meta", "meta")}  # the model's copy and the batches both on the device
    assert model.weight.device.type == "cpu"  # the caller's model did not move
    assert labels.device.type == "cpu" and labels.tolist() == data.targets.tolist() and index.tolist() == list(range(6))
    log.clear()
    fn(model, data, device=None)  # default: where the model is
    assert set(log) == {("cpu", "cpu")}


def test_holdout_retraining_predicts_with_the_model_on_the_device(data):
    seen = {}

    def fake_train(model, dataset, *, device, **kwargs):  # the fine-tuning itself is tested on real digits
        seen["train"] = (model_device(model).type, torch.device(device).type)
        return model, None

    log = []
    model = Probe(log)
    scores = proxies.holdout_retraining(model, data, data, fine_tune=fake_train, device="meta", progress=False)
    assert seen["train"] == ("meta", "meta") and set(log) == {("meta", "meta")}
    assert model.weight.device.type == "cpu" and np.allclose(scores.to_numpy(), 0.0)


class Stop(Exception):
    pass


def test_loss_curvature_runs_on_the_device_with_probes_from_a_cpu_generator(data, monkeypatch):
    import proxies.curvature as curvature

    calls = []

    def spy(model, x, y):
        calls.append((model_device(model).type, x.device.type, y.device.type))
        if len(calls) == 2:  # the first probe: stop before reading meta values back
            raise Stop
        return torch.zeros_like(x)

    monkeypatch.setattr(curvature, "input_gradients", spy)
    drawn = []
    real_randint = torch.randint

    def randint(*args, **kwargs):
        drawn.append(kwargs.get("generator").device.type)
        return real_randint(*args, **kwargs)

    monkeypatch.setattr(torch, "randint", randint)
    model = nn.Linear(4, 2)
    with pytest.raises(Stop):
        proxies.loss_curvature(model, data, device="meta", progress=False)
    assert calls == [("meta", "meta", "meta")] * 2 and drawn == ["cpu"]
    assert model_device(model).type == "cpu"


def test_recorder_keeps_an_epoch_whose_batches_change_device():
    rec = TrainingRecorder(4)
    rec.start_epoch()
    rec.record(torch.zeros(2, 3, device="meta"), torch.tensor([0, 1], device="meta"), torch.tensor([0, 1]))
    rec.record(torch.zeros(2, 3), torch.tensor([2, 0]), torch.tensor([2, 3]))  # the same epoch, from the CPU
    # the epoch's buffers, holding the first batch's rows, stay where they are and take the new batch in
    assert rec._logits.device == META and rec._labels.device == META and rec._current.device == META


def test_recorder_follows_the_logits_to_a_new_device_between_epochs():
    rec = TrainingRecorder(3)
    rec.start_epoch()
    rec.record(torch.tensor([[2.0, 0.0]]), torch.tensor([0]), torch.tensor([1]))
    rec.end_epoch()
    rec.start_epoch()
    rec.record(torch.zeros(1, 2, device="meta"), torch.tensor([0], device="meta"), torch.tensor([0]))
    assert rec._logits.device == META  # nothing presented yet this epoch: the buffers move to the new device


@pytest.mark.cuda
def test_recorder_on_cuda_matches_the_cpu():
    g = torch.Generator().manual_seed(0)
    logits, labels = torch.randn(8, 5, generator=g), torch.randint(0, 5, (8,), generator=g)
    cpu, mixed = TrainingRecorder(8), TrainingRecorder(8)
    for rec, second in ((cpu, "cpu"), (mixed, "cuda")):
        rec.start_epoch()
        rec.record(logits[:4], labels[:4], torch.arange(4))
        rec.record(logits[4:].to(second), labels[4:].to(second), torch.arange(4, 8))
        rec.end_epoch()
    np.testing.assert_allclose(mixed.values, cpu.values, rtol=1e-6)


def test_recorder_proxies_rum_and_evaluate_on_each_device(digits, device):
    """The whole path on ``device``: train with the recorder, proxies, rum scheduled by them, evaluate."""
    from torch.utils.data import Subset

    from unlearn import create_model, evaluate, train, unlearn

    data = Subset(digits.train, range(240))
    recorder = TrainingRecorder(len(digits.train))
    torch.manual_seed(0)
    model, _ = train(create_model("digits_cnn", num_classes=10, in_channels=1), data, epochs=3, batch_size=64,
                     recorder=recorder, device=device, progress=False)
    assert model_device(model).type == device.type
    scores = proxies.compute(["confidence", "csl"], recording=recorder)
    assert scores.loc[:239].notna().all().all() and scores.loc[240:].isna().all().all()
    forget, retain = Subset(digits.train, range(30)), Subset(digits.train, range(30, 240))
    result = unlearn(model, forget=forget, retain=retain, proxy="confidence", recording=recorder,
                     policy="random_label_fast", seed=0)
    assert model_device(result.model).type == device.type and model_device(model).type == device.type
    report = evaluate(result.model, forget=forget, retain=retain, test=digits.test, reference=model,
                      attacks=("loss_threshold",))
    assert np.isfinite(report["model"][["accuracy.forget", "accuracy.test", "tow", "loss_threshold.auc"]]).all()
