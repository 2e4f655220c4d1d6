"""Each unlearning method against a slow, obvious reference of its defining behaviour.

The gradient-based methods run on a float64 softmax regression (a linear layer) that keeps every training-mode
input it is given, so the reference replays the very batches the method saw, with the textbook update written out
by hand (plain SGD: no momentum, no weight decay).
"""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Subset

from unlearn import TrainConfig, create_model, train, unlearn
from unlearn.algorithms.registry import get_method, make_config
from unlearn.algorithms.retrain import RetrainConfig
from unlearn.algorithms.salun import saliency_mask
from unlearn.data import IndexedDataset

FEATURES, CLASSES = 4, 3
PLAIN_SGD = {"momentum": 0.0, "weight_decay": 0.0}


class RecordingLinear(nn.Linear):
    """A float64 linear classifier that keeps a copy of every input it sees in training mode."""

    def __init__(self, seed: int = 0) -> None:
        torch.manual_seed(seed)
        super().__init__(FEATURES, CLASSES, dtype=torch.float64)
        self.seen: list[torch.Tensor] = []

    def forward(self, x):
        if self.training:
            self.seen.append(x.detach().clone())
        return super().forward(x)


def _data(n: int, seed: int) -> IndexedDataset:
    generator = torch.Generator().manual_seed(seed)
    return IndexedDataset(torch.randn(n, FEATURES, generator=generator, dtype=torch.float64),
                          torch.randint(0, CLASSES, (n,), generator=generator))


def _positions(x: torch.Tensor, data: IndexedDataset) -> list[int] | None:
    """Where each row of ``x`` is in ``data``; None if any row is not in it."""
    match = (x[:, None, :] == data.inputs[None, :, :]).all(dim=2)
    if not match.any(dim=1).all():
        return None
    return match.float().argmax(dim=1).tolist()


def _ce_grads(weight, bias, x, y):
    """The gradient of the mean softmax cross-entropy of a linear model, in closed form."""
    residual = torch.softmax(x @ weight.T + bias, dim=1)
    residual[torch.arange(len(y)), y] -= 1
    residual /= len(y)
    return residual.T @ x, residual.sum(dim=0)


def _initial(model):
    return model.weight.detach().clone(), model.bias.detach().clone()


def _assert_weights(model, weight, bias):
    torch.testing.assert_close(model.weight.detach(), weight, rtol=0, atol=1e-12)
    torch.testing.assert_close(model.bias.detach(), bias, rtol=0, atol=1e-12)


def test_neggrad_plus_weighs_retain_by_alpha_and_cycles_the_forget_set():
    retain, forget = _data(10, seed=1), _data(6, seed=2)  # batches of 4: 3 retain batches, 2 forget batches
    model = RecordingLinear()
    weight, bias = _initial(model)
    alpha, lr = 0.7, 0.5
    result = unlearn(model, forget=forget, retain=retain, method="neggrad_plus",
                     config={"alpha": alpha, "epochs": 2, "lr": lr, "batch_size": 4, **PLAIN_SGD})
    seen = result.model.seen
    steps = list(zip(seen[0::2], seen[1::2], strict=True))  # each step: a retain batch, then a forget batch
    assert len(steps) == 2 * 3
    for epoch in range(2):
        retain_ids = [_positions(xr, retain) for xr, _ in steps[3 * epoch:3 * epoch + 3]]
        forget_ids = [_positions(xf, forget) for _, xf in steps[3 * epoch:3 * epoch + 3]]
        assert sorted(sum(retain_ids, [])) == list(range(10))  # every retain example once per epoch
        assert sorted(sum(forget_ids[:2], [])) == list(range(6))  # one pass over the forget set...
        assert forget_ids[2] == forget_ids[0]  # ...then it starts again from its first batch
    for xr, xf in steps:
        r, f = _positions(xr, retain), _positions(xf, forget)
        grad_retain = _ce_grads(weight, bias, xr, retain.targets[r])
        grad_forget = _ce_grads(weight, bias, xf, forget.targets[f])
        weight = weight - lr * (alpha * grad_retain[0] - (1 - alpha) * grad_forget[0])
        bias = bias - lr * (alpha * grad_retain[1] - (1 - alpha) * grad_forget[1])
    _assert_weights(result.model, weight, bias)


