import json
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest

from unlearn.cli import build_parser, main


@pytest.mark.parametrize("command", ["train", "run", "proxies", "attack", "request", "verify", "bench"])
def test_help_explains_every_option(command):
    sub = build_parser()._subparsers._group_actions[0].choices[command]
    for action in sub._actions:
        assert action.help, f"unlearn {command} {action.option_strings} has no help"


def test_console_script_help(monkeypatch, capsys):
    """``python -m unlearn.cli --help``, run the way ``-m`` runs a module (here, in this process: a fresh interpreter
    would add nothing but the imports)."""
    import runpy
    import warnings

    monkeypatch.setattr(sys, "argv", ["unlearn", "--help"])
    with pytest.raises(SystemExit) as done, warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # runpy: unlearn.cli is already imported, by this module
        runpy.run_module("unlearn.cli", run_name="__main__", alter_sys=True)
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert all(command in out for command in ("train", "run", "proxies", "attack", "request", "verify", "bench"))


def test_train_writes_checkpoint_recording_and_config(tmp_path, capsys):
    out = tmp_path / "model"
    assert main(["train", "--train-size", "30", "--epochs", "2", "--checkpoints", "1000000000", "--out",
                 str(tmp_path / "many")]) == 0  # as many as there are epochs, at once
    assert len(list((tmp_path / "many" / "checkpoints").iterdir())) == 2
    assert main(["train", "--dataset", "digits", "--train-size", "300", "--epochs", "2", "--out", str(out)]) == 0
    assert {p.name for p in out.iterdir()} == {"model.pt", "recording.npz", "history.csv", "config.json", "checkpoints",
                                           ".lock"}
    assert [p.name for p in sorted((out / "checkpoints").iterdir())] == ["epoch-001.pt", "epoch-002.pt"]
    assert json.loads((out / "config.json").read_text())["epochs"] == 2
    assert "test accuracy" in capsys.readouterr().out


RUN = ["run", "--train-size", "300", "--epochs", "2", "--checkpoints", "1", "--rows", "3", "--forget", "mixed:30",
       "--fz-models", "2", "--shadows", "4", "--proxies", "confidence", "csl", "holdout_retraining",
       "--policy", "random_label_fast", "--klom", "2"]


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory):
    """One small end-to-end run on 300 digits: 2 epochs, 2 subset models, 4 + 4 shadows, 2 + 2 KLoM models, a mixed
    forget set ranked by FZ, and holdout retraining (fine-tuned on the validation split) among the proxies."""
    out = tmp_path_factory.mktemp("run")
    assert main([*RUN, "--out", str(out)]) == 0
    return out


