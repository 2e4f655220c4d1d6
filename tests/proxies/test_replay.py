"""proxies.replay: a recording rebuilt from a training's checkpoints agrees with the one recorded during it."""

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import roc_auc_score
from torch import nn
from torch.utils.data import Subset, TensorDataset

import proxies
import unlearn
from proxies import IndexedDataset, TrainingRecorder, replay
from proxies.batching import as_tensors
from unlearn.models import create_model
from unlearn.training import train

EPOCHS = 15
NOISE = 0.1  # the share of training labels flipped: the mislabeled examples are the ones a network memorizes


def _noisy_digits(digits):
    """The digits training set with 10% of its labels moved to another class (seeded)."""
    x, y, _ = as_tensors(digits.train)
    y = y.clone()
    generator = torch.Generator().manual_seed(0)
    flip = torch.randperm(len(y), generator=generator)[: int(NOISE * len(y))]
    y[flip] = (y[flip] + torch.randint(1, 10, (len(flip),), generator=generator)) % 10
    flipped = np.zeros(len(y), dtype=bool)
    flipped[flip.numpy()] = True
    return IndexedDataset(x, y), flipped


def _trained(data, seed):
    """The digits recipe (lr 0.05, batch 64) with a recorder, and a copy of the model after every epoch."""
    torch.manual_seed(0)
    model = create_model("digits_cnn", num_classes=10, in_channels=1)
    recorder, checkpoints = TrainingRecorder(len(data)), []
    train(model, data, epochs=EPOCHS, lr=0.05, batch_size=64, seed=seed, recorder=recorder, device="cpu",
          progress=False, on_epoch_end=lambda epoch, m: checkpoints.append(copy.deepcopy(m)))
    return recorder, checkpoints


@pytest.fixture(scope="module")
def run(digits):
    data, flipped = _noisy_digits(digits)
    recorded, checkpoints = _trained(data, seed=0)
    return {"data": data, "flipped": flipped, "recorded": recorded, "checkpoints": checkpoints,
            "replayed": replay(checkpoints, data)}


@pytest.fixture(scope="module")
def reshuffled(run):
    """The same training with another batch order: the recording's own noise."""
    recording, _ = _trained(run["data"], seed=1)
    return recording


def _proxies_of(recording):
    return proxies.compute(proxies.RECORDING_PROXIES, recording=recording)


def test_replayed_proxies_agree_with_the_recorded_ones(run):
    recorded, replayed = run["recorded"], run["replayed"]
    assert replayed.num_epochs == EPOCHS and replayed.values.shape == recorded.values.shape
    # the weight norms are the same numbers: the recorder takes them at the epoch's end too
    np.testing.assert_allclose(replayed.weight_norms, recorded.weight_norms, rtol=1e-6)
    np.testing.assert_array_equal(replayed.labels, recorded.labels)
    assert replayed.num_classes == recorded.num_classes == 10

    ours, theirs = _proxies_of(replayed), _proxies_of(recorded)
    assert ours.shape == (len(run["data"]), len(proxies.RECORDING_PROXIES)) and np.isfinite(ours.to_numpy()).all()

    # measured: confidence Spearman 0.942 / Pearson 0.993, csl 0.888 / 0.996
    assert spearmanr(ours["confidence"], theirs["confidence"])[0] >= 0.9
    assert pearsonr(ours["confidence"], theirs["confidence"])[0] >= 0.97
    assert spearmanr(ours["csl"], theirs["csl"])[0] >= 0.8
    assert pearsonr(ours["csl"], theirs["csl"])[0] >= 0.97
    # and it finds the mislabeled examples as the recording does (measured AUC 1.000 for csl, both)
    assert roc_auc_score(run["flipped"], ours["csl"]) >= 0.98
    assert roc_auc_score(run["flipped"], -ours["confidence"]) >= 0.98


@pytest.mark.slow  # a second 15-epoch training, for the recording's own noise
def test_every_replayed_proxy_is_about_as_close_as_another_batch_order(run, reshuffled):
    ours, theirs, again = _proxies_of(run["replayed"]), _proxies_of(run["recorded"]), _proxies_of(reshuffled)
    # every proxy: the replay is about as close to the recording as the same training with another batch order
    # (measured: within 0.07 below it at worst, first_learned, and above it for most)
    for name in proxies.RECORDING_PROXIES:
        replay_agreement = spearmanr(ours[name], theirs[name])[0]
        recording_agreement = spearmanr(again[name], theirs[name])[0]
        assert replay_agreement >= recording_agreement - 0.1, (name, replay_agreement, recording_agreement)


def _loop_reference(checkpoints, x, y):
    """Slow, obvious: one example at a time through each checkpoint, in eval mode, float64 softmax; and the input
    gradient of the example's own loss by autograd."""
    confidence, gradients = [], []
    for model in checkpoints:
        model = copy.deepcopy(model).eval()
        row, norms = [], []
        for i in range(len(x)):
            xi = x[i:i + 1].clone().requires_grad_()
            logits = model(xi)
            row.append(float(torch.softmax(logits.detach().double(), 1)[0, y[i]]))
            (g,) = torch.autograd.grad(F.cross_entropy(logits, y[i:i + 1]), xi)
            norms.append(float(g.double().pow(2).sum()))
        confidence.append(row)
        gradients.append(norms)
    return np.array(confidence), np.array(gradients)


