"""Device decisions, checked without a GPU: what moves where. ``meta`` tensors stand in for another device (a copy
onto them works, reading values back does not), so each probe model hands its outputs back on the CPU."""

import numpy as np
import pytest
import torch
from torch import nn

import proxies
from proxies import TrainingRecorder
from proxies.devices import model_device, model_on
from unlearn.data import IndexedDataset
from unlearn.evaluation.attacks.signals import predict_queries
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

    def spy(model, x, y, task=None):
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


# ------------------------------------------------------------------------------ data movement and host syncs
# ``meta`` stands in for a GPU: a read of a meta tensor's values (bool(), int(), float(), item(), .cpu(), .tolist(),
# .numpy()) is where a GPU would make the host wait. The fixture counts those reads and answers them with zeros, so
# that a whole training runs on ``meta`` and says how often it would have synchronised.

class DeviceReads:
    def __init__(self):
        self.count = 0


@pytest.fixture
def device_reads(monkeypatch):
    reads = DeviceReads()
    originals = {name: getattr(torch.Tensor, name) for name in
                 ("__bool__", "__int__", "__float__", "__index__", "item", "cpu", "tolist", "numpy")}
    fakes = {"__bool__": lambda t: False, "__int__": lambda t: 0, "__float__": lambda t: 0.0, "__index__": lambda t: 0,
             "item": lambda t: 0, "cpu": lambda t, *a, **k: torch.zeros(t.shape, dtype=t.dtype),
             "tolist": lambda t: torch.zeros(t.shape, dtype=t.dtype).tolist(),
             "numpy": lambda t, *a, **k: torch.zeros(t.shape, dtype=t.dtype).numpy()}

    def wrap(name):
        def method(self, *args, **kwargs):
            if self.is_meta:
                reads.count += 1
                return fakes[name](self, *args, **kwargs)
            return originals[name](self, *args, **kwargs)
        return method

    for name in originals:
        monkeypatch.setattr(torch.Tensor, name, wrap(name))
    return reads


def test_an_in_memory_dataset_moves_to_the_device_once_per_call(data, monkeypatch):
    from proxies.batching import batches

    moves = []
    real_to = torch.Tensor.to

    def to(self, *args, **kwargs):
        moves.append(self.shape)
        return real_to(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "to", to)
    for size in (1, 4):
        moves.clear()
        got = list(batches(data, size, shuffle=True, generator=torch.Generator().manual_seed(0), device="meta",
                           moved=("x", "y", "index")))
        assert all(part.device == META for batch in got for part in batch)
        assert len(moves) == 4  # inputs, labels, indices and the shuffled order: once, whatever the batch count
    monkeypatch.setattr(torch.Tensor, "to", real_to)
    x, y, idx = next(batches(data, 4, device="meta"))  # by default the indices stay on the CPU
    assert (x.device, y.device, idx.device.type) == (META, META, "cpu")


def test_batches_on_the_cpu_are_the_slices_they_always_were(data):
    from proxies.batching import batches

    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    order = torch.randperm(len(data), generator=g1)
    got = list(batches(data, 4, shuffle=True, generator=g2, device="cpu", moved=("x", "y", "index")))
    assert torch.equal(torch.cat([idx for _, _, idx in got]), order)
    assert torch.equal(torch.cat([x for x, _, _ in got]), data.inputs[order])


def test_a_streamed_dataset_is_pinned_and_copied_asynchronously_to_cuda(monkeypatch):
    from torch.utils.data import TensorDataset

    import proxies.batching as batching

    loaders, copies = [], []
    real_loader = batching.DataLoader

    def loader(*args, pin_memory=False, **kwargs):
        loaders.append(pin_memory)
        return real_loader(*args, **kwargs)  # nothing to pin into without CUDA

    def to(self, device=None, *args, non_blocking=False, **kwargs):
        copies.append((torch.device(device).type, non_blocking))
        return self  # stands in for the copy

    monkeypatch.setattr(batching, "DataLoader", loader)
    monkeypatch.setattr(torch.Tensor, "to", to)
    plain = TensorDataset(torch.randn(6, 2), torch.tensor([0, 1, 0, 1, 0, 1]))
    assert len(list(batching.batches(plain, 4, device="cuda", moved=("x", "y", "index")))) == 2
    assert loaders == [True] and copies == [("cuda", True)] * 6
    loaders.clear()
    list(batching.batches(plain, 4, device="cpu"))
    assert loaders == [False]  # no pinning for the CPU


def test_training_reads_the_device_a_fixed_number_of_times_per_epoch(digits, device_reads):
    from unlearn import create_model, train

    reads = {}
    for examples in (64, 256):  # 2 and 8 batches an epoch
        device_reads.count = 0
        recorder = TrainingRecorder(len(digits.train))  # with input gradients, the default
        from torch.utils.data import Subset

        train(create_model("digits_cnn", num_classes=10, in_channels=1), Subset(digits.train, range(examples)),
              epochs=2, batch_size=32, recorder=recorder, device="meta", progress=False)
        reads[examples] = device_reads.count
    assert reads[64] == reads[256] <= 2 * 4  # per epoch: the recorder's end (flags, gradients, weight norm)


