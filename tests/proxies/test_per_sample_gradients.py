"""Per-sample gradients (``proxies.gradients``): the torch.func engine against a slow per-example loop (float64),
against opacus, across chunk sizes, and on BatchNorm models (eval mode), for ``gradient_norm`` and ``influence``."""

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Subset

import proxies
from proxies.gradients import per_sample_gradients
from unlearn import unlearn
from unlearn.data import IndexedDataset
from unlearn.models import create_model


def _reference(model, data):
    """Each example's own cross-entropy gradient, one backward per example, w.r.t. the parameters that require grad
    (the model in whatever mode it is in): a list over examples of lists over parameters."""
    params = [p for p in model.parameters() if p.requires_grad]
    grads = []
    for i in range(len(data)):
        x, y, _ = data[i]
        loss = F.cross_entropy(model(x.unsqueeze(0)), torch.as_tensor(y).view(1))
        grads.append([g.detach() for g in torch.autograd.grad(loss, params)])
    return grads


def _stacked(model, data, **kwargs):
    """torch.func (or another engine's) per-sample gradients of all of ``data``, one ``[N, *shape]`` per param."""
    chunks = list(per_sample_gradients(model, data, **kwargs))
    return [torch.cat(parts) for parts in zip(*(g for g, _ in chunks), strict=True)], torch.cat([i for _, i in chunks])


def _assert_matches_reference(got, expected):
    assert len(got) == len(expected[0])
    for j, g in enumerate(got):
        torch.testing.assert_close(g, torch.stack([e[j] for e in expected]), rtol=1e-10, atol=1e-12)


@pytest.fixture(scope="module")
def digits64(digits):
    """40 real digits images in float64, with their training indices."""
    rows = slice(10, 50)
    return IndexedDataset(digits.train.inputs[rows].double(), digits.train.targets[rows],
                          indices=digits.train.indices[rows])


def _bn_model():
    """A small conv net with BatchNorm whose running statistics and affine weights are not the defaults."""
    torch.manual_seed(3)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 10))
    model = model.double().train()
    with torch.no_grad():
        for _ in range(3):  # move the running statistics away from 0 / 1
            model(torch.randn(16, 1, 8, 8, dtype=torch.float64) * 2 + 0.5)
        model[1].weight.uniform_(0.5, 1.5)
        model[1].bias.uniform_(-0.5, 0.5)
    return model


def test_torch_func_matches_a_per_example_loop_on_the_digits_cnn(digits64):
    torch.manual_seed(0)
    model = create_model("digits_cnn", num_classes=10, in_channels=1).double()
    got, idx = _stacked(model, digits64, batch_size=16)
    assert idx.tolist() == digits64.indices.tolist()
    _assert_matches_reference(got, _reference(model.eval(), digits64))


def test_torch_func_matches_a_per_example_loop_with_batch_norm_in_eval_mode(digits64, device):
    model = _bn_model().to(device)
    data = IndexedDataset(digits64.inputs.to(device), digits64.targets.to(device), indices=digits64.indices)
    got, _ = _stacked(model, data, batch_size=32, chunk_size=9)
    reference_model = copy.deepcopy(model).eval()
    assert model.training  # the engine worked on a copy
    _assert_matches_reference(got, _reference(reference_model, data))


