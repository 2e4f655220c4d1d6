"""SGA and TAU (Barbulescu & Triantafillou 2024): the selection against a loop written as the authors' code does it,
g against its definition, the steps on a classifier replayed by hand, the stop at ``stop_below`` and the task-vector
arithmetic, on float64 linear models and on a tiny GPT-2 that has memorized real fortunes."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import unlearn.algorithms.sga as sga_module
from proxies import IndexedDataset
from proxies.predictions import predict_signals
from proxies.sequences import SEQUENCE_COLUMNS, CausalLM
from proxies.tasks import CLASSIFICATION
from tests.algorithms.test_methods import CLASSES, FEATURES, RecordingLinear, _ce_grads, _data, _positions
from tests.algorithms.test_npo import Untrainable
from tests.conftest import requires_fortunes
from unlearn import unlearn
from unlearn.algorithms.registry import get_method, make_config
from unlearn.algorithms.sga import (
    SGAConfig,
    TAUConfig,
    apply_task_vector,
    forget_memorization,
    memorization,
    parameters_and_buffers,
    select_memorized,
)
from unlearn.algorithms.sgd import SGDConfig, run_sgd

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see tests/conftest.py

PLAIN_SGD = {"optimizer": "sgd", "momentum": 0.0, "weight_decay": 0.0}

# the selection and g, by hand


def _selected_as_the_authors_loop(g: list[float], select_above: float) -> list[bool]:
    """The authors' ``training_step``: every index at or above the threshold, and the first strict maximum."""
    chosen, best, best_value = set(), None, -math.inf
    for i, value in enumerate(g):
        if value >= select_above:
            chosen.add(i)
        if value > best_value:
            best, best_value = i, value
    chosen.add(best)
    return [i in chosen for i in range(len(g))]


@pytest.mark.parametrize(("g", "select_above"), [
    ([0.2, 0.9, 0.5, 0.7], 0.7),          # at the threshold counts
    ([0.2, 0.6, 0.6, 0.1], 0.7),          # none above: the first of the highest alone
    ([0.9, 1.0, 0.95, 1.0], 0.7),         # all above
    ([0.0, 0.0, 0.0], 0.7),               # nothing memorized: still one
    ([0.3, 0.5, 0.1, 0.5, 0.69], 0.0),    # threshold 0: every one
    ([0.3, 0.5, 0.1, 0.5, 0.69], 1.0),    # threshold 1: the highest only
    ([1.0, 0.0, 1.0, 1.0, 0.0, 1.0], 0.7),  # a classifier's g: the correct ones
])
def test_the_selection_is_the_authors_loop(g, select_above):
    got = select_memorized(torch.tensor(g), select_above).tolist()
    assert got == _selected_as_the_authors_loop(g, select_above)


def test_a_sequence_without_a_memorization_is_never_the_highest():
    g = torch.tensor([float("nan"), 0.4, 0.2])
    assert select_memorized(g, 0.7).tolist() == [False, True, False]


def test_memorization_of_a_sequence_is_its_teacher_forced_token_accuracy():
    logits = torch.tensor([[[0.0, 4.0, 0.0], [4.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, 0.0, 0.0]],
                           [[0.0, 0.0, 2.0], [0.0, 3.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]]])
    labels = torch.tensor([[-100, 1, 1, 2], [5, 2, 1, -100]]).clamp(max=2)  # 3 and 2 tokens scored
    # argmaxes at the scored positions: [1, 0, 2] against [1, 1, 2]; [2, 1] against [2, 1]
    assert memorization(CausalLM(), logits, labels).tolist() == pytest.approx([2 / 3, 1.0])


def test_memorization_of_a_labelled_example_is_its_correctness():
    logits, labels = torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, 1.0]]), torch.tensor([0, 0, 1])
    assert memorization(CLASSIFICATION, logits, labels).tolist() == [1.0, 0.0, 0.0]


# on a classifier, replayed by hand


