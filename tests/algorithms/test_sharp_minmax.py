"""Sharp MinMax (Tang & Khanna 2026): the perturbation and the sharpness-aware gradient against plain autograd on a
closed-form linear model, one optimizer step against SGD's and AdamW's written out, the masked weights left bit for
bit alone, the mask against a direct sort, whole runs replayed by hand, and the method on real digits and in rum."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Subset

from tests.algorithms.test_methods import RecordingLinear, _data, _positions
from unlearn import methods, train, unlearn
from unlearn.algorithms.registry import get_method
from unlearn.algorithms.sharp_minmax import (
    MAX,
    MIN,
    SharpMinMaxConfig,
    forget_mask,
    sharp_gradient,
    sharp_step,
    sharpness_perturbation,
)
from unlearn.training import top1_accuracy

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see tests/conftest.py

CPU = torch.device("cpu")
BETAS, ADAM_EPS = (0.9, 0.999), 1e-8


def _tiny():
    """A float64 linear model (3 features, 2 classes) with hand-picked weights, and four hand-made points."""
    model = nn.Linear(3, 2, dtype=torch.float64)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[0.5, -1.0, 0.25], [-0.3, 0.8, 1.2]], dtype=torch.float64))
        model.bias.copy_(torch.tensor([0.1, -0.2], dtype=torch.float64))
    x = torch.tensor([[1.0, 2.0, -1.0], [0.5, -1.5, 2.0], [-2.0, 0.3, 0.7], [1.2, 1.0, 1.0]], dtype=torch.float64)
    return model, x, torch.tensor([0, 1, 1, 0])


def _loss(weight, bias, x, y, scale):
    """The closed form of the model's loss: ``scale`` times the mean softmax cross-entropy of ``x W^T + b``."""
    return scale * F.cross_entropy(x @ weight.T + bias, y)


def _expected_sharp_gradient(w, x, y, scale, *, rho, lam, sign, adaptive):
    """(eps, g + sign * lam * (g_eps - g)) for the weights ``w = (W, b)``, by plain autograd on the closed form."""
    w = [t.detach().clone().requires_grad_() for t in w]
    g = torch.autograd.grad(_loss(*w, x, y, scale), w)
    if adaptive:
        norm = torch.sqrt(sum(((t.abs() * gt) ** 2).sum() for t, gt in zip(w, g, strict=True)))
        eps = [rho * t.detach() ** 2 * gt / norm for t, gt in zip(w, g, strict=True)]
    else:
        norm = torch.sqrt(sum((gt**2).sum() for gt in g))
        eps = [rho * gt / norm for gt in g]
    shifted = [(t.detach() + e).requires_grad_() for t, e in zip(w, eps, strict=True)]
    g_eps = torch.autograd.grad(_loss(*shifted, x, y, scale), shifted)
    return eps, [gt + sign * lam * (ge - gt) for gt, ge in zip(g, g_eps, strict=True)]


def _adamw(p, g, state, lr, decay):
    """One AdamW step on ``p`` with gradient ``g``, written out (bias-corrected moments, decoupled weight decay)."""
    state["t"] = state.get("t", 0) + 1
    state["m"] = BETAS[0] * state.get("m", torch.zeros_like(p)) + (1 - BETAS[0]) * g
    state["v"] = BETAS[1] * state.get("v", torch.zeros_like(p)) + (1 - BETAS[1]) * g * g
    m_hat, v_hat = state["m"] / (1 - BETAS[0] ** state["t"]), state["v"] / (1 - BETAS[1] ** state["t"])
    return p * (1 - lr * decay) - lr * m_hat / (v_hat.sqrt() + ADAM_EPS)


# 1. the defining behaviour, by hand


@pytest.mark.parametrize("adaptive", [False, True], ids=["sam", "asam"])
def test_the_perturbation_has_radius_rho_along_the_gradient(adaptive):
    model, x, y = _tiny()
    w = [model.weight.detach(), model.bias.detach()]
    expected, _ = _expected_sharp_gradient(w, x, y, 1.0, rho=0.2, lam=1.0, sign=MIN, adaptive=adaptive)
    g = torch.autograd.grad(_loss(model.weight, model.bias, x, y, 1.0), [model.weight, model.bias])
    eps = sharpness_perturbation(w, list(g), rho=0.2, adaptive=adaptive)
    for got, want in zip(eps, expected, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-15)
    flat_eps, flat_g = torch.cat([e.flatten() for e in eps]), torch.cat([t.flatten() for t in g])
    if adaptive:  # eps / |w| has radius rho along |w| * g
        flat_w = torch.cat([t.abs().flatten() for t in w])
        flat_eps, flat_g = flat_eps / flat_w, flat_w * flat_g
    assert float(flat_eps.norm()) == pytest.approx(0.2, rel=1e-12)
    assert float(F.cosine_similarity(flat_eps, flat_g, dim=0)) == pytest.approx(1.0, rel=1e-12)
    assert sharpness_perturbation(w, [torch.zeros_like(t) for t in w], rho=0.2, adaptive=adaptive)[0].eq(0).all()


