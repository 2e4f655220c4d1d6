import functools
import uuid

import numpy as np
import pytest
import torch

from unlearn.farm import Job, get_farm
from unlearn.farm.ray import RayFarm
from unlearn.farm.subset_models import train_subset_models
from unlearn.models import create_model

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.slow  # starts a local Ray instance

DIGITS_CNN = functools.partial(create_model, "digits_cnn", num_classes=10, in_channels=1)


@pytest.fixture(scope="module")
def local_ray():
    ray.init(address="local", num_cpus=2, include_dashboard=False)
    yield
    ray.shutdown()


def test_subset_models_on_ray_equal_the_local_ones(digits, local_ray, tmp_path):
    settings = {"dataset": digits.train, "model_fn": DIGITS_CNN, "k": 4, "epochs": 2, "lr": 0.05, "batch_size": 64,
                "progress": False}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a Ray task trains with one thread per reserved CPU; CPU sums depend on the count
    try:
        local = train_subset_models(folder=tmp_path / "local", **settings)
    finally:
        torch.set_num_threads(threads)
    remote = train_subset_models(folder=tmp_path / "ray", farm="ray", farm_options={"max_retries": 0}, **settings)

    np.testing.assert_array_equal(remote.logits, local.logits)
    np.testing.assert_array_equal(remote.in_mask, local.in_mask)
    assert sorted(p.name for p in (tmp_path / "ray").iterdir()) == ["manifest.json"] + [
        f"subset-{i:05d}.npz" for i in range(4)]


def test_failures_are_reported_after_retries_and_a_rerun_runs_only_them(local_ray, tmp_path):
    calls = tmp_path / "calls"  # tasks run in worker processes: each attempt leaves a file here
    calls.mkdir()

    def flaky(job, fail):
        (calls / f"{job.key}.{uuid.uuid4().hex}").touch()
        if fail and job.key == "m2":
            raise ValueError(f"model {job.key} diverged")
        if fail and job.key == "m3" and len(list(calls.glob("m3.*"))) == 1:
            raise OSError("worker lost its scratch disk")  # only the first attempt: the retry succeeds
        return {"ids": job.train_ids ** 2}

    def attempts():
        return sorted(p.name.split(".")[0] for p in calls.iterdir())

    jobs = [Job(f"m{i}", np.arange(i + 1), seed=i) for i in range(5)]
    farm = RayFarm(tmp_path / "models", progress=False, max_retries=1, max_in_flight=2)
    with pytest.raises(RuntimeError, match=r"1 of 5 models failed after 2 attempts each \(m2\).*"
                                           r"First error \(m2\): ValueError: model m2 diverged"):
        farm.run(flaky, jobs, shared=True)
    assert attempts() == ["m0", "m1", "m2", "m2", "m3", "m3", "m4"]
    assert sorted(p.name for p in farm.folder.iterdir()) == ["m0.npz", "m1.npz", "m3.npz", "m4.npz"]
    written = {p.name: p.stat().st_mtime_ns for p in farm.folder.iterdir()}

    for call in calls.iterdir():
        call.unlink()
    results = get_farm("ray", farm.folder, progress=False).run(flaky, jobs, shared=False)
    assert attempts() == ["m2"]
    assert {p.name: p.stat().st_mtime_ns for p in farm.folder.iterdir() if p.name != "m2.npz"} == written
    for job in jobs:
        np.testing.assert_array_equal(results[job.key]["ids"], job.train_ids ** 2)


def test_settings_are_checked(tmp_path):
    with pytest.raises(ValueError, match="gpus_per_model >= 0"):
        RayFarm(tmp_path, gpus_per_model=-1)
    with pytest.raises(ValueError, match="max_in_flight"):
        RayFarm(tmp_path, max_in_flight=0)
    with pytest.raises(ValueError, match="num_cpus sizes a local Ray instance"):
        RayFarm(tmp_path, address="ray://head:10001", num_cpus=4)

