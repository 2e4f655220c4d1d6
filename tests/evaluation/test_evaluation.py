"""evaluate() and the attacks with real shadow models on the digits data, at the smallest scale that exercises
each behaviour (a small MLP, 8 shadows): the attacks' statistics are checked on Gaussians in test_attacks."""

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn
from torch.utils.data import Subset

from unlearn import evaluate, load_dataset, train
from unlearn.evaluation.shadows import balanced_halves, train_shadow_models

RECIPE = {"epochs": 20, "lr": 0.1, "batch_size": 32}
SHADOWS = 8  # the fewest with which offline LiRA and RMIA tell the original's members apart by a margin here


def mlp() -> nn.Module:
    """A small MLP for the 8x8 digits: it memorizes 300 of them as the CNN does, at a fraction of its cost."""
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))


@pytest.fixture(scope="module")
def small_digits():
    # 300 training digits: the MLP reaches ~95% test accuracy but leaks membership measurably
    return load_dataset("digits", train_size=300)


@pytest.fixture(scope="module")
def tiny_digits(small_digits):
    """100 training and 100 test digits, for shadows whose scores no test reads closely."""
    return load_dataset("digits", train_size=100), Subset(small_digits.test, range(100))


@pytest.fixture(scope="module")
def setup(small_digits, tmp_path_factory):
    digits = small_digits
    model_fn = mlp
    rng = np.random.default_rng(0)
    forget_ids = np.sort(rng.choice(len(digits.train), 100, replace=False))
    retain_ids = np.setdiff1d(np.arange(len(digits.train)), forget_ids)
    forget, retain = Subset(digits.train, forget_ids.tolist()), Subset(digits.train, retain_ids.tolist())
    torch.manual_seed(1)
    original, _ = train(model_fn(), digits.train, seed=1, progress=False, device="cpu", **RECIPE)
    torch.manual_seed(2)
    retrained, _ = train(model_fn(), retain, seed=2, progress=False, device="cpu", **RECIPE)
    shadows = train_shadow_models(digits.train, digits.test, model_fn, k=SHADOWS,
                                  folder=tmp_path_factory.mktemp("shadows"), progress=False, **RECIPE)
    return original, retrained, forget, retain, shadows


