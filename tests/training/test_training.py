import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from unlearn.models import create_model
from unlearn.training import RECIPES, load_checkpoint, predict, save_checkpoint, top1_accuracy, train


@pytest.fixture(scope="module")
def digits_model(digits):
    torch.manual_seed(0)
    model = create_model("digits_cnn", num_classes=10, in_channels=1)
    return train(model, digits.train, seed=0, progress=False, device="cpu", **RECIPES["digits"].as_kwargs())


@pytest.mark.slow  # the whole digits recipe, 30 epochs
def test_digits_cnn_reaches_95_percent_on_real_test_digits(digits, digits_model):
    model, history = digits_model
    assert top1_accuracy(model, digits.test) >= 0.95
    assert len(history) == RECIPES["digits"].epochs
    assert history["loss"].iloc[-1] < history["loss"].iloc[0]


def test_training_is_deterministic_and_leaves_the_caller_alone(digits):
    torch.manual_seed(0)
    model = create_model("digits_cnn", num_classes=10, in_channels=1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng_before = torch.get_rng_state()
    data = _small_digits(digits, 300)  # 300: the last batch of each epoch is a short one
    a, _ = train(model, data, epochs=2, seed=3, progress=False, device="cpu")
    b, _ = train(model, data, epochs=2, seed=3, progress=False, device="cpu")
    c, _ = train(model, data, epochs=2, seed=4, progress=False, device="cpu")
    assert all(torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in before)
    assert not all(torch.equal(a.state_dict()[k], c.state_dict()[k]) for k in before)
    assert all(torch.equal(model.state_dict()[k], before[k]) for k in before)
    assert torch.equal(torch.get_rng_state(), rng_before)


@pytest.mark.parametrize("schedule, expected", [
    ("constant", [0.1] * 6),
    ("step", [0.1, 0.1, 0.1, 0.01, 0.001, 0.0001]),
    ("linear", [0.1 * (1 - e / 6) for e in range(6)]),
    (lambda epoch, epochs: 0.5 ** epoch, [0.1 * 0.5**e for e in range(6)]),
])
def test_schedules_set_the_learning_rate_per_epoch(schedule, expected):
    data = TensorDataset(torch.randn(8, 3), torch.tensor([0, 1] * 4))
    _, history = train(nn.Linear(3, 2), data, epochs=6, lr=0.1, schedule=schedule, progress=False, device="cpu")
    assert history["lr"].tolist() == pytest.approx(expected)


def test_bad_arguments_raise():
    data = TensorDataset(torch.randn(4, 3), torch.tensor([0, 1, 0, 1]))
    with pytest.raises(TypeError, match="nn.Module"):
        train(lambda x: x, data, epochs=1)
    with pytest.raises(ValueError, match="lr must be a finite number > 0"):
        train(nn.Linear(3, 2), data, epochs=1, lr=0)
    with pytest.raises(ValueError, match="unknown schedule"):
        train(nn.Linear(3, 2), data, epochs=1, schedule="warmup")
    with pytest.raises(ValueError, match="empty"):
        train(nn.Linear(3, 2), TensorDataset(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long)), epochs=1)


def test_checkpoints_round_trip_as_weights_only(tmp_path, digits):
    torch.manual_seed(0)  # trained weights, not initial ones; one short epoch is enough to write and read them
    model, _ = train(create_model("digits_cnn", num_classes=10, in_channels=1), _small_digits(digits), epochs=1,
                     batch_size=32, device="cpu", progress=False)
    save_checkpoint(model, tmp_path / "model.pt")
    fresh = load_checkpoint(create_model("digits_cnn", num_classes=10, in_channels=1), tmp_path / "model.pt")
    torch.testing.assert_close(predict(fresh, digits.test)[0], predict(model, digits.test)[0])
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="cannot read checkpoint"):
        load_checkpoint(fresh, tmp_path / "bad.pt")


def test_patience_stops_when_the_training_loss_stalls():
    data = TensorDataset(torch.randn(1, 3), torch.tensor([1]))  # one example: an epoch's loss has no summing order
    # lr schedule 0 after the first epoch: the loss can no longer improve, so training stops 2 epochs later
    _, history = train(nn.Linear(3, 2), data, epochs=20, lr=0.1, schedule=lambda e, n: 1.0 if e == 0 else 0.0,
                       patience=2, progress=False, device="cpu")
    assert len(history) == 4


