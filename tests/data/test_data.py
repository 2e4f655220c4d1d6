import gzip
import pickle
import struct

import numpy as np
import pytest
import torch
from torch.utils.data import Subset, TensorDataset

from tests.conftest import requires_fashion_mnist
from unlearn.data import DatasetNotFoundError, IndexedDataset, as_tensors, batches, datasets, load_dataset


def test_registry_lists_every_named_dataset():
    assert datasets() == ["cifar10", "cifar100", "digits", "fashion-mnist", "fortunes", "mnist", "synthetic-cifar"]
    with pytest.raises(ValueError, match="expected one of"):
        load_dataset("imagenet")


def test_digits_splits_are_real_disjoint_and_deterministic(digits):
    again = load_dataset("digits")
    assert (len(digits.train), len(digits.val), len(digits.test)) == (1293, 144, 360)
    assert digits.queries == ("identity",)  # a mirrored digit is another symbol
    assert torch.equal(digits.train.inputs, again.train.inputs)
    assert torch.equal(digits.train.targets, again.train.targets)
    other = load_dataset("digits", seed=1)
    assert not torch.equal(digits.train.targets, other.train.targets)
    # every class is present and the images are normalised, not raw 0..16 pixel counts
    assert set(digits.train.targets.tolist()) == set(range(10))
    assert abs(float(digits.train.inputs.mean())) < 0.1
    # the three splits partition all 1,797 real digits
    everything = torch.cat([digits.train.inputs, digits.val.inputs, digits.test.inputs]).flatten(1)
    from sklearn.datasets import load_digits
    original = torch.from_numpy(load_digits().data).float()
    pixels = ((everything * 0.376 + 0.305) * 16).round().long()
    assert sorted(map(tuple, pixels.tolist())) == sorted(map(tuple, original.long().tolist()))


def test_split_arguments_are_checked(digits):
    assert len(load_dataset("digits", train_size=100).train) == 100
    assert len(load_dataset("digits", val_fraction=0.0).val) == 0
    with pytest.raises(ValueError, match="val_fraction"):
        load_dataset("digits", val_fraction=1.0)
    with pytest.raises(ValueError, match="train_size"):
        load_dataset("digits", train_size=10**6)


def test_index_survives_subset_and_shuffled_batches(digits):
    subset = Subset(Subset(digits.train, list(range(100, 200))), [5, 0, 42])
    assert [subset[i][2] for i in range(3)] == [105, 100, 142]
    inputs, targets, indices = as_tensors(subset)
    assert indices.tolist() == [105, 100, 142]
    assert torch.equal(inputs[1], digits.train.inputs[100])
    seen = torch.cat([idx for _, _, idx in batches(digits.train, 100, shuffle=True,
                                                   generator=torch.Generator().manual_seed(0))])
    assert sorted(seen.tolist()) == list(range(len(digits.train)))
    for x, y, idx in batches(digits.train, 64, shuffle=True, generator=torch.Generator().manual_seed(1)):
        assert torch.equal(x, digits.train.inputs[idx]) and torch.equal(y, digits.train.targets[idx])


def test_batches_drop_last_and_plain_datasets():
    ds = IndexedDataset(torch.arange(10.0).view(10, 1), torch.zeros(10, dtype=torch.long))
    assert [len(i) for _, _, i in batches(ds, 4, drop_last=True)] == [4, 4]
    assert [len(i) for _, _, i in batches(ds, 4)] == [4, 4, 2]
    plain = TensorDataset(torch.arange(5.0).view(5, 1), torch.tensor([0, 1, 0, 1, 1]))  # (x, y) items
    x, y, idx = next(batches(plain, 5))
    assert idx.tolist() == [0, 1, 2, 3, 4] and y.tolist() == [0, 1, 0, 1, 1]
    with pytest.raises(ValueError, match="batch_size"):
        next(batches(ds, 0))


def test_indexed_dataset_rejects_bad_input():
    with pytest.raises(ValueError, match="matching"):
        IndexedDataset(torch.zeros(3, 2), torch.zeros(2, dtype=torch.long))
    with pytest.raises(TypeError, match="integer"):
        IndexedDataset(torch.zeros(3, 2), torch.zeros(3))


# ---------------------------------------------------------------- torchvision formats, written by the test

