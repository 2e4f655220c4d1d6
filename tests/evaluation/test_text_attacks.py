"""Membership scores of language models against a slow per-token loop written from their definitions, the attack
summaries against brute-force counts, and MUSE's PrivLeak against its formula, on a tiny GPT trained on fortunes."""

import itertools
import math
import zlib

import numpy as np
import pandas as pd
import pytest
import torch
from torch.utils.data import Subset

from proxies.batching import IndexedDataset
from proxies.sequences import IGNORE_INDEX, CausalLM
from tests.conftest import requires_fortunes
from unlearn.evaluation.attacks import (
    TEXT_SCORES,
    membership_auc,
    membership_summary,
    membership_tpr_at_fpr,
    priv_leak,
    priv_leak_of,
    scores_from_logits,
    text_scores,
)
from unlearn.models import create_model
from unlearn.training import train

MEMBERS = 48
RECIPE = {"epochs": 20, "lr": 3e-3, "batch_size": 32, "optimizer": "adamw", "momentum": 0.0, "weight_decay": 0.0,
          "progress": False, "device": "cpu"}


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see tests/conftest.py


def _fresh(splits):
    torch.manual_seed(0)
    return create_model("tiny_gpt", vocab_size=splits.vocab_size, n_positions=splits.max_tokens, n_embd=32,
                        n_layer=1, n_head=2)


@pytest.fixture(scope="module")
def members(fortunes):
    return Subset(fortunes.train, range(MEMBERS))


@pytest.fixture(scope="module")
def holdout(fortunes):
    return Subset(fortunes.val, range(MEMBERS))


@pytest.fixture(scope="module")
def trained(fortunes, members):
    """A tiny GPT trained 20 epochs on 48 fortunes (it memorises them a little)."""
    return train(_fresh(fortunes), members, seed=0, **RECIPE)[0].eval()


def _mixed(fortunes) -> IndexedDataset:
    """8 members and 8 held-out fortunes, two of them scored on their first tokens only and one on none."""
    train, val = fortunes.train, fortunes.val
    inputs = torch.cat([train.inputs[:8], val.inputs[:8]])
    labels = torch.cat([train.targets[:8], val.targets[:8]]).clone()
    labels[3, 5:] = IGNORE_INDEX  # 4 scored tokens (positions 1..4)
    labels[9, 2:] = IGNORE_INDEX  # 1 scored token
    labels[12, 1:] = IGNORE_INDEX  # none
    indices = torch.tensor([*range(100, 108), *range(200, 208)])
    return IndexedDataset(inputs, labels, indices=indices, task=CausalLM(pad_id=train.task.pad_id))


def _by_definition(model, data: IndexedDataset, tokenizer, *, k: float, drop_last: bool = False) -> pd.DataFrame:
    """Each column from its definition, one sequence and one token at a time, in float64."""
    rows = []
    for x, y in zip(data.inputs, data.targets, strict=True):
        with torch.no_grad():
            logits = model(x[None]).logits[0].double()
        positions = [t for t in range(len(x) - 1) if y[t + 1] != IGNORE_INDEX]
        if drop_last:
            positions = positions[:-1]
        log_probs, normalised = [], []
        for t in positions:
            p = torch.softmax(logits[t], dim=0)
            log_p = torch.log(p)
            mu = float((p * log_p).sum())
            variance = max(float((p * log_p**2).sum()) - mu**2, 1e-6)  # the definition's form
            log_probs.append(float(log_p[y[t + 1]]))
            normalised.append((log_probs[-1] - mu) / math.sqrt(variance))
        if not positions:
            rows.append([math.nan] * 4)
            continue
        take = max(1, int(len(positions) * k))
        loss = -sum(log_probs) / len(positions)
        text = tokenizer.decode([int(y[t + 1]) for t in positions], skip_special_tokens=True)
        rows.append([loss, loss / len(zlib.compress(text.encode("utf-8"))),
                     -np.mean(sorted(log_probs)[:take]), -np.mean(sorted(normalised)[:take])])
    return pd.DataFrame(rows, columns=list(TEXT_SCORES), index=pd.Index(data.indices.numpy(), name="index"))