@pytest.mark.slow  # opacus calibrates the noise to the budget: seconds of accounting before the first step
def test_dp_training_reports_the_accountants_epsilon(digits):
    from unlearn.training import DPConfig

    torch.manual_seed(0)
    model, history = train(create_model("digits_cnn", num_classes=10, in_channels=1), digits.train, epochs=2,
                           lr=0.5, momentum=0.0, weight_decay=0.0, dp=DPConfig(epsilon=4.0), progress=False,
                           device="cpu")
    assert history["epsilon"].is_monotonic_increasing
    assert 3.0 < history["epsilon"].iloc[-1] <= 4.0 + 1e-6  # the budget is spent, not exceeded
    assert top1_accuracy(model, digits.test) > 0.3  # it learns despite clipping and noise
    assert not hasattr(model, "_module")  # the plain trained module, not opacus's wrapper


def test_dp_settings_and_layers_opacus_cannot_train_are_refused(digits):
    from unlearn.training import DPConfig

    with pytest.raises(ValueError, match="epsilon > 0"):
        DPConfig(epsilon=0)
    with pytest.raises(ValueError, match="BatchNorm"):
        train(nn.Sequential(nn.Flatten(), nn.Linear(64, 8), nn.BatchNorm1d(8), nn.Linear(8, 10)), digits.train,
              epochs=1, dp=DPConfig(epsilon=1.0), progress=False, device="cpu")


class Killed(Exception):
    pass


def test_a_training_stopped_mid_way_resumes_to_the_same_bits(digits, tmp_path):
    from proxies import TrainingRecorder

    data = torch.utils.data.Subset(digits.train, range(300))
    recipe = {"epochs": 4, "lr": 0.05, "batch_size": 64, "seed": 2, "progress": False, "device": "cpu"}
    torch.manual_seed(0)
    model = create_model("digits_cnn", num_classes=10, in_channels=1)
    whole_recording = TrainingRecorder(len(digits.train))
    whole, whole_history = train(model, data, recorder=whole_recording, **recipe)

    def kill_after_third(epoch, _):
        if epoch == 3:
            raise Killed  # as a kill would, mid-way: the state on disk is the one after epoch 2

    state = tmp_path / "state.pt"
    with pytest.raises(Killed):
        train(model, data, recorder=TrainingRecorder(len(digits.train)), resume=state, on_epoch_end=kill_after_third,
              **recipe)
    recording = TrainingRecorder(len(digits.train))
    resumed, history = train(model, data, recorder=recording, resume=state, **recipe)
    assert all(torch.equal(a, b) for a, b in zip(whole.state_dict().values(), resumed.state_dict().values(),
                                                 strict=True))
    np.testing.assert_array_equal(recording.values, whole_recording.values)
    np.testing.assert_array_equal(recording.input_gradient_norms, whole_recording.input_gradient_norms)
    np.testing.assert_array_equal(recording.weight_norms, whole_recording.weight_norms)
    pd.testing.assert_frame_equal(history.drop(columns="seconds"), whole_history.drop(columns="seconds"))
    with pytest.raises(ValueError, match="other settings \\(lr\\)"):
        train(model, data, recorder=TrainingRecorder(len(digits.train)), resume=state, **{**recipe, "lr": 0.1})


@pytest.mark.parametrize("bad", [{"lr": float("nan")}, {"weight_decay": float("nan")}, {"momentum": float("inf")},
                                 {"epochs": 2.5}, {"batch_size": 0}])