def _write_idx_gz(folder, prefix, images, labels):
    folder.mkdir(parents=True, exist_ok=True)
    with gzip.open(folder / f"{prefix}-images-idx3-ubyte.gz", "wb") as f:
        f.write(struct.pack(">IIII", 0x803, len(images), 28, 28) + images.tobytes())
    with gzip.open(folder / f"{prefix}-labels-idx1-ubyte.gz", "wb") as f:
        f.write(struct.pack(">II", 0x801, len(labels)) + labels.tobytes())


@pytest.mark.parametrize("name, folder", [("mnist", "MNIST"), ("fashion-mnist", "FashionMNIST")])
def test_idx_gz_files_load_through_torchvision(tmp_path, name, folder):
    rng = np.random.default_rng(0)
    train_images = rng.integers(0, 256, (20, 28, 28), dtype=np.uint8)
    train_labels = (np.arange(20) % 10).astype(np.uint8)
    raw = tmp_path / folder / "raw"
    _write_idx_gz(raw, "train", train_images, train_labels)
    _write_idx_gz(raw, "t10k", train_images[:7], train_labels[:7])

    splits = load_dataset(name, root=tmp_path, val_fraction=0.25)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (15, 5, 7)
    assert splits.train.inputs.shape[1:] == (1, 28, 28)
    # pixels round-trip: undo the normalisation and compare with what was written
    test_pixels = splits.test.inputs * _std(name) + _mean(name)
    np.testing.assert_allclose(test_pixels.squeeze(1).numpy() * 255, train_images[:7], atol=1e-3)
    assert splits.test.targets.tolist() == train_labels[:7].tolist()


def _mean(name):
    return {"mnist": 0.1307, "fashion-mnist": 0.286}[name]


def _std(name):
    return {"mnist": 0.3081, "fashion-mnist": 0.353}[name]


@pytest.mark.parametrize("name, base, label_key, meta", [
    ("cifar10", "cifar-10-batches-py", "labels", ("batches.meta", "label_names")),
    ("cifar100", "cifar-100-python", "fine_labels", ("meta", "fine_label_names")),
])
def test_cifar_pickle_batches_load_through_torchvision(tmp_path, name, base, label_key, meta):
    folder = tmp_path / base
    folder.mkdir()
    rng = np.random.default_rng(0)
    files = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"] if name == "cifar10" else ["train", "test"]
    written = {}
    for file in files:
        data = rng.integers(0, 256, (4, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, 4).tolist()
        written[file] = (data, labels)
        with open(folder / file, "wb") as f:
            pickle.dump({"data": data, label_key: labels}, f)
    with open(folder / meta[0], "wb") as f:
        pickle.dump({meta[1]: [f"class{i}" for i in range(100 if name == "cifar100" else 10)]}, f)

    splits = load_dataset(name, root=tmp_path, val_fraction=0.0)
    n_train = 4 * (len(files) - 1)
    assert (len(splits.train), len(splits.test)) == (n_train, 4)
    assert splits.in_channels == 3 and splits.train.inputs.shape[1:] == (3, 32, 32)
    assert splits.queries == ("identity", "hflip")  # natural images: attacks may also query the mirror image
    test_data, test_labels = written[files[-1]]
    assert splits.test.targets.tolist() == test_labels
    mean = torch.tensor((0.4914, 0.4822, 0.4465) if name == "cifar10" else (0.5071, 0.4865, 0.4409)).view(1, 3, 1, 1)
    std = torch.tensor((0.2470, 0.2435, 0.2616) if name == "cifar10" else (0.2673, 0.2564, 0.2762)).view(1, 3, 1, 1)
    pixels = (splits.test.inputs * std + mean) * 255
    np.testing.assert_allclose(pixels.reshape(4, 3072).numpy(), test_data, atol=1e-3)


def test_missing_dataset_says_how_to_get_it(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="pass download=True"):
        load_dataset("mnist", root=tmp_path)
    with pytest.raises(DatasetNotFoundError, match="download=True"):
        load_dataset("cifar10", root=tmp_path)


@requires_fashion_mnist
def test_fashion_mnist_from_debian(tmp_path):
    splits = load_dataset("fashion-mnist", root=tmp_path, train_size=1000)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (1000, 6000, 10000)
    assert set(splits.test.targets.tolist()) == set(range(10))
    assert splits.train.classes[0] == "T-shirt/top"