def test_only_parameters_that_require_grad_get_one(digits64):
    torch.manual_seed(1)
    model = create_model("digits_cnn", num_classes=10, in_channels=1).double()
    model[0].requires_grad_(False)  # the first convolution is frozen
    got, _ = _stacked(model, digits64, chunk_size=13)
    assert [tuple(g.shape[1:]) for g in got] == [tuple(p.shape) for p in model.parameters() if p.requires_grad]
    _assert_matches_reference(got, _reference(model.eval(), digits64))
    opacus, _ = _stacked(model, digits64, engine="opacus")
    for a, b in zip(got, opacus, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_torch_func_and_opacus_agree_on_gradient_norm(digits):
    torch.manual_seed(0)
    model = create_model("digits_cnn", num_classes=10, in_channels=1)
    data = Subset(digits.train, list(range(200, 300)))
    func = proxies.gradient_norm(model, data, batch_size=32)
    opacus = proxies.gradient_norm(model, data, batch_size=32, engine="opacus")
    assert func.index.tolist() == opacus.index.tolist() == digits.train.indices[200:300].tolist()
    np.testing.assert_allclose(func.to_numpy(), opacus.to_numpy(), rtol=1e-4)
    assert (func > 0).all()


@pytest.mark.parametrize("engine", ["torch_func", "opacus"])
def test_chunk_size_does_not_change_the_result(digits, engine):
    torch.manual_seed(0)
    model = create_model("digits_cnn", num_classes=10, in_channels=1)
    data = Subset(digits.train, list(range(30)))
    scores = {chunk: proxies.gradient_norm(model, data, batch_size=16, engine=engine, chunk_size=chunk)
              for chunk in (1, 7, None, 30)}
    for chunk in (1, 7, 30):
        assert scores[chunk].index.tolist() == scores[None].index.tolist()
        np.testing.assert_allclose(scores[chunk].to_numpy(), scores[None].to_numpy(), rtol=1e-5)
    sizes = [len(idx) for _, idx in per_sample_gradients(model, data, batch_size=16, engine=engine, chunk_size=7)]
    assert sizes == [7, 7, 2, 7, 7]  # chunks never cross a batch of 16


@pytest.fixture(scope="module")
def resnet18():
    """The CIFAR ResNet-18 (BatchNorm throughout) with running statistics moved off their defaults, in eval mode.
    The smoke tests feed it 3x16x16 images: it takes any size from 8x8, and a per-sample gradient costs in
    proportion to the pixels (about 1 s per 3x32x32 example on 2 CPU cores)."""
    torch.manual_seed(0)
    model = create_model("resnet18", num_classes=10, in_channels=3)
    with torch.no_grad():
        model(torch.randn(8, 3, 16, 16))
    return model.eval()


def test_gradient_norm_runs_on_resnet18(resnet18):
    images = IndexedDataset(torch.randn(4, 3, 16, 16), torch.tensor([0, 1, 2, 3]), indices=torch.tensor([9, 7, 5, 3]))
    scores = proxies.compute("gradient_norm", model=resnet18, data=images, batch_size=4, chunk_size=3)
    assert scores.index.tolist() == [9, 7, 5, 3]
    assert np.isfinite(scores.to_numpy()).all() and (scores > 0).all()
    with pytest.raises(ValueError, match="ModuleValidator.fix"):
        proxies.gradient_norm(resnet18, images, engine="opacus")


def test_influence_runs_on_resnet18(resnet18):
    images = IndexedDataset(torch.randn(4, 3, 16, 16), torch.tensor([0, 1, 2, 3]))
    before = copy.deepcopy(resnet18.state_dict())
    result = unlearn(resnet18, forget=Subset(images, [0]), retain=Subset(images, [1, 2, 3]), method="influence")
    after = result.model.state_dict()
    assert all(torch.equal(v, resnet18.state_dict()[k]) for k, v in before.items())
    assert all(torch.isfinite(v).all() for v in after.values() if v.is_floating_point())
    assert not torch.equal(after["fc.weight"], before["fc.weight"])
    assert all(torch.equal(after[k], before[k]) for k in before if "running" in k or "num_batches" in k)


def test_influence_on_batch_norm_is_the_step_of_the_per_example_loop(digits64):
    model = _bn_model().eval()
    retain = IndexedDataset(digits64.inputs[:24], digits64.targets[:24], indices=digits64.indices[:24])
    forget = IndexedDataset(digits64.inputs[24:], digits64.targets[24:], indices=digits64.indices[24:])
    alpha, damping = 0.02, 1e-3
    result = unlearn(model, forget=forget, retain=retain, method="influence",
                     config={"alpha": alpha, "damping": damping, "batch_size": 10})
    retain_grads, forget_grads = _reference(model, retain), _reference(model, forget)
    for j, (name, start) in enumerate(model.named_parameters()):
        fisher = sum(g[j] ** 2 for g in retain_grads) / len(retain)
        gap = sum(g[j] for g in forget_grads) / len(forget) - sum(g[j] for g in retain_grads) / len(retain)
        torch.testing.assert_close(dict(result.model.named_parameters())[name].detach(),
                                   start.detach() + alpha * gap / (fisher + damping), rtol=1e-9, atol=1e-11)


def test_bad_engine_and_chunk_size_are_refused(digits):
    model = create_model("digits_cnn", num_classes=10, in_channels=1)
    data = Subset(digits.train, [0, 1])
    allowed = r"expected one of \['opacus', 'torch_func'\]"
    with pytest.raises(ValueError, match=rf"unknown per-sample gradient engine 'functorch'; {allowed}"):
        proxies.gradient_norm(model, data, engine="functorch")
    with pytest.raises(ValueError, match=allowed):
        per_sample_gradients(model, data, engine="vmap")  # at the call, not at the first chunk
    with pytest.raises(ValueError, match="chunk_size must be >= 1, got 0"):
        proxies.gradient_norm(model, data, chunk_size=0)
    with pytest.raises(TypeError, match="chunk_size must be a whole number or None, got float 2.5"):
        per_sample_gradients(model, data, chunk_size=2.5)
    with pytest.raises(ValueError, match="at least one parameter that requires grad"):
        per_sample_gradients(model.requires_grad_(False), data)


@pytest.mark.parametrize("engine", ["torch_func", "opacus"])
def test_the_callers_model_is_unchanged(digits, device, engine):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU(), nn.Dropout(0.5), nn.Flatten(), nn.Linear(8 * 6 * 6, 10))
    if engine == "torch_func":
        model.insert(1, nn.BatchNorm2d(8))
    model = model.to(device).train()
    model[-1].requires_grad_(False)
    before = copy.deepcopy(model.state_dict())
    modes = [m.training for m in model.modules()]
    data = Subset(digits.train, list(range(20)))
    first = proxies.gradient_norm(model, data, batch_size=8, device=device, engine=engine)
    again = proxies.gradient_norm(model, data, batch_size=8, engine=engine)  # where the model is
    np.testing.assert_allclose(first.to_numpy(), again.to_numpy(), rtol=1e-5)
    assert [m.training for m in model.modules()] == modes
    assert all(p.device.type == device.type and p.grad is None for p in model.parameters())
    assert [p.requires_grad for p in model.parameters()][-2:] == [False, False]
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert not hasattr(model[0].weight, "grad_sample")