def test_run_writes_the_report(run_folder):
    expected = {"results.json", "report.md", "scores.csv", "roc.png", "forget_accuracy_by_group.png",
                "proxies_vs_memorization.png", "forget.csv", "plan.csv", "reference.pt", "unlearned.pt",
                "stages.json", "proxies.csv", "model.pt", "recording.npz"}
    assert expected <= {p.name for p in run_folder.iterdir()}
    results = json.loads((run_folder / "results.json").read_text())
    metrics = {row["metric"]: row for row in results["tables"]["results"]}
    for key in ("accuracy.forget", "tow", "tow_mia", "lira.auc", "rmia.auc", "svc.confidence", "ulira.auc",
                "klom.p95.forget", "klom.p95.retain", "klom.p95.validation"):
        assert key in metrics, key
    assert metrics["klom.p95.forget"]["unlearned"] >= 0 and metrics["klom.p95.forget"]["original"] >= 0
    assert metrics["tow"]["unlearned"] is not None and 0 <= metrics["tow"]["unlearned"] <= 1
    assert results["time_vs_retrain"] > 0
    scores = pd.read_csv(run_folder / "scores.csv", index_col="index")
    assert len(scores) == 300 and scores["forget"].sum() == 30
    assert scores["klom"].notna().all() and (scores["klom_original"] >= 0).all()
    assert len(list((run_folder / "klom-rum").glob("*.npz"))) == 4
    # rum's groups are levels of the whole training set: thirds of -confidence over every training example
    memorized = -scores["confidence"]
    low, high = np.quantile(memorized, [1 / 3, 2 / 3])
    expected = np.where(memorized <= low, "low", np.where(memorized <= high, "medium", "high"))
    forget = scores["forget"].to_numpy()
    assert scores.loc[forget, "group"].tolist() == expected[forget].tolist()
    assert scores["group"][~scores["forget"]].isna().all()
    assert {"memorization", "holdout_retraining", "lira_original", "lira_unlearned", "ulira_unlearned"} <= set(scores)
    assert (scores["holdout_retraining"] >= 0).all() and scores["holdout_retraining"].gt(0).any()
    # the forget set is the mixed selection by FZ memorization: its 10 most and 10 least memorized carry the 10
    # largest and 10 smallest scores of all ranked examples (with 2 subset models scores tie: compare the values)
    ranked = scores["memorization"].dropna().sort_values().to_numpy()
    chosen = scores.loc[scores["forget"], "memorization"].sort_values().to_numpy()
    assert len(chosen) == 30 and not np.isnan(chosen).any()
    np.testing.assert_array_equal(chosen[-10:], ranked[-10:])
    np.testing.assert_array_equal(chosen[:10], ranked[:10])
    report = (run_folder / "report.md").read_text()
    assert "| accuracy.forget" in report and "![membership inference ROC" in report


