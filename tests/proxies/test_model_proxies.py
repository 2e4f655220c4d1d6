"""Proxies that need a model and data: each against a slow, obvious per-example reference on real digits."""

import copy

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Subset

import proxies
from proxies._backends import pure_torch as reference_kernels
from unlearn.farm.subset_models import subset_jobs, train_subset_models
from unlearn.models import create_model
from unlearn.training import predict, train


@pytest.fixture(scope="module")
def digits_model(digits):
    torch.manual_seed(0)
    model, _ = train(create_model("digits_cnn", num_classes=10, in_channels=1), digits.train, epochs=5,
                     batch_size=64, progress=False, device="cpu")
    return model


def _grad_x(model, x, y):
    x = x.clone().requires_grad_(True)
    F.cross_entropy(model(x.unsqueeze(0)), y.view(1)).backward()
    return x.grad


def test_loss_curvature_matches_a_per_example_loop(digits, digits_model):
    data = Subset(digits.train, list(range(40, 70)))
    got = proxies.compute("loss_curvature", model=digits_model, data=data, batch_size=16, n_probes=3, seed=5,
                          progress=False)
    # the reference draws the same probes (one [batch, ...] tensor per probe, batch after batch) and loops
    generator = torch.Generator().manual_seed(5)
    expected = []
    for start in range(0, 30, 16):
        xs, ys = digits.train.inputs[40 + start:40 + min(start + 16, 30)], digits.train.targets[40 + start:70][:16]
        probes = [torch.randint(0, 2, xs.shape, generator=generator, dtype=xs.dtype) * 2 - 1 for _ in range(3)]
        for i in range(len(xs)):
            g = _grad_x(digits_model, xs[i], ys[i])
            diffs = [(_grad_x(digits_model, xs[i] + 1e-3 * v[i], ys[i]) - g).norm() for v in probes]
            expected.append(float(sum(diffs) / 3))
    assert got.index.tolist() == list(range(40, 70))
    # float32 gradients of a batch and of one example round differently, and the difference of two nearly equal
    # gradients magnifies that: agreement to 1e-3 relative is what float32 allows here
    np.testing.assert_allclose(got.to_numpy(), expected, rtol=2e-3, atol=1e-9)
    assert got.attrs["higher_is_memorized"] is True


def test_cure_variant_and_checkpoint_average(digits, digits_model):
    data = Subset(digits.train, list(range(20)))
    cure = proxies.loss_curvature(digits_model, data, variant="cure", progress=False)
    expected = []
    for i in range(20):
        x, y = digits.train.inputs[i], digits.train.targets[i]
        g = _grad_x(digits_model, x, y)
        z = 0.01 * torch.sign(g) / torch.sign(g).norm().clamp_min(1e-12)
        expected.append(float((_grad_x(digits_model, x + z, y) - g).norm()))
    np.testing.assert_allclose(cure.to_numpy(), expected, rtol=2e-3, atol=1e-9)

    other = copy.deepcopy(digits_model)
    with torch.no_grad():
        for p in other.parameters():
            p.mul_(0.5)
    both = proxies.loss_curvature([digits_model, other], data, seed=1, progress=False)
    single = [proxies.loss_curvature(m, data, seed=1, progress=False) for m in (digits_model, other)]
    np.testing.assert_allclose(both.to_numpy(), (single[0] + single[1]).to_numpy() / 2, rtol=1e-6)
    with pytest.raises(ValueError, match="variant"):
        proxies.loss_curvature(digits_model, data, variant="hutchinson")
    with pytest.raises(ValueError, match="h must be a positive finite probe size, got -1"):
        proxies.loss_curvature(digits_model, data, h=-1)
    with pytest.raises(TypeError, match="checkpoints"):
        proxies.loss_curvature([], data)


def test_gradient_norm_matches_a_per_example_loop(digits, digits_model):
    data = Subset(digits.train, list(range(100, 125)))
    got = proxies.compute("gradient_norm", model=[digits_model, digits_model], data=data, batch_size=10)
    expected = []
    for i in range(100, 125):
        digits_model.zero_grad()
        F.cross_entropy(digits_model(digits.train.inputs[i:i + 1]), digits.train.targets[i:i + 1]).backward()
        expected.append(float(torch.cat([p.grad.flatten() for p in digits_model.parameters()]).norm()))
    digits_model.zero_grad(set_to_none=True)
    assert got.index.tolist() == list(range(100, 125))
    np.testing.assert_allclose(got.to_numpy(), expected, rtol=1e-4)


