"""Attacks and metrics against known answers and slow, obvious references."""

import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import roc_auc_score

from unlearn.attacks import (
    epsilons,
    forgetting_quality,
    forgetting_score,
    lira,
    logit_scaled_confidence,
    loss_logreg,
    loss_threshold,
    modified_entropy,
    rmia,
    svc,
    tune_rmia_a,
    ulira,
)
from unlearn.attacks.signals import Signals
from unlearn.metrics import mean_interval, plot_roc, roc_summary, tow, tow_mia

# ------------------------------------------------------------------------------------------------ metrics

def test_auc_of_two_gaussians_matches_the_analytic_value():
    rng = np.random.default_rng(0)
    members, nonmembers = rng.normal(1.0, 1.0, 20000), rng.normal(0.0, 1.0, 20000)
    summary = roc_summary(np.r_[members, nonmembers], np.r_[np.ones(20000), np.zeros(20000)])
    assert summary["auc"] == pytest.approx(stats.norm.cdf(1 / np.sqrt(2)), abs=0.005)  # P(X_in > X_out)
    # balanced accuracy of the best threshold (at 0.5): Phi(0.5)
    assert summary["balanced_accuracy"] == pytest.approx(stats.norm.cdf(0.5), abs=0.005)


def test_roc_summary_against_a_threshold_sweep():
    rng = np.random.default_rng(1)
    scores = rng.normal(size=300)
    membership = (rng.random(300) < 0.4) | (scores > 1.5)
    summary = roc_summary(scores, membership)
    best_balanced, tpr_low = 0.0, {0.001: 0.0, 0.01: 0.0}
    for t in np.r_[np.inf, np.sort(scores)]:
        tpr = (scores[membership] >= t).mean()
        fpr = (scores[~membership] >= t).mean()
        best_balanced = max(best_balanced, 1 - (fpr + 1 - tpr) / 2)
        for target in tpr_low:
            if fpr <= target:
                tpr_low[target] = max(tpr_low[target], tpr)
    assert summary["auc"] == pytest.approx(roc_auc_score(membership, scores))
    assert summary["balanced_accuracy"] == pytest.approx(best_balanced)
    assert summary["tpr_at_fpr_0.001"] == pytest.approx(tpr_low[0.001])
    assert summary["tpr_at_fpr_0.01"] == pytest.approx(tpr_low[0.01])
    with pytest.raises(ValueError, match="both members and non-members"):
        roc_summary([0.1, 0.2], [1, 1])


def test_tow_and_interval():
    u = {"forget": 0.80, "retain": 0.99, "test": 0.95}
    r = {"forget": 0.90, "retain": 1.00, "test": 0.96}
    assert tow(u, r) == pytest.approx(0.9 * 0.99 * 0.99)
    assert tow(r, r) == 1.0
    assert tow_mia(u, r, mia_unlearned=0.3, mia_retrained=0.5) == pytest.approx(0.8 * 0.99 * 0.99)
    with pytest.raises(ValueError, match="fractions"):
        tow({"forget": 80, "retain": 99, "test": 95}, r)
    mean, half = mean_interval([1.0, 2.0, 3.0, 4.0])
    assert mean == 2.5 and half == pytest.approx(stats.t.ppf(0.975, 3) * np.std([1, 2, 3, 4], ddof=1) / 2)


def test_roc_plot_is_written(tmp_path):
    rng = np.random.default_rng(0)
    plot_roc({"a": (rng.normal(size=100), np.r_[np.ones(50), np.zeros(50)])}, tmp_path / "roc.png")
    assert (tmp_path / "roc.png").stat().st_size > 1000


# ------------------------------------------------------------------------------------------------ signals

def test_logit_scaled_confidence_is_exact_and_stable():
    logits = np.array([[2.0, 1.0, 0.5], [0.0, 0.0, 0.0]])
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    naive = np.log(p[[0, 1], [0, 2]]) - np.log(1 - p[[0, 1], [0, 2]])
    np.testing.assert_allclose(logit_scaled_confidence(logits, np.array([0, 2])), naive)
    extreme = logit_scaled_confidence(np.array([[800.0, 0.0], [0.0, 800.0]]), np.array([0, 0]))
    assert extreme.tolist() == [800.0, -800.0]  # the naive form gives inf and -inf here


def test_modified_entropy_by_hand():
    p = np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1]])
    by_hand = [-(0.3 * np.log(0.7)) - 0.2 * np.log(0.8) - 0.1 * np.log(0.9),
               -(0.9 * np.log(0.1)) - 0.8 * np.log(0.2) - 0.1 * np.log(0.9)]
    np.testing.assert_allclose(modified_entropy(p, np.array([0, 0])), by_hand)


