"""The deletion ledger: requests on a finished run, their chains of hashes, and ``unlearn verify``."""

import hashlib
import json
import shutil

import numpy as np
import pandas as pd
import pytest

from unlearn.cli import main
from unlearn.pipeline import Ledger, LedgerError, RunConfig, request, run, verify
from unlearn.pipeline.ledger import file_digest, ids_digest

CONFIG = RunConfig(train_size=200, epochs=2, checkpoints=1, proxies=["confidence"], forget="random:20",
                   method="finetune", method_config={"epochs": 1})


def test_the_digests_are_the_ones_an_auditor_recomputes_with_sha256sum(tmp_path):
    path = tmp_path / "model.pt"
    path.write_bytes(b"weights")
    assert file_digest(path) == hashlib.sha256(b"weights").hexdigest()
    assert ids_digest(np.array([9, 1, 5])) == hashlib.sha256(b"1,5,9").hexdigest() == ids_digest([1, 5, 9, 9])


def _fake_folder(tmp_path, requests: int):
    """A folder with ``requests`` chained entries over small files standing for models."""
    (tmp_path / "model.pt").write_bytes(b"m0")
    ledger = Ledger(tmp_path)
    for k in range(1, requests + 1):
        for name, content in ((f"after{k}.pt", f"m{k}"), (f"ref{k}.pt", f"r{k}"), (f"forget{k}.csv", f"f{k}")):
            (tmp_path / name).write_text(content)
        before = "model.pt" if k == 1 else f"after{k - 1}.pt"
        plan = pd.DataFrame({"group": ["all"], "method": ["finetune"], "examples": [2]})
        metrics = pd.DataFrame({"unlearned": {"tow": 0.9}, "retrained": {"tow": 1.0}})
        ledger.append(ledger.entry(ids=[2 * k, 2 * k + 1], forget=f"random:{k}", method="finetune", plan=plan,
                                   metrics=metrics, seconds={"unlearn": 1.0, "reference": 2.0},
                                   files={"before": before, "after": f"after{k}.pt", "reference": f"ref{k}.pt",
                                          "forget": f"forget{k}.csv"}))
    return ledger


def test_a_ledger_chains_its_lines_and_models_and_names_what_breaks_them(tmp_path):
    ledger = _fake_folder(tmp_path, 3)
    again = Ledger(tmp_path)
    assert again.entries == ledger.entries and again.problems() == [[], [], []]
    assert again.current == tmp_path / "after3.pt" and again.deleted.tolist() == [2, 3, 4, 5, 6, 7]
    assert again.already_deleted([5, 8]) == {5: 2}
    assert verify(tmp_path).attrs["ok"]
    # a model swapped on disk: the requests that made it and that started from it fail, the first stands
    (tmp_path / "after2.pt").write_text("another model")
    table = verify(tmp_path)
    assert table["verified"].tolist() == [True, False, False] and not table.attrs["ok"]
    assert "after2.pt (after) differs from the file the ledger recorded" in table.loc[1, "problems"]
    assert table.loc[2, "problems"] == "after2.pt (before) differs from the file the ledger recorded"
    with pytest.raises(LedgerError, match="request 2: after2.pt"):
        again.check()
    (tmp_path / "after2.pt").write_text("m2")
    # an edited line breaks the next one's link; a dropped line breaks the numbering and both chains
    lines = (tmp_path / "ledger.jsonl").read_text().splitlines()
    edited = json.loads(lines[0])
    edited["metrics"]["unlearned"]["tow"] = 1.0
    (tmp_path / "ledger.jsonl").write_text("\n".join([json.dumps(edited, sort_keys=True), *lines[1:]]) + "\n")
    assert "the ledger was edited" in verify(tmp_path).loc[1, "problems"]
    (tmp_path / "ledger.jsonl").write_text("\n".join([lines[0], lines[2]]) + "\n")
    problems = verify(tmp_path).loc[1, "problems"]
    assert "numbered 3 on line 2" in problems and "chain of models is broken" in problems
    (tmp_path / "ledger.jsonl").write_text(lines[0] + "\n{not json\n")
    with pytest.raises(LedgerError, match="line 2, is unreadable"):
        verify(tmp_path)