def test_run_reuses_finished_stages_and_refuses_other_settings(run_folder, capsys):
    capsys.readouterr()
    assert main([*RUN, "--out", str(run_folder)]) == 0
    out = capsys.readouterr().out
    for what in ("trained model", "proxies", "retrained reference", "unlearned model"):
        assert f"reusing the {what}" in out
    without_policy = [a for a in RUN if a not in ("--policy", "random_label_fast")]
    assert main([*without_policy, "--out", str(run_folder), "--method", "neggrad"]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and err.endswith("choose another folder or force it (--force)\n")
    assert "unlearn stage of a run with other settings (grouping, method, policy, proxy)" in err


def test_a_rerun_puts_every_reused_model_on_the_device(run_folder, monkeypatch, capsys):
    """``--device`` is not a setting of the run: a rerun elsewhere reuses the stages and loads their models there
    (``meta`` stands in for a GPU; the evaluation's first prediction is where the check stops)."""
    import unlearn.pipeline.results
    from proxies.devices import model_device

    class Stop(Exception):
        pass

    seen = []

    def spy(model, data, **kwargs):
        seen.append(model_device(model).type)
        if len(seen) == 6:  # original, unlearned and retrained, on train and test
            raise Stop
        return real(model, data, **kwargs) if model_device(model).type == "cpu" else None

    real = unlearn.pipeline.results.extract_signals
    monkeypatch.setattr(unlearn.pipeline.results, "extract_signals", spy)
    with pytest.raises(Stop):
        main([*RUN, "--out", str(run_folder), "--device", "meta"])
    assert seen == ["meta"] * 6
    assert capsys.readouterr().out.count("reusing the") >= 4


def test_the_default_device_is_cuda_when_there_is_one(monkeypatch):
    import torch

    from unlearn.training.trainer import resolve_device

    assert resolve_device(None) == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device(None) == torch.device("cuda") and resolve_device("cpu") == torch.device("cpu")


def test_proxies_and_attack_commands_read_a_run(run_folder, capsys):
    assert main(["proxies", str(run_folder), "--proxies", "confidence", "csl", "--rows", "2"]) == 0
    written = pd.read_csv(run_folder / "proxy_scores.csv", index_col="index")
    assert list(written.columns) == ["confidence", "csl"]
    run_scores = pd.read_csv(run_folder / "scores.csv", index_col="index")
    np.testing.assert_allclose(written["csl"], run_scores["csl"], rtol=1e-5)  # the run's recording, read back
    assert main(["proxies", str(run_folder), "--proxies", "csl", "--fz-models", "2"]) == 0  # the run's subset models
    written = pd.read_csv(run_folder / "proxy_scores.csv", index_col="index")
    assert list(written.columns) == ["csl", "memorization", "c_score"]
    np.testing.assert_allclose(written["memorization"], run_scores["memorization"], equal_nan=True)
    assert main(["proxies", str(run_folder), "--proxies", "c_score"]) == 2
    assert "needs subset models: add --fz-models K" in capsys.readouterr().err
    capsys.readouterr()
    assert main(["attack", str(run_folder), "--attacks", "loss_threshold"]) == 0
    out = capsys.readouterr().out
    assert "loss_threshold.auc" in out and "tow" in out  # beside the run's reference
    saved = json.loads((run_folder / "attack-unlearned.json").read_text())
    assert saved["forget"] == 30
    assert main(["attack", str(run_folder), "--attacks", "loss_threshold", "--forget", "high:5",
                 "--select-by", "csl"]) == 0
    saved = json.loads((run_folder / "attack-unlearned.json").read_text())
    assert sorted(saved["forget_ids"]) == sorted(run_scores["csl"].nlargest(5).index)
    assert main(["attack", str(run_folder), "--checkpoint", str(run_folder / "nope.pt")]) == 2
    assert "nope.pt" in capsys.readouterr().err


def test_run_removes_the_ids_of_a_request(tmp_path, capsys):
    request = tmp_path / "request.csv"
    pd.DataFrame({"source_row": [0, 1, 2, 5]}).to_csv(request, index=False)
    out = tmp_path / "run"
    assert main(["run", "--epochs", "1", "--checkpoints", "1", "--forget", f"ids:{request}", "--method", "finetune",
                 "--method-config", "epochs=1", "--proxies", "confidence", "forgetting_events", "--out", str(out)]) == 0
    forget = pd.read_csv(out / "forget.csv")
    assert forget["source_row"].tolist() == [0, 1, 2, 5]
    scores = pd.read_csv(out / "scores.csv", index_col="index")
    assert scores.loc[scores["forget"], "source_row"].tolist() == [0, 1, 2, 5]
    assert "loss_curvature" not in scores and "forgetting_events" in scores


@pytest.mark.slow
def test_run_trains_its_subset_and_shadow_models_on_ray(tmp_path):
    ray = pytest.importorskip("ray")
    out = tmp_path / "run"
    try:
        assert main(["run", "--train-size", "80", "--epochs", "1", "--checkpoints", "1", "--forget", "mixed:9",
                     "--method", "finetune",
                     "--proxies", "confidence", "--fz-models", "2", "--shadows", "4", "--farm", "ray",
                     "--out", str(out)]) == 0
        assert ray.is_initialized()  # the models were trained as Ray tasks, on a local instance the run started
    finally:
        ray.shutdown()
    for folder, models in (("subset-models", 2), ("shadows", 4)):
        manifest = json.loads((out / folder / "manifest.json").read_text())
        assert len(list((out / folder).glob("*.npz"))) >= models, (folder, manifest)
    metrics = {row["metric"]: row for row in json.loads((out / "results.json").read_text())["tables"]["results"]}
    assert {"lira.auc", "rmia.auc", "ulira.auc"} <= set(metrics)
    assert pd.read_csv(out / "scores.csv", index_col="index")["memorization"].notna().any()


@pytest.mark.parametrize("argv, message", [
    (["run", "--forget", "top:5"], "bad forget spec 'top:5'"),
    (["run", "--forget", "ids:/no/such/file"], "no such file"),
    (["run", "--select-by", "memorization"], "needs ground-truth scores"),
    (["run", "--shadows", "2"], "even number >= 4"),
    (["run", "--proxies", "csl"], "--proxy confidence must be one of the --proxies ['csl']"),
    (["run", "--proxies", "csl", "--proxy", "csl", "--forget", "high:5", "--select-by", "accuracy"],
     "--select-by must be memorization or one of the --proxies"),
    (["proxies", "/no/such/run"], "is not a trained run"),
    (["run", "--method", "finetune", "--policy", "random_label_fast"], "--policy is for --method rum, not finetune"),
    (["run", "--forget", "high:5000"], "asks for 5000 of 1293 training examples"),
    (["run", "--forget", "random:1293"], "asks for 1293 of 1293 training examples"),
    (["run", "--forget", "random:inf"], "expected a finite number of examples"),
    (["run", "--forget", "random:1.0"], "random:1 takes that many examples"),
    (["run", "--attacks", "lira"], "--attacks lira needs shadow models: add --shadows K"),
    (["run", "--lr", "nan"], "--lr must be a finite number > 0"),
    (["run", "--weight-decay", "nan"], "--weight-decay must be a finite number >= 0"),
    (["run", "--device", "nosuchdev"], "unknown device 'nosuchdev'"),
    (["run", "--device", "cuda:7"], "CUDA device(s)"),
    (["run", "--model", "cnn28"], "--model cnn28 does not take digits's inputs [1, 8, 8]"),
    (["run", "--shadows", "100000000"], "--shadows must be between 0 and 10000"),
    (["run", "--checkpoints", "0"], "--checkpoints must be >= 1"),
    (["run", "--rows", "-1"], "--rows must be between 0"),
    (["run", "--train-size", "1"], "--train-size must be >= 10"),
    (["run", "--epochs", "0"], "--epochs must be >= 1"),
    (["train", "--out", "/tmp/never-written", "--lr", "inf"], "--lr must be a finite number > 0"),
    (["run", "--method", "finetune", "--method-config", "epoch=3"], "epoch"),
    (["run", "--method-config", "groups"], "expected KEY=VALUE"),
    (["run", "--method-config", "nope=1"], "unknown settings ['nope'] for method 'rum'"),
])
def test_run_input_errors_fail_before_training(argv, message, capsys, tmp_path, monkeypatch):
    import unlearn.pipeline.stages

    def no_training(*args, **kwargs):
        raise AssertionError("trained before the inputs were checked")

    monkeypatch.setattr(unlearn.pipeline.stages, "train", no_training)
    if argv[0] == "run":
        argv = [*argv, "--out", str(tmp_path / "run")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err


@pytest.mark.slow
def test_bench_runs_a_benchmark_script(capsys):
    assert main(["bench", "recorder", "--", "--help"]) == 0  # a fresh interpreter: its imports take seconds


def test_bench_refuses_an_unknown_benchmark(capsys):
    with pytest.raises(SystemExit):
        main(["bench", "nope"])


def test_user_errors_are_one_line_and_exit_2(tmp_path, capsys):
    small = ["--train-size", "200", "--proxies", "confidence", "--forget", "random:20"]
    assert main(["run", "--epochs", "1", *small, "--out", str(tmp_path)]) == 0
    capsys.readouterr()
    assert main(["run", "--epochs", "2", *small, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "other settings (checkpoint_epochs, epochs)" in err and "--force" in err
    assert main(["train", "--dataset", "mnist", "--root", str(tmp_path / "none"), "--out", str(tmp_path / "m")]) == 2
    assert "download" in capsys.readouterr().err


def test_run_with_method_retrain_unlearns_into_its_own_reference(tmp_path):
    """``--method retrain`` rebuilds the run's model with the run's recipe and seed: it is the retrained reference."""
    import torch

    out = tmp_path / "run"
    assert main(["run", "--train-size", "200", "--epochs", "2", "--checkpoints", "1", "--proxies", "confidence",
                 "--forget", "random:20", "--method", "retrain", "--out", str(out)]) == 0
    unlearned = torch.load(out / "unlearned.pt", weights_only=True)
    reference = torch.load(out / "reference.pt", weights_only=True)
    assert unlearned.keys() == reference.keys()
    assert all(torch.equal(unlearned[k], reference[k]) for k in reference)


def test_a_second_command_on_a_folder_in_use_is_refused_in_one_line(tmp_path, capsys):
    from unlearn.pipeline import locked

    out = tmp_path / "run"
    with locked(out):
        assert main(["run", "--train-size", "100", "--epochs", "1", "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "is in use by another unlearn command" in err
        assert not (out / "config.json").exists()  # refused before any work


def _hold_the_lock(path, ready):
    from unlearn.pipeline import locked

    with locked(path):
        ready.send("held")
        time.sleep(60)


def test_the_lock_dies_with_its_process(tmp_path):
    """A killed holder leaves no lock behind: the OS drops it with the process (a forked one: the lock is the
    process's, however it started, and a fork needs no fresh interpreter)."""
    import multiprocessing

    from unlearn.pipeline import locked

    context = multiprocessing.get_context("fork")
    ready, child_end = context.Pipe(duplex=False)
    holder = context.Process(target=_hold_the_lock, args=(str(tmp_path), child_end), daemon=True)
    holder.start()
    try:
        assert ready.poll(60) and ready.recv() == "held"
        with pytest.raises(ValueError, match="in use"):
            with locked(tmp_path):
                pass
    finally:
        holder.kill()  # SIGKILL
        holder.join()
    with locked(tmp_path):
        pass


def test_a_forced_rerun_removes_what_the_redone_stage_made_stale(tmp_path, monkeypatch, capsys):
    import unlearn.unlearning

    out = tmp_path / "run"
    small = ["run", "--train-size", "200", "--epochs", "1", "--checkpoints", "1", "--proxies", "confidence",
             "--policy", "random_label_fast", "--out", str(out)]
    assert main([*small, "--forget", "random:20"]) == 0
    assert {"report.md", "results.json", "scores.csv", "unlearned.pt", "reference.pt"} <= {p.name for p in
                                                                                            out.iterdir()}

    def broken(*args, **kwargs):
        raise ValueError("unlearning failed")

    monkeypatch.setattr(unlearn.unlearning, "unlearn", broken)
    assert main([*small, "--forget", "random:10", "--force"]) == 2
    assert "unlearning failed" in capsys.readouterr().err
    left = {p.name for p in out.iterdir()}
    # the new forget set and its reference are there; nothing that described the old forget set is
    assert {"forget.csv", "reference.pt", "model.pt"} <= left
    assert not left & {"report.md", "results.json", "scores.csv", "unlearned.pt", "plan.csv", "roc.png",
                    "config.toml"}
    assert len(pd.read_csv(out / "forget.csv")) == 10
    assert "unlearn" not in json.loads((out / "stages.json").read_text())


FAULT_RUN = ["run", "--train-size", "200", "--epochs", "1", "--checkpoints", "1", "--proxies", "confidence",
             "--policy", "random_label_fast", "--forget", "random:20"]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("faults") / "run"
    assert main([*FAULT_RUN, "--out", str(out)]) == 0
    return out


def _truncate(path):
    path.write_bytes(path.read_bytes()[: max(1, path.stat().st_size // 3)])


def _wrong_weights(path):
    import torch
    from torch import nn

    torch.save(nn.Linear(2, 2).state_dict(), path)


FAULTS = {
    "truncated recording.npz": ("recording.npz", _truncate, 2),
    "truncated model.pt": ("model.pt", _truncate, 2),
    "garbage config.json": ("config.json", lambda p: p.write_text("{not json"), 2),
    "stages.json is []": ("stages.json", lambda p: p.write_text("[]"), 2),
    "stages.json lacks a field": ("stages.json", lambda p: p.write_text('{"proxies": {"settings": {}}}'), 2),
    "truncated unlearned.pt": ("unlearned.pt", _truncate, 0),
    "reference.pt of another model": ("reference.pt", _wrong_weights, 0),
    "garbage forget.csv": ("forget.csv", lambda p: p.write_text("what,ever\n1,2\n"), 0),
    "garbage plan.csv": ("plan.csv", lambda p: p.write_bytes(b"\x00\x01garbage"), 0),
    "garbage proxies.csv": ("proxies.csv", lambda p: p.write_text("index,confidence\n0,abc\n"), 0),
}


@pytest.mark.slow  # ten end-to-end reruns
@pytest.mark.parametrize("fault", list(FAULTS))
def test_a_damaged_run_folder_is_rebuilt_or_refused_in_one_line(finished_run, tmp_path, fault, capsys):
    """A file a later stage made is rebuilt with a warning; one the run cannot rebuild is refused in one line
    that names it and says what to do. Never a traceback."""
    import shutil

    name, damage, code = FAULTS[fault]
    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    (out / ".lock").unlink()
    damage(out / name)
    capsys.readouterr()
    assert main([*FAULT_RUN, "--out", str(out)]) == code
    err = capsys.readouterr().err
    assert name in err and "Traceback" not in err
    if code == 2:
        assert err.count("\n") == 1 and ("--force" in err or "delete" in err)
    else:
        assert "warning:" in err and "redoing" in err
        assert json.loads((out / "results.json").read_text())["tables"]["results"]


def test_method_settings_from_the_command_line_reach_the_method(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", "--verbose", "--train-size", "100", "--epochs", "1", "--checkpoints", "1", "--proxies",
                 "confidence", "--forget", "random:10", "--method", "finetune", "--method-config", "epochs=2",
                 "lr=0.003", "--out", str(out)]) == 0  # --verbose after the command is taken too
    plan = pd.read_csv(out / "plan.csv")
    config = json.loads(plan.loc[0, "config"])
    assert config["epochs"] == 2 and config["lr"] == 0.003


@pytest.mark.slow
def test_a_training_killed_with_sigkill_resumes_to_the_same_bits(tmp_path):
    """``kill -9`` in the middle of ``unlearn train``: the rerun continues from the last finished epoch and writes
    the model and recording an uninterrupted run writes."""
    import signal
    import time

    import torch

    args = ["train", "--train-size", "300", "--epochs", "8", "--checkpoints", "2"]
    assert main([*args, "--out", str(tmp_path / "whole")]) == 0
    out = tmp_path / "killed"
    child = subprocess.Popen([sys.executable, "-m", "unlearn.cli", *args, "--out", str(out)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = out / "checkpoints" / "train-state.pt"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and child.poll() is None:
        if state.is_file() and torch.load(state, weights_only=True)["epoch"] >= 3:
            break
        time.sleep(0.02)
    assert child.poll() is None, "training finished before it could be killed"
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert not (out / "config.json").exists()  # not finished
    assert main([*args, "--out", str(out)]) == 0
    for name in ("model.pt", "checkpoints/epoch-004.pt", "checkpoints/epoch-008.pt"):
        a = torch.load(tmp_path / "whole" / name, weights_only=True)
        b = torch.load(out / name, weights_only=True)
        assert all(torch.equal(a[k], b[k]) for k in a), name
    with np.load(tmp_path / "whole" / "recording.npz") as a, np.load(out / "recording.npz") as b:
        assert all(np.array_equal(a[k], b[k], equal_nan=a[k].dtype.kind == "f") for k in a.files)
    assert not state.exists()  # a finished training leaves no state behind


@pytest.mark.slow  # two end-to-end runs with shadow models
@pytest.mark.parametrize("forget", ["random:1", "random:2"])
def test_a_request_of_one_or_two_examples_runs_and_says_what_it_could_not_compute(tmp_path, forget, capsys):
    out = tmp_path / "run"
    assert main(["run", "--train-size", "60", "--epochs", "1", "--checkpoints", "1", "--proxies", "confidence",
                 "--policy", "random_label_fast", "--forget", forget, "--shadows", "4", "--out", str(out)]) == 0
    metrics = {row["metric"] for row in json.loads((out / "results.json").read_text())["tables"]["results"]}
    assert {"accuracy.forget", "loss_threshold.auc", "svc.confidence", "lira.auc", "tow"} <= metrics
    report = (out / "report.md").read_text()
    if forget == "random:1":  # cross-validation needs two forget examples
        assert "loss_logreg.accuracy" not in metrics and "loss_logreg (cross-validates" in report
    else:
        assert "loss_logreg.accuracy" in metrics
    if "ulira.auc" not in metrics:  # 4 shadows rarely cover one or two examples
        assert "ulira (none of the" in report and "ulira not computed" in capsys.readouterr().err


def _without_timings(value):
    """results.json with every wall-clock figure taken out: what two runs of the same settings must share (the
    ledger's line records when its request ran, so its hash goes too)."""
    if isinstance(value, dict):
        return {k: _without_timings(v) for k, v in value.items()
                if k not in ("seconds", "time_vs_retrain", "unlearning time vs retraining", "time", "line_sha256")}
    if isinstance(value, list):
        return [_without_timings(v) for v in value if not (isinstance(v, dict) and v.get("metric") == "seconds")]
    return value


@pytest.mark.slow  # two end-to-end runs and a rerun from config.toml
def test_the_command_and_pipeline_run_write_the_same_results_and_config_toml_repeats_a_run(tmp_path, capsys):
    from unlearn.pipeline import RunConfig, run

    options = ["--train-size", "120", "--epochs", "1", "--checkpoints", "1", "--proxies", "confidence", "csl",
               "--forget", "high:12", "--policy", "random_label_fast", "--method-config", "retain_per_forget=4"]
    assert main(["run", *options, "--out", str(tmp_path / "cli")]) == 0
    config = RunConfig(train_size=120, epochs=1, checkpoints=1, proxies=["confidence", "csl"], forget="high:12",
                       policy="random_label_fast", method_config={"retain_per_forget": 4})
    result = run(config, out=tmp_path / "library", progress=False)
    cli, library = (json.loads((tmp_path / name / "results.json").read_text()) for name in ("cli", "library"))
    assert _without_timings(cli) == _without_timings(library)
    assert result.folder == tmp_path / "library" and result.results.loc["tow", "unlearned"] >= 0
    assert len(result.scores) == 120 and result.scores["forget"].sum() == 12 and len(result.plan) >= 1
    # the folder's config.toml is the run: repeating it reuses every stage
    written = RunConfig.from_toml(tmp_path / "cli" / "config.toml")
    assert written == RunConfig.from_mapping({**vars(config), "out": str(tmp_path / "cli")})
    capsys.readouterr()
    assert main(["run", "--config", str(tmp_path / "cli" / "config.toml")]) == 0
    out = capsys.readouterr().out
    for what in ("trained model", "proxies", "retrained reference", "unlearned model"):
        assert f"reusing the {what}" in out
    # options given beside --config override it; the file alone stands for the rest
    assert main(["run", "--config", str(tmp_path / "cli" / "config.toml"), "--forget", "high:6"]) == 2
    assert "forget stage of a run with other settings (spec)" in capsys.readouterr().err
    assert RunConfig.from_toml(tmp_path / "cli" / "config.toml") == written  # a refused run leaves it as it was


def test_the_command_line_declares_the_run_configs_defaults():
    import dataclasses

    from unlearn.cli import RUN_DEFAULTS, build_parser
    from unlearn.pipeline import RunConfig

    build_parser()
    # the declared defaults (None where the data's kind decides: RunConfig fills those in)
    defaults = {f.name: f.default if f.default is not dataclasses.MISSING else f.default_factory()
                for f in dataclasses.fields(RunConfig)}
    for option, value in RUN_DEFAULTS.items():
        expected = defaults[option]
        assert (value if option not in ("method_config", "model_options") else dict(value)) == expected, option
    assert set(RUN_DEFAULTS) >= set(defaults) - {"config"}


def test_a_config_file_with_an_unknown_setting_is_refused_in_one_line(tmp_path, capsys):
    path = tmp_path / "run.toml"
    path.write_text('epoch = 3\n')
    assert main(["run", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown run setting 'epoch'" in err
