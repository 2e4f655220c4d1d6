"""RUM's memorization groups: training-set thresholds (the default) against the request's own split, what the plan
records of them, the report's groups (unlearn.algorithms.rum.group_of), and policies registered by plugins."""

import importlib.metadata
import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn
from torch.utils.data import Subset

import proxies
from unlearn import RUMConfig, unlearn
from unlearn.algorithms.rum import POLICIES, group_of, group_thresholds, partition, policies, register_policy

LEAVE = {"low": None, "medium": None, "high": None}  # every group a no-op: the tests look at the plan only


def _reference_bins(values, thresholds):
    """The obvious rule: an example goes to the first group whose upper threshold it does not exceed."""
    out = []
    for v in values:
        k = 0
        while k < len(thresholds) and v > thresholds[k]:
            k += 1
        out.append(k)
    return np.array(out)


def test_partition_by_thresholds_matches_the_obvious_rule():
    rng = np.random.default_rng(0)
    values = np.round(rng.random(200), 2)  # ties, some of them on a threshold
    thresholds = [0.25, 0.5]
    groups = partition(values, 3, thresholds=thresholds)
    expected = _reference_bins(values, thresholds)
    for k, name in enumerate(("low", "medium", "high")):
        np.testing.assert_array_equal(groups[name], np.flatnonzero(expected == k))
    # a score on a threshold goes to the less memorized group; groups may be empty
    assert {k: v.tolist() for k, v in partition(np.array([0.5, 0.9]), 3, thresholds=[0.5, 0.6]).items()} == {
        "low": [0], "medium": [], "high": [1]}
    with pytest.raises(ValueError, match="2 thresholds for 3 groups"):
        partition(values, 3, thresholds=[0.5])
    with pytest.raises(ValueError, match="non-decreasing"):
        partition(values, 3, thresholds=[0.6, 0.5])


def test_group_thresholds_are_the_quantiles_of_every_finite_score():
    values = np.array([5.0, np.nan, 1.0, 3.0, 2.0, 4.0, np.inf, 6.0])
    finite = values[np.isfinite(values)]
    np.testing.assert_allclose(group_thresholds(values, 3), np.quantile(finite, [1 / 3, 2 / 3]))
    np.testing.assert_allclose(group_thresholds(values, 2), [np.median(finite)])
    with pytest.raises(ValueError, match="no finite"):
        group_thresholds(np.full(3, np.nan), 3)