def test_l1_sparse_coefficient_decays_linearly_to_zero_over_all_steps():
    retain, forget = _data(10, seed=1), _data(4, seed=2)
    model = RecordingLinear()
    start = _initial(model)
    alpha, lr, epochs = 0.2, 0.3, 2
    result = unlearn(model, forget=forget, retain=retain, method="l1_sparse",
                     config={"alpha": alpha, "epochs": epochs, "lr": lr, "batch_size": 4, **PLAIN_SGD})
    seen = result.model.seen
    total = epochs * math.ceil(10 / 4)
    assert len(seen) == total and all(_positions(x, retain) is not None for x in seen)

    def replay(coefficient):
        weight, bias = start
        for step, x in enumerate(seen):
            grad_weight, grad_bias = _ce_grads(weight, bias, x, retain.targets[_positions(x, retain)])
            a = coefficient(step)  # d/dw |w| = sign(w)
            weight, bias = weight - lr * (grad_weight + a * weight.sign()), bias - lr * (grad_bias + a * bias.sign())
        return weight, bias

    weight, bias = replay(lambda step: alpha * (1 - step / total))  # alpha at the first step, alpha/T at the last
    _assert_weights(result.model, weight, bias)
    constant, _ = replay(lambda step: alpha)
    assert (constant - weight).abs().max() > 1e-3  # the replay tells the schedule apart


def test_scrub_alternates_max_steps_on_forget_and_min_steps_on_retain():
    retain, forget = _data(10, seed=1), _data(6, seed=2)  # batches of 4: 3 retain batches, 2 forget batches
    model = RecordingLinear()
    weight, bias = (t.requires_grad_() for t in _initial(model))
    teacher = _initial(model)
    settings = {"msteps": 2, "temperature": 2.0, "kl_weight": 0.3, "ce_weight": 0.6, "epochs": 3, "lr": 0.5,
                "batch_size": 4, **PLAIN_SGD}
    result = unlearn(model, forget=forget, retain=retain, method="scrub", config=settings)
    seen = result.model.seen  # the student's forward passes; the teacher is a frozen copy
    kinds = ["forget" if _positions(x, forget) is not None else "retain" for x in seen]
    assert kinds == (["forget"] * 2 + ["retain"] * 3) * 2 + ["retain"] * 3  # max steps only in the first msteps

    def kl(student_logits, x):  # T^2 * KL(teacher || student) at temperature T, averaged over the batch
        t = settings["temperature"]
        target = torch.softmax((x @ teacher[0].T + teacher[1]) / t, dim=1)
        return t**2 * (target * (target.log() - torch.log_softmax(student_logits / t, dim=1))).sum(1).mean()

    for x, kind in zip(seen, kinds, strict=True):
        logits = x @ weight.T + bias
        if kind == "forget":
            loss = -kl(logits, x)
        else:
            y = retain.targets[_positions(x, retain)]
            loss = settings["ce_weight"] * F.cross_entropy(logits, y) + settings["kl_weight"] * kl(logits, x)
        grad_weight, grad_bias = torch.autograd.grad(loss, [weight, bias])
        with torch.no_grad():
            weight -= settings["lr"] * grad_weight
            bias -= settings["lr"] * grad_bias
    _assert_weights(result.model, weight.detach(), bias.detach())


