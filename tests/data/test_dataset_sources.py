"""``imagefolder:PATH`` and ``torchvision:CLASS`` datasets, on real Fashion-MNIST images saved as PNG files."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from tests.conftest import requires_fashion_mnist
from unlearn.cli import main
from unlearn.data import DatasetNotFoundError, check_dataset_name, load_dataset
from unlearn.pipeline import RunConfig

CLASSES = ("bag", "coat", "trouser")  # Fashion-MNIST labels 8, 4, 1: the folders sort in another order
LABELS = (8, 4, 1)
PER_CLASS = 40


@pytest.fixture(scope="module")
def fashion_root(tmp_path_factory):
    """A torchvision root holding Debian's Fashion-MNIST, placed there by ``torchvision:FashionMNIST``."""
    root = tmp_path_factory.mktemp("torchvision")
    splits = load_dataset("torchvision:FashionMNIST", root=root, train_size=100)
    return root, splits


@pytest.fixture(scope="module")
def image_folder(fashion_root, tmp_path_factory):
    """3 classes x 40 real Fashion-MNIST training images as 28x28 grayscale PNGs; returns the folder and
    ``{file row: uint8 pixels}`` in ImageFolder's order (classes sorted, files sorted)."""
    import torchvision

    root, _ = fashion_root
    raw = torchvision.datasets.FashionMNIST(str(root), train=True)
    folder = tmp_path_factory.mktemp("images") / "fashion"
    pixels = []
    for name, label in sorted(zip(CLASSES, LABELS, strict=True)):
        (folder / name).mkdir(parents=True)
        ids = (raw.targets == label).nonzero().flatten()[:PER_CLASS]
        for k, i in enumerate(ids.tolist()):
            image = raw.data[i].numpy()
            Image.fromarray(image, mode="L").save(folder / name / f"{k:03d}.png")
            pixels.append(image)
    return folder, np.stack(pixels)


def _check_pixels(splits, pixels):
    """The training split holds, for each training example, the file its ``train_rows`` names, normalised with the
    training split's mean and standard deviation."""
    raw = torch.from_numpy(pixels[splits.train_rows.numpy()]).float().unsqueeze(1) / 255
    expected = (raw - raw.mean()) / raw.std()
    assert torch.allclose(splits.train.inputs, expected, atol=1e-4)


def _standardised(x):
    return (x - x.mean()) / x.std()


