"""On a GPU: the whole path with the fast settings (bf16, channels-last, deterministic), and the synthetic data on
ResNet-18. Marked ``cuda``: skipped without one (``make check-gpu`` runs them)."""

import numpy as np
import pytest
import torch
from torch.utils.data import Subset

import proxies
from proxies import TrainingRecorder
from proxies.devices import model_device

pytestmark = pytest.mark.cuda


@pytest.mark.parametrize("options", [{}, {"precision": "bf16", "channels_last": True}, {"deterministic": True}],
                         ids=["fp32", "bf16-channels-last", "deterministic"])
def test_recorder_proxies_rum_and_evaluate_on_the_gpu(digits, options):
    from unlearn import create_model, evaluate, train, unlearn

    data = Subset(digits.train, range(240))
    recorder = TrainingRecorder(len(digits.train))
    torch.manual_seed(0)
    model, history = train(create_model("digits_cnn", num_classes=10, in_channels=1), data, epochs=3,
                           batch_size=64, recorder=recorder, device="cuda", progress=False, **options)
    assert model_device(model).type == "cuda" and np.isfinite(history["loss"]).all()
    assert recorder.input_gradient_norms is not None and np.isfinite(recorder.input_gradient_norms[:, :240]).all()
    scores = proxies.compute(["confidence", "csl", "loss_curvature"][:2], recording=recorder)
    scores["loss_curvature"] = proxies.loss_curvature(model, data, n_probes=2, progress=False)
    assert scores.loc[:239].notna().all().all()
    forget, retain = Subset(digits.train, range(30)), Subset(digits.train, range(30, 240))
    result = unlearn(model, forget=forget, retain=retain, proxy="confidence", recording=recorder,
                     policy="random_label_fast", seed=0)
    assert model_device(result.model).type == "cuda"
    report = evaluate(result.model, forget=forget, retain=retain, test=digits.test, reference=model,
                      attacks=("loss_threshold",))
    assert np.isfinite(report["model"][["accuracy.forget", "accuracy.test", "loss_threshold.auc"]]).all()


def test_deterministic_training_repeats_bit_for_bit_on_the_gpu(digits):
    from unlearn import create_model, train

    data = Subset(digits.train, range(256))
    runs = []
    for _ in range(2):
        torch.manual_seed(0)
        model, _ = train(create_model("digits_cnn", num_classes=10, in_channels=1), data, epochs=2, batch_size=32,
                         device="cuda", deterministic=True, progress=False)
        runs.append(model.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(runs[0].values(), runs[1].values(), strict=True))


def test_resnet18_trains_on_synthetic_cifar_in_bf16_channels_last():
    from unlearn import create_model, train
    from unlearn.data import load_dataset

    splits = load_dataset("synthetic-cifar", train_size=1024, val_fraction=0.0002)
    recorder = TrainingRecorder(len(splits.train))
    torch.manual_seed(0)
    model, history = train(create_model("resnet18", num_classes=10, in_channels=3), splits.train, epochs=2,
                           batch_size=256, lr=0.05, recorder=recorder, device="cuda", precision="bf16",
                           channels_last=True, progress=False)
    assert np.isfinite(history["loss"]).all() and np.isfinite(recorder["confidence"]).all()
