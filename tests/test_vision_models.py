"""Models of the timm and torchvision zoos by name, and a vision transformer (LayerNorm, attention, a class token,
no BatchNorm) through everything a classifier goes through: train with the recorder, every proxy, every method,
evaluate and the KLoM margins."""

import hashlib
import json
import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn
from torch.utils.data import Subset

import proxies
import unlearn
from unlearn import create_model, evaluate, train
from unlearn.algorithms.registry import get_method
from unlearn.models import is_model, load_weights

pytest.importorskip("timm")

pytestmark = pytest.mark.usefixtures("one_thread")

TINY_VIT = {"patch_size": 4, "depth": 1, "embed_dim": 32, "num_heads": 2}


def tiny_vit() -> nn.Module:
    """A timm ViT for 8x8 digits: four 4x4 patches and a class token, one block of width 32."""
    return create_model("timm:vit_tiny_patch16_224", num_classes=10, in_channels=1, img_size=8, **TINY_VIT)


@pytest.fixture(scope="module")
def vit(digits):
    """A tiny ViT trained on 300 digits with the recorder, and a forget and retain set."""
    data = Subset(digits.train, range(300))
    torch.manual_seed(0)
    recorder = proxies.TrainingRecorder(len(digits.train))
    model, _ = train(tiny_vit(), data, epochs=15, lr=3e-3, batch_size=32, momentum=0.0, weight_decay=0.05,
                     optimizer="adamw", schedule="warmup_cosine", recorder=recorder, progress=False, device="cpu")
    return model, recorder, Subset(digits.train, range(30)), Subset(digits.train, range(30, 300))


def test_zoo_models_are_built_for_the_data(tmp_path):
    vit = create_model("timm:vit_tiny_patch16_224", num_classes=3, in_channels=1, img_size=(8, 12),
                       **{**TINY_VIT, "patch_size": 4})
    assert vit(torch.zeros(2, 1, 8, 12)).shape == (2, 3)
    # a convolutional net takes no image size: img_size is not passed to it (timm's and torchvision's alike)
    for name in ("timm:resnet10t", "torchvision:resnet18"):
        model = create_model(name, num_classes=4, in_channels=1, img_size=16)
        assert model(torch.zeros(2, 1, 16, 16)).shape == (2, 4)
    assert create_model("digits_cnn", num_classes=10, in_channels=1, img_size=8)(torch.zeros(1, 1, 8, 8)).shape[1] == 10
    assert is_model("timm:vit_tiny_patch16_224") and is_model("vit_mini") and not is_model("timm:no_such_net")
    with pytest.raises(ValueError, match="timm has no architecture 'vit_tiny_patch16'.*close"):
        create_model("timm:vit_tiny_patch16", num_classes=2)
    with pytest.raises(ValueError, match="unknown model zoo 'hf'"):
        create_model("hf:bert", num_classes=2)
    with pytest.raises(FileNotFoundError, match="only from a local file"):
        create_model("vit_mini", num_classes=2, in_channels=1, weights=tmp_path / "none.pt")


def test_weights_come_from_a_local_file_and_adapt_to_new_classes(tmp_path):
    torch.manual_seed(0)
    source = tiny_vit()
    torch.save(source.state_dict(), tmp_path / "vit.pt")
    torch.manual_seed(1)
    same = create_model("timm:vit_tiny_patch16_224", num_classes=10, in_channels=1, img_size=8,
                        weights=tmp_path / "vit.pt", **TINY_VIT)
    for name, tensor in source.state_dict().items():
        torch.testing.assert_close(same.state_dict()[name], tensor, msg=name)
    fewer = create_model("timm:vit_tiny_patch16_224", num_classes=4, in_channels=1, img_size=8,
                         weights=tmp_path / "vit.pt", **TINY_VIT)  # timm gives it a fresh head of 4
    assert fewer.head.out_features == 4
    torch.testing.assert_close(fewer.blocks[0].attn.qkv.weight, source.blocks[0].attn.qkv.weight)
    # any other model: load_weights keeps what fits and names what does not
    torch.manual_seed(0)
    cnn = create_model("torchvision:resnet18", num_classes=10, in_channels=1)
    torch.save({"state_dict": cnn.state_dict()}, tmp_path / "cnn.pt")
    with pytest.warns(UserWarning, match=r"\['fc.bias', 'fc.weight'\] have other shapes"):
        other = create_model("torchvision:resnet18", num_classes=3, in_channels=1, weights=tmp_path / "cnn.pt")
    torch.testing.assert_close(other.conv1.weight, cnn.conv1.weight)
    with pytest.raises(ValueError, match="saved from another architecture"):
        load_weights(create_model("digits_cnn", num_classes=10, in_channels=1), tmp_path / "cnn.pt")


def test_a_vit_trains_and_records(vit, digits):
    model, recorder, _, _ = vit
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    assert unlearn.training.top1_accuracy(model, Subset(digits.train, range(300))) > 0.9
    assert recorder.num_epochs == 15 and np.isfinite(recorder.values[:, :300]).all()