@requires_fashion_mnist
def test_image_folder_reads_classes_shapes_and_pixels(image_folder):
    folder, pixels = image_folder
    splits = load_dataset(f"imagefolder:{folder}")
    assert splits.train.classes == sorted(CLASSES)
    assert (splits.num_classes, splits.in_channels, splits.default_model) == (3, 1, "cnn28")
    assert splits.queries == ("identity",)
    assert tuple(splits.train.inputs.shape[1:]) == (1, 28, 28)
    # 20% of each class is the test set; 10% of the rest is validation
    assert len(splits.test) == 3 * 8 and len(splits.val) + len(splits.train) == 3 * 32
    assert splits.test.targets.bincount().tolist() == [8, 8, 8]
    _check_pixels(splits, pixels)
    # the label of a training example is its folder's
    assert torch.equal(splits.train.targets, splits.train_rows // PER_CLASS)
    # and its file, relative to the folder, the one its row names
    assert splits.train_paths == [f"{sorted(CLASSES)[r // PER_CLASS]}/{r % PER_CLASS:03d}.png"
                                  for r in splits.train_rows.tolist()]


@requires_fashion_mnist
def test_image_folder_split_is_seeded_and_rows_are_stable(image_folder):
    folder, pixels = image_folder
    name = f"imagefolder:{folder}"
    base = load_dataset(name)
    again = load_dataset(name)
    assert torch.equal(base.train_rows, again.train_rows) and torch.equal(base.train.inputs, again.train.inputs)
    other_seed = load_dataset(name, seed=1)
    small = load_dataset(name, train_size=30, seed=2)
    assert not torch.equal(base.train_rows, other_seed.train_rows)
    assert len(small.train) == 30
    for splits in (other_seed, small):
        _check_pixels(splits, pixels)  # a row names the same file whatever the seed and train_size
        # the test set depends on the files alone
        assert torch.equal(splits.test.targets, base.test.targets)
        assert torch.allclose(_standardised(splits.test.inputs), _standardised(base.test.inputs), atol=1e-4)
    trained = {row for splits in (base, other_seed, small) for row in splits.train_rows.tolist()}
    assert len(trained) <= 3 * 32  # no seed ever trains on a test image


@pytest.mark.slow  # an end-to-end run
@requires_fashion_mnist
def test_unlearn_run_on_an_image_folder(image_folder, tmp_path):
    folder, _ = image_folder
    out = tmp_path / "run"
    splits = load_dataset(f"imagefolder:{folder}")
    # a request by file: two training images (one by its absolute path) and a test image, which is skipped
    test_row = sorted(set(range(3 * PER_CLASS)) - set(splits.train_rows.tolist()) - set(
        load_dataset(f"imagefolder:{folder}", val_fraction=0.0).train_rows.tolist()))[0]
    test_file = f"{sorted(CLASSES)[test_row // PER_CLASS]}/{test_row % PER_CLASS:03d}.png"
    asked = [splits.train_paths[3], str(folder / splits.train_paths[10]), test_file]
    pd.DataFrame({"path": asked}).to_csv(tmp_path / "request.csv", index=False)
    assert main(["run", "--dataset", f"imagefolder:{folder}", "--epochs", "1", "--checkpoints", "1", "--rows", "3",
                 "--forget", f"ids:{tmp_path / 'request.csv'}", "--proxies", "confidence", "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert any(row["metric"] == "accuracy.forget" for row in results["tables"]["results"])
    scores = pd.read_csv(out / "scores.csv")
    assert scores["source_row"].tolist() == splits.train_rows.tolist()
    assert scores["path"].tolist() == splits.train_paths
    forget = pd.read_csv(out / "forget.csv")
    assert forget["index"].tolist() == [3, 10] and forget["path"].tolist() == [splits.train_paths[i] for i in (3, 10)]
    assert "1 of 3 paths were never trained on" in (out / "report.md").read_text()


def test_streamed_splits_hold_the_in_memory_items():
    from unlearn.data import Streamed, labels_of, materialize

    memory, streamed = load_dataset("digits", train_size=500), load_dataset("digits", train_size=500, stream=True)
    for name in ("train", "val", "test"):
        a, b = getattr(memory, name), getattr(streamed, name)
        assert isinstance(b, Streamed) and len(a) == len(b)
        copy = materialize(b)
        assert torch.equal(a.inputs, copy.inputs) and torch.equal(a.targets, copy.targets)
        assert torch.equal(a.indices, copy.indices) and torch.equal(labels_of(b)[0], a.targets)
    assert torch.equal(memory.train_rows, streamed.train_rows)
    with pytest.raises(ValueError, match="num_workers"):
        load_dataset("digits", stream=True, num_workers=-1)


@requires_fashion_mnist
def test_a_streamed_image_folder_is_opened_a_batch_at_a_time(image_folder, monkeypatch):
    from unlearn.data import materialize, sources

    folder, _ = image_folder
    memory = load_dataset(f"imagefolder:{folder}")
    opened = []
    original = sources._ImageFiles.__getitem__
    monkeypatch.setattr(sources._ImageFiles, "__getitem__", lambda self, rows: opened.append(len(rows)) or
                        original(self, rows))
    streamed = load_dataset(f"imagefolder:{folder}", stream=True)
    # the normalisation's pass over the training split, each split's first item (whether items carry an index) and
    # the five items each split checks its targets against
    assert max(opened) <= 1024 and sum(opened) == len(streamed.train) + 3 + 3 * 5
    opened.clear()
    x, y, index = streamed.train[7]
    assert opened == [1] and index == 7 and y == int(memory.train.targets[7])
    assert torch.equal(streamed.train_rows, memory.train_rows)
    for name in ("train", "val", "test"):
        copy = materialize(getattr(streamed, name))
        assert torch.allclose(copy.inputs, getattr(memory, name).inputs, atol=1e-5)
        assert torch.equal(copy.targets, getattr(memory, name).targets)


@pytest.mark.slow  # two end-to-end runs with shadow models, one read through a worker process
@requires_fashion_mnist
def test_unlearn_run_streams_an_image_folder(image_folder, tmp_path):
    folder, _ = image_folder
    args = ["run", "--dataset", f"imagefolder:{folder}", "--epochs", "1", "--checkpoints", "1", "--rows", "3",
            "--forget", "random:10", "--proxies", "confidence", "loss_curvature", "--shadows", "4"]
    assert main([*args, "--stream", "--num-workers", "1", "--out", str(tmp_path / "streamed")]) == 0
    assert main([*args, "--out", str(tmp_path / "memory")]) == 0
    streamed, memory = (pd.read_csv(tmp_path / run / "scores.csv") for run in ("streamed", "memory"))
    assert streamed[["index", "label", "source_row"]].equals(memory[["index", "label", "source_row"]])
    # the same training up to the last bits of the normalisation: the same scores to float precision
    np.testing.assert_allclose(streamed["confidence"], memory["confidence"], atol=1e-4)
    with pytest.raises(ValueError, match="--stream"):
        RunConfig(num_workers=2).check()


@requires_fashion_mnist
def test_a_streamed_image_folder_trains_unlearns_and_evaluates_as_in_memory(image_folder):
    """An ImageFolder of real PNGs, read a batch at a time from disk by two worker processes, gives the model, the
    unlearned model and the report that the same images held in memory give."""
    import torchvision
    from torch.utils.data import Subset
    from torchvision import transforms

    from unlearn import create_model, evaluate, train, unlearn
    from unlearn.data import Streamed, materialize

    folder = torchvision.datasets.ImageFolder(str(image_folder[0]), transform=transforms.Compose(
        [transforms.Grayscale(), transforms.ToTensor()]))
    streamed = Streamed(folder, num_workers=2, targets=folder.targets)
    in_memory = materialize(folder)
    forget, retain, test = list(range(0, 120, 12)), [i for i in range(100) if i % 12], list(range(100, 120))
    results = []
    for data in (in_memory, streamed):
        torch.manual_seed(0)
        model, _ = train(create_model("cnn28", num_classes=3, in_channels=1), Subset(data, forget + retain),
                         epochs=2, seed=0, progress=False, device="cpu")
        unlearned = unlearn(model, forget=Subset(data, forget), retain=Subset(data, retain), method="finetune",
                            epochs=1, seed=0).model
        report = evaluate(unlearned, forget=Subset(data, forget), retain=Subset(data, retain),
                          test=Subset(data, test), attacks=("loss_threshold",))
        results.append((model, unlearned, report))
    for a, b in zip(*results, strict=True):
        if isinstance(a, pd.DataFrame):
            pd.testing.assert_frame_equal(a, b)
        else:
            assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values(),
                                                          strict=True))


def test_bad_image_folders_are_refused_clearly(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="is not a folder"):
        load_dataset(f"imagefolder:{tmp_path / 'missing'}")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="one subfolder of images per class"):
        load_dataset(f"imagefolder:{tmp_path / 'empty'}")
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        (tmp_path / "mixed" / name).mkdir(parents=True)
        for k in range(3):
            Image.fromarray(rng.integers(0, 256, (12, 12), dtype=np.uint8), mode="L").save(
                tmp_path / "mixed" / name / f"{k}.png")
    Image.fromarray(rng.integers(0, 256, (10, 14), dtype=np.uint8), mode="L").save(tmp_path / "mixed" / "b" / "odd.png")
    with pytest.raises(ValueError, match=r"odd\.png is 14x10 .* resize"):
        load_dataset(f"imagefolder:{tmp_path / 'mixed'}")
    with pytest.raises(ValueError, match="imagefolder:PATH"):
        check_dataset_name("imagefolder:")
    with pytest.raises(ValueError, match="torchvision:CLASS"):
        RunConfig(dataset="nope:x").check()
    with pytest.raises(SystemExit):
        main(["run", "--dataset", "nope"])