def test_influence_is_one_step_along_the_gradient_gap_over_the_diagonal_fisher():
    retain, forget = _data(10, seed=1), _data(6, seed=2)
    model = RecordingLinear()
    weight, bias = _initial(model)
    alpha, damping = 0.05, 1e-3
    result = unlearn(model, forget=forget, retain=retain, method="influence",
                     config={"alpha": alpha, "damping": damping, "batch_size": 4})

    def per_example(data):  # each example's own cross-entropy gradient, one at a time
        return [_ce_grads(weight, bias, data.inputs[i:i + 1], data.targets[i:i + 1]) for i in range(len(data))]

    retain_grads, forget_grads = per_example(retain), per_example(forget)
    expected = []
    for part, start in ((0, weight), (1, bias)):
        fisher = sum(g[part] ** 2 for g in retain_grads) / len(retain)
        gap = sum(g[part] for g in forget_grads) / len(forget) - sum(g[part] for g in retain_grads) / len(retain)
        expected.append(start + alpha * gap / (fisher + damping))
    _assert_weights(result.model, *expected)


def test_salun_mask_keeps_the_largest_forget_gradients():
    forget = _data(6, seed=2)
    model = RecordingLinear()
    mask = saliency_mask(model, forget, 0.25, 4, torch.device("cpu"))
    grad_weight, grad_bias = _ce_grads(*_initial(model), forget.inputs, forget.targets)  # mean = sum / 6
    saliency = torch.cat([grad_weight.abs().flatten(), grad_bias.abs()])
    largest = torch.zeros_like(saliency)
    largest[saliency.argsort(descending=True)[:round(0.25 * len(saliency))]] = 1
    assert torch.equal(torch.cat([mask["weight"].flatten(), mask["bias"]]), largest)


def test_salun_leaves_every_weight_outside_the_mask_exactly_as_it_was():
    retain, forget = _data(10, seed=1), _data(6, seed=2)
    model = RecordingLinear()
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    mask = saliency_mask(model, forget, 0.4, 4, torch.device("cpu"))
    # weight decay and momentum would move a weight whose gradient is masked; SalUn must not let them
    result = unlearn(model, forget=forget, retain=retain, method="salun",
                     config={"mask_ratio": 0.4, "epochs": 3, "lr": 0.5, "batch_size": 4, "momentum": 0.9,
                             "weight_decay": 0.5})
    for name, p in result.model.named_parameters():
        frozen = mask[name] == 0
        assert frozen.any() and torch.equal(p.detach()[frozen], before[name][frozen]), name
        assert (p.detach()[~frozen] != before[name][~frozen]).any(), name


@pytest.mark.parametrize("method", ["random_label", "salun"])
def test_relabelling_keeps_every_tensor_on_the_data_device(method):
    # data already on an accelerator: the "meta" device stands in for a GPU (shapes only, no values)
    meta = torch.device("meta")
    forget, retain = (IndexedDataset(torch.randn(n, FEATURES, device=meta),
                                     torch.zeros(n, dtype=torch.long, device=meta)) for n in (5, 7))
    model = nn.Linear(FEATURES, CLASSES).to(meta)
    spec = get_method(method)
    config = make_config(spec, {"epochs": 1, "batch_size": 4})
    trained = spec.fn(model, forget, retain, config, seed=0, device=meta)
    assert trained.weight.device == meta


# retrain: the same model the retrained reference of `unlearn run` is (torch.manual_seed, factory, train())

RECIPE = {"epochs": 2, "lr": 0.05, "batch_size": 32, "momentum": 0.9, "weight_decay": 5e-4, "schedule": "cosine",
          "drop_last": True}


def _custom_init_cnn():
    """A factory with an initialisation of its own, which reset_parameters() would not reproduce."""
    model = create_model("digits_cnn", num_classes=10, in_channels=1)
    for p in model.parameters():
        nn.init.normal_(p, std=0.05)
    return model


def _reference(factory, retain, seed):
    torch.manual_seed(seed)  # as unlearn.cli's reference stage does
    model, _ = train(factory(), retain, seed=seed, device="cpu", progress=False, **RECIPE)
    return model