def test_the_recorder_reads_nothing_back_while_an_epoch_runs(device_reads):
    rec = TrainingRecorder(8)
    rec.start_epoch()
    for _ in range(5):
        rec.record(torch.zeros(4, 3, device="meta"), torch.zeros(4, dtype=torch.long, device="meta"),
                   torch.arange(4, device="meta"))
        rec.record_input_gradients(torch.zeros(4, 2, device="meta"), torch.arange(4, device="meta"), scale=4)
    assert device_reads.count == 0
    rec.end_epoch()
    assert device_reads.count <= 2  # the epoch's flags, its gradients


def test_prediction_and_curvature_copy_back_once(data, device_reads):
    model = nn.Linear(4, 2)
    predict(model, data, batch_size=2, device="meta")  # 3 batches
    assert device_reads.count == 1
    device_reads.count = 0
    proxies.loss_curvature(model, data, batch_size=2, n_probes=2, device="meta", progress=False)
    assert device_reads.count == 1
    device_reads.count = 0
    proxies.loss_curvature([model, model], data, batch_size=2, variant="cure", device="meta", progress=False)
    assert device_reads.count == 2  # one per checkpoint


def test_an_unlearning_loop_reads_nothing_back_per_batch(digits, device_reads):
    from unlearn.algorithms.finetune import FinetuneConfig, finetune
    from unlearn.data import materialize

    retain = materialize(torch.utils.data.Subset(digits.train, range(200)))
    forget = materialize(torch.utils.data.Subset(digits.train, range(200, 220)))
    model = model_on(nn.Sequential(nn.Flatten(), nn.Linear(64, 10)), "meta")
    finetune(model, forget, retain, FinetuneConfig(epochs=2, batch_size=16), seed=0, device=META)
    assert device_reads.count == 0  # the epoch's loss and accuracy are summed there and not read on meta


def test_training_numerics_turn_tf32_on_for_cuda_and_put_everything_back(monkeypatch):
    import os

    from unlearn.training.loop import CUBLAS_WORKSPACE, training_numerics

    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    cudnn = torch.backends.cudnn
    before = (torch.backends.cuda.matmul.allow_tf32, cudnn.allow_tf32, cudnn.deterministic, cudnn.benchmark,
              torch.are_deterministic_algorithms_enabled())
    with training_numerics("cpu"):
        assert torch.backends.cuda.matmul.allow_tf32 == before[0]  # the CPU: nothing changes
    with training_numerics("cuda"):  # only flags: no CUDA needed to set them
        assert torch.backends.cuda.matmul.allow_tf32 and cudnn.allow_tf32
        assert not torch.are_deterministic_algorithms_enabled()
    with training_numerics("cuda", deterministic=True):
        assert torch.are_deterministic_algorithms_enabled() and cudnn.deterministic and not cudnn.benchmark
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == CUBLAS_WORKSPACE
    assert (torch.backends.cuda.matmul.allow_tf32, cudnn.allow_tf32, cudnn.deterministic, cudnn.benchmark,
            torch.are_deterministic_algorithms_enabled()) == before
    assert "CUBLAS_WORKSPACE_CONFIG" not in os.environ


def test_train_is_deterministic_for_the_call_only(digits):
    from torch.utils.data import Subset

    from unlearn import create_model, train

    seen = []

    def spy(epoch, model):
        seen.append((torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.deterministic))

    data = Subset(digits.train, range(128))
    torch.manual_seed(0)
    model = create_model("digits_cnn", num_classes=10, in_channels=1)
    plain, _ = train(model, data, epochs=1, batch_size=32, device="cpu", progress=False)
    strict, _ = train(model, data, epochs=1, batch_size=32, device="cpu", deterministic=True, on_epoch_end=spy,
                      progress=False)
    assert seen == [(True, True)] and not torch.are_deterministic_algorithms_enabled()
    for a, b in zip(plain.state_dict().values(), strict.state_dict().values(), strict=True):
        assert torch.equal(a, b)  # the CPU was deterministic already: the same bits


@pytest.mark.cuda
def test_the_recorder_checks_cuda_indices_at_the_epochs_end():
    rec = TrainingRecorder(4)
    rec.start_epoch()
    rec.record(torch.zeros(2, 3, device="cuda"), torch.zeros(2, dtype=torch.long, device="cuda"),
               torch.tensor([1, 9], device="cuda"))  # no sync here: the bad row goes to the spare one
    with pytest.raises(ValueError, match=r"index must lie in \[0, 4\)"):
        rec.end_epoch()