def test_one_colour_image_makes_the_folder_rgb(tmp_path):
    rng = np.random.default_rng(0)
    for name in ("cat", "dog"):
        (tmp_path / name).mkdir()
        for k in range(5):
            Image.fromarray(rng.integers(0, 256, (32, 32), dtype=np.uint8), mode="L").save(tmp_path / name / f"{k}.png")
    Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8), mode="RGB").save(tmp_path / "dog" / "rgb.png")
    splits = load_dataset(f"imagefolder:{tmp_path}", val_fraction=0.0)
    assert (splits.in_channels, splits.default_model, splits.queries) == (3, "resnet18", ("identity", "hflip"))
    assert tuple(splits.train.inputs.shape[1:]) == (3, 32, 32)


def test_run_folder_of_a_dataset_source():
    assert RunConfig(dataset="imagefolder:/data/pets/").folder.as_posix() == "runs/imagefolder-pets"
    assert RunConfig(dataset="torchvision:KMNIST").folder.as_posix() == "runs/torchvision-KMNIST"


@requires_fashion_mnist
def test_torchvision_class_by_name(fashion_root):
    root, splits = fashion_root
    assert (len(splits.train), len(splits.val), len(splits.test)) == (100, 6000, 10000)
    assert (splits.num_classes, splits.in_channels, splits.default_model) == (10, 1, "cnn28")
    assert splits.train.classes[0] == "T-shirt/top"
    assert abs(float(splits.train.inputs.mean())) < 1e-3
    with pytest.raises(ValueError, match="expected one of .*'FashionMNIST'"):
        load_dataset("torchvision:ImageNette", root=root)
    with pytest.raises(ValueError, match="SVHN"):
        load_dataset("torchvision:SVHN", root=root)
