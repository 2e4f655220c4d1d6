"""Attacks and metrics against known answers and slow, obvious references."""

import warnings

import numpy as np
import pytest
import torch
from scipy import stats
from sklearn.metrics import roc_auc_score

from unlearn.evaluation.attacks import (
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
from unlearn.evaluation.attacks.signals import AttackSignals
from unlearn.evaluation.metrics import mean_interval, plot_roc, roc_summary, tow, tow_mia

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
    """The reference: one example at a time; a side with fewer than 2 shadows (or every example, with
    ``fix_variance``) takes the standard deviation of all that side's values."""
    sd_in, sd_out = np.std(shadow[in_mask]), np.std(shadow[~in_mask])
    out = []
    for n in range(target.shape[0]):
        ins, outs = shadow[in_mask[:, n], n], shadow[~in_mask[:, n], n]
        if len(ins) == 0 or len(outs) == 0:
            out.append(np.nan)
            continue
        s_in = sd_in if fix_variance or len(ins) < 2 else ins.std(axis=0)
        s_out = sd_out if fix_variance or len(outs) < 2 else outs.std(axis=0)
        out.append(np.mean(stats.norm.logpdf(target[n], np.median(ins, 0), s_in + 1e-30)
                           - stats.norm.logpdf(target[n], np.median(outs, 0), s_out + 1e-30)))
    return np.array(out)


@pytest.mark.parametrize("shadows", [16, 3])  # with 3 shadows many examples have 0 or 1 on a side
@pytest.mark.parametrize("fix_variance", [False, True])
def test_lira_matches_a_per_example_loop_with_queries(fix_variance, shadows):
    rng = np.random.default_rng(0)
    in_mask = rng.random((shadows, 50)) < 0.5
    shadow = rng.normal(size=(shadows, 50, 2)) + 2 * in_mask[:, :, None]
    target = rng.normal(size=(50, 2)) + 1
    counts = in_mask.sum(axis=0)
    assert shadows == 16 or ((counts == 1).any() and (counts == 2).any())
    np.testing.assert_allclose(lira(target, shadow, in_mask, fix_variance=fix_variance),
                               _lira_loop(target, shadow, in_mask, fix_variance), rtol=1e-10)


def test_one_shadow_on_a_side_takes_that_sides_global_variance():
    # U-LiRA with 3 examples: example 0 has a single unlearned shadow, 1 and 2 have two
    shadow = np.array([[1.0, 2.0, 0.3], [0.0, 2.5, 0.1], [0.5, 1.0, 0.7], [0.2, 3.0, 0.9]])
    unlearned = np.array([[True, True, False], [False, True, False], [False, False, True], [False, False, True]])
    target = np.array([0.9, 2.2, 0.4])
    scores = ulira(target, shadow, unlearned, ~unlearned)
    sd_unlearned = np.std([1.0, 2.0, 2.5, 0.7, 0.9])  # every unlearned value, over all examples
    outs = shadow[~unlearned[:, 0], 0]
    assert scores[0] == pytest.approx(stats.norm.logpdf(0.9, 1.0, sd_unlearned)
                                      - stats.norm.logpdf(0.9, np.median(outs), outs.std()))
    ins, outs = shadow[unlearned[:, 1], 1], shadow[~unlearned[:, 1], 1]
    assert scores[1] == pytest.approx(stats.norm.logpdf(2.2, np.median(ins), ins.std())
                                      - stats.norm.logpdf(2.2, np.median(outs), outs.std()))
    # LiRA: one IN shadow for example 0, one OUT shadow for example 2
    in_mask = np.array([[True, True, False], [False, True, True], [False, False, True], [False, False, True]])
    sd_in, sd_out = np.std(shadow[in_mask]), np.std(shadow[~in_mask])
    scores = lira(target, shadow, in_mask)
    outs = shadow[~in_mask[:, 0], 0]
    assert scores[0] == pytest.approx(stats.norm.logpdf(0.9, 1.0, sd_in)
                                      - stats.norm.logpdf(0.9, np.median(outs), outs.std()))
    ins = shadow[in_mask[:, 2], 2]
    assert scores[2] == pytest.approx(stats.norm.logpdf(0.4, np.median(ins), ins.std())
                                      - stats.norm.logpdf(0.4, 0.3, sd_out))
    # a side with a single value in all: no variance to borrow, no score (it was -5e57)
    alone = np.array([[True], [False], [False]])
    assert np.isnan(ulira([0.9], [[1.0], [0.0], [0.5]], alone, ~alone)).all()


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


def _rmia_auc_by_hand(reference, in_mask, a, target=0):
    """RMIA's AUC when reference model ``target`` plays the target, from the definition: x = its members and
    every second non-member, the population z = the other non-members; P(x) from the other models' OUT values."""
    others = [m for m in range(len(reference)) if m != target]
    members = in_mask[target]
    z = np.flatnonzero(~members)[1::2]
    x = np.setdiff1d(np.arange(reference.shape[1]), z)

    def ratio(n):
        outs = [reference[m, n] for m in others if not in_mask[m, n]]
        return reference[target, n] / ((1 + a) / 2 * np.mean(outs) + (1 - a) / 2) if outs else None

    ratio_z = [q for q in map(ratio, z) if q is not None]
    member_scores, nonmember_scores = [], []
    for n in x:
        if ratio(n) is not None:
            score = sum(ratio(n) / q >= 1 for q in ratio_z) / len(ratio_z)
            (member_scores if members[n] else nonmember_scores).append(score)
    wins = sum((p > q) + 0.5 * (p == q) for p in member_scores for q in nonmember_scores)
    return wins / (len(member_scores) * len(nonmember_scores))


def test_rmia_tuning_is_the_brute_force_argmax():
    rng = np.random.default_rng(11)
    in_mask = rng.random((6, 120)) < 0.5
    hard = rng.random(120)
    reference = np.clip(0.3 + 0.6 * hard + 0.25 * in_mask * (1 - hard) + rng.normal(0, 0.05, (6, 120)), 0.01, 1)
    grid = np.linspace(0, 1, 11)
    aucs = np.array([_rmia_auc_by_hand(reference, in_mask, a) for a in grid])
    second, best = np.sort(aucs)[-2:]
    assert best - second > 1e-3 and 0 < aucs.argmax() < len(grid) - 1  # one clear, inner best: the check can fail
    assert tune_rmia_a(reference, in_mask) == grid[aucs.argmax()]
    assert tune_rmia_a(reference, in_mask, grid=grid[::-1]) == grid[aucs.argmax()]


def test_rmia_attack_draws_its_population_apart_from_its_non_members():
    from types import SimpleNamespace

    from unlearn.evaluation.attacks import AttackInputs, get_attack
    from unlearn.evaluation.shadows import balanced_halves

    rng = np.random.default_rng(0)
    n_forget, n_test = 30, 41
    in_mask = balanced_halves(n_forget + n_test, 6, seed=2)
    p_ref = np.clip(0.5 + 0.3 * in_mask + rng.normal(0, 0.15, in_mask.shape), 0.01, 1)
    shadows = SimpleNamespace(in_mask=in_mask, p_true=lambda: p_ref)

    def signals(p, index):
        logits = np.log(np.stack([p, 1 - p], axis=1))
        return AttackSignals.from_logits(logits, np.zeros(len(p), dtype=int), index)

    forget = signals(rng.uniform(0.6, 1.0, n_forget), np.arange(n_forget))
    test = signals(rng.uniform(0.3, 0.9, n_test), rng.permutation(n_test) + 100)
    forget_positions, test_positions = np.arange(n_forget), n_forget + np.arange(n_test)
    a = tune_rmia_a(p_ref, in_mask)

    def by_hand(x_rows, z_rows, z_signals, z_positions):
        """AUC of forget (members) vs the test rows ``x_rows``, against the population ``z``."""
        def ratio(p, position):
            out = ~in_mask[:, position]
            return p / ((1 + a) / 2 * p_ref[out, position].mean() + (1 - a) / 2)

        ratio_z = [ratio(z_signals.p_true[i, 0], z_positions[i]) for i in z_rows]
        x = [(forget.p_true[i, 0], forget_positions[i]) for i in range(n_forget)]
        x += [(test.p_true[i, 0], test_positions[i]) for i in x_rows]
        scores = [np.mean([ratio(p, pos) / q >= 1 for q in ratio_z]) for p, pos in x]
        return roc_auc_score(np.r_[np.ones(n_forget), np.zeros(len(x_rows))], scores)

    # no population given: the test examples split by index, every second one moves from x to z
    by_index = np.argsort(test.index)
    inputs = AttackInputs(forget, forget, test, shadows, forget_positions=forget_positions,
                          test_positions=test_positions)
    result = get_attack("rmia").fn(inputs)
    assert result["a"] == a
    assert result["auc"] == pytest.approx(by_hand(by_index[0::2], by_index[1::2], test, test_positions))
    # a population of its own: every test example is an x
    x_rows, z_rows = np.arange(25), np.arange(25, n_test)
    inputs = AttackInputs(forget, forget, test.take(x_rows), shadows, forget_positions=forget_positions,
                          test_positions=test_positions[x_rows], population=test.take(z_rows),
                          population_positions=test_positions[z_rows])
    assert get_attack("rmia").fn(inputs)["auc"] == pytest.approx(
        by_hand(x_rows, np.arange(len(z_rows)), test.take(z_rows), test_positions[z_rows]))
    overlapping = AttackInputs(forget, forget, test, shadows, forget_positions=forget_positions,
                               test_positions=test_positions, population=test.take(z_rows),
                               population_positions=test_positions[z_rows])
    with pytest.raises(ValueError, match="population"):
        get_attack("rmia").fn(overlapping)


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


def _cuda_mean(counts, n_models, n_rules):
    """torch.mean over the models of metric.py's ``[n_models, n_rules]`` float32 0/1 tiles on CUDA, the only device
    it runs on: the float32 count times the float32 factor ``n_rules / (n_models * n_rules)`` (ATen's MeanOps)."""
    factor = np.float32(n_rules) / np.float32(n_models * n_rules)
    return np.asarray(counts, dtype=np.float32) * factor


def _metric_py_rule_epsilons(false_pos, false_neg, n, delta):
    """metric.py's epsilon of each rule of one family (its double or its single thresholds) from the rules'
    counts of false positives and false negatives; NaN marks a discarded rule."""
    false_pos, false_neg = np.asarray(false_pos), np.asarray(false_neg)
    rules = len(false_pos)
    fpr, fnr = _cuda_mean(false_pos, n, rules), _cuda_mean(false_neg, n, rules)
    tpr, tnr = _cuda_mean(n - false_neg, n, rules), _cuda_mean(n - false_pos, n, rules)
    eps = np.zeros(rules, dtype=np.float32)
    eps[(fpr + fnr == 0) & (tpr + tnr == 2)] = np.inf
    eps[(eps == 0) & (fpr * fnr == 0)] = np.nan
    with np.errstate(divide="ignore", invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # nanmax of two NaNs
        formula = np.clip(np.nanmax([np.log(1 - delta - fpr) - np.log(fnr), np.log(1 - delta - fnr) - np.log(fpr)],
                                    axis=0), 0, None)
    return np.where(eps == 0, formula, eps)


def _metric_py_epsilon(u, r, delta=1e-5):
    """The challenge's epsilon of one example from its N unlearned and N retrained confidences, rule by rule."""
    n = len(u)
    pos, neg = (r, u) if np.median(r) > np.median(u) else (u, r)  # the class with the larger median
    pos_diff, neg_diff = pos.max() - pos.min(), neg.max() - neg.min()
    largest = pos_diff if pos_diff > neg_diff else neg_diff
    smallest = neg_diff if pos_diff > neg_diff else pos_diff
    with np.errstate(invalid="ignore"):
        if smallest / largest < 0.01:  # one class 100 times peakier than the other (0/0 is not)
            return 50.0
    # single thresholds on a float32 grid of about 100 per unit: "positive if conf >= t"
    lo, hi = min(pos.min(), neg.min()), max(pos.max(), neg.max())
    grid = torch.linspace(torch.tensor(lo), torch.tensor(hi), int(np.ceil((hi - lo) * 100))).numpy()
    single = np.array([((neg >= t).sum(), (pos < t).sum()) for t in grid.astype(np.float64)]).reshape(-1, 2).T
    # double thresholds: "positive if left <= conf <= right", the peakier class positive (the negative on a tie)
    peaky, other = (neg, pos) if pos_diff >= neg_diff else (pos, neg)
    start, stop = peaky.min() + smallest - 2.0, peaky.max() + 2.0
    double = [[], []]  # false positives, false negatives
    for right in np.linspace(start, stop, int(np.ceil((stop - start) * 100))):
        lefts = np.linspace(right - smallest - 2.0, right - smallest + 2.0, 400)
        double[0].append(((lefts[:, None] <= other) & (other <= right)).sum(axis=1))
        double[1].append(n - ((lefts[:, None] <= peaky) & (peaky <= right)).sum(axis=1))
    double = [np.concatenate(counts) for counts in double] if double[0] else [[], []]
    eps = np.concatenate([_metric_py_rule_epsilons(*family, n, delta) for family in (double, single)
                          if len(family[0])])
    eps = eps[~np.isnan(eps)]
    assert len(eps), "no rule left"
    return float(np.clip(eps.max(), 0, 50))


def _metric_py_quality(eps, n_models):
    """The challenge's binning: width 0.5 from 0, worth 1, 1/2, ... while a bin ends by ceil(log(N - 1))."""
    with np.errstate(divide="ignore"):
        max_epsilon = np.ceil(np.log(n_models - 1))
    bins, start, points = {}, 0.0, 1.0
    while start + 0.5 <= max_epsilon:
        bins[start] = points
        start, points = start + 0.5, points / 2
    total = 0.0
    for e in eps:
        for first, value in bins.items():
            if e < first + 0.5:
                total += value
                break
    return total / len(eps)


def _challenge_cases():
    rng = np.random.default_rng(0)
    ties = (rng.normal(0.7, 1, (8, 10)).round(1), rng.normal(0, 1, (8, 10)).round(1))
    odd = (rng.normal(0.3, 1, (5, 6)), rng.normal(0, 2, (5, 6)))
    # N = 41: float32(41 * float32(1/41)) < 1, so on CUDA perfect separation is discarded, not infinite
    separated_41 = (rng.normal(4, 0.5, (41, 3)), rng.normal(0, 0.5, (41, 3)))
    separated_8 = (rng.normal(9, 1, (8, 2)), rng.normal(0, 1, (8, 2)))
    r = rng.normal(0, 1, (8, 8))
    u = np.stack([r[:, 0].mean() + rng.normal(0, 0.004, 8),  # 1% rule: unlearned far peakier
                  np.full(8, 0.3),  # constant: range 0
                  rng.normal(0, 0.05, 8),  # peakier, but above the 1% rule: a window narrower than the buffer
                  rng.normal(1, 0.5, 8),  # unequal ranges
                  r[::-1, 4],  # the same values: equal medians and ranges (both ties)
                  r[:, 5] + 0.5,  # the same range (exact on this grid? close enough: a near tie)
                  rng.normal(0, 3, 8),  # the retrained class peakier
                  rng.normal(-2, 1, 8)], axis=1)
    # equal medians (1.0), different samples: the unlearned class is positive
    u[:, 7], r[:, 7] = [-3, -1, 0, 0.5, 1.5, 2, 2.5, 9], [0, 0.25, 0.75, 0.875, 1.125, 1.25, 1.5, 1.75]
    r[0, 0] = np.median(u[:, 0])  # the 1% rule gives 50 although a retrained value sits amid the unlearned ones
    dyadic = rng.integers(-16, 16, (6, 4)) / 8  # exact equal ranges after a shift
    # values on the single thresholds' float64 grid k/99 (lo 0, hi 1), which float32 moves off them
    grid = rng.integers(0, 100, (6, 5)) / 99
    grid[0], grid[1] = 0.0, 1.0
    on_grid = (grid, rng.integers(0, 100, (6, 5)) / 99)
    # unlearned values exactly on the retrained (peakier) class's double thresholds
    r_peaky = rng.normal(0, 0.3, (6, 1))
    width = r_peaky.max() - r_peaky.min()
    right = np.linspace(r_peaky.min() + width - 2.0, r_peaky.max() + 2.0,
                        int(np.ceil((r_peaky.max() + 2.0 - (r_peaky.min() + width - 2.0)) * 100)))
    left = np.linspace(right[150] - width - 2.0, right[150] - width + 2.0, 400)
    on_thresholds = (np.array([[right[150]], [left[210]], [right[40]], [left[390]], [3.0], [-3.0]]), r_peaky)
    # three examples found by searching for ones that tell a slip from metric.py: equal medians where the
    # direction of the single thresholds decides epsilon...
    equal_medians = (np.array([[4.25, -5.25, 2.75, 3.5, 11.75, -9.5, -0.5, -10.75]]).T,
                     np.array([[-6.25, -0.5, 8.0, 2.75, -7.5, 14.0, -8.75, 11.0]]).T)
    # ...values on the float64 grid np.linspace(0, 11, 1100) where float32 single thresholds decide it...
    grid = np.linspace(0.0, 11.0, 1100)
    float32_grid = (grid[[[1099], [898], [715], [927], [445], [882]]], grid[[[0], [828], [577], [864], [266], [865]]])
    # ...and a retrained value exactly on a right threshold with an unlearned one just above it
    r_close = np.array([-0.5021569628791149, -0.3719938709834607, 0.43606498854457976, -0.13372242669175627,
                        -0.09011341951256127, 0.4511025825295423])
    u_close = np.array([0.4360649895445798, 0.2514948230816971, 2.5892054305702654, 8.486718150724904,
                        2.797686693201876, 9.198508631676054])
    return [ties, odd, separated_41, separated_8, (u, r), (dyadic + 0.5, dyadic), on_grid, on_thresholds,
            equal_medians, float32_grid, (u_close[:, None], r_close[:, None])]


@pytest.mark.parametrize("case", range(11))
def test_challenge_rules_match_a_transcription_of_metric_py(case):
    u, r = _challenge_cases()[case]
    expected = [_metric_py_epsilon(u[:, e], r[:, e]) for e in range(u.shape[1])]
    eps = epsilons(u, r, rules="challenge")
    assert eps.tolist() == expected
    quality = _metric_py_quality(expected, len(u))
    assert forgetting_quality(eps, num_models=len(u)) == quality
    score = forgetting_score(u, r, retain_accuracy=(0.9, 1.0), test_accuracy=(0.8, 0.8), rules="challenge")
    assert score["forgetting_quality"] == quality and score["score"] == pytest.approx(quality * 0.9)


def test_challenge_rules_edge_cases():
    eps = epsilons(np.r_[np.zeros((40, 1)), [[1e-3]]], np.full((41, 1), 9.0), rules="challenge")
    assert eps.tolist() == [50.0]  # the 1% rule
    assert epsilons(np.full((8, 1), 9.0), np.zeros((8, 1)), rules="challenge").tolist() == [50.0]  # separated
    # the challenge's bins stop at ceil(log(N - 1)): with 3 models two bins, an epsilon past them scores 0
    assert _metric_py_quality([0.2, 0.7, 1.0], 3) == forgetting_quality(np.array([0.2, 0.7, 1.0]), num_models=3) == 0.5
    assert forgetting_quality(np.array([0.2, 0.7, 1.0])) == pytest.approx(1.75 / 3)  # all_intervals bins them all
    assert forgetting_quality(np.zeros(4), num_models=2) == 0.0
    with pytest.raises(ValueError, match="as many unlearned as retrained"):
        epsilons(np.zeros((4, 3)), np.ones((5, 3)), rules="challenge")
    with pytest.raises(ValueError, match="rules"):
        epsilons(np.zeros((4, 3)), np.ones((4, 3)), rules="intervals")
    with pytest.raises(ValueError, match="no threshold"):  # metric.py's assertion
        epsilons(np.full((4, 1), 2.0), np.full((4, 1), 2.0), rules="challenge")


# ------------------------------------------------------------------------------------------------ one-model attacks

def _signals(loss, rng, classes=3):
    p_true = np.exp(-loss)
    rest = (1 - p_true)[:, None] * rng.dirichlet(np.ones(classes - 1), len(loss))
    probs = np.concatenate([p_true[:, None], rest], axis=1)
    labels = np.zeros(len(loss), dtype=int)
    return AttackSignals.from_logits(np.log(probs), labels, np.arange(len(loss)))


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

    from unlearn.data import IndexedDataset
    from unlearn.evaluation.attacks import extract_signals

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
