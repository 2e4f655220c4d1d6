"""evaluate() and the attacks on a causal language model, each figure against a slow per-token loop written from
its definition, on a tiny GPT-2 trained briefly on real fortunes (it memorises little: the checks are of the
formulas, not of how much it leaks)."""

import functools
import math

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score
from torch.utils.data import Subset

from proxies.batching import IndexedDataset
from proxies.sequences import IGNORE_INDEX, CausalLM
from tests.conftest import requires_fortunes
from unlearn import evaluate
from unlearn.evaluation.attacks import (
    AttackInputs,
    NotApplicable,
    extract_signals,
    get_attack,
    lira,
    membership_auc,
    priv_leak,
)
from unlearn.evaluation.metrics import roc_summary
from unlearn.models import create_model
from unlearn.training import train

pytestmark = [pytest.mark.usefixtures("one_thread"), requires_fortunes]  # tiny models: see tests/conftest.py

RECIPE = {"lr": 3e-3, "batch_size": 32, "momentum": 0.0, "weight_decay": 0.0, "optimizer": "adamw",
          "progress": False, "device": "cpu"}
SHADOW_RECIPE = {k: v for k, v in RECIPE.items() if k != "progress"}  # the farm sets progress itself
SPLITS = ("forget", "retain", "test")


def tiny_gpt(vocab_size: int, n_positions: int):
    return create_model("tiny_gpt", vocab_size=vocab_size, n_positions=n_positions, n_embd=32, n_layer=1, n_head=2)


@pytest.fixture(scope="module")
def lm(fortunes):
    """A tiny GPT-2 trained 2 epochs on 64 fortunes (8 of them the forget set), one retrained on the other 56, and
    32 test fortunes."""
    model_fn = functools.partial(tiny_gpt, fortunes.vocab_size, fortunes.max_tokens)
    sets = {"forget": Subset(fortunes.train, range(8)), "retain": Subset(fortunes.train, range(8, 64)),
            "test": Subset(fortunes.test, range(32))}
    torch.manual_seed(0)
    model = train(model_fn(), Subset(fortunes.train, range(64)), epochs=2, seed=0, **RECIPE)[0]
    torch.manual_seed(1)
    reference = train(model_fn(), sets["retain"], epochs=2, seed=1, **RECIPE)[0]
    return model.eval(), reference.eval(), sets, model_fn


@pytest.fixture(scope="module")
def report(lm, fortunes):
    model, reference, sets, _ = lm
    return evaluate(model, **sets, reference=reference, tokenizer=fortunes.tokenizer)


def _tokens(model, data) -> list[dict]:
    """Per sequence, from one forward pass each and in float64: its scored tokens' log-probabilities, entropies and
    whether each is the argmax given the true prefix (position t predicts token t + 1)."""
    out = []
    for i in range(len(data)):
        x, y, _ = data[i]
        with torch.no_grad():
            log_p = torch.log_softmax(model(x[None]).logits[0].double(), dim=-1)
        positions = torch.tensor([t for t in range(len(x) - 1) if y[t + 1] != IGNORE_INDEX])
        target = y[positions + 1]
        out.append({"log_p": log_p[positions, target].numpy(),
                    "entropy": -(log_p[positions].exp() * log_p[positions]).sum(-1).numpy(),
                    "right": (log_p[positions].argmax(-1) == target).numpy()})
    return out


@pytest.fixture(scope="module")
def tokens(lm):
    """:func:`_tokens` of both models (``"model"``, ``"reference"``) on each split, computed once."""
    model, reference, sets, _ = lm
    return {(column, split): _tokens(net, sets[split]) for column, net in (("model", model), ("reference", reference))
            for split in SPLITS}


def _nll(tokens) -> np.ndarray:
    return np.array([-t["log_p"].mean() for t in tokens])


def _min_k(tokens, k=0.4) -> np.ndarray:
    return np.array([-np.sort(t["log_p"])[:max(1, int(len(t["log_p"]) * k))].mean() for t in tokens])


# ------------------------------------------------------------------------------------------------- signals

def test_sequence_signals_are_per_sequence_means_of_token_log_probs(lm, tokens):
    model, _, sets, _ = lm
    tokens = tokens["model", "forget"]
    signals = extract_signals(model, sets["forget"])
    nll = _nll(tokens)
    np.testing.assert_allclose(signals.loss[:, 0], nll, rtol=1e-5)
    np.testing.assert_allclose(signals.phi[:, 0], -nll, rtol=1e-5)
    np.testing.assert_allclose(signals.p_true[:, 0], np.exp(-nll), rtol=1e-5)
    np.testing.assert_allclose(signals.entropy[:, 0], [t["entropy"].mean() for t in tokens], rtol=1e-5)
    np.testing.assert_array_equal(signals.correct[:, 0], [t["right"].all() for t in tokens])
    np.testing.assert_allclose(signals.token_accuracy[:, 0], [t["right"].mean() for t in tokens], rtol=1e-6)
    # no distribution over classes: nothing is made up for it
    assert signals.probs.shape == (8, 0) and np.isnan(signals.modified_entropy).all() and not signals.per_class
    assert signals.index.tolist() == list(range(8))
    with pytest.raises(ValueError, match="no augmentation queries"):
        extract_signals(model, sets["forget"], queries=("identity", "hflip"))


