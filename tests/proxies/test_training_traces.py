"""The trace proxies (csg, sgal, loss_iqr) and what the recorder keeps for them, against slow, obvious references."""

import copy

import numpy as np
import pytest
import scipy.stats
import torch
import torch.nn.functional as F
from torch import nn

import proxies
from proxies import TrainingRecorder
from proxies.kernels import SIGNAL_COLUMNS
from unlearn.models import create_model
from unlearn.training import train


class InputSpy(nn.Module):
    """Runs ``inner`` and keeps, per forward, the inputs and a copy of the weights they met (before the step)."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.seen = []

    def forward(self, x):
        self.seen.append((x.detach().clone(), copy.deepcopy(self.inner.state_dict())))
        return self.inner(x)


class BatchSpy(TrainingRecorder):
    def __init__(self, n, **kwargs):
        super().__init__(n, **kwargs)
        self.batches = []

    def record(self, logits, labels, index):
        self.batches.append((len(self.batches) and self.num_epochs, labels.clone(), index.clone()))
        super().record(logits, labels, index)


def test_train_records_each_presentations_own_input_gradient(digits):
    """The recorded norm is ||grad_x CE(f(x_i), y_i)||^2 of the example alone, through the weights of its step: the
    reference takes it one example at a time, in float64."""
    data = torch.utils.data.Subset(digits.train, range(250))
    torch.manual_seed(0)
    spy = InputSpy(create_model("digits_cnn", num_classes=10, in_channels=1))
    recorder = BatchSpy(len(digits.train))
    trained, _ = train(spy, data, epochs=2, batch_size=100, lr=0.05, recorder=recorder, progress=False, device="cpu")
    seen = trained.seen
    assert len(seen) == len(recorder.batches) == 6  # 3 batches (100, 100, 50) a epoch
    expected = np.full((2, len(digits.train)), np.nan)
    reference = create_model("digits_cnn", num_classes=10, in_channels=1).double()
    for step, ((x, state), (_, labels, index)) in enumerate(zip(seen, recorder.batches, strict=True)):
        reference.load_state_dict({k: v.double() for k, v in state.items()})
        for row in range(len(x)):
            xi = x[row:row + 1].double().requires_grad_()
            loss = F.cross_entropy(reference(xi), labels[row:row + 1])
            (grad,) = torch.autograd.grad(loss, xi)
            expected[step // 3, int(index[row])] = float(grad.pow(2).sum())
    recorded = recorder.input_gradient_norms
    assert np.isnan(recorded[:, 250:]).all()
    np.testing.assert_allclose(recorded[:, :250], expected[:, :250], rtol=2e-4, atol=1e-12)
    assert (recorded[:, :250] > 0).all()
    csg = proxies.compute("csg", recording=recorder)
    np.testing.assert_allclose(csg[:250], expected[:, :250].sum(0), rtol=2e-4)


def test_the_weight_norm_is_that_of_all_trainable_parameters_at_each_epochs_end(digits):
    data = torch.utils.data.Subset(digits.train, range(200))
    torch.manual_seed(1)
    model = create_model("digits_cnn", num_classes=10, in_channels=1)
    norms = []

    def keep(epoch, m):
        norms.append(np.sqrt(sum(float(p.detach().double().pow(2).sum()) for p in m.parameters())))

    recorder = TrainingRecorder(len(data))
    train(model, data, epochs=3, batch_size=64, recorder=recorder, on_epoch_end=keep, progress=False, device="cpu")
    np.testing.assert_allclose(recorder.weight_norms, norms, rtol=1e-6)


def test_recording_input_gradients_leaves_training_unchanged(digits):
    data = torch.utils.data.Subset(digits.train, range(200))
    torch.manual_seed(2)
    model = create_model("digits_cnn", num_classes=10, in_channels=1)
    runs = []
    for input_gradients in (True, False):
        recorder = TrainingRecorder(len(data), input_gradients=input_gradients)
        trained, _ = train(model, data, epochs=2, batch_size=64, recorder=recorder, progress=False, device="cpu")
        runs.append((trained, recorder))
    (with_grads, a), (without, b) = runs
    assert all(torch.equal(p, q) for p, q in zip(with_grads.state_dict().values(), without.state_dict().values(),
                                                 strict=True))
    np.testing.assert_array_equal(a.values, b.values)
    assert a.input_gradient_norms is not None and b.input_gradient_norms is None
    with pytest.raises(ValueError, match="csg needs input-gradient norms"):
        proxies.compute("csg", recording=b)


def _random_recording(seed, epochs=7, n=40):
    rng = np.random.default_rng(seed)
    values = rng.uniform(0.01, 3.0, size=(epochs, n, 5)).astype(np.float32)
    missing = rng.uniform(size=(epochs, n)) < 0.2
    missing[:, 0] = True  # never presented
    values[missing] = np.nan
    gradients = np.where(missing, np.nan, rng.uniform(0, 5, size=(epochs, n))).astype(np.float32)
    norms = rng.uniform(1, 2, size=epochs)
    return TrainingRecorder.from_values(values, input_gradient_norms=gradients, weight_norms=norms), missing


@pytest.mark.parametrize("seed", range(3))
def test_sgal_csg_and_loss_iqr_match_a_loop_over_examples(seed):
    recording, missing = _random_recording(seed)
    loss, gradients, norms = recording["loss"], recording.input_gradient_norms, recording.weight_norms
    peak = max(range(len(norms)), key=lambda e: norms[e])
    table = proxies.compute(["sgal", "csg", "loss_iqr"], recording=recording)
    for i in range(recording.num_examples):
        present = [e for e in range(recording.num_epochs) if not missing[e, i]]
        if not present:
            assert table.loc[i].isna().all()
            continue
        up_to_peak = [float(loss[e, i]) for e in present if e <= peak]
        if up_to_peak:
            assert table.loc[i, "sgal"] == pytest.approx(sum(up_to_peak))
        else:  # presented only after the peak
            assert np.isnan(table.loc[i, "sgal"])
        assert table.loc[i, "csg"] == pytest.approx(sum(float(gradients[e, i]) for e in present))
        assert table.loc[i, "loss_iqr"] == pytest.approx(scipy.stats.iqr([float(loss[e, i]) for e in present]))


def test_loss_iqr_without_gaps_matches_scipy():
    recording, _ = _random_recording(5)
    full = TrainingRecorder.from_values(np.nan_to_num(recording.values, nan=1.0))
    expected = scipy.stats.iqr(full["loss"].astype(np.float64), axis=0)
    np.testing.assert_allclose(proxies.compute("loss_iqr", recording=full), expected)


def test_sgal_needs_weight_norms_and_csg_input_gradients():
    values = np.ones((2, 3, 5), dtype=np.float32)
    bare = TrainingRecorder.from_values(values)
    with pytest.raises(ValueError, match=r"end_epoch\(model\)"):
        proxies.compute("sgal", recording=bare)
    with pytest.raises(ValueError, match="record_input_gradients"):
        proxies.compute("csg", recording=bare)
    assert proxies.compute("loss_iqr", recording=bare).tolist() == [0.0, 0.0, 0.0]


def test_gradients_and_weight_norms_survive_save_load_and_state_dict(tmp_path):
    recording, _ = _random_recording(1)
    recording.save(tmp_path / "recording.npz")
    loaded = TrainingRecorder.load(tmp_path / "recording.npz")
    restored = TrainingRecorder(recording.num_examples)
    restored.load_state_dict(recording.state_dict())
    for other in (loaded, restored):
        np.testing.assert_array_equal(other.input_gradient_norms, recording.input_gradient_norms)
        np.testing.assert_array_equal(other.weight_norms, recording.weight_norms)
    old = tmp_path / "old.npz"  # a recording written before these were kept
    np.savez(old, signals=recording.values, columns=np.array(SIGNAL_COLUMNS))
    legacy = TrainingRecorder.load(old)
    assert legacy.input_gradient_norms is None and np.isnan(legacy.weight_norms).all()


def test_record_input_gradients_refuses_what_it_cannot_use():
    rec = TrainingRecorder(4)
    with pytest.raises(RuntimeError, match="start_epoch"):
        rec.record_input_gradients(torch.ones(2, 3), torch.tensor([0, 1]))
    rec.start_epoch()
    with pytest.raises(ValueError, match="x.grad"):
        rec.record_input_gradients(None, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"index must be \[B\] = \[2\]"):
        rec.record_input_gradients(torch.ones(2, 3), torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="scale must be"):
        rec.record_input_gradients(torch.ones(2, 3), torch.tensor([0, 1]), scale=0)
    with pytest.raises(ValueError, match=r"index must lie in \[0, 4\)"):
        rec.record_input_gradients(torch.ones(2, 3), torch.tensor([0, 4]))
    with pytest.raises(TypeError, match="model must be"):
        rec.end_epoch("model")
    rec.record_input_gradients(torch.full((2, 3), 0.5), torch.tensor([3, 1]), scale=2)
    rec.end_epoch()
    np.testing.assert_allclose(rec.input_gradient_norms, [[np.nan, 3.0, np.nan, 3.0]])  # (2 * 0.5)^2 * 3
    assert np.isnan(rec.weight_norms).all()


def test_memorization_estimate_is_the_mean_oriented_rank_of_its_features():
    recording, _ = _random_recording(2, n=30)
    estimate = proxies.compute("memorization_estimate", recording=recording)
    table = proxies.compute(["confidence", "csg", "loss_iqr"], recording=recording)
    expected = np.zeros(recording.num_examples)
    for name, sign in (("confidence", -1), ("csg", 1), ("loss_iqr", 1)):
        values = sign * table[name].to_numpy()
        present = ~np.isnan(values)
        ranks = np.full(len(values), np.nan)
        ranks[present] = scipy.stats.rankdata(values[present]) / present.sum()  # ties: their mean rank
        expected += ranks / 3
    np.testing.assert_allclose(estimate, expected)
    assert np.isnan(estimate[0])  # never presented
    only_csg = proxies.compute("memorization_estimate", recording=recording, weights={"csg": 1.0})
    np.testing.assert_allclose(only_csg, proxies.compute("csg", recording=recording).rank(pct=True))
    with pytest.raises(ValueError, match="weights must name some of"):
        proxies.compute("memorization_estimate", recording=recording, weights={"curvature": 1.0})
