"""Datasets of dict items (as Hugging Face ``datasets`` yield them) through :class:`unlearn.data.FromDicts`."""

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from unlearn import train
from unlearn.data import FromDicts, Streamed, labels_of, materialize


class HubLike:
    """What a Hugging Face ``Dataset`` of images offers: rows as dicts of a PIL image and a label, and columns by
    name (reading the label column decodes no image); counts the rows read."""

    column_names = ["image", "label"]

    def __init__(self, images, labels):
        self.images, self.labels, self.rows_read = images, labels, 0

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, key):
        if isinstance(key, str):
            return list(self.labels) if key == "label" else list(self.images)
        self.rows_read += 1
        return {"image": self.images[key], "label": self.labels[key]}


@pytest.fixture(scope="module")
def hub(digits):
    """The first 120 digits as 8-bit grayscale PIL images, as a hub dataset would hold them."""
    pixels = digits.train.inputs[:120, 0]
    scaled = ((pixels - pixels.min()) / (pixels.max() - pixels.min()) * 255).round().to(torch.uint8).numpy()
    return [Image.fromarray(p, mode="L") for p in scaled], digits.train.targets[:120].tolist(), scaled


def test_dict_items_become_the_images_and_labels_they_hold(hub):
    images, labels, scaled = hub
    data = FromDicts(HubLike(images, labels))
    assert data.dataset.rows_read == 1 and data.targets.tolist() == labels  # labels from the column
    copy = materialize(data)
    assert copy.inputs.shape == (120, 1, 8, 8)
    assert torch.equal(copy.inputs, torch.from_numpy(scaled)[:, None].float() / 255)  # to_tensor's scaling
    assert copy.targets.tolist() == labels and copy.indices.tolist() == list(range(120))


def test_a_dataset_of_dicts_trains_in_memory_and_streamed_alike(hub):
    images, labels, _ = hub
    data = FromDicts(HubLike(images, labels))
    results = []
    for dataset in (materialize(data), Streamed(data, targets=data.targets)):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
        model, history = train(model, dataset, epochs=2, batch_size=32, progress=False, device="cpu")
        results.append((history["loss"].to_numpy(), [p.detach() for p in model.parameters()]))
    assert np.allclose(results[0][0], results[1][0], atol=1e-6)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(results[0][1], results[1][1], strict=True))
    assert labels_of(Streamed(data, targets=data.targets))[0].tolist() == labels


def test_a_plain_list_of_dicts_reads_its_labels_from_the_items():
    rows = [{"x": [0.0, 1.0], "y": 1}, {"x": [1.0, 0.0], "y": 0}]
    data = FromDicts(rows, input="x", label="y")
    assert data.targets.tolist() == [1, 0] and torch.equal(data[0][0], torch.tensor([0.0, 1.0], dtype=torch.float64))


@pytest.mark.parametrize("rows, options, error, message", [
    ([{"img": 1, "label": 0}], {}, ValueError, r"item 0 has no \['image'\] \(its keys: \['img', 'label'\]\)"),
    ([(1, 0)], {}, TypeError, "item 0 is a tuple, not a dict"),
    ([], {}, ValueError, "no items"),
])
def test_dicts_of_other_keys_are_refused_with_the_keys_they_have(rows, options, error, message):
    with pytest.raises(error, match=message):
        FromDicts(rows, **options)


def test_training_on_dict_items_directly_points_to_the_adapter():
    rows = [{"image": torch.zeros(1, 8, 8), "label": 0}] * 4
    with pytest.raises(TypeError, match="goes through unlearn.data.FromDicts"):
        train(nn.Sequential(nn.Flatten(), nn.Linear(64, 10)), Streamed(rows), epochs=1, progress=False)