def _half_correct(model: nn.Linear, n: int, seed: int, right: int | None = None) -> IndexedDataset:
    """``n`` examples the model gets right, the first ``right`` of them (default half), and wrong, the others."""
    x = torch.randn(n, FEATURES, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    with torch.no_grad():
        predicted = F.linear(x, model.weight, model.bias).argmax(1)  # not model(x): it would keep x as seen
    wrong = torch.arange(n) >= (n // 2 if right is None else right)
    return IndexedDataset(x, torch.where(wrong, (predicted + 1) % CLASSES, predicted))


def test_sga_on_a_classifier_ascends_on_the_correct_examples_alone():
    """One batch of the whole forget set an epoch, plain SGD: each step ascends the mean cross-entropy of the
    examples the weights of that moment classify correctly (or the batch's first, when none is)."""
    model = RecordingLinear()
    forget = _half_correct(model, 8, seed=3)
    weight, bias = model.weight.detach().clone(), model.bias.detach().clone()
    lr = 0.3
    result = unlearn(model, forget=forget, retain=_data(6, seed=1), method="sga",
                     config={"epochs": 4, "lr": lr, "batch_size": 16, "stop_below": 0.0, **PLAIN_SGD})
    assert len(result.model.seen) == 4
    for x in result.model.seen:
        rows = _positions(x, forget)
        correct = ((forget.inputs @ weight.T + bias).argmax(1) == forget.targets).nonzero().flatten().tolist()
        assert sorted(rows) == correct if correct else len(rows) == 1
        grad_weight, grad_bias = _ce_grads(weight, bias, x, forget.targets[rows])
        weight, bias = weight + lr * grad_weight, bias + lr * grad_bias  # ascent
    torch.testing.assert_close(result.model.weight.detach(), weight, rtol=0, atol=1e-12)
    torch.testing.assert_close(result.model.bias.detach(), bias, rtol=0, atol=1e-12)
    assert len(result.model.seen[0]) == 4  # the half it got right at the start


def test_sga_makes_no_step_when_the_forget_set_starts_below_stop_below():
    model = RecordingLinear()
    forget = _half_correct(model, 8, seed=3)  # accuracy 0.5
    start = {k: v.clone() for k, v in model.state_dict().items()}
    result = unlearn(model, forget=forget, retain=_data(6, seed=1), method="sga",
                     config={"stop_below": 0.6, "lr": 0.3, **PLAIN_SGD})
    assert result.model.seen == []
    assert all(torch.equal(v, start[k]) for k, v in result.model.state_dict().items())


def test_sga_on_a_classifier_stops_at_the_first_check_below_stop_below(monkeypatch):
    """Checks before the first step and after every pass (two steps of batches of 4): the run ends at the first
    that finds the forget accuracy below ``stop_below``, and every earlier one found it at or above."""
    model = RecordingLinear()
    forget = _half_correct(model, 8, seed=3, right=7)
    checks = _spy_checks(monkeypatch)
    result = unlearn(model, forget=forget, retain=_data(6, seed=1), method="sga",
                     config={"stop_below": 0.5, "epochs": 100, "lr": 0.05, "batch_size": 4, **PLAIN_SGD})
    assert checks[0] == 7 / 8 and checks[-1] < 0.5 and all(c >= 0.5 for c in checks[:-1])
    assert len(checks) > 2  # it took more than one pass
    assert len(result.model.seen) == 2 * (len(checks) - 1)
    with torch.no_grad():
        accuracy = (result.model(forget.inputs).argmax(1) == forget.targets).double().mean()
    assert accuracy == checks[-1]


def _spy_checks(monkeypatch) -> list[float]:
    """The forget set's mean g at each of the run's checks, from now on."""
    checks: list[float] = []
    measure = sga_module._mean_memorization

    def spy(*args, **kwargs):
        checks.append(measure(*args, **kwargs))
        return checks[-1]

    monkeypatch.setattr(sga_module, "_mean_memorization", spy)
    return checks


class Diverging(RecordingLinear):
    """A classifier whose training-mode logits turn NaN from its third forward on, as diverged weights' do."""

    def forward(self, x):
        out = super().forward(x)
        return out * float("nan") if self.training and len(self.seen) > 2 else out


@pytest.mark.parametrize("method", ["sga", "tau"])
def test_a_non_finite_loss_raises_instead_of_returning_a_nan_model(method):
    model = Diverging()
    with pytest.raises(FloatingPointError, match="the forget loss became nan.*lower lr"):
        unlearn(model, forget=_half_correct(model, 8, seed=3), retain=_data(6, seed=1), method=method,
                config={"stop_below": 0.0, "epochs": 10, "lr": 0.1, **PLAIN_SGD}
                | ({"snapshot_below": 0.0} if method == "tau" else {}))


def test_non_finite_weights_are_refused():
    model = nn.Linear(2, 2)
    with torch.no_grad():
        model.bias[1] = float("inf")
    with pytest.raises(FloatingPointError, match="bias"):
        sga_module._check_finite_weights(model, "sga")


@pytest.mark.parametrize("method", ["sga", "tau"])
def test_unlearn_returns_a_new_model_and_leaves_the_callers_alone(method):
    model = RecordingLinear()
    forget = _half_correct(model, 8, seed=3)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    result = unlearn(model, forget=forget, retain=_data(6, seed=1), method=method,
                     config={"stop_below": 0.0, "epochs": 2, "lr": 0.3, **PLAIN_SGD}
                     | ({"descent_epochs": 2} if method == "tau" else {}))
    assert result.model is not model and model.seen == []
    assert all(torch.equal(v, start[k]) for k, v in model.state_dict().items())
    assert not torch.equal(result.model.weight, start["weight"])


# the settings


@pytest.mark.parametrize(("method", "bad", "name"), [
    ("sga", {"select_above": 1.5}, "select_above"),
    ("sga", {"select_above": -0.1}, "select_above"),
    ("sga", {"stop_below": float("nan")}, "stop_below"),
    ("sga", {"stop_below": 0.8}, "stop_below must be <= select_above"),
    ("sga", {"stop_below": 0.5, "select_above": 0.4}, "stop_below must be <= select_above"),
    ("sga", {"lr": -1.0}, "lr"),
    ("tau", {"select_above": 2.0}, "select_above"),
    ("tau", {"snapshot_below": 0.8}, "snapshot_below must be <= select_above"),
    ("tau", {"stop_below": 0.6}, "stop_below must be <= snapshot_below"),
    ("tau", {"descent_epochs": -1}, "descent_epochs"),
    ("tau", {"scale": float("inf")}, "scale"),
])
def test_bad_settings_are_refused_before_any_work(method, bad, name):
    with pytest.raises(ValueError, match=name):
        make_config(get_method(method), bad)
    with pytest.raises(ValueError, match=name):  # refused before any training step
        unlearn(Untrainable(), forget=_data(6, seed=2), retain=_data(10, seed=1), method=method, config=bad)


def test_a_setting_of_the_wrong_type_is_a_type_error_and_the_defaults_are_the_papers():
    with pytest.raises(TypeError, match="select_above"):
        SGAConfig(select_above="0.7")
    with pytest.raises(TypeError, match="descent_epochs"):
        TAUConfig(descent_epochs=1.5)
    sga, tau = SGAConfig(), TAUConfig()
    assert (sga.select_above, sga.stop_below, sga.batch_size) == (0.70, 0.33, 8)
    assert (tau.select_above, tau.snapshot_below, tau.stop_below, tau.scale) == (0.70, 0.5, 0.33, -1.0)
    assert TAUConfig(stop_below=None).stop_below is None


def test_run_sgd_needs_the_forget_set_to_check_a_stopping_rule():
    with pytest.raises(ValueError, match="pass forget"):
        run_sgd(nn.Linear(2, 2), SGDConfig(), lambda epoch: iter(()), seed=0, stop=lambda: True)


# TAU's arithmetic


class TiedWithBuffers(nn.Module):
    """A float64 classifier whose output layer is its input layer, transposed (a tied parameter, as a language
    model's embeddings), with a float buffer and a step counter that every training-mode forward changes."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Linear(FEATURES, CLASSES, dtype=torch.float64)
        self.hidden = nn.Linear(CLASSES, CLASSES, dtype=torch.float64)
        self.register_buffer("running_mean", torch.zeros(FEATURES, dtype=torch.float64))
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))

    def forward(self, x):
        if self.training:
            with torch.no_grad():
                self.running_mean.mul_(0.9).add_(0.1 * x.mean(0))
                self.steps += 1
        h = torch.tanh(self.embed(x))
        return F.linear(torch.tanh(self.hidden(h)) @ self.embed.weight, self.embed.weight) + self.embed.bias


def test_the_task_vector_moves_every_parameter_once_and_puts_the_buffers_back():
    model = TiedWithBuffers()
    start = parameters_and_buffers(model)
    assert set(start) == {"embed.weight", "embed.bias", "hidden.weight", "hidden.bias", "running_mean", "steps"}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    model.train()(torch.randn(5, FEATURES, dtype=torch.float64))
    end = parameters_and_buffers(model)
    assert int(end["steps"]) == 1
    apply_task_vector(model, start, -0.75)
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.detach(), start[name] - 0.75 * (end[name] - start[name]), rtol=0, atol=1e-12)
    assert torch.equal(model.running_mean, start["running_mean"]) and int(model.steps) == 0


@pytest.mark.parametrize("scale", [-1.0, -2.5])
def test_tau_is_the_snapshot_plus_scale_times_the_descent_from_it(monkeypatch, scale):
    """theta' is SGA's result stopped at ``snapshot_below``; theta is where descent on the forget set from it ends
    (both caught as TAU hands them to the arithmetic); the result is ``theta' + scale (theta - theta')`` in every
    parameter, with theta''s buffers."""
    caught = []
    original = sga_module.apply_task_vector

    def catch(model, start, c):
        if not caught:  # the first call is the result's (no stop_below: no edited copies measured)
            caught.append((start, parameters_and_buffers(model), c))
        return original(model, start, c)

    monkeypatch.setattr(sga_module, "apply_task_vector", catch)
    forget, retain = _data(12, seed=2), _data(6, seed=1)
    settings = {"lr": 0.2, "batch_size": 4, "epochs": 20, **PLAIN_SGD}
    result = unlearn(TiedWithBuffers(), forget=forget, retain=retain, method="tau", config={
        **settings, "snapshot_below": 0.3, "stop_below": None, "descent_epochs": 3, "scale": scale}).model
    (snapshot, end, c), = caught
    assert c == scale
    ascent = unlearn(TiedWithBuffers(), forget=forget, retain=retain, method="sga",
                     config={**settings, "stop_below": 0.3}).model
    for name, value in parameters_and_buffers(ascent).items():
        assert torch.equal(snapshot[name], value), name  # theta' is SGA's result
    assert int(end["steps"]) == int(snapshot["steps"]) + 3 * 3  # three passes of three batches of descent
    for name, p in result.named_parameters():
        torch.testing.assert_close(p.detach(), snapshot[name] + scale * (end[name] - snapshot[name]), rtol=0,
                                   atol=1e-12)
    for name, b in result.named_buffers():
        assert torch.equal(b, snapshot[name]), name

    def loss(weights):
        model = TiedWithBuffers()
        model.load_state_dict({k: v for k, v in weights.items()})
        with torch.no_grad():
            return F.cross_entropy(model.eval()(forget.inputs), forget.targets)

    assert loss(end) < loss(snapshot)  # theta descended the forget loss


# on real fortunes


@pytest.fixture
def memorized(memorized_lm):
    """The 8 shortest fortunes nearly memorized (token accuracies 0.86 to 1) and 40 others seen."""
    return memorized_lm


def _ids(data) -> torch.Tensor:
    return torch.stack([data[i][0] for i in range(len(data))])


@requires_fortunes
def test_the_memorization_of_real_fortunes_is_the_token_accuracy_signal(memorized):
    model, forget, _ = memorized
    signals, _, _ = predict_signals(model, forget)
    expected = signals[:, SEQUENCE_COLUMNS.index("token_accuracy")]
    torch.testing.assert_close(forget_memorization(model, forget, 3), expected)
    assert 0.85 < float(expected.min()) and float(expected.mean()) > 0.9


@requires_fortunes
def test_sga_steps_on_a_real_lm_only_with_the_rows_it_selects(memorized, monkeypatch):
    """Each step: g of the batch under the model of that moment, the rows the authors' loop selects from it, and a
    training forward on exactly those rows (trailing padding trimmed)."""
    model, forget, retain = memorized
    batches, masks, trained = [], [], []
    measure, select, forward = sga_module.batch_memorization, sga_module.select_memorized, CausalLM.forward

    def record_g(net, task, x, y):
        batches.append((x.clone(), measure(net, task, x, y)))
        return batches[-1][1]

    def record_mask(g, select_above):
        masks.append(select(g, select_above))
        return masks[-1]

    def record_forward(self, net, inputs):
        if net.training:
            trained.append(inputs.clone())
        return forward(self, net, inputs)

    monkeypatch.setattr(sga_module, "batch_memorization", record_g)
    monkeypatch.setattr(sga_module, "select_memorized", record_mask)
    monkeypatch.setattr(CausalLM, "forward", record_forward)
    threshold = 0.92  # 4 of the 8 at the start
    unlearn(model, forget=forget, retain=retain, method="sga",
            config={"select_above": threshold, "stop_below": 0.0, "epochs": 2, "batch_size": 4})
    assert len(batches) == len(masks) == len(trained) == 4
    for (x, g), mask, rows in zip(batches, masks, trained, strict=True):
        assert mask.tolist() == _selected_as_the_authors_loop(g.tolist(), threshold)
        assert torch.equal(rows, x[mask][:, :rows.shape[1]])
    assert any(not mask.all() for mask in masks) and any(mask.sum() > 1 for mask in masks)
    # the first batch's g is the start model's token accuracy of those fortunes
    ids, start = _ids(forget), forget_memorization(model, forget, 8)
    first_x, first_g = batches[0]
    positions = [int((ids == row).all(1).nonzero()) for row in first_x]
    torch.testing.assert_close(first_g, start[positions])


@requires_fortunes
@pytest.mark.parametrize("method", ["sga", "tau"])
def test_the_defaults_unlearn_real_fortunes_until_they_are_no_longer_memorized(memorized, monkeypatch, method):
    model, forget, retain = memorized
    before = {k: v.clone() for k, v in model.state_dict().items()}
    checks = _spy_checks(monkeypatch)
    result = unlearn(model, forget=forget, retain=retain, method=method).model
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert all(torch.isfinite(v).all() for v in result.state_dict().values() if v.is_floating_point())
    assert checks[0] > 0.9 and float(forget_memorization(result, forget, 8).mean()) < 0.33
    if method == "sga":  # it stopped at the first check below 0.33, after more than one step
        assert checks[-1] < 0.33 and all(c >= 0.33 for c in checks[:-1]) and len(checks) > 2
    else:  # SGA to the snapshot below 0.5, then descent until the edited model is below 0.33
        snapshot = next(i for i, c in enumerate(checks) if c < 0.5)
        assert all(c >= 0.5 for c in checks[:snapshot]) and 0.33 <= checks[snapshot] < 0.5
        assert checks[-1] < 0.33 and all(c >= 0.33 for c in checks[snapshot:-1])


@requires_fortunes
def test_sga_leaves_real_fortunes_below_stop_below_as_they_are(memorized, monkeypatch):
    model, forget, retain = memorized
    stepped = []
    monkeypatch.setattr(sga_module, "select_memorized", lambda g, above: stepped.append(g) or g >= 0)
    result = unlearn(model, forget=forget, retain=retain, method="sga",
                     config={"select_above": 0.95, "stop_below": 0.95}).model  # the mean is about 0.92
    assert stepped == []
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in result.state_dict().items())