# -------------------------------------------------------------------------------------------- the scores

@requires_fortunes
@pytest.mark.parametrize(("k", "drop_last"), [(0.2, False), (0.5, True)])
@pytest.mark.slow  # trains a tiny GPT-2: make test-slow
def test_every_column_is_its_per_token_definition(fortunes, trained, k, drop_last):
    data = _mixed(fortunes)
    got = text_scores(trained, data, k=k, tokenizer=fortunes.tokenizer, drop_last=drop_last, batch_size=5)
    expected = _by_definition(trained, data, fortunes.tokenizer, k=k, drop_last=drop_last)
    assert list(got.columns) == list(TEXT_SCORES) and (got.dtypes == np.float64).all()
    pd.testing.assert_index_equal(got.index, expected.index)
    np.testing.assert_allclose(got.to_numpy(), expected.to_numpy(), rtol=1e-5, atol=1e-5)
    # no scored token (drop_last: 201's only one dropped): NaN in every column
    empty = [201, 204] if drop_last else [204]
    assert got.loc[empty].isna().all().all() and got.drop(index=empty).notna().all().all()


@requires_fortunes
@pytest.mark.slow  # trains a tiny GPT-2: make test-slow
def test_min_k_takes_at_least_one_token_and_all_of_them_at_k_1(fortunes, trained):
    data = _mixed(fortunes)  # sequence 103 has 4 scored tokens, 201 one: int(n * 0.2) = 0 for both
    with torch.no_grad():
        logits = trained(data.inputs).logits
    log_p = torch.log_softmax(logits[:, :-1].double(), -1).gather(-1, data.targets[:, 1:].clamp(min=0)[..., None])
    lowest = {i: float(log_p[row, :n].min()) for row, i, n in ((3, 103, 4), (9, 201, 1))}
    scores = text_scores(trained, data, k=0.2)
    for i, value in lowest.items():
        assert scores.loc[i, "min_k"] == pytest.approx(-value, rel=1e-5)
    every = text_scores(trained, data, k=1.0)
    np.testing.assert_allclose(every["min_k"], every["loss"], rtol=1e-5)
    assert "zlib" not in scores.columns  # no tokenizer, no zlib


def test_scores_from_logits_by_hand():
    # one sequence, 4 scored tokens of log-probs log(0.5), log(0.25), log(0.125), log(0.125): k = 0.5 takes 2
    probs = torch.tensor([[0.5, 0.5, 0.0], [0.25, 0.75, 0.0], [0.125, 0.875, 0.0], [0.125, 0.875, 0.0],
                          [1 / 3, 1 / 3, 1 / 3]])
    logits = torch.log(probs.clamp(min=1e-30))[None]
    labels = torch.tensor([[-100, 0, 0, 0, 0]])
    loss, min_k, _ = scores_from_logits(logits, labels, k=0.5)[0].tolist()
    assert loss == pytest.approx(math.log(2) * (1 + 2 + 3 + 3) / 4, rel=1e-6)
    assert min_k == pytest.approx(3 * math.log(2), rel=1e-6)
    dropped = scores_from_logits(logits, labels, k=0.5, drop_last=True)[0].tolist()
    assert dropped[0] == pytest.approx(math.log(2) * (1 + 2 + 3) / 3, rel=1e-6)
    # a uniform next-token distribution has no spread: the variance floor, and log p - mu = 0
    uniform = scores_from_logits(torch.zeros(1, 2, 4), torch.tensor([[-100, 2]]))[0].tolist()
    assert uniform[:2] == pytest.approx([math.log(4), math.log(4)], rel=1e-6)
    assert uniform[2] == pytest.approx(0.0, abs=1e-3)  # (a float32 rounding of log p - mu) / 1e-3


