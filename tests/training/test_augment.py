"""Training-time augmentation (unlearn.training.augment), its use in train(), the named recipes and ``--recipe``."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn
from torch.utils.data import Subset, TensorDataset

from proxies import TrainingRecorder
from proxies.batching import batches
from unlearn.models import create_model
from unlearn.training import RECIPES, TrainConfig, get_recipe, recipes, train
from unlearn.training.augment import (
    augmentation_generator,
    augmentations,
    get_augmentation,
    horizontal_flip,
    random_crop,
    random_crop_flip,
)

# ------------------------------------------------------------------------------- the slow, obvious reference


def reference_crop(x, offsets, pad):
    """Each image zero-padded by hand and sliced at its offsets, one at a time."""
    b, c, h, w = x.shape
    out = torch.empty_like(x)
    for i in range(b):
        padded = torch.zeros(c, h + 2 * pad, w + 2 * pad, dtype=x.dtype)
        padded[:, pad:pad + h, pad:pad + w] = x[i]
        top, left = int(offsets[i, 0]), int(offsets[i, 1])
        out[i] = padded[:, top:top + h, left:left + w]
    return out


def reference_flip(x, flips):
    out = x.clone()
    for i in range(len(x)):
        if flips[i]:
            out[i] = x[i, :, :, torch.arange(x.shape[3] - 1, -1, -1)]
    return out


def reference(name, x, generator):
    """The reference of a registered augmentation, drawing from ``generator`` as its documentation says."""
    if name == "none":
        return x.clone()
    pad = {"crop": 4, "crop_flip": 4, "crop2_flip": 2}.get(name)
    if pad is not None:
        x = reference_crop(x, torch.randint(0, 2 * pad + 1, (len(x), 2), generator=generator), pad)
    if name in ("flip", "crop_flip", "crop2_flip"):
        x = reference_flip(x, torch.rand(len(x), generator=generator) < 0.5)
    return x


@pytest.mark.parametrize("name", ["none", "flip", "crop", "crop_flip", "crop2_flip"])
@pytest.mark.parametrize("shape", [(16, 3, 8, 8), (9, 1, 5, 7)])
def test_each_augmentation_matches_the_per_image_reference(name, shape):
    x = torch.randn(shape)
    before = x.clone()
    augmented = get_augmentation(name)(x, torch.Generator().manual_seed(5))
    expected = reference(name, x, torch.Generator().manual_seed(5))
    assert torch.equal(augmented, expected)
    assert torch.equal(x, before)  # the batch handed in is left alone


def test_crop_and_flip_take_their_own_arguments():
    x = torch.randn(32, 2, 6, 6)
    torch.testing.assert_close(random_crop(x, torch.Generator().manual_seed(1), pad=3),
                               reference_crop(x, torch.randint(0, 7, (32, 2), generator=torch.Generator()
                                                               .manual_seed(1)), 3), rtol=0, atol=0)
    assert torch.equal(horizontal_flip(x, torch.Generator(), p=1.0), x.flip(3))
    assert torch.equal(horizontal_flip(x, torch.Generator(), p=0.0), x)
    assert torch.equal(random_crop(x, torch.Generator(), pad=0), x)


def test_augmentations_are_deterministic_for_a_seed_and_vary_with_it():
    x = torch.randn(64, 3, 8, 8)
    for name in ("flip", "crop", "crop_flip", "crop2_flip"):
        fn = get_augmentation(name)
        first, again = (fn(x, torch.Generator().manual_seed(0)) for _ in range(2))
        assert torch.equal(first, again)
        assert not torch.equal(first, fn(x, torch.Generator().manual_seed(1)))
        assert not torch.equal(first, x)
    # crops really move the images: some are shifted, and the zero padding shows
    cropped = random_crop_flip(x, torch.Generator().manual_seed(0))
    assert (cropped == 0).any() and not (x == 0).any()


@pytest.mark.cuda
def test_an_augmentation_on_cuda_draws_as_on_the_cpu():
    x = torch.randn(64, 3, 32, 32)
    for name in ("flip", "crop_flip"):
        on_gpu = get_augmentation(name)(x.cuda(), torch.Generator().manual_seed(3))
        assert on_gpu.device.type == "cuda"
        assert torch.equal(on_gpu.cpu(), get_augmentation(name)(x, torch.Generator().manual_seed(3)))


def test_unknown_names_and_non_images_are_refused():
    with pytest.raises(ValueError, match=r"unknown augmentation 'rotate'; expected one of \['crop'"):
        get_augmentation("rotate")
    with pytest.raises(ValueError, match="unknown augmentation"):
        TrainConfig(augment="rotate")
    with pytest.raises(ValueError, match=r"\[B, C, H, W\]"):
        random_crop_flip(torch.randn(4, 10), torch.Generator())
    tabular = TensorDataset(torch.randn(20, 5), torch.randint(0, 2, (20,)))
    with pytest.raises(ValueError, match="needs images"):
        train(nn.Linear(5, 2), tabular, epochs=1, augment="flip", progress=False, device="cpu")
    with pytest.raises(ValueError, match="unknown augmentation"):
        train(nn.Linear(5, 2), tabular, epochs=1, augment="rotate", progress=False, device="cpu")
    assert set(augmentations()) >= {"none", "flip", "crop", "crop_flip", "crop2_flip"}


# ------------------------------------------------------------------------------------------ in train()

def _model():
    torch.manual_seed(0)
    return create_model("digits_cnn", num_classes=10, in_channels=1)


def _same_weights(a, b):
    return all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


RECIPE = {"epochs": 2, "lr": 0.05, "batch_size": 64, "seed": 3, "progress": False, "device": "cpu"}


def test_augment_none_trains_bit_for_bit_as_before(digits):
    data = Subset(digits.train, range(200))
    plain_recording, none_recording = TrainingRecorder(len(digits.train)), TrainingRecorder(len(digits.train))
    plain, plain_history = train(_model(), data, recorder=plain_recording, **RECIPE)
    none, none_history = train(_model(), data, recorder=none_recording, augment="none", **RECIPE)
    assert _same_weights(plain, none)
    np.testing.assert_array_equal(plain_recording.values, none_recording.values)
    pd.testing.assert_frame_equal(plain_history.drop(columns="seconds"), none_history.drop(columns="seconds"))
    augmented, _ = train(_model(), data, augment="crop_flip", **RECIPE)
    assert not _same_weights(plain, augmented)


class Spy(nn.Module):
    """A digits CNN that keeps what it is shown in training mode (in a class attribute: train() deep-copies it)."""

    seen: list = []
    outputs: list = []

    def __init__(self):
        super().__init__()
        self.net = _model()

    def forward(self, x):
        logits = self.net(x)
        if self.training:
            Spy.seen.append(x.detach().clone())
            Spy.outputs.append(logits.detach().clone())
        return logits


class SpyRecorder:
    """What train() hands a recorder: the logits and input gradients of each presentation."""

    input_gradients = True

    def __init__(self):
        self.logits, self.gradients, self.indices = [], [], []

    def start_epoch(self):
        pass

    def end_epoch(self, model):
        pass

    def record(self, logits, labels, index):
        self.logits.append(logits.detach().clone())
        self.indices.append(index.clone())

    def record_input_gradients(self, grad, index, scale):
        self.gradients.append(grad.clone())


def test_the_model_and_the_recorder_see_the_augmented_presentations(digits):
    data = Subset(digits.train, range(150))
    Spy.seen.clear()
    Spy.outputs.clear()
    recorder = SpyRecorder()
    train(Spy(), data, recorder=recorder, augment="crop_flip", **RECIPE)
    # the same batches as an un-augmented run (the shuffling generator is untouched), augmented by the reference
    # from the augmentation's own generator, in order
    order, draws = torch.Generator().manual_seed(RECIPE["seed"]), augmentation_generator(RECIPE["seed"])
    expected, indices = [], []
    for _ in range(RECIPE["epochs"]):
        for x, _, index in batches(data, RECIPE["batch_size"], shuffle=True, generator=order):
            expected.append(reference("crop_flip", x, draws))
            indices.append(index)
    assert len(Spy.seen) == len(expected) == len(recorder.logits)
    assert all(torch.equal(seen, wanted) for seen, wanted in zip(Spy.seen, expected, strict=True))
    assert not all(torch.equal(seen, torch.stack([data.dataset[int(i)][0] for i in index]))
                   for seen, index in zip(Spy.seen, indices, strict=True))
    for logits, outputs, index, wanted_index in zip(recorder.logits, Spy.outputs, recorder.indices, indices,
                                                    strict=True):
        assert torch.equal(logits, outputs) and torch.equal(index, wanted_index)
    # the input gradients are those of the augmented inputs: the loss's gradient through the model at them
    assert all(g.shape == x.shape for g, x in zip(recorder.gradients, Spy.seen, strict=True))


def test_a_training_with_augmentation_stopped_mid_way_resumes_to_the_same_bits(digits, tmp_path):
    data = Subset(digits.train, range(300))
    recipe = {**RECIPE, "epochs": 4, "augment": "crop_flip"}
    whole_recording = TrainingRecorder(len(digits.train))
    whole, whole_history = train(_model(), data, recorder=whole_recording, **recipe)

    class Killed(Exception):
        pass

    def kill_after_third(epoch, _):
        if epoch == 3:
            raise Killed

    state = tmp_path / "state.pt"
    with pytest.raises(Killed):
        train(_model(), data, recorder=TrainingRecorder(len(digits.train)), resume=state,
              on_epoch_end=kill_after_third, **recipe)
    recording = TrainingRecorder(len(digits.train))
    resumed, history = train(_model(), data, recorder=recording, resume=state, **recipe)
    assert _same_weights(whole, resumed)
    np.testing.assert_array_equal(recording.values, whole_recording.values)
    np.testing.assert_array_equal(recording.input_gradient_norms, whole_recording.input_gradient_norms)
    pd.testing.assert_frame_equal(history.drop(columns="seconds"), whole_history.drop(columns="seconds"))
    # a state of augmented training is not one of another augmentation's, nor of none
    for other in ("flip", "none"):
        with pytest.raises(ValueError, match=r"other settings \(augment\)"):
            train(_model(), data, recorder=TrainingRecorder(len(digits.train)), resume=state,
                  **{**recipe, "augment": other})


# ------------------------------------------------------------------------------------------ recipes

def test_named_recipes_and_the_dataset_defaults():
    anchors = get_recipe("cifar-resnet18")
    assert (anchors.epochs, anchors.lr, anchors.batch_size, anchors.momentum, anchors.weight_decay, anchors.schedule,
            anchors.augment) == (30, 0.01, 512, 0.9, 5e-4, "step", "crop_flip")
    assert RECIPES["cifar10"] == RECIPES["cifar100"] == anchors  # the anchors' setting is the CIFAR default
    assert get_recipe("fashion-mnist-augmented").augment == "crop2_flip"
    assert {"digits", "fashion-mnist", "mnist", "cifar10", "cifar100", "synthetic-cifar", "cifar-resnet18",
            "fashion-mnist-augmented"} <= set(recipes())
    for name in ("digits", "mnist", "fashion-mnist", "synthetic-cifar"):  # unchanged: no augmentation recorded
        assert "augment" not in RECIPES[name].as_kwargs()
    assert anchors.as_kwargs()["augment"] == "crop_flip"
    with pytest.raises(ValueError, match=r"unknown training recipe 'nope'; expected one of \[.*'cifar-resnet18'"):
        get_recipe("nope")


def test_run_config_picks_a_recipe_and_options_override_it():
    from unlearn.pipeline import RunConfig

    assert RunConfig(dataset="cifar10").training_recipe() == get_recipe("cifar-resnet18")
    config = RunConfig(recipe="cifar-resnet18", epochs=3, augment="flip")
    recipe = config.training_recipe()
    assert (recipe.epochs, recipe.lr, recipe.augment) == (3, 0.01, "flip")
    old = RunConfig.from_toml_text('recipe_name = "cifar-resnet18"\nepochs = 3\naugment = "flip"')  # an older file
    assert old == config
    assert config.recipe_settings() == {"recipe": "cifar-resnet18"}
    assert RunConfig(recipe="digits").recipe_settings() == RunConfig().recipe_settings() == {}
    assert RunConfig(dataset="cifar10", augment="none").training_recipe().as_kwargs().get("augment") is None
    with pytest.raises(ValueError, match=r"--recipe: unknown training recipe 'nope'"):
        RunConfig(recipe="nope").check()
    with pytest.raises(ValueError, match=r"--augment: unknown augmentation 'nope'"):
        RunConfig(augment="nope").check()
    assert RunConfig.from_toml_text(config.to_toml()) == config


def test_retrain_holds_the_augmentation_and_retrains_with_it(digits):
    from unlearn import unlearn
    from unlearn.algorithms.retrain import RetrainConfig

    recipe_ = {**RECIPES["digits"].as_kwargs(), "epochs": 1, "augment": "crop_flip"}
    assert RetrainConfig(**recipe_).recipe() == recipe_
    assert "augment" not in RetrainConfig().recipe()
    with pytest.raises(ValueError, match="unknown augmentation"):
        RetrainConfig(augment="nope")
    forget, retain = Subset(digits.train, range(20)), Subset(digits.train, range(20, 140))
    retrained = unlearn(_model(), forget=forget, retain=retain, method="retrain", seed=3,
                        config={"model_fn": "digits_cnn", **recipe_}).model
    torch.manual_seed(3)
    reference_model, _ = train(create_model("digits_cnn", num_classes=10, in_channels=1), retain, seed=3,
                               device="cpu", progress=False, **recipe_)
    assert _same_weights(retrained, reference_model)


# ------------------------------------------------------------------------------------------ the command line

RUN = ["--train-size", "120", "--epochs", "1", "--checkpoints", "1", "--proxies", "confidence", "csl",
       "--forget", "high:12", "--policy", "random_label_fast", "--method-config", "retain_per_forget=4"]


def test_run_with_a_named_recipe_records_it_and_refuses_another(tmp_path, capsys):
    from unlearn.cli import build_parser, main, run_config

    config = run_config(build_parser().parse_args(["train", "--recipe", "cifar-resnet18", "--augment", "none",
                                                   "--out", str(tmp_path / "x")]))
    assert config.recipe == "cifar-resnet18" and config.training_recipe().augment == "none"
    out = tmp_path / "run"
    assert main(["run", *RUN, "--recipe", "fashion-mnist-augmented", "--out", str(out)]) == 0
    settings = json.loads((out / "config.json").read_text())
    assert settings["recipe"] == "fashion-mnist-augmented" and settings["augment"] == "crop2_flip"
    assert settings["epochs"] == 1 and settings["batch_size"] == 128  # the option over the recipe's 15 epochs
    stages = json.loads((out / "stages.json").read_text())
    assert "crop2_flip" in json.dumps(stages)  # the retrained reference trained with the recipe's augmentation
    capsys.readouterr()
    assert main(["run", *RUN, "--out", str(out)]) == 2  # the dataset's recipe: other settings
    err = capsys.readouterr().err
    assert "other settings" in err and "augment" in err and "recipe" in err
    assert main(["run", *RUN, "--recipe", "fashion-mnist-augmented", "--augment", "flip", "--out", str(out)]) == 2
    assert "other settings (augment)" in capsys.readouterr().err