def test_settings_that_cannot_train_are_refused_before_any_work(digits, bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        train(nn.Linear(64, 10), digits.train, **{"epochs": 1, **bad}, progress=False, device="cpu")


# ----------------------------------------------------------------------------- the one epoch loop
def test_the_epoch_loop_steps_hooks_in_order_and_reports_rows():
    from unlearn.training.loop import BatchLoss, run_epochs

    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    x, y = torch.randn(6, 3), torch.tensor([0, 1, 0, 1, 0, 1])
    events = []

    def steps(epoch):
        events.append(("epoch", epoch, optimizer.param_groups[0]["lr"], model.training))
        for half in (slice(0, 4), slice(4, 6)):
            logits = model(x[half])
            yield BatchLoss(nn.functional.cross_entropy(logits, y[half]), logits, y[half])

    def grad_hook(m):
        events.append(("grad", m.weight.grad is not None))

    rows = run_epochs(model, optimizer, steps, lr=0.2, schedule="step", epochs=6, first=2,
                      grad_hook=grad_hook, step_hook=lambda opt: events.append(("step", opt is optimizer)),
                      stop_after_step=lambda: events.append(("check",)) is not None,
                      on_epoch_end=lambda epoch, row: events.append(("end", epoch, row["epoch"])) or epoch == 3)
    per_epoch = [("grad", True), ("step", True), ("check",)] * 2
    assert events == [("epoch", 2, 0.2, True), *per_epoch, ("end", 2, 3),
                      ("epoch", 3, pytest.approx(0.02), True), *per_epoch, ("end", 3, 4)]  # stopped by on_epoch_end
    assert [row["epoch"] for row in rows] == [3, 4] and all(0 <= row["accuracy"] <= 1 for row in rows)
    bare = run_epochs(model, optimizer, lambda epoch: iter([model(x).sum() * 0]), lr=0.1, schedule="constant",
                      epochs=1, stop_after_step=lambda: True)
    assert bare[0]["loss"] == 0 and np.isnan(bare[0]["accuracy"])  # bare losses: no accuracy to report


def test_train_and_every_sgd_method_go_through_the_one_epoch_loop(monkeypatch):
    import unlearn.algorithms.sgd as loop
    import unlearn.training.loop as epochs
    import unlearn.training.trainer as training
    from unlearn.algorithms.finetune import FinetuneConfig

    calls = []

    def spy(*args, **kwargs):
        calls.append(kwargs["epochs"])
        return epochs.run_epochs(*args, **kwargs)

    monkeypatch.setattr(training, "run_epochs", spy)
    monkeypatch.setattr(loop, "run_epochs", spy)
    data = TensorDataset(torch.randn(8, 3), torch.randint(0, 2, (8,)))
    model, _ = train(nn.Linear(3, 2), data, epochs=2, batch_size=4, progress=False, device="cpu")
    losses = lambda epoch: (nn.functional.cross_entropy(model(x), y) for x, y in [data.tensors])  # noqa: E731
    loop.run_sgd(model, FinetuneConfig(epochs=3), losses, seed=0)
    assert calls == [2, 3]


# ------------------------------------------------------------------------------------ precision and memory layout

def _small_digits(digits, n=256):
    from torch.utils.data import Subset

    return Subset(digits.train, range(n))


def test_bf16_autocast_trains_on_the_cpu_to_a_finite_loss_with_a_float32_recording(digits):
    from proxies import TrainingRecorder
    from unlearn import create_model, train

    recorder = TrainingRecorder(len(digits.train))
    torch.manual_seed(0)
    model, history = train(create_model("digits_cnn", num_classes=10, in_channels=1), _small_digits(digits),
                           epochs=3, batch_size=32, precision="bf16", recorder=recorder, device="cpu",
                           progress=False)
    assert np.isfinite(history["loss"]).all() and history["loss"].iloc[-1] < history["loss"].iloc[0]
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert recorder.values.dtype == np.float32 and np.isfinite(recorder["confidence"][:, :256]).all()


def test_channels_last_gives_the_same_model_up_to_rounding(digits):
    from unlearn import create_model, train

    torch.manual_seed(0)
    model = create_model("digits_cnn", num_classes=10, in_channels=1)
    plain, a = train(model, _small_digits(digits), epochs=2, batch_size=32, device="cpu", progress=False)
    last, b = train(model, _small_digits(digits), epochs=2, batch_size=32, channels_last=True, device="cpu",
                    progress=False)
    assert last[0].weight.is_contiguous(memory_format=torch.channels_last)
    np.testing.assert_allclose(a["loss"], b["loss"], rtol=1e-4)
    for p, q in zip(plain.parameters(), last.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-3, atol=1e-4)


def test_numerics_settings_are_checked_and_left_out_of_a_default_recipe():
    from unlearn.pipeline import RunConfig
    from unlearn.training import RECIPES, TrainConfig

    assert "precision" not in RECIPES["digits"].as_kwargs()  # what run folders record is unchanged
    assert TrainConfig(precision="bf16", channels_last=True).as_kwargs()["channels_last"] is True
    with pytest.raises(ValueError, match="precision must be one of"):
        TrainConfig(precision="fp16")
    assert RunConfig(precision="bf16", deterministic=True).training_recipe().as_kwargs()["precision"] == "bf16"
    with pytest.raises(ValueError, match="--precision must be one of"):
        RunConfig(precision="half").check()
    with pytest.raises(TypeError, match="channels_last must be True or False"):
        train(torch.nn.Linear(2, 2), torch.utils.data.TensorDataset(torch.zeros(2, 2), torch.zeros(2).long()),
              channels_last="yes")


def test_a_recorder_smaller_than_the_training_set_is_refused_before_training(digits):
    from proxies import TrainingRecorder
    from unlearn import create_model

    with pytest.raises(ValueError, match="the recorder holds 10 examples"):
        train(create_model("digits_cnn", num_classes=10, in_channels=1), _small_digits(digits),
              recorder=TrainingRecorder(10), epochs=1, device="cpu", progress=False)