@requires_fortunes
@pytest.mark.slow  # trains a tiny GPT-2: make test-slow
def test_the_model_stays_put_and_batches_do_not_matter(fortunes, trained, members):
    model = trained.train()  # train mode: dropout would make two calls differ
    before = {name: t.clone() for name, t in model.state_dict().items()}
    try:
        data = Subset(members, [7, 2, 30, 11, 5])
        one = text_scores(model, data, tokenizer=fortunes.tokenizer, batch_size=64)
        assert model.training
        assert all(torch.equal(before[name], t) for name, t in model.state_dict().items())
        pd.testing.assert_frame_equal(one, text_scores(model, data, tokenizer=fortunes.tokenizer, batch_size=2),
                                      rtol=1e-5)
        assert one.index.tolist() == [7, 2, 30, 11, 5]
    finally:
        model.eval()


@requires_fortunes
@pytest.mark.slow  # trains a tiny GPT-2: make test-slow
def test_on_each_device(fortunes, trained, device):
    data = _mixed(fortunes)
    expected = text_scores(trained, data, tokenizer=fortunes.tokenizer)
    got = text_scores(trained, data, tokenizer=fortunes.tokenizer, device=device)
    pd.testing.assert_frame_equal(got, expected, rtol=1e-4, atol=1e-5)
    assert next(trained.parameters()).device.type == "cpu"


@requires_fortunes
@pytest.mark.slow  # trains a tiny GPT-2: make test-slow
def test_members_score_lower_than_held_out_fortunes(fortunes, trained, members, holdout):
    inside = text_scores(trained, members, tokenizer=fortunes.tokenizer)
    outside = text_scores(trained, holdout, tokenizer=fortunes.tokenizer)
    aucs = {c: membership_auc(inside[c], outside[c]) for c in TEXT_SCORES}
    assert all(auc > 0.5 for auc in aucs.values()), aucs
    assert min(aucs["loss"], aucs["min_k"], aucs["min_k_plus_plus"]) > 0.8, aucs


def test_bad_arguments_are_refused():
    data = IndexedDataset(torch.zeros(2, 4, dtype=torch.long), torch.zeros(2, 4, dtype=torch.long),
                          task=CausalLM())
    model = torch.nn.Embedding(3, 3)
    with pytest.raises(ValueError, match="k must be"):
        text_scores(model, data, k=0.0)
    with pytest.raises(ValueError, match="batch_size"):
        text_scores(model, data, batch_size=0)
    with pytest.raises(TypeError, match="decode"):
        text_scores(model, data, tokenizer="gpt2")
    with pytest.raises(ValueError, match="token sequences"):
        text_scores(torch.nn.Linear(2, 3), IndexedDataset(torch.zeros(2, 2), torch.zeros(2, dtype=torch.long)))
    with pytest.raises(ValueError, match="tokenizer"):
        priv_leak_of(model, model, data, data, score="zlib")
    with pytest.raises(ValueError, match="unknown score"):
        priv_leak_of(model, model, data, data, score="ppl")
    with pytest.raises(ValueError, match="vocabulary has 3 tokens"):
        scores_from_logits(torch.zeros(1, 2, 3), torch.tensor([[0, 5]]))
    empty = text_scores(model, Subset(data, []), tokenizer=None)
    assert empty.empty and list(empty.columns) == ["loss", "min_k", "min_k_plus_plus"]


# -------------------------------------------------------------------------------------- telling members apart

def test_auc_is_the_pair_count_with_ties_half():
    rng = np.random.default_rng(0)
    member, nonmember = rng.integers(0, 12, 40).astype(float), rng.integers(3, 15, 30).astype(float)
    pairs = [(m < n) + 0.5 * (m == n) for m, n in itertools.product(member, nonmember)]
    assert membership_auc(member, nonmember) == pytest.approx(np.mean(pairs), abs=1e-12)
    assert membership_auc(pd.Series([1.0, 2.0]), [3.0]) == 1.0
    assert membership_auc([3.0], [1.0, 2.0]) == 0.0


def test_tpr_at_fpr_is_the_best_threshold_sweep():
    rng = np.random.default_rng(1)
    member, nonmember = rng.normal(0.0, 1.0, 300), rng.normal(1.5, 1.0, 500)
    member[:20] = nonmember[:20]  # ties
    for target in (0.0, 1e-3, 1e-2, 0.1, 0.5):
        # a member is caught at threshold t when its score is at most t
        caught = [np.mean(member <= t) for t in np.r_[member, nonmember] if np.mean(nonmember <= t) <= target]
        best = max([0.0, *caught])
        assert membership_tpr_at_fpr(member, nonmember, fpr=target) == pytest.approx(best, abs=1e-12)