def test_an_entry_names_every_file_it_binds(tmp_path):
    ledger = _fake_folder(tmp_path, 1)
    with pytest.raises(ValueError, match="an entry names the files"):
        ledger.entry(ids=[1], forget="random:1", method="finetune", plan=pd.DataFrame(),
                     metrics=pd.DataFrame({"unlearned": {}}), seconds={}, files={"after": "after1.pt"})


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    out = tmp_path_factory.mktemp("ledger") / "run"
    run(CONFIG, out=out, progress=False)
    return out


def test_the_run_is_the_ledgers_first_request_and_its_results_carry_the_hashes(finished):
    ledger = Ledger(finished)
    assert len(ledger) == 1
    entry = ledger.entries[0]
    ids = pd.read_csv(finished / "forget.csv")["index"].to_numpy()
    assert entry["ids"] == sorted(ids.tolist()) and entry["ids_sha256"] == ids_digest(ids)
    assert {role: f["path"] for role, f in entry["files"].items()} == {
        "before": "model.pt", "after": "unlearned.pt", "reference": "reference.pt", "forget": "forget.csv"}
    assert entry["previous"] is None and entry["method"] == "finetune" and entry["metrics"]["unlearned"]["tow"] > 0
    results = json.loads((finished / "results.json").read_text())
    assert results["request"] == {"examples": 20, "ids_sha256": ids_digest(ids)}
    for name in ("model.pt", "reference.pt", "unlearned.pt", "forget.csv"):
        assert results["files"][name] == file_digest(finished / name)
    report = (finished / "report.md").read_text()
    assert "## deletion requests (ledger.jsonl)" in report and file_digest(finished / "unlearned.pt") in report


def test_two_requests_chain_exclude_every_deletion_and_verify_until_a_model_is_swapped(finished, tmp_path,
                                                                                        monkeypatch, capsys):
    import unlearn.pipeline.stages as stages
    from unlearn.data.sources import labels_of

    folder = tmp_path / "run"
    shutil.copytree(finished, folder)
    first = Ledger(folder).deleted
    retrained_on = []
    original_train = stages.train

    def recording_train(model, data, **kwargs):
        retrained_on.append(labels_of(data)[1].numpy())
        return original_train(model, data, **kwargs)

    monkeypatch.setattr(stages, "train", recording_train)
    asked = np.setdiff1d(np.arange(200), first)[:7]
    (tmp_path / "ids.txt").write_text("\n".join(map(str, asked)) + "\n")
    second = request(folder, f"ids:{tmp_path / 'ids.txt'}", progress=False)
    assert second.folder == folder / "requests" / "002"
    assert list(second.results.columns) == ["before", "unlearned", "retrained"]
    third = request(folder, "random:10", progress=False)
    ledger = Ledger(folder)
    assert [e["request"] for e in ledger.entries] == [1, 2, 3]
    assert ledger.entries[1]["ids"] == asked.tolist()
    chosen = np.asarray(ledger.entries[2]["ids"])
    assert len(chosen) == 10 and not np.isin(chosen, np.union1d(first, asked)).any()
    # each reference retrained without every example deleted so far
    assert len(retrained_on) == 2
    assert np.array_equal(retrained_on[0], np.setdiff1d(np.arange(200), np.union1d(first, asked)))
    assert np.array_equal(retrained_on[1], np.setdiff1d(np.arange(200), ledger.deleted))
    assert ledger.deleted.size == 37 and ledger.entries[2]["deleted_so_far"] == 37
    # the chain: each request unlearned from the model the previous one left
    for k in (1, 2):
        assert ledger.entries[k]["files"]["before"] == ledger.entries[k - 1]["files"]["after"]
    assert ledger.current == folder / "requests" / "003" / "unlearned.pt" == third.folder / "unlearned.pt"
    report = (folder / "report.md").read_text()
    assert "requests/003/unlearned.pt" in report and "ids:" in report
    assert len(json.loads((folder / "results.json").read_text())["tables"]["deletion requests (ledger.jsonl)"]) == 3
    # an example deleted before is refused, before any work
    (tmp_path / "again.txt").write_text(f"{asked[0]}\n")
    with pytest.raises(LedgerError, match=f"deleted already \\(index {asked[0]} by request 2\\)"):
        request(folder, f"ids:{tmp_path / 'again.txt'}", progress=False)
    capsys.readouterr()
    assert main(["verify", str(folder)]) == 0
    assert "every request verifies; the latest model is" in capsys.readouterr().out
    # the last line, which no later line hashes, is held by its request's results.json
    ledger_file = folder / "ledger.jsonl"
    lines = ledger_file.read_text().splitlines()
    assert json.loads((third.folder / "results.json").read_text())["ledger"]["line_sha256"] == \
        hashlib.sha256(lines[2].encode()).hexdigest()
    edited = json.loads(lines[2])
    edited["metrics"]["unlearned"]["tow"] = 1.0
    ledger_file.write_text("\n".join([*lines[:2], json.dumps(edited, sort_keys=True)]) + "\n")
    assert verify(folder)["problems"].tolist()[2] == ("its line is not the one requests/003/results.json recorded "
                                                       "(the ledger was edited)")
    ledger_file.write_text("\n".join(lines) + "\n")
    # a rerun of the run reuses every stage and keeps the ledger
    run(CONFIG, out=folder, progress=False)
    assert len(Ledger(folder)) == 3 and verify(folder).attrs["ok"]
    # a model swapped on disk: verify fails on that request, and no request is taken on such a folder
    shutil.copyfile(folder / "unlearned.pt", folder / "requests" / "002" / "unlearned.pt")
    assert main(["verify", str(folder)]) == 1
    captured = capsys.readouterr()
    assert "requests/002/unlearned.pt (after) differs" in captured.out and "does NOT verify" in captured.err
    assert main(["request", str(folder), "--forget", "random:5"]) == 2
    assert "does not verify (request 2: requests/002/unlearned.pt (after) differs" in capsys.readouterr().err
    assert len(Ledger(folder)) == 3 and not (folder / "requests" / "004").exists()