@pytest.mark.parametrize("adaptive", [False, True], ids=["sam", "asam"])
@pytest.mark.parametrize("sign", [MIN, MAX], ids=["min", "max"])
def test_sharp_gradient_is_g_plus_sign_lambda_times_the_gap(sign, adaptive):
    model, x, y = _tiny()
    w = [model.weight.detach().clone(), model.bias.detach().clone()]
    _, expected = _expected_sharp_gradient(w, x, y, 0.7, rho=0.3, lam=0.5, sign=sign, adaptive=adaptive)
    params = dict(model.named_parameters())

    def loss():
        return 0.7 * F.cross_entropy(model(x), y)

    loss().backward()
    start = sharp_gradient(model, params, loss, rho=0.3, lam=0.5, sign=sign, adaptive=adaptive)
    torch.testing.assert_close(model.weight.grad, expected[0], rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(model.bias.grad, expected[1], rtol=1e-12, atol=1e-15)
    assert torch.equal(model.weight, w[0]) and torch.equal(model.bias, w[1])  # back at w, bit for bit
    assert torch.equal(start["weight"], w[0]) and torch.equal(start["bias"], w[1])
    # the other sign gives another gradient: the test tells min and max apart
    _, other = _expected_sharp_gradient(w, x, y, 0.7, rho=0.3, lam=0.5, sign=-sign, adaptive=adaptive)
    assert (other[0] - expected[0]).abs().max() > 1e-3


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
@pytest.mark.parametrize("sign", [MIN, MAX], ids=["min", "max"])
def test_one_step_is_the_optimizers_step_on_the_sharp_gradient(sign, optimizer):
    model, x, y = _tiny()
    w = [model.weight.detach().clone(), model.bias.detach().clone()]
    config = SharpMinMaxConfig(rho=0.3, lam=0.5, adaptive=True, lr=0.05, weight_decay=0.1, momentum=0.0,
                               optimizer=optimizer)
    _, update = _expected_sharp_gradient(w, x, y, -0.4, rho=0.3, lam=0.5, sign=sign, adaptive=True)
    opt = (torch.optim.SGD(model.parameters(), lr=0.05, weight_decay=0.1) if optimizer == "sgd" else
           torch.optim.AdamW(model.parameters(), lr=0.05, weight_decay=0.1))
    sharp_step(model, dict(model.named_parameters()), opt, lambda: -0.4 * F.cross_entropy(model(x), y), None,
               sign=sign, config=config)
    for p, start, u in zip((model.weight, model.bias), w, update, strict=True):
        want = start - 0.05 * (u + 0.1 * start) if optimizer == "sgd" else _adamw(start, u, {}, 0.05, 0.1)
        torch.testing.assert_close(p.detach(), want, rtol=1e-12, atol=1e-14)


def test_the_perturbed_pass_leaves_batch_norm_statistics_alone():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2)).train()
    x, y = torch.randn(8, 3), torch.randint(0, 2, (8,))

    def loss():
        return F.cross_entropy(model(x), y)

    loss().backward()  # the pass at w updates them once
    before = {k: v.clone() for k, v in model[1].state_dict().items()}
    sharp_gradient(model, dict(model.named_parameters()), loss, rho=0.5, lam=1.0, sign=MIN, adaptive=False)
    assert all(torch.equal(v, before[k]) for k, v in model[1].state_dict().items())
    assert model[1].track_running_stats


# 2. the weights outside a step's part stay as they were


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
@pytest.mark.parametrize("sign", [MIN, MAX], ids=["retain", "forget"])
def test_a_step_leaves_every_weight_outside_its_part_exactly_as_it_was(sign, optimizer):
    model, x, y = _tiny()
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    forget_part = {"weight": torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 1.0]], dtype=torch.float64),
                   "bias": torch.tensor([0.0, 1.0], dtype=torch.float64)}
    part = forget_part if sign == MAX else {name: 1 - keep for name, keep in forget_part.items()}
    # weight decay and momentum would move a weight whose gradient is masked: the step must not let them
    config = SharpMinMaxConfig(lr=0.1, weight_decay=0.5, momentum=0.9, optimizer=optimizer, rho=0.3)
    opt = (torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=0.5) if optimizer == "sgd" else
           torch.optim.AdamW(model.parameters(), lr=0.1, weight_decay=0.5))
    for _ in range(3):
        sharp_step(model, dict(model.named_parameters()), opt, lambda: sign * F.cross_entropy(model(x), y), part,
                   sign=sign, config=config)
    for name, p in model.named_parameters():
        frozen = part[name] == 0
        assert torch.equal(p.detach()[frozen], before[name][frozen]), name
        assert (p.detach()[~frozen] != before[name][~frozen]).all(), name


