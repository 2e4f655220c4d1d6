import numpy as np
import pytest
import torch

from proxies import TrainingRecorder
from unlearn.models import create_model
from unlearn.training import train


class SpyRecorder(TrainingRecorder):
    """Keeps the raw logits it was given, so the test can recompute every stored value independently."""

    def __init__(self, n):
        super().__init__(n)
        self.batches = []

    def start_epoch(self):
        super().start_epoch()
        self.batches.append([])

    def record(self, logits, labels, index):
        self.batches[-1].append((logits.detach().double().clone(), labels.clone(), index.clone()))
        super().record(logits, labels, index)


def _expected(batches, n):
    """Slow, obvious recomputation in float64 numpy: one row per example, NaN where it was not presented."""
    out = np.full((n, 5), np.nan)
    for logits, labels, index in batches:
        z = logits.numpy()
        p = np.exp(z - z.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        for row, (i, y) in enumerate(zip(index.tolist(), labels.tolist(), strict=True)):
            out[i] = [p[row, y], p[row].max(), -(p[row] * np.log(p[row])).sum(), -np.log(p[row, y]),
                      float(np.argmax(z[row]) == y)]
    return out


@pytest.mark.parametrize("batch_size, drop_last", [(64, False), (100, False), (100, True)])
def test_recorded_values_match_the_logits_of_each_presentation(digits, batch_size, drop_last):
    torch.manual_seed(0)
    model = create_model("digits_cnn", num_classes=10, in_channels=1)
    n = len(digits.train)
    spy = SpyRecorder(n)
    _, history = train(model, digits.train, epochs=3, batch_size=batch_size, drop_last=drop_last, seed=1,
                       recorder=spy, progress=False, device="cpu")
    assert spy.num_epochs == 3 and spy.values.shape == (3, n, 5)
    for epoch, batches in enumerate(spy.batches):
        expected = _expected(batches, n)
        np.testing.assert_allclose(spy.values[epoch], expected, rtol=2e-5, atol=2e-6)
        presented = spy.presented[epoch]
        assert presented.sum() == (n - n % batch_size if drop_last else n)
        # the recorded logits are the ones the optimizer stepped on: their mean loss is the epoch's training loss
        assert np.nanmean(spy["loss"][epoch]) == pytest.approx(history["loss"][epoch], rel=1e-5)
    if drop_last:  # shuffling drops different examples each epoch
        assert not np.array_equal(spy.presented[0], spy.presented[1])


def test_save_and_load_round_trip(tmp_path):
    rec = TrainingRecorder(4)
    for _ in range(2):
        rec.start_epoch()
        rec.record(torch.randn(3, 5), torch.tensor([0, 4, 2]), torch.tensor([3, 0, 1]))
        rec.end_epoch()
    rec.save(tmp_path / "rec.npz")
    loaded = TrainingRecorder.load(tmp_path / "rec.npz")
    np.testing.assert_array_equal(loaded.values, rec.values)
    assert loaded.num_examples == 4 and np.isnan(loaded["confidence"][:, 2]).all()
    np.savez(tmp_path / "other.npz", x=np.zeros(3))
    with pytest.raises(ValueError, match="not a training recording"):
        TrainingRecorder.load(tmp_path / "other.npz")


def test_misuse_is_reported():
    rec = TrainingRecorder(2)
    with pytest.raises(RuntimeError, match="start_epoch"):
        rec.record(torch.zeros(1, 2), torch.tensor([0]), torch.tensor([0]))
    rec.start_epoch()
    with pytest.raises(ValueError, match=r"index must lie in \[0, 2\)"):
        rec.record(torch.zeros(1, 2), torch.tensor([0]), torch.tensor([2]))
    with pytest.raises(KeyError, match="unknown column"):
        rec["margin"]
    with pytest.raises(ValueError, match="non-negative"):
        TrainingRecorder(-1)


def test_labels_out_of_range_are_refused_before_the_kernels_see_them():
    rec = TrainingRecorder(3)
    rec.start_epoch()
    rec.record(torch.zeros(2, 4), torch.tensor([1, 7]), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 4\)"):
        rec.end_epoch()


def test_record_refuses_batches_that_do_not_line_up():
    rec = TrainingRecorder(4)
    rec.start_epoch()
    with pytest.raises(ValueError, match=r"labels and index must be \[B\] = \[1\]"):
        rec.record(torch.zeros(1, 2), torch.tensor([0, 0, 0]), torch.tensor([0, 1, 2]))  # would broadcast
    with pytest.raises(ValueError, match=r"logits must be a tensor \[B, C\]"):
        rec.record(torch.zeros(3), torch.tensor([0, 0, 0]), torch.tensor([0, 1, 2]))
    with pytest.raises(TypeError, match="labels must be integers"):
        rec.record(torch.zeros(1, 2), torch.tensor([0.0]), torch.tensor([0]))
    rec.record(torch.zeros(1, 2), torch.tensor([0]), torch.tensor([0]))
    with pytest.raises(ValueError, match="logits have 3 classes, earlier batches of this epoch had 2"):
        rec.record(torch.zeros(1, 3), torch.tensor([0]), torch.tensor([1]))


def test_save_writes_the_path_it_is_given(tmp_path):
    rec = TrainingRecorder(2)
    rec.start_epoch()
    rec.record(torch.tensor([[2.0, 0.0], [0.0, 2.0]]), torch.tensor([0, 0]), torch.tensor([0, 1]))
    rec.end_epoch()
    rec.save(tmp_path / "run")  # no suffix: numpy alone would write run.npz
    np.testing.assert_array_equal(TrainingRecorder.load(tmp_path / "run").values, rec.values)


def test_non_finite_logits_are_recorded_as_not_presented():
    rec = TrainingRecorder(3)
    rec.start_epoch()
    rec.record(torch.tensor([[float("nan"), 0.0], [2.0, 0.0], [float("inf"), 0.0]]), torch.tensor([0, 0, 0]),
               torch.tensor([0, 1, 2]))
    rec.end_epoch()
    assert rec.presented.tolist() == [[False, True, False]]
    assert np.isnan(rec["correct"][0, [0, 2]]).all() and rec["correct"][0, 1] == 1.0