def test_svc_is_not_applicable_to_sequences(lm, report):
    model, _, sets, _ = lm
    signals = [extract_signals(model, sets[split]) for split in SPLITS]
    with pytest.raises(NotApplicable, match="token sequence"):
        get_attack("svc").fn(AttackInputs(*signals))
    assert "token sequence" in report.attrs["not_computed"]["svc"]
    assert not any(name.startswith("svc.") for name in report.index)
    assert {"loss_threshold.auc", "loss_logreg.accuracy"} <= set(report.index)


# ------------------------------------------------------------------------------------------------- the rows

def test_perplexity_and_token_accuracy_are_their_per_token_definitions(tokens, report):
    for (column, split), sequences in tokens.items():
        every = np.concatenate([t["log_p"] for t in sequences])  # corpus perplexity: over all scored tokens
        assert report.loc[f"perplexity.{split}", column] == pytest.approx(math.exp(-every.mean()), rel=1e-5)
        assert report.loc[f"token_accuracy.{split}", column] == pytest.approx(
            np.mean([t["right"].mean() for t in sequences]), rel=1e-6)
        assert report.loc[f"accuracy.{split}", column] == np.mean([t["right"].all() for t in sequences])


def test_tow_is_on_token_accuracy(report):
    terms = [1 - abs(report.loc[f"token_accuracy.{s}", "model"] - report.loc[f"token_accuracy.{s}", "reference"])
             for s in SPLITS]
    assert report.loc["tow", "model"] == pytest.approx(np.prod(terms))
    assert np.isnan(report.loc["tow", "reference"])


def test_privleak_and_min_k_auc_by_hand(tokens, report):
    auc = {}
    for column in ("model", "reference"):
        members, nonmembers = (_min_k(tokens[column, split]) for split in ("forget", "test"))
        auc[column] = membership_auc(members, nonmembers)
        # open-unlearning's convention: the chance a member's score is the lower one, ties half
        pairs = members[:, None] - nonmembers[None, :]
        assert auc[column] == pytest.approx((pairs < 0).mean() + 0.5 * (pairs == 0).mean())
        assert report.loc["mia_min_k.auc", column] == pytest.approx(auc[column])
    assert report.loc["privleak", "model"] == pytest.approx(priv_leak(auc["model"], auc["reference"]), abs=1e-9)
    expected = ((1 - auc["model"]) - (1 - auc["reference"])) / (1 - auc["reference"]) * 100
    assert report.loc["privleak", "model"] == pytest.approx(expected, abs=1e-9)


def test_reference_attack_is_the_auc_of_nll_differences(tokens, report):
    difference = {split: _nll(tokens["model", split]) - _nll(tokens["reference", split])
                  for split in ("forget", "test")}
    membership = np.r_[np.ones(len(difference["forget"])), np.zeros(len(difference["test"]))]
    # signed like a loss: a member's difference is the lower, so the score of membership is minus it
    expected = roc_auc_score(membership, -np.r_[difference["forget"], difference["test"]])
    assert report.loc["mia_reference.auc", "model"] == pytest.approx(expected)
    assert np.isnan(report.loc["mia_reference.auc", "reference"])


def test_text_attack_rows_and_zlib_only_with_a_tokenizer(lm, report):
    model, _, sets, _ = lm
    for score in ("loss", "zlib", "min_k", "min_k_plus_plus"):
        for metric in ("auc", "balanced_accuracy", "tpr_at_fpr_0.001", "tpr_at_fpr_0.01"):
            assert 0 <= report.loc[f"mia_{score}.{metric}", "model"] <= 1
    # the loss score's AUC is the loss threshold attack's
    assert report.loc["mia_loss.auc", "model"] == pytest.approx(report.loc["loss_threshold.auc", "model"], abs=1e-6)
    plain = evaluate(model, **sets, attacks=("loss_threshold",))
    assert "mia_zlib.auc" not in plain.index and "mia_min_k.auc" in plain.index
    assert list(plain.columns) == ["model"] and "privleak" not in plain.index


def test_language_settings_are_refused_for_a_classifier(digits, lm):
    from torch import nn

    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    data = {"forget": Subset(digits.train, range(10)), "retain": Subset(digits.train, range(10, 50)),
            "test": Subset(digits.test, range(20))}
    with pytest.raises(ValueError, match="tokenizer is for language models"):
        evaluate(net, **data, tokenizer=object())
    model, _, sets, _ = lm
    with pytest.raises(ValueError, match="missing \\['suffix_length'\\]"):
        evaluate(model, **sets, extraction={"prefix_length": 4})
    with pytest.raises(ValueError, match="canary_references"):
        evaluate(model, **sets, canaries=sets["forget"])


# ------------------------------------------------------------------------------------ extraction, exposure