@pytest.fixture(scope="module")
def small(digits):
    """A tiny linear classifier and a 100-example training set of real digits; ``rank`` scores the training set."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    train = Subset(digits.train, range(100))
    rank = pd.Series(np.arange(100.0), index=pd.RangeIndex(100, name="index"), name="memorization")
    return model, train, rank


def _split(train, forget_ids):
    forget_ids = sorted(forget_ids)
    retain_ids = [i for i in range(len(train)) if i not in set(forget_ids)]
    return Subset(train, forget_ids), Subset(train, retain_ids)


def test_the_most_memorized_examples_are_the_high_group_whatever_the_request_size(small):
    model, train, rank = small
    forget, retain = _split(train, [98, 99])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a Series over the whole training set needs no fallback
        result = unlearn(model, forget=forget, retain=retain, scores=rank, policy=LEAVE)
    assert [(s.group, list(s.indices)) for s in result.plan] == [("high", [98, 99])]
    assert result.grouping == "training_set"
    np.testing.assert_allclose(result.thresholds, np.quantile(np.arange(100.0), [1 / 3, 2 / 3]))
    # the request's own split (the RUM paper's) is still there, as before: 1 low, 1 medium
    request = unlearn(model, forget=forget, retain=retain, scores=rank, policy=LEAVE, grouping="request")
    assert [(s.group, list(s.indices)) for s in request.plan] == [("low", [98]), ("medium", [99])]
    assert request.grouping == "request" and request.thresholds is None
    same = unlearn(model, forget=forget, retain=retain, scores=rank, policy=LEAVE,
                   config=RUMConfig(grouping="request"))
    assert [list(s.indices) for s in same.plan] == [[98], [99]]


def test_a_confidence_like_series_is_thresholded_in_its_own_direction(small):
    model, train, rank = small
    confidence = (100.0 - rank).rename("confidence")  # low confidence = memorized
    confidence.attrs["higher_is_memorized"] = False
    forget, retain = _split(train, [0, 50, 98, 99])
    by_rank = unlearn(model, forget=forget, retain=retain, scores=rank, policy=LEAVE)
    by_confidence = unlearn(model, forget=forget, retain=retain, scores=confidence, policy=LEAVE)
    groups = {s.group: list(s.indices) for s in by_confidence.plan}
    assert groups == {s.group: list(s.indices) for s in by_rank.plan} == {"low": [0], "medium": [50],
                                                                         "high": [98, 99]}
    # the thresholds are recorded in the scores' own units, ascending
    np.testing.assert_allclose(by_confidence.thresholds, np.quantile(confidence, [1 / 3, 2 / 3]))
    assert by_confidence.split.bins["high"] == pytest.approx((-np.inf, np.quantile(confidence, 1 / 3)))


def test_forget_set_scores_alone_fall_back_to_the_request_split_with_a_warning(small):
    model, train, rank = small
    forget, retain = _split(train, [10, 20, 30, 40, 50, 60])
    request = unlearn(model, forget=forget, retain=retain, scores=rank, policy=LEAVE, grouping="request")
    for only_forget in (np.arange(6.0) * 10 + 10, rank.loc[[10, 20, 30, 40, 50, 60]]):
        with pytest.warns(UserWarning, match="only the forget set's scores.*whole training set"):
            result = unlearn(model, forget=forget, retain=retain, scores=only_forget, higher_is_memorized=True,
                             policy=LEAVE)
        assert result.grouping == "request" and result.thresholds is None
        assert [list(s.indices) for s in result.plan] == [list(s.indices) for s in request.plan]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # asked for: no warning
        unlearn(model, forget=forget, retain=retain, scores=np.arange(6.0),
                higher_is_memorized=True, policy=LEAVE, grouping="request")
    with pytest.raises(ValueError, match="grouping must be one of"):
        unlearn(model, forget=forget, retain=retain, scores=rank, policy=LEAVE, grouping="forget_set")
    with pytest.raises(ValueError, match="grouping is for method='rum'"):
        unlearn(model, forget=forget, retain=retain, method="finetune", grouping="request")


def test_a_model_proxy_scores_the_whole_training_set_for_its_thresholds(small):
    model, train, _ = small
    forget, retain = _split(train, [3, 4])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = unlearn(model, forget=forget, retain=retain, proxy="loss_curvature", policy=LEAVE)
    # scored on the forget and retain sets together, in that order (each example's probes follow from its position)
    together = Subset(train, list(forget.indices) + list(retain.indices))
    everything = proxies.compute("loss_curvature", model=model, data=together, progress=False)
    assert result.grouping == "training_set"
    np.testing.assert_allclose(result.thresholds, np.quantile(everything, [1 / 3, 2 / 3]), rtol=1e-5)


def test_summary_shows_grouping_scores_and_every_column(small):
    model, train, rank = small
    forget, retain = _split(train, list(range(0, 100, 10)))
    policy = {"low": None, "medium": None,
              "high": ("finetune", {"epochs": 1, "lr": 1e-6, "batch_size": 64, "retain_per_forget": 1})}
    result = unlearn(model, forget=forget, retain=retain, scores=rank, policy=policy)
    table = result.summary()
    assert list(table.columns) == ["group", "method", "examples", "retain", "seconds", "grouping", "scores",
                                   "config"]
    assert list(table["grouping"]) == ["training_set"] * 3
    assert table["scores"].tolist() == [f"(-inf, {result.thresholds[0]:.4g}]",
                                        f"({result.thresholds[0]:.4g}, {result.thresholds[1]:.4g}]",
                                        f"({result.thresholds[1]:.4g}, inf)"]
    printed = str(table)
    assert "..." not in printed and all(c in printed for c in table.columns) and "batch_size" in printed
    assert repr(table) == printed


def test_group_of_follows_the_same_rule(small):
    model, train, rank = small
    ids = np.array([0, 50, 98, 99])
    forget, retain = _split(train, ids.tolist())
    result = unlearn(model, forget=forget, retain=retain, scores=rank, policy=LEAVE)
    planned = {int(i): s.group for s in result.plan for i in s.indices}
    assert group_of(rank, ids, grouping="training_set").to_dict() == planned
    assert group_of(rank, ids).tolist() == ["low", "low", "medium", "high"]  # the request's split, as before
    with pytest.warns(UserWarning, match="only the forget set's scores"):
        assert group_of(rank.loc[ids], ids, grouping="training_set").tolist() == group_of(rank, ids).tolist()


@pytest.fixture
def restore_policies(monkeypatch):
    saved = dict(POLICIES)
    monkeypatch.setattr(POLICIES, "_loaded", True)
    yield
    POLICIES.clear()
    POLICIES.update(saved)


# a policy an outside package exposes; the entry-point test names it (tests.algorithms.test_rum_grouping:PLUGIN_POLICY)
PLUGIN_POLICY = {"low": None, "medium": None, "high": ("finetune", {"epochs": 1, "lr": 1e-6})}



def test_register_policy_adds_a_named_policy_and_refuses_duplicates(small, restore_policies):
    model, train, rank = small
    register_policy("only_high_once", {"low": None, "medium": None, "high": ("finetune", {"epochs": 1, "lr": 1e-6})})
    assert "only_high_once" in policies() and "only_high_once" in POLICIES
    forget, retain = _split(train, [0, 50, 99])
    result = unlearn(model, forget=forget, retain=retain, scores=rank, policy="only_high_once")
    assert [(s.group, s.method) for s in result.plan] == [("low", "noop"), ("medium", "noop"), ("high", "finetune")]
    with pytest.raises(ValueError, match="already registered"):
        register_policy("only_high_once", LEAVE)
    with pytest.raises(ValueError, match="already registered"):
        register_policy("finetune_salun", LEAVE)
    register_policy("only_high_once", LEAVE, force=True)
    assert POLICIES["only_high_once"] == LEAVE
    with pytest.raises(TypeError, match="policy entry for 'high'"):
        register_policy("broken", {"low": None, "high": 3})
    with pytest.raises(TypeError, match="mapping"):
        register_policy("broken", ["finetune"])
    with pytest.raises(ValueError, match="non-empty string"):
        register_policy("", LEAVE)
    assert "broken" not in POLICIES


def test_a_plugin_policy_comes_in_through_entry_points(small, restore_policies, monkeypatch):
    model, train, rank = small
    entries = [importlib.metadata.EntryPoint(name="plugin_only_high", group="unlearn.policies",
                                             value="tests.algorithms.test_rum_grouping:PLUGIN_POLICY")]
    monkeypatch.setattr(POLICIES, "_loaded", False)  # read the entry points again
    monkeypatch.setattr(importlib.metadata, "entry_points",
                        lambda group=None: entries if group == "unlearn.policies" else [])
    forget, retain = _split(train, [0, 50, 99])
    result = unlearn(model, forget=forget, retain=retain, scores=rank, policy="plugin_only_high")
    assert [s.method for s in result.plan] == ["noop", "noop", "finetune"]
    assert "plugin_only_high" in policies()


def test_a_broken_policy_plugin_is_named(restore_policies, monkeypatch):
    broken = importlib.metadata.EntryPoint(name="broken", value="no_such_module_xyz", group="unlearn.policies")
    monkeypatch.setattr(POLICIES, "_loaded", False)  # read the entry points again
    monkeypatch.setattr(importlib.metadata, "entry_points",
                        lambda group=None: [broken] if group == "unlearn.policies" else [])
    with pytest.raises(RuntimeError, match="policy plugin 'broken'"):
        policies()