def test_membership_summary_is_the_auc_and_the_tpr_sweeps():
    rng = np.random.default_rng(2)
    member, nonmember = rng.normal(0.0, 1.0, 300), rng.normal(1.0, 1.0, 400)
    member[:10] = nonmember[:10]  # ties
    summary = membership_summary(member, nonmember)
    assert summary["auc"] == membership_auc(member, nonmember)
    for target in (0.001, 0.01):
        assert summary[f"tpr_at_fpr_{target}"] == membership_tpr_at_fpr(member, nonmember, fpr=target)
    # balanced accuracy: the best threshold t (a member caught when its score is at most t)
    best = max((np.mean(member <= t) + np.mean(nonmember > t)) / 2 for t in np.r_[member, nonmember, -np.inf])
    assert summary["balanced_accuracy"] == pytest.approx(best, abs=1e-12)


def test_summaries_refuse_empty_or_missing_scores():
    with pytest.raises(ValueError, match="empty"):
        membership_auc([], [1.0])
    with pytest.raises(ValueError, match="no scored token"):
        membership_auc([1.0, np.nan], [1.0])
    with pytest.raises(ValueError, match="empty"):
        membership_summary([1.0], [])
    with pytest.raises(ValueError, match="fpr"):
        membership_tpr_at_fpr([1.0], [2.0], fpr=1.5)


# ---------------------------------------------------------------------------------------------------- PrivLeak

def test_priv_leak_is_muses_formula_with_its_anchors():
    for unlearned, retrained in itertools.product(np.linspace(0, 1, 11), np.linspace(0, 0.9, 10)):
        muse_unlearned, muse_retrained = 1 - unlearned, 1 - retrained  # MUSE's AUC is one minus ours
        expected = (muse_unlearned - muse_retrained) / muse_retrained * 100
        assert priv_leak(float(unlearned), float(retrained)) == pytest.approx(expected, abs=1e-9)
    assert priv_leak(0.47, 0.47) == 0.0  # as leaky as the retrained model
    assert priv_leak(1.0, 0.47) == pytest.approx(-100.0)  # every forget example below every holdout one
    assert priv_leak(0.3, 0.5) == pytest.approx(40.0) and priv_leak(0.3, 0.5) > 0  # over-unlearning
    with pytest.raises(ValueError, match="divides"):
        priv_leak(0.5, 1.0)
    with pytest.raises(ValueError, match="auc_unlearned"):
        priv_leak(1.2, 0.5)


@requires_fortunes
@pytest.mark.slow
def test_priv_leak_of_is_priv_leak_of_the_two_min_k_aucs(fortunes, trained, members, holdout):
    untrained = _fresh(fortunes)  # a model that never saw the forget set, for the function's arithmetic
    leak = priv_leak_of(trained, untrained, members, holdout)
    by_hand = priv_leak(*(membership_auc(text_scores(m, members, k=0.4)["min_k"],
                                         text_scores(m, holdout, k=0.4)["min_k"]) for m in (trained, untrained)))
    assert leak == pytest.approx(by_hand, abs=1e-9)
    assert leak < -50  # the forget set is still told apart
    assert priv_leak_of(trained, trained, members, holdout) == 0.0


@requires_fortunes
@pytest.mark.slow
def test_priv_leak_of_a_model_that_saw_the_forget_set_against_a_retrained_one(fortunes, trained, members, holdout):
    retrained = train(_fresh(fortunes), Subset(fortunes.train, range(MEMBERS, 2 * MEMBERS)), seed=0, **RECIPE)[0]
    # measured: -90.75 by Min-K% (k = 0.4), the retrained model's own AUC 0.498
    assert priv_leak_of(trained, retrained, members, holdout) < -50
    assert priv_leak_of(retrained, retrained, members, holdout) == 0.0
    assert priv_leak_of(trained, retrained, members, holdout, score="zlib", tokenizer=fortunes.tokenizer) < 0