# ------------------------------------------------------------------------------------------------ LiRA

def test_lira_on_a_hand_made_case():
    # 4 shadows, 1 example: IN values 3 and 5, OUT values 0 and 2
    shadow = np.array([[3.0], [0.0], [5.0], [2.0]])
    in_mask = np.array([[True], [False], [True], [False]])
    target = np.array([4.0])
    expected = stats.norm.logpdf(4.0, 4.0, 1.0) - stats.norm.logpdf(4.0, 1.0, 1.0)  # medians 4 and 1, std 1
    assert lira(target, shadow, in_mask)[0] == pytest.approx(expected)
    assert lira(target, shadow, in_mask, online=False)[0] == pytest.approx(-stats.norm.logpdf(4.0, 1.0, 1.0))
    assert lira(target, shadow, in_mask, online=False, one_sided=True)[0] == pytest.approx(
        stats.norm.logcdf(4.0, 1.0, 1.0))


def _lira_loop(target, shadow, in_mask, fix_variance):
    """The reference: one example at a time."""
    if fix_variance:
        sd_in, sd_out = np.std(shadow[in_mask]), np.std(shadow[~in_mask])
    out = []
    for n in range(target.shape[0]):
        ins, outs = shadow[in_mask[:, n], n], shadow[~in_mask[:, n], n]
        s_in = sd_in if fix_variance else ins.std(axis=0)
        s_out = sd_out if fix_variance else outs.std(axis=0)
        out.append(np.mean(stats.norm.logpdf(target[n], np.median(ins, 0), s_in + 1e-30)
                           - stats.norm.logpdf(target[n], np.median(outs, 0), s_out + 1e-30)))
    return np.array(out)


@pytest.mark.parametrize("fix_variance", [False, True])
def test_lira_matches_a_per_example_loop_with_queries(fix_variance):
    rng = np.random.default_rng(0)
    in_mask = rng.random((16, 50)) < 0.5
    shadow = rng.normal(size=(16, 50, 2)) + 2 * in_mask[:, :, None]
    target = rng.normal(size=(50, 2)) + 1
    np.testing.assert_allclose(lira(target, shadow, in_mask, fix_variance=fix_variance),
                               _lira_loop(target, shadow, in_mask, fix_variance), rtol=1e-10)


def test_lira_separates_members_of_two_gaussians():
    rng = np.random.default_rng(3)
    in_mask = rng.random((32, 400)) < 0.5
    shadow = rng.normal(size=(32, 400)) + 2.0 * in_mask
    member = rng.random(400) < 0.5
    target = rng.normal(size=400) + 2.0 * member
    assert roc_auc_score(member, lira(target, shadow, in_mask)) == pytest.approx(stats.norm.cdf(2 / np.sqrt(2)),
                                                                                 abs=0.05)


def test_ulira_uses_only_unlearned_and_never_seen_shadows():
    rng = np.random.default_rng(0)
    unlearned = rng.random((20, 30)) < 0.4
    out = ~unlearned & (rng.random((20, 30)) < 0.7)
    shadow = rng.normal(size=(20, 30)) + 1.5 * unlearned + 100 * (~unlearned & ~out)  # ignored shadows are wild
    target = rng.normal(size=30)
    scores = ulira(target, shadow, unlearned, out)
    for n in range(30):
        ins, outs = shadow[unlearned[:, n], n], shadow[out[:, n], n]
        by_hand = (stats.norm.logpdf(target[n], np.median(ins), ins.std() + 1e-30)
                   - stats.norm.logpdf(target[n], np.median(outs), outs.std() + 1e-30))
        assert scores[n] == pytest.approx(by_hand)
    with pytest.raises(ValueError, match="overlap"):
        ulira(target, shadow, unlearned, unlearned)


# ------------------------------------------------------------------------------------------------ RMIA

def test_rmia_matches_the_pairwise_definition():
    rng = np.random.default_rng(0)
    target_x, ref_x = rng.random(40), rng.random((5, 40))
    target_z, ref_z = rng.random(60), rng.random((5, 60))
    a = 0.4
    px = (1 + a) / 2 * ref_x.mean(0) + (1 - a) / 2
    pz = (1 + a) / 2 * ref_z.mean(0) + (1 - a) / 2
    pairwise = ((target_x / px)[:, None] / (target_z / pz)[None, :] >= 1.0).mean(axis=1)
    np.testing.assert_allclose(rmia(target_x, ref_x, target_z, ref_z, a=a), pairwise)


