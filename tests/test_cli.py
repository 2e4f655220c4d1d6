import json
import subprocess
import sys

import pandas as pd
import pytest

from unlearn.cli import build_parser, main


@pytest.mark.parametrize("command", ["train", "run"])
def test_help_explains_every_option(command):
    sub = build_parser()._subparsers._group_actions[0].choices[command]
    for action in sub._actions:
        assert action.help, f"unlearn {command} {action.option_strings} has no help"


def test_console_script_help():
    out = subprocess.run([sys.executable, "-m", "unlearn.cli", "--help"], capture_output=True, text=True, check=True)
    assert "train" in out.stdout and "run" in out.stdout


def test_train_writes_checkpoint_recording_and_config(tmp_path, capsys):
    out = tmp_path / "model"
    assert main(["train", "--dataset", "digits", "--epochs", "2", "--out", str(out)]) == 0
    assert {p.name for p in out.iterdir()} == {"model.pt", "recording.npz", "history.csv", "config.json", "checkpoints"}
    assert [p.name for p in sorted((out / "checkpoints").iterdir())] == ["epoch-001.pt", "epoch-002.pt"]
    assert json.loads((out / "config.json").read_text())["epochs"] == 2
    assert "test accuracy" in capsys.readouterr().out


def test_run_prints_the_proxy_table_and_reuses_the_trained_model(tmp_path, capsys):
    args = ["run", "--epochs", "2", "--out", str(tmp_path), "--rows", "3"]
    assert main(args) == 0
    first = capsys.readouterr().out
    assert "most memorized by confidence" in first and "training digits_cnn" in first
    scores = pd.read_csv(tmp_path / "scores.csv", index_col="index")
    assert len(scores) == 1293 and {"confidence", "csl", "forgetting_events"} <= set(scores.columns)
    assert main(args) == 0
    assert "reusing the trained model" in capsys.readouterr().out


def test_user_errors_are_one_line_and_exit_2(tmp_path, capsys):
    assert main(["run", "--epochs", "1", "--out", str(tmp_path)]) == 0
    capsys.readouterr()
    assert main(["run", "--epochs", "2", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "other settings (checkpoint_epochs, epochs)" in err and "--force" in err
    assert main(["train", "--dataset", "mnist", "--root", str(tmp_path / "none"), "--out", str(tmp_path / "m")]) == 2
    assert "download" in capsys.readouterr().err
