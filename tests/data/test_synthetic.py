"""The CIFAR-shaped synthetic dataset: made from (seed, index) alone, learnable, and a dataset of the registry."""

import pytest
import torch
from torch import nn

from unlearn.data import load_dataset
from unlearn.data.synthetic import SyntheticCIFAR, register_synthetic_cifar, synthetic_images


def test_items_are_cifar_shaped_and_the_same_whenever_and_however_they_are_made():
    data = SyntheticCIFAR(10**7, seed=4)
    x, y = data[9_999_999]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and 0 <= float(x.min()) <= float(x.max()) <= 1
    assert isinstance(y, int) and 0 <= y < 10
    again, y_again = SyntheticCIFAR(10**7, seed=4)[9_999_999]
    assert torch.equal(x, again) and y == y_again
    batch, labels = data.images(torch.tensor([5, 9_999_999, 5]))
    assert torch.equal(batch[1], x) and torch.equal(batch[0], batch[2]) and labels[1] == y
    assert not torch.equal(SyntheticCIFAR(10, seed=5)[5][0], batch[0])  # another seed, another dataset
    assert data[-1][1] == y and data.labels(torch.tensor([9_999_999])).tolist() == [y]
    with pytest.raises(IndexError):
        data[10**7]


def test_labels_are_balanced_and_big_requests_are_made_in_chunks():
    labels = SyntheticCIFAR(20_000, seed=0).labels()
    counts = torch.bincount(labels, minlength=10)
    assert counts.min() > 1_700 and counts.max() < 2_300
    x, y = synthetic_images(torch.arange(2_100, 2_200), seed=0)
    assert torch.equal(x, torch.stack([SyntheticCIFAR(3_000)[i][0] for i in range(2_100, 2_200)]))


def test_a_small_cnn_learns_it_well_above_chance():
    from unlearn import IndexedDataset, train
    from unlearn.training import top1_accuracy

    data = SyntheticCIFAR(1_200, seed=0)
    x, y = data.images(torch.arange(1_200))
    x = (x - 0.5) / 0.2
    train_set, test_set = IndexedDataset(x[:1_000], y[:1_000]), IndexedDataset(x[1_000:], y[1_000:])
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 5, stride=2), nn.ReLU(), nn.Conv2d(16, 32, 3, stride=2), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))
    model, _ = train(model, train_set, epochs=4, batch_size=50, lr=0.05, device="cpu", progress=False)
    assert top1_accuracy(model, test_set) > 0.5  # chance: 0.1


def test_the_registry_serves_it_making_only_the_examples_a_split_keeps(monkeypatch):
    import unlearn.data.synthetic as synthetic

    made = []
    real = synthetic.synthetic_images

    def counting(index, **kwargs):
        made.append(len(index))
        return real(index, **kwargs)

    monkeypatch.setattr(synthetic, "synthetic_images", counting)
    register_synthetic_cifar("synthetic-cifar-test", train=10**6, test=40, force=True)
    splits = load_dataset("synthetic-cifar-test", train_size=64, val_fraction=0.0001)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (64, 100, 40)
    assert splits.train.inputs.shape == (64, 3, 32, 32) and splits.default_model == "resnet18"
    assert sum(made) == 64 + 100 + 40  # of a million: only what the splits keep
    assert abs(float(splits.train.inputs.mean())) < 0.2  # normalised
    again = load_dataset("synthetic-cifar-test", train_size=64, val_fraction=0.0001)
    assert torch.equal(again.train.inputs, splits.train.inputs) and torch.equal(again.train_rows, splits.train_rows)


def test_synthetic_cifar_is_a_named_dataset():
    splits = load_dataset("synthetic-cifar", train_size=32, val_fraction=0.0002)
    assert repr(splits) == "Splits('synthetic-cifar', train=32, val=10, test=10000, num_classes=10, in_channels=3)"