def test_a_request_needs_a_finished_run(tmp_path, capsys):
    assert main(["request", str(tmp_path), "--forget", "random:5"]) == 2
    assert "holds no finished `unlearn run` (no config.toml)" in capsys.readouterr().err
    assert main(["verify", str(tmp_path)]) == 2
    assert "has no ledger.jsonl" in capsys.readouterr().err


@pytest.mark.slow  # three requests and two interrupted ones
def test_an_interrupted_request_is_not_in_the_ledger_and_resumes_from_its_stages(finished, tmp_path, monkeypatch):
    import unlearn.pipeline.deletion as deletion
    import unlearn.pipeline.stages as stages

    folder = tmp_path / "run"
    shutil.copytree(finished, folder)
    original_attack, trainings = deletion.attack_models, []

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(deletion, "attack_models", interrupted)
    original_train = stages.train
    monkeypatch.setattr(stages, "train", lambda *a, **k: trainings.append(1) or original_train(*a, **k))
    with pytest.raises(KeyboardInterrupt):
        request(folder, "random:10", progress=False)
    assert len(Ledger(folder)) == 1 and (folder / "requests" / "002" / "unlearned.pt").is_file()
    monkeypatch.setattr(deletion, "attack_models", original_attack)
    request(folder, "random:10", progress=False)  # the same request: its stages are reused
    assert len(trainings) == 1 and len(Ledger(folder)) == 2 and verify(folder).attrs["ok"]
    # another request in the unfinished one's place redoes its stages rather than refuse
    monkeypatch.setattr(deletion, "attack_models", interrupted)
    with pytest.raises(KeyboardInterrupt):
        request(folder, "random:5", progress=False)
    monkeypatch.setattr(deletion, "attack_models", original_attack)
    request(folder, "random:6", progress=False)
    assert Ledger(folder).entries[-1]["examples"] == 6 and len(trainings) == 3


@pytest.mark.slow  # a request's stages before the interrupt
def test_ctrl_c_in_a_request_says_the_same_command_resumes(finished, tmp_path, monkeypatch, capsys):
    import unlearn.pipeline.deletion as deletion

    folder = tmp_path / "run"
    shutil.copytree(finished, folder)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(deletion, "attack_models", interrupted)
    assert main(["request", str(folder), "--forget", "random:4"]) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == (f"unlearn request: interrupted; the same command resumes from what {folder}/requests holds of "
                       "it (its finished stages are kept)")