# 3. the mask


@pytest.mark.parametrize("side", ["largest", "smallest"])
def test_the_mask_marks_the_largest_or_the_authors_smallest_forget_saliencies(side):
    forget = _data(6, seed=2)
    model = RecordingLinear()
    mask = forget_mask(model, forget, SharpMinMaxConfig(mask=side, mask_ratio=0.2, batch_size=4), CPU)
    weight, bias = model.weight.detach().requires_grad_(), model.bias.detach().requires_grad_()
    grads = torch.autograd.grad(F.cross_entropy(forget.inputs @ weight.T + bias, forget.targets), [weight, bias])
    saliency = torch.cat([g.abs().flatten() for g in grads])
    order = saliency.argsort(descending=side == "largest")  # the authors' code: ascending, the first int(r * n)
    expected = torch.zeros_like(saliency)
    expected[order[:int(0.2 * len(saliency))]] = 1
    assert torch.equal(torch.cat([mask["weight"].flatten(), mask["bias"]]), expected)


def test_no_mask_and_a_whole_smallest_mask():
    model, forget = RecordingLinear(), _data(6, seed=2)
    assert forget_mask(model, forget, SharpMinMaxConfig(mask="none"), CPU) is None
    whole = forget_mask(model, forget, SharpMinMaxConfig(mask="smallest", mask_ratio=1.0), CPU)
    assert all(bool(keep.eq(1).all()) for keep in whole.values())


# whole runs: two optimizers, each on its own part, replayed by hand


