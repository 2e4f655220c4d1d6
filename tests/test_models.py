import pytest
import torch
from torch import nn

from unlearn.models import create_model, models, register_model


@pytest.mark.parametrize("name, in_channels, size", [("digits_cnn", 1, 8), ("cnn28", 1, 28), ("resnet18", 3, 32)])
@pytest.mark.parametrize("num_classes", [2, 10])
def test_models_map_images_to_logits(name, in_channels, size, num_classes):
    model = create_model(name, num_classes=num_classes, in_channels=in_channels)
    assert model(torch.zeros(2, in_channels, size, size)).shape == (2, num_classes)


def test_registry_refuses_duplicates_and_unknown_names():
    with pytest.raises(ValueError, match="already registered"):
        register_model("digits_cnn")(lambda **kw: nn.Linear(1, 1))
    with pytest.raises(ValueError, match=r"expected one of \['cnn28', 'digits_cnn', 'resnet18'\]"):
        create_model("vgg", num_classes=10, in_channels=1)
    assert models() == ["cnn28", "digits_cnn", "resnet18"]
