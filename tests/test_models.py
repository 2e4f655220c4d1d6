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
    with pytest.raises(ValueError,
                       match=r"expected one of \['cnn28', 'digits_cnn', 'resnet18', 'tiny_gpt', 'vit_mini'\]"):
        create_model("vgg", num_classes=10, in_channels=1)
    assert models() == ["cnn28", "digits_cnn", "resnet18", "tiny_gpt", "vit_mini"]


def test_tiny_gpt_is_a_causal_lm_of_the_vocabulary():
    torch.manual_seed(0)
    model = create_model("tiny_gpt", vocab_size=100, n_positions=16, n_embd=32, n_layer=1, n_head=2).eval()
    ids = torch.randint(0, 100, (2, 8))
    logits = model(ids).logits
    assert logits.shape == (2, 8, 100)
    changed = ids.clone()
    changed[:, 5] = (changed[:, 5] + 1) % 100
    # causal: a token changes the logits at and after its position only
    torch.testing.assert_close(model(changed).logits[:, :5], logits[:, :5])
    assert not torch.allclose(model(changed).logits[:, 5], logits[:, 5])
    assert sum(p.numel() for p in create_model("tiny_gpt", vocab_size=2048).parameters()) == 675_328


def test_create_model_refuses_bad_sizes_and_foreign_keywords():
    with pytest.raises(ValueError, match="vocab_size must be an int >= 1"):
        create_model("tiny_gpt", vocab_size=0)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        create_model("tiny_gpt", vocab_size=10, eos_token_id=10)
    with pytest.raises(TypeError, match="vocab_size"):
        create_model("digits_cnn", num_classes=10, in_channels=1, vocab_size=5)
