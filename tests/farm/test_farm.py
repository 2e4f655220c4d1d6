import functools
import sys

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import Subset, TensorDataset

from unlearn.farm import Job, LocalFarm, TrainTask, check_manifest, farms, get_farm, train_and_predict
from unlearn.farm.packed import PackedFarm
from unlearn.farm.ray import _task_footprint, gpus_for_model, model_footprint
from unlearn.farm.subset_models import subset_jobs, train_subset_models
from unlearn.models import create_model

DIGITS_CNN = functools.partial(create_model, "digits_cnn", num_classes=10, in_channels=1)


def _square(job, shared):
    return {"ids": job.train_ids ** 2 + shared}


def test_a_failing_job_keeps_what_was_written_and_a_rerun_resumes(tmp_path):
    jobs = [Job(f"m{i}", np.arange(i + 1), seed=i) for i in range(4)]
    calls = []

    def flaky(job, shared):
        calls.append(job.key)
        if job.key == "m2":
            raise RuntimeError("out of memory")
        return _square(job, shared)

    farm = LocalFarm(tmp_path, progress=False)
    with pytest.raises(RuntimeError, match="out of memory"):
        farm.run(flaky, jobs, shared=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m0.npz", "m1.npz"]  # no partial file left behind
    assert [j.key for j in farm.pending(jobs)] == ["m2", "m3"]

    calls.clear()
    results = farm.run(lambda job, shared: _square(job, shared), jobs, shared=1)
    np.testing.assert_array_equal(results["m3"]["ids"], np.arange(4) ** 2 + 1)
    assert calls == []  # the second run used another function: the first two were loaded, not rerun


def test_jobs_and_farms_are_checked(tmp_path):
    with pytest.raises(ValueError, match="file-name-safe"):
        Job("../escape", np.arange(2), seed=0)
    with pytest.raises(ValueError, match="unique"):
        LocalFarm(tmp_path).pending([Job("a", np.arange(1), 0), Job("a", np.arange(1), 1)])
    with pytest.raises(ValueError, match="unknown farm 'slurm'; expected one of 'local', 'packed', 'ray'"):
        get_farm("slurm", tmp_path)
    with pytest.raises(TypeError, match="run"):
        get_farm(object(), tmp_path)
    local = LocalFarm(tmp_path)
    with pytest.raises(TypeError, match="farm options \\(address\\)"):
        get_farm(local, tmp_path, address="auto")
    assert get_farm(local, tmp_path) is local
    assert isinstance(get_farm("local", tmp_path), LocalFarm)
    assert farms() == ["local", "packed", "ray"]


def test_the_ray_farm_without_ray_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # makes `import ray` fail as if it were not installed
    with pytest.raises(ModuleNotFoundError, match=r"pip install 'memunlearn\[ray\]'"):
        get_farm("ray", tmp_path)


def test_manifest_refuses_other_settings_unless_forced(tmp_path):
    check_manifest(tmp_path, {"k": 3, "epochs": (1, 2)})
    check_manifest(tmp_path, {"k": 3, "epochs": [1, 2]})  # the same once written as JSON
    (tmp_path / "m0.npz").write_bytes(b"")
    with pytest.raises(ValueError, match=r"other settings \(k\)"):
        check_manifest(tmp_path, {"k": 4, "epochs": [1, 2]})
    check_manifest(tmp_path, {"k": 4, "epochs": [1, 2]}, force=True)
    assert not (tmp_path / "m0.npz").exists()


def test_an_unreadable_result_is_made_again_with_a_warning(tmp_path):
    jobs = [Job(f"m{i}", np.arange(i + 1), seed=i) for i in range(3)]
    farm = LocalFarm(tmp_path, progress=False)
    farm.run(_square, jobs, shared=0)
    damaged = tmp_path / "m1.npz"
    damaged.write_bytes(damaged.read_bytes()[:20])  # a disk that filled up mid-write, or a copy cut short
    calls = []

    def counted(job, shared):
        calls.append(job.key)
        return _square(job, shared)

    with pytest.warns(UserWarning, match="m1.npz is unreadable"):
        results = farm.run(counted, jobs, shared=0)
    assert calls == ["m1"]
    np.testing.assert_array_equal(results["m1"]["ids"], np.arange(2) ** 2)


@pytest.mark.parametrize("text", ["[]", "{not json"])
def test_an_unreadable_manifest_is_refused_unless_forced(tmp_path, text):
    (tmp_path / "manifest.json").write_text(text)
    with pytest.raises(ValueError, match="unreadable manifest.*--force"):
        check_manifest(tmp_path, {"k": 3})
    check_manifest(tmp_path, {"k": 3}, force=True)


# the packed farm: vmapped ensembles equal to models trained one at a time

def _unequal_jobs(n: int) -> list[Job]:
    """Four jobs, two of one size and two of others (as shadow models' halves): in batches of 64, the 171 model's
    epoch ends a batch before the others', and every last batch is partial."""
    rng = np.random.default_rng(3)
    return [Job(f"m{i}", np.sort(rng.choice(n, size, replace=False)), seed=10 + i)
            for i, size in enumerate((200, 200, 171, 230))]


@pytest.mark.parametrize("recipe", [{"epochs": 3, "batch_size": 64},
                                    {"epochs": 2, "batch_size": 64, "drop_last": True, "schedule": "step",
                                     "lr": 0.1, "momentum": 0.5, "weight_decay": 1e-3}], ids=["cosine", "step"])
def test_packed_models_predict_as_models_trained_one_at_a_time(digits, tmp_path, recipe):
    jobs = _unequal_jobs(len(digits.train))
    task = TrainTask(digits.train, DIGITS_CNN, recipe, "cpu")
    alone = LocalFarm(tmp_path / "local", progress=False).run(train_and_predict, jobs, task)
    packed = get_farm("packed", tmp_path / "packed", progress=False, models_per_pack=4).run(
        train_and_predict, jobs, task)
    for job in jobs:
        assert sorted(packed[job.key]) == sorted(alone[job.key]) == ["logits", "train_ids"]
        np.testing.assert_array_equal(packed[job.key]["train_ids"], job.train_ids)
        # vmap sums in another order (gradients agree to ~1e-6 relative); now and then a ReLU or a max-pool tie
        # that a 1e-8 difference decides otherwise moves a model by ~1e-5 at once: logits agree to ~3e-5
        np.testing.assert_allclose(packed[job.key]["logits"], alone[job.key]["logits"], rtol=1e-4, atol=1e-4)
        same = packed[job.key]["logits"].argmax(1) == alone[job.key]["logits"].argmax(1)
        assert same.mean() >= 0.998
    untrained = train_and_predict(jobs[0], TrainTask(digits.train, DIGITS_CNN, {**recipe, "epochs": 0}, "cpu"))
    assert np.abs(untrained["logits"] - packed["m0"]["logits"]).max() > 0.1  # the models did train


def test_a_packed_run_resumes_a_folder_of_models_trained_one_at_a_time(digits, tmp_path):
    data = Subset(digits.train, range(300))
    recipe = {"epochs": 1, "batch_size": 64}
    jobs = subset_jobs(len(data), 6)
    LocalFarm(tmp_path, progress=False).run(train_and_predict, jobs[:3], TrainTask(data, DIGITS_CNN, recipe))
    written = {p.name: p.stat().st_mtime_ns for p in tmp_path.glob("*.npz")}
    assert sorted(written) == [f"subset-{i:05d}.npz" for i in range(3)]
    models = train_subset_models(data, DIGITS_CNN, k=6, folder=tmp_path, farm="packed",
                                 farm_options={"models_per_pack": 2}, progress=False, **recipe)
    assert {name: (tmp_path / name).stat().st_mtime_ns for name in written} == written  # loaded, not retrained
    assert sorted(p.name for p in tmp_path.glob("*.npz")) == [f"subset-{i:05d}.npz" for i in range(6)]
    assert models.logits.shape == (6, 300, 10) and models.in_mask.sum(1).tolist() == [210] * 6
    again = train_subset_models(data, DIGITS_CNN, k=6, folder=tmp_path, progress=False, **recipe)  # local: all cached
    np.testing.assert_array_equal(again.logits, models.logits)


def test_the_packed_farm_steps_through_the_one_training_loop_and_predicts_as_every_farm(digits, tmp_path,
                                                                                      monkeypatch):
    import unlearn.farm.packed as packed
    import unlearn.training.loop as loop

    optimizers, loops, predicted = [], [], []

    class SpySGD(torch.optim.SGD):
        def __init__(self, params, **kwargs):
            super().__init__(params, **kwargs)
            optimizers.append((self, kwargs))

    def spy_run_epochs(model, optimizer, steps, **kwargs):
        loops.append((model, optimizer, kwargs))
        return run_epochs(model, optimizer, steps, **kwargs)

    def spy_predict_job(model, job, task):
        predicted.append(job.key)
        return predict_job(model, job, task)

    run_epochs, predict_job = loop.run_epochs, packed.predict_job
    monkeypatch.setattr(torch.optim, "SGD", SpySGD)
    monkeypatch.setattr(loop, "run_epochs", spy_run_epochs)
    monkeypatch.setattr(packed, "predict_job", spy_predict_job)
    jobs = [Job(f"m{i}", np.arange(40 * i, 40 * i + 100 + 10 * i), seed=i) for i in range(3)]
    recipe = {"epochs": 2, "batch_size": 32, "lr": 0.1, "momentum": 0.5, "weight_decay": 1e-3, "schedule": "step"}
    PackedFarm(tmp_path, progress=False, models_per_pack=2).run(train_and_predict, jobs, TrainTask(
        digits.train, DIGITS_CNN, recipe, "cpu"))
    assert len(loops) == len(optimizers) == 2  # one loop and one SGD per pack: 2 models, then 1
    assert predicted == ["m0", "m1", "m2"]
    for (model, optimizer, kwargs), (sgd, sgd_kwargs), pack in zip(loops, optimizers, (2, 1), strict=True):
        assert optimizer is sgd and isinstance(model, nn.Module)
        assert sgd_kwargs == {"lr": 0.1, "momentum": 0.5, "weight_decay": 1e-3}
        assert {k: kwargs[k] for k in ("lr", "schedule", "epochs")} == {"lr": 0.1, "schedule": "step", "epochs": 2}
        stacked = [p for group in sgd.param_groups for p in group["params"]]
        assert [p.shape for p in stacked] == [(pack, *p.shape) for p in DIGITS_CNN().parameters()]
        assert all(p is q for p, q in zip(stacked, model.parameters(), strict=True))


class _Linear(nn.Sequential):
    def __init__(self):
        super().__init__(nn.Flatten(), nn.Linear(64, 10))


def test_a_packed_model_whose_epoch_has_ended_does_not_step(digits, monkeypatch):
    """Model 1 has one batch per epoch, model 0 two: at every second step model 1 must keep its weights and its
    momentum buffer bit for bit (no weight decay, no momentum decay), and it ends where SGD's formula puts it."""
    import unlearn.training.loop as loop
    from unlearn.farm.packed import train_pack

    lr, momentum, wd = 0.5, 0.9, 0.1
    jobs = [Job("a", np.arange(4), seed=0), Job("b", np.array([10, 11]), seed=1)]
    seen = []  # after each step: (weights, momentum buffers) of every stacked parameter

    def spy_run_epochs(model, optimizer, steps, *, step_hook, **kwargs):
        def record(opt):
            step_hook(opt)
            params = [p for group in opt.param_groups for p in group["params"]]
            seen.append(([p.detach().clone() for p in params],
                         [opt.state[p]["momentum_buffer"].clone() for p in params]))
        return run_epochs(model, optimizer, steps, step_hook=record, **kwargs)

    run_epochs = loop.run_epochs
    monkeypatch.setattr(loop, "run_epochs", spy_run_epochs)
    recipe = {"epochs": 2, "batch_size": 2, "lr": lr, "momentum": momentum, "weight_decay": wd,
              "schedule": "constant"}
    trained = train_pack(TrainTask(digits.train, _Linear, recipe, "cpu"), jobs)
    assert len(seen) == 4  # 2 epochs of 2 steps; model "b" has no batch at steps 1 and 3
    for idle in (1, 3):
        for before, after in zip(seen[idle - 1], seen[idle], strict=True):  # weights, then momentum buffers
            for p, q in zip(before, after, strict=True):
                assert torch.equal(p[1], q[1])  # model "b": exactly unchanged
                assert not torch.equal(p[0], q[0])  # model "a" stepped
    # model "b" from torch.optim.SGD's definition: d_p = g + wd * p; buf = d_p (first step), then
    # buf = momentum * buf + d_p; p = p - lr * buf; two steps, one per epoch, each on both of its examples
    torch.manual_seed(1)
    expected = _Linear()
    x = torch.stack([digits.train[i][0] for i in (10, 11)])
    y = torch.stack([torch.as_tensor(digits.train[i][1]) for i in (10, 11)])
    buffers = None
    for _ in range(2):
        grads = torch.autograd.grad(nn.functional.cross_entropy(expected(x), y), list(expected.parameters()))
        with torch.no_grad():
            d_p = [g + wd * p for g, p in zip(grads, expected.parameters(), strict=True)]
            buffers = d_p if buffers is None else [momentum * b + d for b, d in zip(buffers, d_p, strict=True)]
            for p, b in zip(expected.parameters(), buffers, strict=True):
                p -= lr * b
    for p, q in zip(trained[1].parameters(), expected.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


class _Normed(nn.Sequential):
    def __init__(self):
        super().__init__(nn.Flatten(), nn.Linear(64, 8), nn.BatchNorm1d(8), nn.Linear(8, 10))


class _Dropped(nn.Sequential):
    def __init__(self):
        super().__init__(nn.Flatten(), nn.Linear(64, 8), nn.Dropout(0.5), nn.Linear(8, 10))


def test_the_packed_farm_refuses_what_it_cannot_train_as_one_at_a_time(digits, tmp_path):
    jobs = [Job("m0", np.arange(100), seed=0), Job("m1", np.arange(50, 150), seed=1)]
    farm = PackedFarm(tmp_path, progress=False)
    with pytest.raises(ValueError, match="cannot honour patience, resume; use farm='local'"):
        farm.run(train_and_predict, jobs, TrainTask(digits.train, DIGITS_CNN, {"patience": 2, "resume": "x.pt"}))
    with pytest.raises(ValueError, match="cannot honour patience"):
        train_subset_models(digits.train, DIGITS_CNN, k=2, folder=tmp_path / "s", farm="packed", patience=2,
                            progress=False)
    with pytest.raises(ValueError, match="lr must be a finite number > 0"):
        farm.run(train_and_predict, jobs, TrainTask(digits.train, DIGITS_CNN, {"lr": -1.0}))
    with pytest.raises(ValueError, match="unknown schedule 'warm'"):
        farm.run(train_and_predict, jobs, TrainTask(digits.train, DIGITS_CNN, {"schedule": "warm"}))
    with pytest.raises(ValueError, match="does not support BatchNorm.*farm='local'"):
        farm.run(train_and_predict, jobs, TrainTask(digits.train, _Normed, {"epochs": 1}))
    with pytest.raises(ValueError, match="does not support dropout.*farm='local'"):
        farm.run(train_and_predict, jobs, TrainTask(digits.train, _Dropped, {"epochs": 1}))
    on_disk = TensorDataset(torch.zeros(200, 1, 8, 8), torch.zeros(200, dtype=torch.long))
    with pytest.raises(ValueError, match="needs an in-memory dataset.*materialize"):
        farm.run(train_and_predict, jobs, TrainTask(on_disk, DIGITS_CNN, {"epochs": 1}))
    with pytest.raises(ValueError, match="models_per_pack must be a whole number >= 1"):
        get_farm("packed", tmp_path, models_per_pack=0)
    assert not list(tmp_path.glob("*.npz"))
    with pytest.warns(UserWarning, match="packs train_and_predict jobs only; running _square one model at a time"):
        results = farm.run(_square, jobs, shared=1)
    np.testing.assert_array_equal(results["m1"]["ids"], np.arange(50, 150) ** 2 + 1)


# Ray's GPU fractions sized from the model (pure functions: no Ray, no GPU)

def test_gpu_fractions_are_sized_from_the_model():
    digits = model_footprint(DIGITS_CNN(), (1, 8, 8))
    assert digits[0] == sum(p.numel() for p in DIGITS_CNN().parameters())
    assert gpus_for_model(*digits, batch_size=64, gpu_memory_bytes=16 * 2**30) == 1 / 8  # the cap
    assert gpus_for_model(*digits, batch_size=64, gpu_memory_bytes=16 * 2**30, max_models_per_gpu=64) == 1 / 28
    assert gpus_for_model(*digits, batch_size=64, gpu_memory_bytes=2**30, max_models_per_gpu=64) == 1.0  # context
    fractions = [gpus_for_model(10_000_000, 2_000_000, batch_size=b, gpu_memory_bytes=80 * 2**30)
                 for b in (64, 128, 256, 512, 4096)]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0  # larger batches ask for more, at most a GPU
    with pytest.raises(ValueError, match="batch_size"):
        gpus_for_model(10, 10, batch_size=0, gpu_memory_bytes=2**30)


def test_auto_gpu_fractions_read_the_model_and_batch_of_the_task(digits):
    assert _task_footprint(TrainTask(digits.train, DIGITS_CNN, {"batch_size": 32})) == (
        *model_footprint(DIGITS_CNN(), (1, 8, 8)), 32)
    assert _task_footprint(TrainTask(digits.train, DIGITS_CNN, {}))[2] == 128  # train()'s default
    with pytest.raises(ValueError, match="give gpus_per_model as a number"):
        _task_footprint({"not": "a TrainTask"})