def test_rmia_tuning_picks_a_value_from_the_grid():
    rng = np.random.default_rng(0)
    in_mask = rng.random((6, 200)) < 0.5
    reference = np.clip(0.5 + 0.3 * in_mask + rng.normal(0, 0.1, (6, 200)), 0.01, 1)
    a = tune_rmia_a(reference, in_mask)
    assert a in np.linspace(0, 1, 11)


# ------------------------------------------------------------------------------------------------ forgetting score

def _epsilon_loop(u, r, delta=1e-5, cap=50.0):
    """The reference: for one example, every interval between distinct sample values and its complement."""
    values = np.unique(np.r_[u, r])
    cuts = np.r_[-np.inf, (values[:-1] + values[1:]) / 2, np.inf]
    best = 0.0
    for i, lo in enumerate(cuts):
        for hi in cuts[i:]:
            inside_u, inside_r = ((u > lo) & (u < hi)).mean(), ((r > lo) & (r < hi)).mean()
            for fpr, fnr in ((inside_r, 1 - inside_u), (1 - inside_r, inside_u)):
                if fpr == 0 and fnr == 0:
                    return cap
                if fpr == 0 or fnr == 0:
                    continue
                for num, den in ((1 - delta - fpr, fnr), (1 - delta - fnr, fpr)):
                    if num > 0:
                        best = max(best, np.log(num) - np.log(den))
    return min(best, cap)


def test_epsilons_match_a_per_example_sweep():
    rng = np.random.default_rng(0)
    u = rng.normal(0.7, 1, (8, 25)).round(1)  # rounding makes ties
    r = rng.normal(0, 1, (8, 25)).round(1)
    fast = epsilons(u, r)
    np.testing.assert_allclose(fast, [_epsilon_loop(u[:, e], r[:, e]) for e in range(25)])
    separated = epsilons(np.full((4, 1), 5.0), np.zeros((4, 1)))
    assert separated.tolist() == [50.0]
    assert forgetting_quality(np.array([0.0, 0.4, 0.5, 1.0, 50.0])) == pytest.approx((1 + 1 + 0.5 + 0.25 + 0.5**100)
                                                                                     / 5)
    score = forgetting_score(u, r, retain_accuracy=(0.9, 1.0), test_accuracy=(0.8, 0.8))
    assert score["score"] == pytest.approx(score["forgetting_quality"] * 0.9)


# ------------------------------------------------------------------------------------------------ one-model attacks

def _signals(loss, rng, classes=3):
    p_true = np.exp(-loss)
    rest = (1 - p_true)[:, None] * rng.dirichlet(np.ones(classes - 1), len(loss))
    probs = np.concatenate([p_true[:, None], rest], axis=1)
    labels = np.zeros(len(loss), dtype=int)
    return Signals.from_logits(np.log(probs), labels, np.arange(len(loss)))


def test_loss_attacks_see_members_with_lower_loss():
    rng = np.random.default_rng(0)
    members, nonmembers = rng.exponential(0.05, 400), rng.exponential(0.5, 400)
    assert loss_threshold(members, nonmembers)["auc"] > 0.8
    assert loss_logreg(members, nonmembers)["accuracy"] > 0.75
    assert loss_logreg(nonmembers[:200], nonmembers[200:])["accuracy"] < 0.6
    retain, test = _signals(members, rng), _signals(nonmembers, rng)
    looks_like_test = _signals(rng.exponential(0.5, 200), rng)
    looks_like_retain = _signals(rng.exponential(0.05, 200), rng)
    unlearned, kept = svc(retain, test, looks_like_test), svc(retain, test, looks_like_retain)
    assert set(unlearned) == {"correctness", "confidence", "entropy", "m_entropy", "prob"}
    assert unlearned["confidence"] > 0.6 > kept["confidence"]
    with pytest.raises(ValueError, match="unknown SVC features"):
        svc(retain, test, looks_like_test, features=("margin",))


def test_signals_of_several_queries():
    import torch

    from unlearn.attacks import extract_signals
    from unlearn.data import IndexedDataset

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))
    images = torch.randn(5, 1, 3, 4)
    data = IndexedDataset(images, torch.tensor([0, 1, 2, 0, 1]))
    signals = extract_signals(model, data, queries=("identity", "hflip"))
    assert signals.phi.shape == (5, 2)
    mirrored = extract_signals(model, IndexedDataset(images.flip(-1), data.targets))
    np.testing.assert_allclose(signals.phi[:, 1], mirrored.phi[:, 0], rtol=1e-6)
    with pytest.raises(ValueError, match="unknown queries"):
        extract_signals(model, data, queries=("rotate",))