def _cut(data, length: int) -> IndexedDataset:
    """The sequences of ``data`` with at least ``length`` tokens, cut to them (one format, one length)."""
    rows = [data[i] for i in range(len(data)) if (data[i][1] != IGNORE_INDEX).sum() >= length]
    return IndexedDataset(torch.stack([r[0][:length] for r in rows]), torch.stack([r[1][:length] for r in rows]),
                          indices=torch.tensor([int(r[2]) for r in rows]), task=CausalLM())


def test_extraction_and_exposure_rows_by_hand(lm, fortunes):
    model, reference, sets, _ = lm
    settings = {"prefix_length": 6, "suffix_length": 4, "n": 1e6, "p": 0.5}
    canaries, references = _cut(sets["forget"], 8), _cut(sets["test"], 8)
    report = evaluate(model, **sets, reference=reference, attacks=(), extraction=settings, canaries=canaries,
                      canary_references=references)
    # by hand: p_z, the product of the suffix tokens' probabilities after the true prefix (temperature 1)
    log_p, long_enough = [], 0
    for i in range(len(sets["forget"])):
        x, y, _ = sets["forget"][i]
        if (y != IGNORE_INDEX).sum() < 10:
            continue
        long_enough += 1
        with torch.no_grad():
            logits = torch.log_softmax(model(x[None, :10]).logits[0].double(), -1)
        log_p.append(sum(float(logits[t - 1, x[t]]) for t in range(6, 10)))
    log_p = np.array(log_p)
    chance = 1 - (1 - np.exp(log_p)) ** 1e6
    assert report.loc["extraction.scored", "model"] == long_enough > 0
    assert report.loc["extraction.mean_log_p", "model"] == pytest.approx(log_p.mean(), rel=1e-5)
    assert report.loc["extraction.rate", "model"] == pytest.approx((chance >= 0.5).mean())
    # exposure: log2 |R| - log2 rank, rank 1 + the references at most as perplexing (sums of token NLLs)
    canary, refs = (np.array([-t["log_p"].sum() for t in _tokens(model, d)]) for d in (canaries, references))
    exposures = [math.log2(len(refs)) - math.log2(1 + (refs <= c).sum()) for c in canary]
    assert report.loc["exposure.mean", "model"] == pytest.approx(np.mean(exposures))
    assert np.isfinite(report.loc["exposure.mean", "reference"])


# ---------------------------------------------------------------------------------------------- shadow LMs

@pytest.fixture(scope="module")
def shadows(lm, fortunes, tmp_path_factory):
    from unlearn.evaluation.shadows import train_shadow_models

    *_, model_fn = lm
    return train_shadow_models(Subset(fortunes.train, range(64)), Subset(fortunes.test, range(32)), model_fn, k=4,
                               folder=tmp_path_factory.mktemp("lm_shadows"), progress=False, epochs=1,
                               **SHADOW_RECIPE)


def test_lira_on_sequences_is_lira_of_their_mean_log_likelihood(lm, shadows, tokens):
    model, reference, sets, _ = lm
    assert shadows.logits is None and shadows.signals.shape == (4, 96, 6)
    phi = shadows.phi()
    assert phi.shape == (4, 96, 1) and np.isfinite(phi).all()
    np.testing.assert_allclose(shadows.p_true(), np.exp(phi[..., 0]))
    report = evaluate(model, **sets, reference=reference, shadows=shadows,
                      attacks=("lira", "lira_offline", "rmia", "loss_threshold"))
    target = np.r_[-_nll(tokens["model", "forget"]), -_nll(tokens["model", "test"])]
    positions = np.r_[shadows.locate("train", np.arange(8)), shadows.locate("test", np.arange(32))]
    scores = lira(target, shadows.phi(positions), shadows.in_mask[:, positions])
    membership = np.r_[np.ones(8), np.zeros(32)]
    assert report.loc["lira.auc", "model"] == pytest.approx(roc_summary(scores, membership)["auc"])
    for row in ("lira.auc", "lira_offline.auc", "rmia.auc", "rmia.a"):
        assert np.isfinite(report.loc[row]).all()


@pytest.mark.slow  # trains and unlearns 4 shadow LMs
def test_ulira_on_sequences(lm, fortunes, tmp_path):
    from unlearn.evaluation import evaluate_ulira
    from unlearn.evaluation.shadows import train_unlearned_shadow_models

    model, reference, sets, model_fn = lm
    shadows = train_unlearned_shadow_models(Subset(fortunes.train, range(64)), Subset(fortunes.test, range(32)),
                                            model_fn, method="finetune", method_config={"epochs": 1}, k=4,
                                            folder=tmp_path, progress=False, epochs=1, **SHADOW_RECIPE)
    assert shadows.logits is None and shadows.signals.shape == (4, 96, 6) and shadows.unlearned_mask.any()
    forget = Subset(fortunes.train, range(64))
    summary, table = evaluate_ulira(model, reference, forget=forget, shadows=shadows)
    positions = shadows.locate("train", np.arange(64))
    both = shadows.unlearned_mask[:, positions].any(0) & shadows.out_mask[:, positions].any(0)
    assert summary["scored"] == both.sum() == np.isfinite(table).all(axis=1).sum()
    assert 0 <= summary["auc"] <= 1