def _replay(model, retain, forget, settings, mask):
    """The weights after the run ``model.seen`` records, stepped by hand from the model's start: per step a retain
    update (alpha * CE, min, masked by 1 - M, its own AdamW) and then a forget update (-(1 - alpha) * CE, max,
    masked by M, another AdamW), each putting back the weights outside its part."""
    w = [model.weight.detach().clone(), model.bias.detach().clone()]
    seen = model.seen
    steps = [seen[i:i + 4] for i in range(0, len(seen), 4)]
    per_epoch = len(steps) // settings["epochs"]
    states = {"retain": [{}, {}], "forget": [{}, {}]}
    for number, (xr, xr_again, xf, xf_again) in enumerate(steps):
        assert torch.equal(xr, xr_again) and torch.equal(xf, xf_again)  # each loss twice: at w and at w + eps
        lr = settings["lr"] * (1 - (number // per_epoch) / settings["epochs"])  # the "linear" schedule
        halves = (("retain", xr, retain, settings["alpha"], MIN, None if mask is None else [1 - m for m in mask]),
                  ("forget", xf, forget, -(1 - settings["alpha"]), MAX, mask))
        for half, x, data, scale, sign, part in halves:
            y = data.targets[_positions(x, data)]
            _, update = _expected_sharp_gradient(w, x, y, scale, rho=settings["rho"], lam=settings["lam"], sign=sign,
                                                 adaptive=settings["adaptive"])
            if part is not None:
                update = [u * keep for u, keep in zip(update, part, strict=True)]
            stepped = [_adamw(p, u, state, lr, settings["weight_decay"])
                       for p, u, state in zip(w, update, states[half], strict=True)]
            w = stepped if part is None else [torch.where(keep.bool(), new, old)
                                              for new, old, keep in zip(stepped, w, part, strict=True)]
    return w


@pytest.mark.parametrize("adaptive", [False, True], ids=["sam", "asam"])
@pytest.mark.parametrize("side", ["largest", "smallest", "none"])
def test_a_run_is_the_retain_and_forget_updates_replayed_by_hand(side, adaptive):
    retain, forget = _data(8, seed=1), _data(3, seed=2)  # batches of 2: 4 retain batches, the 2 forget ones cycled
    model = RecordingLinear()
    start = RecordingLinear()
    settings = {"alpha": 0.7, "rho": 0.3, "lam": 0.5, "adaptive": adaptive, "mask": side, "mask_ratio": 0.2,
                "epochs": 2, "lr": 0.05, "weight_decay": 0.1, "batch_size": 2, "schedule": "linear"}
    result = unlearn(model, forget=forget, retain=retain, method="sharp_minmax", config=settings)
    seen = result.model.seen
    assert len(seen) == 2 * 4 * 4  # 2 epochs of 4 steps, each 2 passes on a retain and 2 on a forget batch
    forget_ids = [_positions(seen[4 * step + 2], forget) for step in range(8)]
    assert sorted(sum(forget_ids[:2], [])) == [0, 1, 2] and forget_ids[2] == forget_ids[0]  # cycled
    mask = forget_mask(start, forget, SharpMinMaxConfig(mask=side, mask_ratio=0.2, batch_size=2), CPU)
    mask = None if mask is None else [mask["weight"], mask["bias"]]
    start.seen = seen
    weight, bias = _replay(start, retain, forget, settings, mask)
    torch.testing.assert_close(result.model.weight.detach(), weight, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(result.model.bias.detach(), bias, rtol=1e-10, atol=1e-12)


# 4. on real digits, and inside rum


@pytest.fixture(scope="module")
def digits_request(digits):
    """A softmax regression trained on digits, and a random forget set of 90 with the rest as the retain set."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    model, _ = train(model, digits.train, epochs=4, lr=0.2, batch_size=128, progress=False, device="cpu")
    forget_ids = np.sort(np.random.default_rng(0).choice(len(digits.train), 90, replace=False))
    retain_ids = np.setdiff1d(np.arange(len(digits.train)), forget_ids)
    return model, Subset(digits.train, forget_ids.tolist()), Subset(digits.train, retain_ids.tolist())


def test_sharp_minmax_unlearns_digits_into_a_new_model_deterministically(digits_request):
    model, forget, retain = digits_request
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = unlearn(model, forget=forget, retain=retain, method="sharp_minmax", seed=3)
    assert result.model is not model and all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert [s.method for s in result.plan] == ["sharp_minmax"] and not result.model.training
    forget_before, retain_before = top1_accuracy(model, forget), top1_accuracy(model, retain)
    forget_after, retain_after = top1_accuracy(result.model, forget), top1_accuracy(result.model, retain)
    # a random forget set of digits is barely memorized: the default (the authors' smallest saliencies) moves it
    # a little, the largest saliencies much more
    assert forget_after < forget_before and retain_after >= retain_before - 0.08
    largest = unlearn(model, forget=forget, retain=retain, method="sharp_minmax", seed=3, mask="largest").model
    assert top1_accuracy(largest, forget) <= forget_before - 0.03
    again = unlearn(model, forget=forget, retain=retain, method="sharp_minmax", seed=3)
    assert all(torch.equal(v, again.model.state_dict()[k]) for k, v in result.model.state_dict().items())


def test_rum_runs_sharp_minmax_on_the_most_memorized_group(digits_request):
    model, forget, retain = digits_request
    policy = {"low": None, "medium": ("finetune", {"epochs": 1}), "high": ("sharp_minmax", {"epochs": 2})}
    result = unlearn(model, forget=forget, retain=retain, scores=np.arange(90.0),
                     higher_is_memorized=True, policy=policy, grouping="request",
                     retain_per_forget=4.0)
    assert [(s.group, s.method) for s in result.plan] == [("low", "noop"), ("medium", "finetune"),
                                                          ("high", "sharp_minmax")]
    np.testing.assert_array_equal(result.plan[-1].indices, np.asarray(forget.indices)[60:])  # highest scores
    assert result.plan[-1].config["epochs"] == 2 and result.plan[-1].config["mask"] == "smallest"


# the registration and the settings


def test_sharp_minmax_is_registered_with_the_authors_defaults():
    assert "sharp_minmax" in methods() and get_method("sharp_minmax").config is SharpMinMaxConfig
    config = SharpMinMaxConfig()
    assert (config.rho, config.lam, config.alpha, config.adaptive) == (0.1, 1.0, 0.99, False)
    assert (config.optimizer, config.lr, config.weight_decay, config.epochs) == ("adamw", 0.01, 5e-4, 10)
    assert (config.mask, config.mask_ratio) == ("smallest", 0.1)  # the side the authors' code marks


@pytest.mark.parametrize(("settings", "error", "match"), [
    ({"mask": "biggest"}, ValueError, r"mask must be one of \['largest', 'smallest', 'none'\]"),
    ({"mask_ratio": 0.0}, ValueError, "mask_ratio"),
    ({"rho": -0.1}, ValueError, "rho"),
    ({"lam": float("nan")}, ValueError, "lam"),
    ({"alpha": 1.5}, ValueError, "alpha"),
    ({"adaptive": "yes"}, TypeError, "adaptive must be True or False"),
    ({"optimizer": "adam"}, ValueError, "optimizer"),
])
def test_bad_settings_are_refused(settings, error, match):
    with pytest.raises(error, match=match):
        SharpMinMaxConfig(**settings)
