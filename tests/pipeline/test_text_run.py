"""``unlearn run --dataset fortunes``: the main job on real text, end to end, in small settings."""

import json

import numpy as np
import pandas as pd
import pytest

from tests.conftest import requires_fortunes
from unlearn.cli import main
from unlearn.pipeline import RunConfig

pytestmark = [requires_fortunes, pytest.mark.usefixtures("one_thread")]

SMALL = ["--dataset", "fortunes", "--train-size", "40", "--canaries", "6", "--vocab-size", "300", "--max-tokens",
         "32", "--epochs", "2", "--checkpoints", "1", "--proxies", "token_accuracy", "csl", "exact_memorization"]


@pytest.fixture(scope="module")
def text_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("fortunes")
    assert main(["run", *SMALL, "--out", str(out)]) == 0
    return out


@pytest.mark.slow  # an end-to-end run: about 10 s on an idle machine
def test_a_text_run_forgets_every_canary_copy_and_reports_the_language_model_metrics(text_run):
    forget = pd.read_csv(text_run / "forget.csv")
    scores = pd.read_csv(text_run / "scores.csv", index_col="index")
    copies = scores.index[scores["canary"].notna()]
    assert sorted(forget["index"]) == sorted(copies) and len(copies) == 1 + 2 + 4 + 8 + 16 + 32
    assert "label" not in forget  # a sequence's labels are its tokens; its text is in scores.csv
    assert scores.loc[copies, "text"].str.startswith("my PIN is ").all()
    results = json.loads((text_run / "results.json").read_text())
    rows = {row["metric"]: row for row in results["tables"]["results"]}
    for metric in ("perplexity.test", "token_accuracy.forget", "mia_min_k_plus_plus.auc", "canaries.extractable",
                   "canaries.exposure", "canaries.privleak", "tow"):
        assert np.isfinite(rows[metric]["unlearned"]), metric
    assert "privleak" in rows or "privleak" in results["run"].get("not computed", "")
    # the reference trains with the original's recipe, AdamW included (with SGD at its lr it would barely move)
    assert rows["perplexity.test"]["retrained"] < 1.5 * rows["perplexity.test"]["original"]
    canaries = pd.DataFrame(results["tables"]["canaries by copies in training"])
    assert canaries["repeats"].tolist() == [1, 2, 4, 8, 16, 32]
    for figure in ("canaries.png", "roc.png", "forget_accuracy_by_group.png", "report.md", "config.toml"):
        assert (text_run / figure).is_file(), figure
    config = RunConfig.from_toml(text_run / "config.toml")
    assert (config.forget, config.proxy, config.canaries) == ("canaries", "token_accuracy", 6)


@pytest.mark.slow  # the evaluation is redone: about 6 s
def test_a_second_text_run_reuses_every_stage(text_run, capsys):
    assert main(["run", *SMALL, "--out", str(text_run)]) == 0
    out = capsys.readouterr().out
    for stage in ("trained model", "proxies in proxies.csv", "retrained reference", "unlearned model"):
        assert f"reusing the {stage}" in out, stage


@pytest.mark.slow  # two commands on the run's folder
def test_the_proxies_and_attack_commands_read_a_text_run(text_run, capsys):
    assert main(["proxies", str(text_run), "--proxies", "token_accuracy", "loss_iqr"]) == 0
    table = pd.read_csv(text_run / "proxy_scores.csv", index_col="index")
    assert list(table.columns) == ["token_accuracy", "loss_iqr"] and table.notna().all().all()
    assert main(["attack", str(text_run), "--attacks", "loss_threshold", "svc"]) == 0
    written = json.loads((text_run / "attack-unlearned.json").read_text())
    assert "mia_min_k.auc" in written["report"]["model"] and "svc.confidence" not in written["report"]["model"]


@pytest.mark.slow  # reads the run's model
def test_the_expected_token_accuracy_is_that_of_held_out_sequences_of_each_kind(text_run):
    import torch

    from proxies.predictions import predict_signals
    from proxies.sequences import SEQUENCE_COLUMNS
    from unlearn.pipeline.canaries import held_out_token_accuracy
    from unlearn.pipeline.stages import load_run

    _, splits, model, _, _ = load_run(text_run, None, torch.device("cpu"))
    expected = held_out_token_accuracy(model, splits)
    column = SEQUENCE_COLUMNS.index("token_accuracy")
    val, references = (float(predict_signals(model, data)[0][:, column].double().mean())
                       for data in (splits.val, splits.references))
    copies = splits.canaries["index"].to_numpy()
    assert np.allclose(expected.loc[copies], references) and np.allclose(expected.drop(copies), val)
    assert len(expected) == len(splits.train)


@pytest.mark.slow  # a training
def test_train_on_text_reports_the_test_perplexity(tmp_path, capsys):
    assert main(["train", *SMALL[:-4], "--out", str(tmp_path / "lm")]) == 0
    assert "test perplexity" in capsys.readouterr().out
    assert (tmp_path / "lm" / "recording.npz").is_file()


def test_a_request_naming_a_sequence_the_model_never_trained_on_is_refused_before_training(tmp_path, capsys):
    (tmp_path / "ids.txt").write_text("3, 99999\n")
    argv = [*SMALL, "--forget", f"ids:{tmp_path / 'ids.txt'}", "--out", str(tmp_path / "run")]
    assert main(["run", *argv]) == 2
    assert "not training indices (e.g. 99999" in capsys.readouterr().err
    assert not (tmp_path / "run" / "model.pt").exists()


@pytest.mark.parametrize("argv, message", [
    (["--dataset", "digits", "--canaries", "3"], "--canaries are settings of text datasets"),
    (["--dataset", "fortunes", "--canaries", "0", "--forget", "canaries"], "--forget canaries removes the canaries"),
    (["--dataset", "fortunes", "--proxies", "loss_curvature"], "do not score text"),
])
def test_text_settings_are_checked_before_any_work(argv, message, tmp_path, capsys):
    assert main(["run", *argv, "--out", str(tmp_path / "refused")]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "refused" / "model.pt").exists()


def test_the_defaults_follow_the_kind_of_data():
    text, images, corpus = RunConfig(dataset="fortunes"), RunConfig(), RunConfig(dataset="text:/corpus.txt")
    assert (text.forget, text.proxy, text.canaries, text.train_size) == ("canaries", "token_accuracy", 12, 500)
    assert (images.forget, images.proxy, images.canaries) == ("random:0.1", "confidence", None)
    assert (corpus.forget, corpus.canaries, corpus.train_size) == ("random:0.1", 0, None)