def test_every_classifier_proxy_scores_a_vit(vit, digits):
    model, recorder, _, _ = vit
    data = Subset(digits.train, range(60))
    inputs = {"recording": recorder, "model": model, "data": data, "holdout": Subset(digits.val, range(40)),
              "fine_tune": train, "max_epochs": 2, "progress": False}
    names = [n for n in proxies.available() if proxies.get_proxy(n).scores("classification")
             and "subset_models" not in proxies.get_proxy(n).needs]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # memorization_estimate: fitted on CNNs, it says so
        table = pd.concat([proxies.compute(n, **inputs) for n in names], axis=1).loc[range(60)]
    model_based = [n for n in names if "model" in proxies.get_proxy(n).needs]
    assert {"loss_curvature", "gradient_norm", "holdout_retraining"} <= set(model_based)
    assert table[model_based].notna().all().all() and np.isfinite(table[model_based].to_numpy()).all()
    assert table[model_based].nunique().gt(10).all()  # per-example values, not one number broadcast


METHODS = {"influence": {}, "retrain": {"epochs": 1, "optimizer": "adamw", "lr": 3e-3, "momentum": 0.0,
                                        "model_fn": "timm:vit_tiny_patch16_224",
                                        "model_kwargs": TINY_VIT}}


@pytest.mark.parametrize("method", [pytest.param(m, marks=pytest.mark.slow) if m == "tau" else m  # tau: 2.4 s
                                    for m in sorted(m for m in unlearn.methods()
                                                    if get_method(m).fn.__module__.startswith("unlearn.algorithms")
                                                    and m != "rum")])
def test_every_method_unlearns_a_vit(vit, method):
    model, _, forget, retain = vit
    before = {k: v.clone() for k, v in model.state_dict().items()}
    config = METHODS.get(method, {"epochs": 1})
    result = unlearn.unlearn(model, forget=forget, retain=retain, method=method, config=config, seed=0)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())  # the input is left alone
    changed = [k for k, v in result.model.state_dict().items() if not torch.equal(v, before[k])]
    assert changed and all(torch.isfinite(p).all() for p in result.model.parameters())


def test_rum_unlearns_a_vit_scheduled_by_its_recording(vit):
    model, recorder, forget, retain = vit
    policy = {"low": None, "medium": ("finetune", {"epochs": 1}), "high": ("neggrad_plus", {"epochs": 1})}
    result = unlearn.unlearn(model, forget=forget, retain=retain, method="rum", recording=recorder,
                             proxy="confidence", policy=policy, seed=0)
    assert {s.group for s in result.plan} == {"low", "medium", "high"}


def test_evaluate_attacks_a_vit(vit, digits):
    model, _, forget, retain = vit
    reference = unlearn.unlearn(model, forget=forget, retain=retain, method="retrain", config=METHODS["retrain"],
                                seed=1).model
    report = evaluate(model, forget=forget, retain=retain, test=Subset(digits.test, range(100)), reference=reference,
                      attacks=("loss_threshold", "svc"))
    assert {"accuracy.forget", "tow"} <= set(report.index)
    assert np.isfinite(report.loc["tow", "model"])


def test_the_command_line_trains_a_zoo_model_from_local_weights(tmp_path, capsys):
    from unlearn.cli import main

    options = ["--model-options", "patch_size=4", "depth=1", "embed_dim=32", "num_heads=2"]
    base = ["train", "--train-size", "60", "--epochs", "1", "--checkpoints", "1",
            "--model", "timm:vit_tiny_patch16_224", *options]
    assert main([*base, "--out", str(tmp_path / "first")]) == 0
    settings = json.loads((tmp_path / "first" / "config.json").read_text())
    assert settings["model"] == "timm:vit_tiny_patch16_224" and settings["model_options"]["depth"] == 1
    # a second run starts from the first one's weights: recorded by path and digest
    weights = tmp_path / "first" / "model.pt"
    assert main([*base, "--weights", str(weights), "--out", str(tmp_path / "second")]) == 0
    recorded = json.loads((tmp_path / "second" / "config.json").read_text())["weights"]
    assert recorded == {"file": str(weights.resolve()), "sha256": hashlib.sha256(weights.read_bytes()).hexdigest()}
    capsys.readouterr()
    for bad, message in ((["--model", "timm:no_such_net"], "timm has no architecture 'no_such_net'"),
                         (["--weights", str(tmp_path / "none.pt")], "no such file"),
                         (["--model-options", "depth"], "expected KEY=VALUE")):
        try:
            status = main(["train", "--train-size", "60", *bad, "--out", str(tmp_path / "bad")])
        except SystemExit as stop:  # argparse's own refusal of an option's value
            status = stop.code
        assert status == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "bad" / "model.pt").exists()


def test_retraining_a_vit_needs_its_factory_and_says_so(vit):
    model, _, forget, retain = vit
    with pytest.raises(ValueError, match=r"\['cls_token', 'pos_embed'\].* pass model_fn="):
        unlearn.unlearn(model, forget=forget, retain=retain, method="retrain", epochs=1)
