import sys

import numpy as np
import pytest

from unlearn.farm import Job, LocalFarm, check_manifest, farms, get_farm


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
    with pytest.raises(ValueError, match="unknown farm 'slurm'; expected one of 'local', 'ray'"):
        get_farm("slurm", tmp_path)
    with pytest.raises(TypeError, match="run"):
        get_farm(object(), tmp_path)
    local = LocalFarm(tmp_path)
    with pytest.raises(TypeError, match="farm options \\(address\\)"):
        get_farm(local, tmp_path, address="auto")
    assert get_farm(local, tmp_path) is local
    assert isinstance(get_farm("local", tmp_path), LocalFarm)
    assert farms() == ["local", "ray"]


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