def test_shadow_design_is_balanced(setup, small_digits):
    digits = small_digits
    *_, shadows = setup
    assert shadows.logits.shape == (SHADOWS, len(digits.train) + len(digits.test), 1, 10)
    assert (shadows.in_mask.sum(axis=0) == SHADOWS // 2).all()
    assert shadows.locate("test", [0, 5]).tolist() == [len(digits.train), len(digits.train) + 5]
    with pytest.raises(ValueError, match="even"):
        balanced_halves(10, 3)


def test_attacks_find_members_of_the_original_and_not_of_the_retrained_model(setup, small_digits):
    from unlearn.evaluation.attacks import extract_signals, lira
    from unlearn.evaluation.metrics import roc_summary

    digits = small_digits
    original, retrained, forget, retain, shadows = setup
    report = evaluate(original, forget=forget, retain=retain, test=digits.test, reference=retrained,
                      attacks=("lira", "lira_offline", "rmia", "loss_threshold", "loss_logreg", "svc"),
                      shadows=shadows)
    # forget examples were trained on by the original: the attacks tell them from test examples...
    for attack in ("lira_offline", "rmia"):
        assert report.loc[f"{attack}.auc", "model"] > 0.57
        # ...but the retrained model never saw them: they score like the test examples
        assert abs(report.loc[f"{attack}.auc", "reference"] - 0.5) < 0.06
    # online LiRA, noisier with 4 shadows a side (its power is checked on Gaussians): forget examples are its
    # members, test examples its non-members
    assert report.loc["lira.auc", "model"] - report.loc["lira.auc", "reference"] > 0.05
    signals = [extract_signals(original, data) for data in (forget, digits.test)]
    positions = np.r_[shadows.locate("train", signals[0].index), shadows.locate("test", signals[1].index)]
    scores = lira(np.r_[signals[0].phi, signals[1].phi], shadows.phi(positions), shadows.in_mask[:, positions])
    membership = np.r_[np.ones(len(forget)), np.zeros(len(digits.test))]
    assert report.loc["lira.auc", "model"] == pytest.approx(roc_summary(scores, membership)["auc"])
    assert report.loc["accuracy.forget", "model"] == 1.0
    assert 0 < report.loc["tow", "model"] <= 1 and 0 < report.loc["tow_mia", "model"] <= 1
    assert {"rmia.auc", "rmia.a", "svc.prob", "loss_logreg.accuracy"} <= set(report.index)


def test_rmia_takes_a_population_apart_from_the_test_examples(setup, small_digits):
    original, _, forget, retain, shadows = setup
    test, population = Subset(small_digits.test, range(200)), Subset(small_digits.test, range(200, 360))
    common = {"forget": forget, "retain": retain, "attacks": ("rmia",), "shadows": shadows}
    report = evaluate(original, test=test, population=population, **common)
    assert 0.5 < report.loc["rmia.auc", "model"] <= 1
    with pytest.raises(ValueError, match="disjoint"):
        evaluate(original, test=small_digits.test, population=population, **common)
    with pytest.raises(ValueError, match="validation split"):  # the shadows never predicted it
        evaluate(original, test=test, population=small_digits.val, **common)
    with pytest.raises(ValueError, match="needs shadows"):
        evaluate(original, test=test, population=population, forget=forget, retain=retain)


def test_evaluate_checks_its_input(setup, small_digits):
    digits = small_digits
    original, _, forget, retain, _ = setup
    with pytest.raises(ValueError, match="needs shadows"):
        evaluate(original, forget=forget, retain=retain, test=digits.test, attacks=("lira",))
    with pytest.raises(ValueError, match="unknown attack 'mentr'"):
        evaluate(original, forget=forget, retain=retain, test=digits.test, attacks=("mentr",))


def test_ulira_shadows_train_then_unlearn(tiny_digits, tmp_path):
    from unlearn.evaluation import evaluate_ulira
    from unlearn.evaluation.attacks import ulira
    from unlearn.evaluation.shadows import train_unlearned_shadow_models

    train_split, test_split = tiny_digits
    model_fn = mlp
    shadows = train_unlearned_shadow_models(train_split.train, test_split, model_fn, method="finetune",
                                            method_config={"epochs": 1}, k=4, folder=tmp_path, progress=False,
                                            epochs=2, batch_size=64)
    in_mask = ~shadows.out_mask
    assert (shadows.unlearned_mask <= in_mask).all() and shadows.unlearned_mask.any()
    is_train = shadows.split == "train"
    assert not shadows.unlearned_mask[:, ~is_train].any()  # only training examples are ever unlearned
    assert (in_mask.sum(axis=0) == 2).all()
    positions = shadows.locate("train", np.arange(len(train_split.train)))
    unlearned, out = shadows.unlearned_mask[:, positions], shadows.out_mask[:, positions]
    scores = ulira(np.zeros(len(positions)), shadows.phi(positions), unlearned, out)
    both = unlearned.any(0) & out.any(0)
    assert np.isfinite(scores[both]).all() and np.isnan(scores[~unlearned.any(0)]).all()
    # evaluate_ulira says how many forget examples it scored, and how many of them with a variance of their own
    torch.manual_seed(0)
    summary, table = evaluate_ulira(model_fn(), model_fn(), forget=train_split.train, shadows=shadows)
    own = (unlearned.sum(0) >= 2) & (out.sum(0) >= 2)
    assert summary["scored"] == both.sum() == np.isfinite(table).all(axis=1).sum()
    assert summary["scored_per_example_variance"] == own.sum() > 0
    assert summary["scored_global_variance"] == (both & ~own).sum() > 0


def test_ulira_shadows_unlearn_with_rum_scheduled_by_their_own_recording(tiny_digits, tmp_path):
    from unlearn.evaluation.shadows import train_unlearned_shadow_models

    train_split, test_split = tiny_digits
    model_fn = mlp
    quick = {"low": None, "medium": ("finetune", {"epochs": 1}), "high": ("random_label", {"epochs": 1})}
    shadows = train_unlearned_shadow_models(train_split.train, test_split, model_fn, method="rum",
                                            method_config={"proxy": "csl", "policy": quick}, k=2,
                                            folder=tmp_path, progress=False, epochs=2, batch_size=64)
    assert shadows.method == "rum" and shadows.unlearned_mask.any()
    assert np.isfinite(shadows.logits).all()
    with pytest.raises(ValueError, match="unknown proxy"):
        train_unlearned_shadow_models(train_split.train, test_split, model_fn, method="rum",
                                      method_config={"proxy": "nope"}, k=2, folder=tmp_path / "x", progress=False,
                                      epochs=1)


def test_several_named_models_match_separate_evaluations(setup, small_digits):
    original, retrained, forget, retain, _ = setup
    common = {"forget": forget, "retain": retain, "test": small_digits.test, "reference": retrained,
              "attacks": ("loss_threshold", "svc")}
    both = evaluate({"original": original, "again": original}, **common)
    alone = evaluate(original, **common)
    assert list(both.columns) == ["original", "again", "reference"]
    pd.testing.assert_series_equal(both["original"], alone["model"], check_names=False)
    pd.testing.assert_series_equal(both["again"], alone["model"], check_names=False)
    with pytest.raises(ValueError, match="not 'reference'"):
        evaluate({"reference": original}, **common)


def _split_signals(model, parts, queries, seed):
    """The model's signals on the union of ``parts``, each predicted on its own (the batches evaluate() predicts),
    in a shuffled order: signals of a whole split that evaluate() must find its rows in by index."""
    from unlearn.evaluation.attacks.signals import AttackSignals, predict_queries

    logits, labels, index = (torch.cat(t).numpy() for t in zip(*(predict_queries(model, p, queries) for p in parts),
                                                                strict=True))
    order = np.random.default_rng(seed).permutation(len(index))
    return AttackSignals.from_logits(logits[order], labels[order], index[order])


def test_evaluate_on_given_signals_matches_predicting(setup, small_digits, monkeypatch):
    import unlearn.evaluation.attacks.signals

    original, retrained, forget, retain, shadows = setup
    common = {"forget": forget, "retain": retain, "test": small_digits.test, "reference": retrained,
              "attacks": ("lira", "lira_offline", "rmia", "loss_threshold", "loss_logreg", "svc"), "shadows": shadows}
    plain = evaluate({"original": original}, **common)
    signals = {name: {"train": _split_signals(m, (retain, forget), shadows.queries, seed=1),
                      "test": _split_signals(m, (small_digits.test,), shadows.queries, seed=2)}
               for name, m in (("original", original), ("reference", retrained))}

    def no_prediction(*args, **kwargs):
        raise AssertionError("evaluate() predicted although it was given the signals")

    flipped = {"train": _split_signals(original, (retain, forget), ("identity", "hflip"), seed=1)}
    monkeypatch.setattr(unlearn.evaluation.attacks.signals, "predict_queries", no_prediction)
    pd.testing.assert_frame_equal(evaluate({"original": original}, **common, signals=signals), plain, check_exact=True)
    with pytest.raises(ValueError, match=r"train signals hold 2 augmentation queries, expected 1 \('identity',\)"):
        evaluate(original, **common, signals={"model": flipped})


def test_per_example_scores_on_given_signals_match_predicting(setup, small_digits):
    from unlearn.evaluation.attacks import extract_signals
    from unlearn.pipeline import per_example_scores

    original, retrained, forget, _, shadows = setup
    models = {"original": original, "retrained": retrained}
    signals = {name: {split: extract_signals(m, data, queries=shadows.queries)
                      for split, data in (("train", small_digits.train), ("test", small_digits.test))}
               for name, m in models.items()}
    for split in ("train", "test"):
        data = getattr(small_digits, split)
        pd.testing.assert_frame_equal(
            per_example_scores(models, data, shadows=shadows, split=split, signals=signals),
            per_example_scores(models, data, shadows=shadows, split=split), check_exact=True)
    train = signals["original"]["train"]
    assert train.take(train.locate([7, 3])).index.tolist() == [7, 3]
    with pytest.raises(ValueError, match="1 of 2 examples are not among the signals' 300 examples"):
        train.locate([3, 300])


def test_an_attack_that_cannot_be_computed_is_left_out_with_its_reason(digits):
    from torch import nn
    from torch.utils.data import Subset

    from unlearn import evaluate

    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    forget, retain = Subset(digits.train, [0]), Subset(digits.train, range(1, 200))
    report = evaluate(model, forget=forget, retain=retain, test=digits.test, reference=model)
    assert "loss_logreg.accuracy" not in report.index and "loss_threshold.auc" in report.index
    assert "2 forget" in report.attrs["not_computed"]["loss_logreg"]
    assert np.isfinite(report.loc["tow_mia", "model"])  # from the SVC attack, which one example does not stop