def test_replay_matches_a_per_example_loop(run, device):
    checkpoints = run["checkpoints"][::5]  # epochs 1, 6, 11
    data = run["data"]
    positions = [7, 3, 500, 1200, 42]
    subset = Subset(data, positions)
    replayed = replay(checkpoints, subset, batch_size=2, num_examples=len(data), device=device)
    x, y, _ = as_tensors(subset)
    confidence, gradients = _loop_reference(checkpoints, x, y)
    np.testing.assert_allclose(replayed["confidence"][:, positions], confidence, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(replayed.input_gradient_norms[:, positions], gradients, rtol=1e-3, atol=1e-9)
    others = np.setdiff1d(np.arange(len(data)), positions)
    assert np.isnan(replayed["confidence"][:, others]).all()  # never presented
    # items (x, y) without an index: the position in the dataset is the index
    plain = replay(checkpoints, TensorDataset(x, y), batch_size=3, device=device)
    np.testing.assert_allclose(plain["confidence"], confidence, rtol=1e-4, atol=1e-6)
    assert replay(checkpoints, subset, num_examples=len(data), input_gradients=False,
                  device=device).input_gradient_norms is None


def test_rum_is_scheduled_from_a_replay(run):
    data, model = run["data"], run["checkpoints"][-1]
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(1))
    forget, retain = Subset(data, order[:60].tolist()), Subset(data, order[60:].tolist())
    result = unlearn.unlearn(model, forget=forget, retain=retain, method="rum", proxy="confidence",
                             recording=run["replayed"], policy="random_label_fast", device="cpu")
    assert [(step.group, step.method) for step in result.plan] == [("low", "noop"), ("medium", "noop"),
                                                                   ("high", "random_label")]
    assert sum(len(step.indices) for step in result.plan) == 60
    assert result.grouping == "training_set" and result.model is not model


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _assert_same(before, model):
    after = model.state_dict()
    assert before.keys() == after.keys()
    for key, value in before.items():
        assert torch.equal(value, after[key]), key


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_checkpoints_are_left_as_they_were(run, mode):
    checkpoints = [copy.deepcopy(m) for m in run["checkpoints"][:2]]
    checkpoints[0].train()
    checkpoints[1].eval()
    checkpoints[1][0].train()  # a mixed model: every submodule gets its own mode back
    modes = [[m.training for m in c.modules()] for c in checkpoints]
    states = [_state(c) for c in checkpoints]
    replay(checkpoints, Subset(run["data"], range(100)), mode=mode, num_examples=len(run["data"]))
    for checkpoint, state, mode_before in zip(checkpoints, states, modes, strict=True):
        _assert_same(state, checkpoint)
        assert [m.training for m in checkpoint.modules()] == mode_before
        assert all(p.grad is None for p in checkpoint.parameters())


def test_train_mode_uses_batch_statistics_and_leaves_running_stats_alone():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))
    model.eval()
    state = _state(model)
    data = IndexedDataset(torch.randn(20, 1, 8, 8) * 3 + 1, torch.randint(0, 3, (20,)))
    trained = replay(model, data, batch_size=8, mode="train")
    evaluated = replay(model, data, batch_size=8, mode="eval")
    _assert_same(state, model)  # running_mean, running_var and num_batches_tracked included
    assert not model.training and all(p.grad is None for p in model.parameters())
    assert not np.allclose(trained["confidence"], evaluated["confidence"])  # batch statistics, not running ones
    # eval mode is the model's own eval-mode prediction
    logits, labels, _ = proxies.predict(model, data)
    expected = torch.softmax(logits.double(), 1)[torch.arange(20), labels].numpy()
    np.testing.assert_allclose(evaluated["confidence"][0], expected, rtol=1e-5)


def test_bad_inputs_are_refused(run):
    data = run["data"]
    model = run["checkpoints"][0]
    with pytest.raises(ValueError, match="at least one nn.Module"):
        replay([], data)
    with pytest.raises(TypeError, match="nn.Module.*got int"):
        replay(3, data)
    with pytest.raises(TypeError, match="got str at position 1"):
        replay([model, "checkpoint.pt"], data)
    with pytest.raises(ValueError, match=r"mode must be one of \['eval', 'train'\], got 'test'"):
        replay(model, data, mode="test")
    with pytest.raises(ValueError, match="batch_size"):
        replay(model, data, batch_size=0)
    with pytest.raises(TypeError, match="input_gradients"):
        replay(model, data, input_gradients="yes")
    with pytest.raises(ValueError, match="empty dataset"):
        replay(model, Subset(data, []))
    with pytest.raises(ValueError, match=r"index must lie in \[0, 2\)"):  # a part of the training set, unsized
        replay(model, Subset(data, [5, 6]))