@pytest.mark.parametrize("model_fn", ["digits_cnn", _custom_init_cnn], ids=["by-name", "callable"])
def test_retrain_builds_the_same_model_as_the_retrained_reference(digits, model_fn):
    forget, retain = Subset(digits.train, range(20)), Subset(digits.train, range(20, 180))
    torch.manual_seed(123)
    original = create_model("digits_cnn", num_classes=10, in_channels=1)
    result = unlearn(original, forget=forget, retain=retain, method="retrain", seed=7,
                     config={"model_fn": model_fn, **RECIPE})
    factory = model_fn if callable(model_fn) else lambda: create_model(model_fn, num_classes=10, in_channels=1)
    reference = _reference(factory, retain, seed=7)
    state = result.model.state_dict()
    assert state.keys() == reference.state_dict().keys()
    assert all(torch.equal(state[k], v) for k, v in reference.state_dict().items())


def test_retrain_config_holds_the_whole_training_recipe():
    assert RetrainConfig().recipe() == TrainConfig().as_kwargs()  # every train() setting, with its defaults
    recipe = TrainConfig(epochs=3, lr=0.1, batch_size=16, schedule="step", drop_last=True).as_kwargs()
    assert RetrainConfig(**recipe, model_fn="digits_cnn").recipe() == recipe


def test_retrain_refuses_a_factory_of_another_architecture(digits):
    forget, retain = Subset(digits.train, range(20)), Subset(digits.train, range(20, 60))
    original = create_model("digits_cnn", num_classes=10, in_channels=1)
    with pytest.raises(ValueError, match="model_fn builds a model whose parameters differ"):
        unlearn(original, forget=forget, retain=retain, method="retrain", config={"model_fn": "cnn28", "epochs": 1})
    with pytest.raises(ValueError, match="unknown model 'cnn'"):
        unlearn(original, forget=forget, retain=retain, method="retrain", config={"model_fn": "cnn"})
    with pytest.raises(TypeError, match="model_fn must be"):
        unlearn(original, forget=forget, retain=retain, method="retrain", config={"model_fn": 3})
    with pytest.raises(ValueError, match="model_kwargs are for a model_fn given by name"):
        unlearn(original, forget=forget, retain=retain, method="retrain",
                config={"model_fn": _custom_init_cnn, "model_kwargs": {"num_classes": 10}})


def test_a_method_with_optimizer_adamw_takes_adamw_steps():
    """finetune with ``optimizer="adamw"``: each step is AdamW's, written out (bias-corrected moments, decoupled
    weight decay) on the closed-form cross-entropy gradient of the batch it saw."""
    retain, forget = _data(8, seed=1), _data(4, seed=2)
    model = RecordingLinear()
    weight, bias = _initial(model)
    lr, decay, (beta1, beta2), eps = 0.1, 0.01, (0.9, 0.999), 1e-8
    result = unlearn(model, forget=forget, retain=retain, method="finetune",
                     config={"epochs": 1, "lr": lr, "batch_size": 4, "weight_decay": decay, "optimizer": "adamw"})
    moments = [[torch.zeros_like(weight), torch.zeros_like(weight)], [torch.zeros_like(bias), torch.zeros_like(bias)]]
    for step, x in enumerate(result.model.seen, start=1):
        grads = _ce_grads(weight, bias, x, retain.targets[_positions(x, retain)])
        params = []
        for p, g, m in zip((weight, bias), grads, moments, strict=True):
            m[0] = beta1 * m[0] + (1 - beta1) * g
            m[1] = beta2 * m[1] + (1 - beta2) * g * g
            update = (m[0] / (1 - beta1**step)) / ((m[1] / (1 - beta2**step)).sqrt() + eps)
            params.append(p * (1 - lr * decay) - lr * update)
        weight, bias = params
    assert len(result.model.seen) == 2
    torch.testing.assert_close(result.model.weight.detach(), weight, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(result.model.bias.detach(), bias, rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match=r"optimizer must be one of \['sgd', 'adamw'\]"):
        unlearn(model, forget=forget, retain=retain, method="finetune", config={"optimizer": "adam"})