def test_gradient_norm_through_opacus_refuses_batch_norm(digits):
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(144, 10))
    with pytest.raises(ValueError, match="ModuleValidator.fix"):
        proxies.gradient_norm(model, Subset(digits.train, [0, 1]), engine="opacus")
    assert proxies.gradient_norm(model, Subset(digits.train, [0, 1])).notna().all()  # torch.func: eval-mode BN


def test_holdout_retraining_scores_the_shift_of_a_fine_tuned_copy(digits, digits_model):
    before = {k: v.clone() for k, v in digits_model.state_dict().items()}
    data = Subset(digits.train, list(range(50)))
    got = proxies.compute("holdout_retraining", model=digits_model, data=data, holdout=digits.val, fine_tune=train,
                          max_epochs=3, progress=False)
    assert all(torch.equal(v, digits_model.state_dict()[k]) for k, v in before.items())
    tuned, _ = train(digits_model, digits.val, epochs=3, lr=0.1, schedule="constant", patience=4, progress=False,
                     device="cpu")
    expected = reference_kernels.symmetric_kl(predict(digits_model, data)[0].double(), predict(tuned, data)[0].double())
    np.testing.assert_allclose(got.to_numpy(), expected.numpy(), rtol=1e-6, atol=1e-12)
    assert (got >= 0).all() and got.max() > 0
    with pytest.raises(ValueError, match="holdout"):
        proxies.holdout_retraining(digits_model, data, Subset(digits.val, []), fine_tune=train)
    with pytest.raises(ValueError, match="needs fine_tune="):
        proxies.compute("holdout_retraining", model=digits_model, data=data, holdout=digits.val)


def test_subset_jobs_are_seeded_random_70_percent_subsets():
    jobs = subset_jobs(100, 20, seed=3)
    assert [len(j.train_ids) for j in jobs] == [70] * 20
    assert all(len(np.unique(j.train_ids)) == 70 for j in jobs)
    assert len({tuple(j.train_ids) for j in jobs}) == 20
    assert all(np.array_equal(a.train_ids, b.train_ids) for a, b in zip(jobs, subset_jobs(100, 20, seed=3),
                                                                        strict=True))
    with pytest.raises(ValueError, match="fraction"):
        subset_jobs(100, 5, fraction=1.0)


def test_memorization_from_subset_models_resumes_and_refuses_mixed_settings(digits, tmp_path):
    import functools

    data = Subset(digits.train, list(range(200)))
    model_fn = functools.partial(create_model, "digits_cnn", num_classes=10, in_channels=1)
    settings = dict(k=3, folder=tmp_path, epochs=2, batch_size=64, progress=False)
    first = train_subset_models(data, model_fn, **settings)
    files = sorted(tmp_path.glob("subset-*.npz"))
    assert len(files) == 3 and first.logits.shape == (3, 200, 10)
    mtimes = {f: f.stat().st_mtime_ns for f in files[:2]}
    files[2].unlink()  # as if the run had been interrupted before the last model
    again = train_subset_models(data, model_fn, **settings)
    assert {f: f.stat().st_mtime_ns for f in files[:2]} == mtimes  # finished models were not retrained
    np.testing.assert_array_equal(again.logits, first.logits)  # the retrained one is identical: seeded

    table = proxies.compute(["memorization", "c_score"], subset_models=again)
    mem, c = proxies.feldman_zhang(again.correct, again.in_mask)
    np.testing.assert_array_equal(table["memorization"].to_numpy(), mem)
    assert table.index.tolist() == list(range(200))
    assert table.attrs["higher_is_memorized"] == {"memorization": True, "c_score": False}
    assert isinstance(again.scores(), pd.DataFrame)
    with pytest.raises(ValueError, match=r"other settings \(train\)"):
        train_subset_models(data, model_fn, **{**settings, "epochs": 3})


def test_feldman_zhang_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match=r"\[K, N\]"):
        proxies.feldman_zhang(np.zeros((2, 3), bool), np.zeros((3, 2), bool))
