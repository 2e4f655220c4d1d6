"""unlearn(): every method on the real digits data, the RUM scheduler, plugins and bad input."""

import copy
import importlib.metadata
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pytest
import torch
from torch.utils.data import Subset, TensorDataset

import proxies
import unlearn.algorithms.registry as registry
from unlearn import RUMConfig, create_model, methods, register_method, train, unlearn
from unlearn.algorithms.random_label import RandomLabelConfig, relabelled_losses
from unlearn.algorithms.rum.policies import resolve_policy, retain_sample
from unlearn.algorithms.sgd import forget_accuracy, run_sgd
from unlearn.data import IndexedDataset, materialize
from unlearn.training import top1_accuracy

FAST = {  # fewer epochs than the anchors: the tests check behaviour, the benchmark checks quality
    "retrain": {"epochs": 3}, "finetune": {"epochs": 2}, "neggrad": {}, "neggrad_plus": {"epochs": 2},
    "l1_sparse": {"epochs": 2}, "random_label": {"epochs": 2, "lr": 0.01}, "salun": {"epochs": 2},
    "scrub": {"epochs": 2, "msteps": 1}, "influence": {},
}


@pytest.fixture(scope="module")
def trained(digits):
    torch.manual_seed(0)
    recorder = proxies.TrainingRecorder(len(digits.train))
    model, _ = train(create_model("digits_cnn", num_classes=10, in_channels=1), digits.train, epochs=15,
                     batch_size=64, recorder=recorder, progress=False, device="cpu")
    rng = np.random.default_rng(0)
    forget_ids = np.sort(rng.choice(len(digits.train), 90, replace=False))
    retain_ids = np.setdiff1d(np.arange(len(digits.train)), forget_ids)
    return model, recorder, Subset(digits.train, forget_ids.tolist()), Subset(digits.train, retain_ids.tolist())


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _identical(model, state):
    return all(torch.equal(model.state_dict()[k], v) for k, v in state.items())


def test_builtin_methods_are_registered():
    assert set(FAST) | {"rum"} <= set(methods())


@pytest.mark.parametrize("method", sorted(FAST))
def test_every_method_returns_a_new_model_and_leaves_the_original_alone(trained, method):
    model, _, forget, retain = trained
    before = _state(model)
    result = unlearn(model, forget=forget, retain=retain, method=method, config=FAST[method])
    assert result.model is not model and _identical(model, before)
    assert not _identical(result.model, before), f"{method} changed nothing"
    assert [s.method for s in result.plan] == [method] and len(result.plan[0].indices) == 90
    assert result.seconds > 0 and not result.model.training


def test_neggrad_lowers_forget_accuracy(trained):
    model, _, forget, retain = trained
    assert top1_accuracy(model, forget) == 1.0
    default = unlearn(model, forget=forget, retain=retain, method="neggrad")
    strong = unlearn(model, forget=forget, retain=retain, method="neggrad",
                     config={"lr": 0.05, "epochs": 5, "batch_size": 32})
    # a random forget set is mostly typical digits the model also gets right unseen: ascent costs it a few
    assert top1_accuracy(strong.model, forget) <= 0.97
    loss = torch.nn.functional.cross_entropy
    x, y = torch.stack([forget[i][0] for i in range(len(forget))]), torch.tensor([forget[i][1] for i in range(90)])
    with torch.no_grad():
        assert loss(default.model(x), y) > loss(model(x), y)  # even the anchor's gentle ascent moves the loss up


def test_finetune_keeps_retain_accuracy(trained, digits):
    model, _, forget, retain = trained
    result = unlearn(model, forget=forget, retain=retain, method="finetune")
    assert top1_accuracy(result.model, retain) >= top1_accuracy(model, retain) - 0.01
    assert top1_accuracy(result.model, digits.test) >= 0.9


def test_rum_runs_one_step_per_group_in_the_stated_order(trained):
    model, recorder, forget, retain = trained
    scores = np.linspace(0, 1, 90)[::-1]  # forget example 0 is the most memorized
    policy = {"low": ("finetune", {"epochs": 1}), "medium": None, "high": ("neggrad", {"lr": 1e-3})}
    result = unlearn(model, forget=forget, retain=retain, scores=scores, higher_is_memorized=True, policy=policy,
                     config=RUMConfig(order=("high", "low", "medium")))
    assert [(s.group, s.method) for s in result.plan] == [("high", "neggrad"), ("low", "finetune"),
                                                          ("medium", "noop")]
    forget_index = np.asarray(forget.indices)
    np.testing.assert_array_equal(result.plan[0].indices, forget_index[:30])  # highest scores: first 30
    np.testing.assert_array_equal(result.plan[1].indices, forget_index[60:])
    assert result.plan[0].config["lr"] == 1e-3 and result.plan[1].config["epochs"] == 1
    assert list(result.summary()["examples"]) == [30, 30, 30]


def test_rum_with_a_confidence_proxy_flips_its_direction(trained):
    model, recorder, forget, retain = trained
    confidence = proxies.compute("confidence", recording=recorder)
    policy = {"low": None, "medium": None, "high": ("neggrad", {"lr": 1e-3})}
    by_proxy = unlearn(model, forget=forget, retain=retain, proxy="confidence", recording=recorder, policy=policy,
                       grouping="request")
    forget_conf = confidence.loc[np.asarray(forget.indices)]
    assert set(by_proxy.plan[-1].indices) == set(forget_conf.nsmallest(30).index)  # least confident = high
    by_series = unlearn(model, forget=forget, retain=retain, scores=confidence, policy=policy, grouping="request")
    assert _identical(by_series.model, _state(by_proxy.model))
    # a column of a table of proxies carries the table's {column: direction} attrs
    table = proxies.compute(["confidence", "csl"], recording=recorder)
    by_column = unlearn(model, forget=forget, retain=retain, scores=table["confidence"], policy=policy,
                        grouping="request")
    assert _identical(by_column.model, _state(by_proxy.model))
    renamed = table["confidence"].rename("conf")
    with pytest.raises(ValueError, match="named 'conf': pass one column"):
        unlearn(model, forget=forget, retain=retain, scores=renamed, policy=policy)


@pytest.mark.slow  # the anchor policy: 5 + 5 + 10 epochs of neggrad_plus, over the retain set too
def test_rum_with_a_model_based_proxy_runs_an_anchor_policy_end_to_end(trained):
    model, _, forget, retain = trained
    # a model-based proxy needs no recording; the built-in anchor policies run end to end
    result = unlearn(model, forget=forget, retain=retain, proxy="loss_curvature", policy="neggrad_plus")
    assert [s.method for s in result.plan] == ["neggrad_plus"] * 3
    assert [s.config["alpha"] for s in result.plan] == [0.99, 0.97, 0.97]


def test_a_user_dataset_of_pairs_and_any_classifier_work(digits):
    x, y = digits.train.inputs[:120].flatten(1), digits.train.targets[:120]
    forget, retain = TensorDataset(x[:20], y[:20]), TensorDataset(x[20:], y[20:])
    model = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))
    result = unlearn(model, forget=forget, retain=retain, scores=np.arange(20.0), higher_is_memorized=True,
                     policy={"low": "finetune", "medium": "neggrad_plus", "high": "salun"})
    assert [s.group for s in result.plan] == ["low", "medium", "high"]


def test_a_third_party_method_plugs_in_through_entry_points(trained, monkeypatch):
    model, _, forget, retain = trained
    entry = importlib.metadata.EntryPoint(name="shrink", value="tests.plugin_method", group="unlearn.methods")
    monkeypatch.setattr(registry._METHODS, "_loaded", False)  # read the entry points again
    monkeypatch.setattr(importlib.metadata, "entry_points",
                        lambda group=None: [entry] if group == "unlearn.methods" else [])
    assert "plugin_shrink" in methods()
    result = unlearn(model, forget=forget, retain=retain, scores=np.arange(90.0), higher_is_memorized=True,
                     policy={"low": None, "medium": None, "high": ("plugin_shrink", {"factor": 0.25})})
    assert result.plan[-1].method == "plugin_shrink" and result.plan[-1].config == {"factor": 0.25}
    first = next(result.model.parameters())
    assert torch.allclose(first, next(model.parameters()) * 0.25)


def test_a_broken_plugin_is_named(monkeypatch):
    entry = importlib.metadata.EntryPoint(name="broken", value="no_such_module_xyz", group="unlearn.methods")
    monkeypatch.setattr(registry._METHODS, "_loaded", False)  # read the entry points again
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda group=None: [entry])
    with pytest.raises(RuntimeError, match="plugin 'broken'"):
        methods()


def test_registration_refuses_duplicates():
    @dataclass
    class Config:
        pass

    with pytest.raises(ValueError, match="already registered"):
        register_method("finetune", config=Config)(lambda *a, **k: None)
    with pytest.raises(TypeError, match="dataclass"):
        register_method("bad", config=dict)
    with pytest.raises(ValueError, match="names a step that leaves its examples alone"):
        register_method("noop", config=Config)  # a policy's step that leaves its group
    with pytest.raises(ValueError, match="already registered"):  # rum is a registered method like the others
        register_method("rum", config=Config)(lambda *a, **k: None)
    assert registry.get_method("rum").config is RUMConfig


@pytest.mark.parametrize("method, settings, error, message", [
    ("finetune", {"epochs": "5"}, TypeError, "epochs must be a whole number, got str '5'"),
    ("finetune", {"epochs": 2.5}, TypeError, "epochs must be a whole number"),
    ("finetune", {"batch_size": 0}, ValueError, "batch_size must be >= 1"),
    ("finetune", {"lr": float("nan")}, ValueError, r"lr must be a finite number in \[0.0, inf\]"),
    ("finetune", {"lr": float("inf")}, ValueError, "lr must be a finite number"),
    ("finetune", {"momentum": True}, TypeError, "momentum must be a number, got bool"),
    ("neggrad_plus", {"alpha": 1.5}, ValueError, r"alpha must be a finite number in \[0.0, 1.0\]"),
    ("l1_sparse", {"alpha": -1.0}, ValueError, "alpha must be a finite number"),
    ("salun", {"mask_ratio": 0.0}, ValueError, r"mask_ratio must be a finite number in \(0.0, 1.0\]"),
    ("scrub", {"temperature": 0.0}, ValueError, "temperature must be a finite number"),
    ("scrub", {"msteps": -1}, ValueError, "msteps must be >= 0"),
    ("influence", {"alpha": float("nan")}, ValueError, "alpha must be a finite number"),
    ("influence", {"damping": 0.0}, ValueError, "damping must be a finite number"),
])
def test_bad_settings_are_named(trained, method, settings, error, message):
    model, recorder, forget, retain = trained
    with pytest.raises(error, match=message):
        unlearn(model, forget=forget, retain=retain, method=method, config=settings)


def test_bad_rum_settings_and_seeds_are_named(trained):
    model, recorder, forget, retain = trained
    with pytest.raises(TypeError, match="groups must be a whole number, got float 2.5"):
        RUMConfig(groups=2.5)
    with pytest.raises(TypeError, match="seed must be a whole number, got str 'a'"):
        unlearn(model, forget=forget, retain=retain, method="finetune", seed="a")
    assert unlearn(model, forget=forget, retain=retain, scores=np.zeros(90),
                   higher_is_memorized=True, seed=-1,  # any seed torch takes
                   policy={"low": None, "medium": None, "high": ("neggrad", {"lr": 1e-3})}).plan
    with pytest.raises(ValueError, match=r"policy has entries for \['hihg'\]"):
        unlearn(model, forget=forget, retain=retain, scores=np.zeros(90), higher_is_memorized=True,
                policy={"low": None, "medium": None, "high": None, "hihg": "finetune"})
    with pytest.raises(ValueError, match=r"policy 'finetune_salun' has entries for \['medium'\], which are not"):
        unlearn(model, forget=forget, retain=retain, scores=np.zeros(90),
                higher_is_memorized=True, config=RUMConfig(groups=2))
    with pytest.raises(ValueError, match=r"finetune does not take recording= \(recording is for method='rum'\); "
                                         "its settings: epochs, lr"):
        unlearn(model, forget=forget, retain=retain, method="finetune", recording=recorder)


def test_bad_input_is_named(trained, digits):
    model, recorder, forget, retain = trained
    with pytest.raises(ValueError, match="forget set is empty"):
        unlearn(model, forget=Subset(digits.train, []), retain=retain, method="finetune")
    with pytest.raises(ValueError, match="share 1 examples"):
        unlearn(model, forget=forget, retain=Subset(digits.train, [forget.indices[3], 0 if forget.indices[0] else 1]),
                method="finetune")
    with pytest.raises(ValueError, match=r"one value per forget example \(90\)"):
        unlearn(model, forget=forget, retain=retain, scores=np.zeros(10), higher_is_memorized=True)
    with pytest.raises(ValueError, match="must be finite"):
        unlearn(model, forget=forget, retain=retain, scores=np.full(90, np.nan), higher_is_memorized=True)
    with pytest.raises(ValueError, match="no value for 90 forget examples"):
        unlearn(model, forget=forget, retain=retain, scores=pd.Series(np.zeros(3), index=[100000, 100001, 100002]))
    with pytest.raises(ValueError, match=r"unknown unlearning method 'forget_harder'; expected one of \[.*'finetune'"):
        unlearn(model, forget=forget, retain=retain, method="forget_harder")
    with pytest.raises(ValueError, match="labels span"):
        unlearn(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 3)), forget=forget, retain=retain,
                method="finetune")
    with pytest.raises(ValueError, match=r"logits \[batch, classes\]"):
        unlearn(torch.nn.Flatten(0), forget=forget, retain=retain, method="finetune")
    with pytest.raises(ValueError, match="needs scores= .* or proxy="):
        unlearn(model, forget=forget, retain=retain)
    with pytest.raises(ValueError, match="pass recording="):
        unlearn(model, forget=forget, retain=retain, proxy="confidence")
    with pytest.raises(ValueError, match="unknown settings \\['lr_decay'\\]"):
        unlearn(model, forget=forget, retain=retain, method="finetune", config={"lr_decay": 0.1})
    with pytest.raises(ValueError, match="unknown policy"):
        unlearn(model, forget=forget, retain=retain, scores=np.zeros(90), higher_is_memorized=True, policy="gentle")
    with pytest.raises(ValueError, match="policy names unknown method 'erase'"):
        unlearn(model, forget=forget, retain=retain, scores=np.zeros(90), higher_is_memorized=True,
                policy={"low": None, "medium": None, "high": "erase"})
    with pytest.raises(TypeError, match="nn.Module"):
        unlearn("model.pt", forget=forget, retain=retain, method="finetune")
    with pytest.raises(ValueError, match="for method='rum'"):
        unlearn(model, forget=forget, retain=retain, method="finetune", scores=np.zeros(90))


def test_subsets_of_a_plain_dataset_keep_their_training_index():
    # a user's TensorDataset of (x, y): the training index is the position in it, also through Subset
    torch.manual_seed(0)
    data = TensorDataset(torch.randn(200, 8), torch.randint(0, 3, (200,)))
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    scores = pd.Series(np.arange(200.0))  # by training index: higher index = more memorized
    forget, retain = Subset(data, range(100, 130)), Subset(data, range(130, 200))
    result = unlearn(model, forget=forget, retain=retain, scores=scores, higher_is_memorized=True, grouping="request",
                     policy={"low": None, "medium": None, "high": "finetune"})
    assert result.plan[-1].indices.tolist() == list(range(120, 130))
    with pytest.raises(ValueError, match="share 10 examples"):
        unlearn(model, forget=forget, retain=Subset(data, range(120, 160)), method="finetune")


def test_separately_built_datasets_are_not_compared_by_index():
    from unlearn.data import IndexedDataset

    forget = IndexedDataset(torch.randn(10, 4), torch.randint(0, 2, (10,)))  # both carry indices 0..N-1
    retain = IndexedDataset(torch.randn(30, 4), torch.randint(0, 2, (30,)))
    model = torch.nn.Linear(4, 2)
    assert unlearn(model, forget=forget, retain=retain, method="finetune", config={"epochs": 1}).plan
    pairs = [TensorDataset(torch.randn(n, 4), torch.randint(0, 2, (n,))) for n in (10, 30)]
    forget, retain = (materialize(d) for d in pairs)  # positions, not training indices
    assert unlearn(model, forget=forget, retain=retain, method="finetune", config={"epochs": 1}).plan


def test_retrain_resets_every_parameter_or_refuses():
    from unlearn.algorithms.retrain import reinitialize

    for name in ("digits_cnn", "cnn28", "resnet18"):
        model = create_model(name, num_classes=10, in_channels=1)
        before = _state(model)
        reinitialize(model, seed=1)
        assert not any(torch.equal(model.state_dict()[k], v) for k, v in before.items()
                       if "weight" in k and "bn" not in k and v.ndim > 1)

    class Scaled(torch.nn.Module):  # a bare parameter: no layer knows how to reset it
        def __init__(self):
            super().__init__()
            self.attn = torch.nn.MultiheadAttention(4, 1)  # resets through _reset_parameters
            self.temperature = torch.nn.Parameter(torch.ones(1))

    model = Scaled()
    before = _state(model)
    with pytest.raises(ValueError, match=r"re-initialise parameters \['temperature'\]"):
        reinitialize(model, seed=1)
    assert not torch.equal(model.attn.in_proj_weight, before["attn.in_proj_weight"])


def test_sets_built_with_training_indices_are_compared_across_objects(digits):
    from unlearn.pipeline import subset

    forget, retain = subset(digits.train, np.arange(30)), subset(digits.train, np.arange(20, 400))
    with pytest.raises(ValueError, match="share 10 examples"):
        unlearn(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10)), forget=forget, retain=retain,
                method="finetune")


@pytest.mark.parametrize("method", ["random_label", "salun"])
def test_relabelling_methods_work_with_batch_norm(method):
    torch.manual_seed(0)
    data = TensorDataset(torch.randn(64, 6), torch.randint(0, 3, (64,)))
    model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.BatchNorm1d(8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    result = unlearn(model, forget=Subset(data, range(10)), retain=Subset(data, range(10, 64)), method=method,
                     config={"epochs": 1, "batch_size": 16})
    assert not result.model.training


def test_salun_mask_keeps_exactly_the_ratio_even_when_saliencies_tie():
    from unlearn.algorithms.salun import saliency_mask
    from unlearn.data import IndexedDataset

    torch.manual_seed(0)
    inputs = torch.randn(20, 100)
    inputs[:, 40:] = 0  # 60% of the inputs are zero: their weights get exactly zero gradient
    model = torch.nn.Linear(100, 10)
    mask = saliency_mask(model, IndexedDataset(inputs, torch.randint(0, 10, (20,))), 0.5, 8, torch.device("cpu"))
    kept = sum(int(m.sum()) for m in mask.values())
    total = sum(p.numel() for p in model.parameters())
    assert kept == round(0.5 * total) == 505  # not every weight, although 600 saliencies tie at exactly 0
    assert mask["weight"][:, :40].all() and mask["bias"].all()  # the 410 salient weights are all in


# retain subsampling: each RUM step trains on a seeded random sample of ceil(k * group size) retain examples

def _spy(monkeypatch):
    """Register a method that records the retain set it is handed and leaves the model alone."""
    seen = []

    @dataclass
    class SpyConfig:
        epochs: int = 1

    def spy(model, forget, retain, config, *, seed, device):
        seen.append(retain.indices.numpy().copy())
        return model

    monkeypatch.setitem(registry._METHODS, "spy", registry.Method("spy", spy, SpyConfig, ""))
    return seen


def test_rum_runs_with_different_seeds_share_no_step_sample(trained):
    # step seeds are drawn from (seed, step number): with seed + number, seed 0's fine-tune step (number 2) would
    # reuse seed 1's random-label step's sample (number 1), the groups being the same size
    model, recorder, forget, retain = trained
    samples = {seed: [s.retain_indices for s in unlearn(model, forget=forget, retain=retain, scores=np.zeros(90),
                                                        higher_is_memorized=True,
                                                        policy="random_label_repair", seed=seed).plan
                      if s.method != "noop"] for seed in (0, 1)}
    assert len(samples[0]) == 2 and all(len(s) == 480 for s in samples[0])
    assert not any(np.array_equal(a, b) for a in samples[0] for b in samples[1])
    assert not np.array_equal(*samples[0])  # nor do two steps of one run


def test_retain_sample_is_seeded_sized_and_capped():
    first = retain_sample(1000, 30, retain_per_forget=2.5, seed=7)
    assert len(first) == 75 and len(np.unique(first)) == 75 and np.all(np.diff(first) > 0)
    np.testing.assert_array_equal(first, retain_sample(1000, 30, retain_per_forget=2.5, seed=7))
    assert not np.array_equal(first, retain_sample(1000, 30, retain_per_forget=2.5, seed=8))
    assert len(retain_sample(1000, 3, retain_per_forget=0.1, seed=0)) == 1  # rounds up: never an empty sample
    np.testing.assert_array_equal(retain_sample(50, 30, retain_per_forget=2, seed=0), np.arange(50))  # capped
    np.testing.assert_array_equal(retain_sample(50, 30, retain_per_forget=None, seed=0), np.arange(50))


def test_rum_steps_see_only_their_recorded_retain_sample(trained, monkeypatch):
    model, _, forget, retain = trained
    seen = _spy(monkeypatch)
    retain_ids, forget_ids = np.asarray(retain.indices), np.asarray(forget.indices)
    policy = {"low": None, "medium": ("spy", {"retain_per_forget": 0.5}), "high": "spy"}
    result = unlearn(model, forget=forget, retain=retain, scores=np.arange(90.0),
                     higher_is_memorized=True, policy=policy,
                     config=RUMConfig(retain_per_forget=3))
    assert [s.retain_size for s in result.plan] == [0, 15, 90]  # noop, the entry's 0.5 x 30, the config's 3 x 30
    assert list(result.summary()["retain"]) == [0, 15, 90]
    assert "retain_per_forget" not in result.plan[1].config  # the scheduler's key never reaches the method
    for step, handed in zip(result.plan[1:], seen, strict=True):
        np.testing.assert_array_equal(step.retain_indices, handed)  # the plan records exactly what the method saw
        assert np.isin(handed, retain_ids).all() and not np.isin(handed, forget_ids).any()
    assert not np.array_equal(seen[0][:15], seen[1][:15])  # each step draws its own sample
    again = unlearn(model, forget=forget, retain=retain, scores=np.arange(90.0),
                    higher_is_memorized=True, policy=policy,
                    config=RUMConfig(retain_per_forget=3))
    other_seed = unlearn(model, forget=forget, retain=retain, scores=np.arange(90.0),
                         higher_is_memorized=True, policy=policy,
                         config=RUMConfig(retain_per_forget=3), seed=1)
    for a, b, c in zip(result.plan, again.plan, other_seed.plan, strict=True):
        np.testing.assert_array_equal(a.retain_indices, b.retain_indices)
        assert a.retain_size == c.retain_size and (a.retain_size == 0 or not np.array_equal(a.retain_indices,
                                                                                             c.retain_indices))
    without = unlearn(model, forget=forget, retain=retain, scores=np.arange(90.0),
                      higher_is_memorized=True, policy=policy)  # no default
    assert [s.retain_size for s in without.plan] == [0, 15, len(retain)]


def test_a_group_can_take_several_steps_in_turn(trained, monkeypatch):
    model, _, forget, retain = trained
    seen = _spy(monkeypatch)
    policy = {"low": None, "medium": "spy",
              "high": [("spy", {"retain_per_forget": 2}), {"method": "spy", "config": {"retain_per_forget": 1}}]}
    result = unlearn(model, forget=forget, retain=retain, scores=np.arange(90.0),
                     higher_is_memorized=True, policy=policy)
    assert [(s.group, s.method, s.retain_size) for s in result.plan] == [
        ("low", "noop", 0), ("medium", "spy", len(retain)), ("high", "spy", 60), ("high", "spy", 30)]
    np.testing.assert_array_equal(result.plan[2].indices, result.plan[3].indices)  # both unlearn the same group
    assert not np.isin(seen[2], seen[1]).all()  # each step draws its own retain sample
    for step, handed in zip(result.plan[1:], seen, strict=True):
        np.testing.assert_array_equal(step.retain_indices, handed)


def test_a_list_of_two_steps_is_not_read_as_a_pair(trained, monkeypatch):
    model, _, forget, retain = trained
    _spy(monkeypatch)
    policy = {"low": ("noop", {}), "medium": {"method": "noop"},
              "high": ["spy", {"method": "spy", "config": {"retain_per_forget": 1}}]}
    result = unlearn(model, forget=forget, retain=retain, scores=np.arange(90.0),
                     higher_is_memorized=True, policy=policy)
    assert [(s.group, s.method, s.retain_size) for s in result.plan] == [
        ("low", "noop", 0), ("medium", "noop", 0), ("high", "spy", len(retain)), ("high", "spy", 30)]


@pytest.mark.parametrize("entry", [[None, "spy"], ["spy", ["spy"]], [], ["spy", ("noop", {})]])
def test_a_list_of_steps_holds_only_steps(trained, monkeypatch, entry):
    model, _, forget, retain = trained
    seen = _spy(monkeypatch)
    with pytest.raises(TypeError, match="policy entry for 'high'"):
        unlearn(model, forget=forget, retain=retain, scores=np.arange(90.0), higher_is_memorized=True,
                policy={"low": "spy", "medium": "spy", "high": entry})
    assert seen == []


def test_retain_examples_outside_the_sample_do_not_matter(trained):
    model, _, forget, retain = trained
    before = _state(model)
    policy = {"low": None, "medium": None, "high": ("finetune", {"epochs": 1, "lr": 0.05, "retain_per_forget": 4})}
    scores = np.arange(90.0)
    result = unlearn(model, forget=forget, retain=retain, scores=scores,
                     higher_is_memorized=True, policy=policy, seed=3)
    assert _identical(model, before) and not _identical(result.model, before)
    sampled = np.isin(np.asarray(retain.indices), result.plan[-1].retain_indices)
    assert sampled.sum() == 120 == result.plan[-1].retain_size
    data, outside = materialize(retain), torch.from_numpy(~sampled)
    inputs, targets = data.inputs.clone(), data.targets.clone()
    inputs[outside], targets[outside] = torch.randn_like(inputs[outside]), (targets[outside] + 1) % 10
    altered = IndexedDataset(inputs, targets, indices=data.indices)  # every example outside the sample is garbage
    again = unlearn(model, forget=forget, retain=altered, scores=scores,
                    higher_is_memorized=True, policy=policy, seed=3)
    assert _identical(again.model, _state(result.model))


def test_a_retain_sample_as_large_as_the_retain_set_is_the_whole_set(trained):
    model, _, forget, retain = trained
    policy = {"low": None, "medium": None, "high": ("finetune", {"epochs": 1})}
    whole = unlearn(model, forget=forget, retain=retain, scores=np.arange(90.0),
                    higher_is_memorized=True, policy=policy)
    capped = unlearn(model, forget=forget, retain=retain, scores=np.arange(90.0),
                     higher_is_memorized=True, policy=policy,
                     config={"retain_per_forget": len(retain) / 30})
    assert capped.plan[-1].retain_size == len(retain)
    assert _identical(capped.model, _state(whole.model))


@pytest.mark.parametrize("policy", ["random_label_fast", "random_label_repair", "random_label_to_expected"])
def test_the_cheap_builtin_policies_train_on_small_retain_samples(trained, policy):
    model, recorder, forget, retain = trained
    before = _state(model)
    result = unlearn(model, forget=forget, retain=retain, scores=np.arange(90.0),
                     higher_is_memorized=True, policy=policy, recording=recorder)
    assert _identical(model, before) and not _identical(result.model, before)
    expected = []
    for group, steps in resolve_policy(policy, ["low", "medium", "high"]).items():
        expected += [(group, method, math.ceil(settings["retain_per_forget"] * 30)) for method, settings in steps]
        expected += [] if steps else [(group, "noop", 0)]
    assert [(s.group, s.method, s.retain_size) for s in result.plan] == expected
    assert all(s.retain_size < len(retain) for s in result.plan)


@pytest.mark.parametrize("bad", [0, -1.0, float("nan"), float("inf")])
def test_bad_retain_per_forget_is_refused_before_any_step(trained, monkeypatch, bad):
    model, _, forget, retain = trained
    seen = _spy(monkeypatch)
    with pytest.raises(ValueError, match="retain_per_forget must be a positive finite number"):
        RUMConfig(retain_per_forget=bad)
    with pytest.raises(ValueError, match="retain_per_forget must be a positive finite number"):
        unlearn(model, forget=forget, retain=retain, scores=np.arange(90.0),
                higher_is_memorized=True, config={"retain_per_forget": bad})
    with pytest.raises(ValueError, match="retain_per_forget of group 'high' must be a positive finite number"):
        unlearn(model, forget=forget, retain=retain, scores=np.arange(90.0), higher_is_memorized=True,
                policy={"low": "spy", "medium": "spy", "high": ("spy", {"retain_per_forget": bad})})
    assert seen == []  # refused while checking the policy, before the first group ran
    with pytest.raises(ValueError, match="positive finite number"):
        retain_sample(100, 10, retain_per_forget=bad, seed=0)


@pytest.mark.parametrize("bad", ["8", True, [8]])
def test_retain_per_forget_of_the_wrong_type_is_refused(bad):
    with pytest.raises(TypeError, match="retain_per_forget must be a positive number or None"):
        RUMConfig(retain_per_forget=bad)


# ----------------------------------------------------------------------------- stopping at a target accuracy
def _logged_relabelling(model, forget, retain, target, log):
    """random_label's loop through run_sgd, logging the forget accuracy before every step (the last entry: after
    the last step taken)."""
    config = RandomLabelConfig(epochs=3, lr=0.05, batch_size=64, target_accuracy=target)
    generator, cpu = torch.Generator().manual_seed(0), torch.device("cpu")

    def losses(epoch):
        batches = relabelled_losses(model, forget, retain, config.batch_size, 10, generator, cpu)
        while True:
            log.append(forget_accuracy(model, forget, cpu))
            model.train()
            loss = next(batches, None)
            if loss is None:
                log.pop()  # the epoch ended: the next epoch logs the same state again
                return
            yield loss

    run_sgd(model, config, losses, seed=0, forget=forget)
    log.append(forget_accuracy(model, forget, cpu))


def test_a_step_stops_at_the_first_check_that_reaches_its_target(trained):
    model, _, forget, retain = trained
    forget, retain = materialize(forget), materialize(Subset(retain, range(400)))
    reference = []  # accuracy after 0, 1, 2... steps of an unstopped run
    _logged_relabelling(copy.deepcopy(model), forget, retain, None, reference)
    check_every = math.ceil(len(forget) / 64)
    target = 0.6
    assert reference[0] == 1.0 and min(reference) <= target  # the run crosses the target, it can stop
    stop = next(s for s in range(0, len(reference), check_every) if reference[s] <= target)
    stopped = []
    _logged_relabelling(copy.deepcopy(model), forget, retain, target, stopped)
    assert len(stopped) - 1 == stop  # steps taken
    assert stopped == reference[:stop + 1]  # the checks did not change training
    unreached = []
    _logged_relabelling(copy.deepcopy(model), forget, retain, 0.0, unreached)
    assert unreached == reference  # a target never reached: every epoch runs, as without one


def test_a_target_already_met_takes_no_step_and_retrain_refuses_one(trained):
    model, _, forget, retain = trained
    before = _state(model)
    result = unlearn(model, forget=forget, retain=retain, method="random_label",
                     config={"epochs": 2, "target_accuracy": 1.0})
    assert _identical(result.model, before)
    with pytest.raises(ValueError, match="retrain cannot stop at a target_accuracy"):
        unlearn(model, forget=forget, retain=retain, method="retrain", config={"epochs": 1, "target_accuracy": 0.5})
    numpy_target = unlearn(model, forget=forget, retain=retain, method="finetune",
                           config={"epochs": 1, "target_accuracy": np.float32(1.0)})
    assert _identical(numpy_target.model, before)  # a numpy fraction is a fraction
    for bad in (1.5, -0.1, True, "0.5"):
        with pytest.raises(ValueError, match="target_accuracy must be None or a fraction"):
            unlearn(model, forget=forget, retain=retain, method="finetune", config={"target_accuracy": bad})


EXPECTED_POLICY = {"low": None, "medium": ("finetune", {"epochs": 1, "target_accuracy": "expected"}),
                   "high": ("random_label", {"epochs": 5, "lr": 0.05, "batch_size": 64, "target_accuracy": "expected",
                                             "retain_per_forget": 4})}


def test_rum_stops_each_group_at_its_expected_accuracy(trained):
    model, recorder, forget, retain = trained
    indices = np.asarray(forget.indices)
    scores = pd.Series(np.arange(90.0), index=indices)
    expected = pd.Series(np.linspace(1.0, 0.4, 90), index=indices)  # the more memorized, the lower
    result = unlearn(model, forget=forget, retain=retain, scores=scores,
                     higher_is_memorized=True, expected_accuracy=expected,
                     policy=EXPECTED_POLICY)
    targets = {s.group: s.config["target_accuracy"] for s in result.plan if s.method != "noop"}
    assert targets == pytest.approx({"medium": expected.iloc[30:60].mean(), "high": expected.iloc[60:].mean()})
    high = Subset(forget.dataset, [int(i) for i in indices[60:]])
    assert top1_accuracy(result.model, high) <= targets["high"]  # reached within 5 epochs
    # without expected_accuracy= the recording's early_accuracy proxy estimates it
    estimated = proxies.compute("early_accuracy", recording=recorder).loc[indices]
    result = unlearn(model, forget=forget, retain=retain, scores=scores,
                     higher_is_memorized=True, recording=recorder, policy=EXPECTED_POLICY)
    assert result.plan[1].config["target_accuracy"] == pytest.approx(estimated.iloc[30:60].mean())


def test_expected_accuracy_bad_input_is_named(trained, monkeypatch):
    model, _, forget, retain = trained
    seen = _spy(monkeypatch)
    scores = np.arange(90.0)
    spied = {"low": "spy", "medium": "spy", "high": ("finetune", {"target_accuracy": "expected"})}
    with pytest.raises(ValueError, match="pass expected_accuracy= .* or recording="):
        unlearn(model, forget=forget, retain=retain, scores=scores, higher_is_memorized=True, policy=spied)
    with pytest.raises(ValueError, match="expected_accuracy must be fractions in"):
        unlearn(model, forget=forget, retain=retain, scores=scores,
                higher_is_memorized=True, policy=spied, expected_accuracy=np.full(90, 1.5))
    with pytest.raises(ValueError, match=r"expected_accuracy must hold one value per forget example \(90\)"):
        unlearn(model, forget=forget, retain=retain, scores=scores,
                higher_is_memorized=True, policy=spied, expected_accuracy=np.ones(3))
    values = np.full((2, len(forget.dataset), len(proxies.kernels.SIGNAL_COLUMNS)), np.nan, dtype=np.float32)
    values[:, 0] = 1.0  # only example 0 was ever presented: the others have no estimate
    never_presented = proxies.TrainingRecorder.from_values(values)
    with pytest.raises(ValueError, match="the early_accuracy estimate from recording= must be finite"):
        unlearn(model, forget=forget, retain=retain, scores=scores,
                higher_is_memorized=True, policy=spied, recording=never_presented)
    with pytest.raises(ValueError, match="target_accuracy of group 'high' must be a fraction, None or 'expected'"):
        unlearn(model, forget=forget, retain=retain, scores=scores, higher_is_memorized=True,
                policy={"low": "spy", "medium": "spy", "high": ("finetune", {"target_accuracy": "retrained"})})
    with pytest.raises(ValueError, match="policy step 'influence' of group 'high': unknown settings "
                                         r"\['target_accuracy'\]"):
        unlearn(model, forget=forget, retain=retain, scores=scores,
                higher_is_memorized=True, expected_accuracy=np.ones(90),
                policy={"low": "spy", "medium": "spy", "high": ("influence", {"target_accuracy": "expected"})})
    with pytest.raises(ValueError, match="policy step 'retrain' of group 'medium': retrain cannot stop"):
        unlearn(model, forget=forget, retain=retain, scores=scores, higher_is_memorized=True,
                policy={"low": "spy", "medium": ("retrain", {"target_accuracy": 0.5}), "high": "spy"})
    with pytest.raises(ValueError, match="expected_accuracy is for method='rum'"):
        unlearn(model, forget=forget, retain=retain, method="finetune", expected_accuracy=np.ones(90))
    with pytest.raises(ValueError, match="'expected' is for steps of a rum policy"):
        unlearn(model, forget=forget, retain=retain, method="finetune", config={"target_accuracy": "expected"})
    assert seen == []  # every refusal came before the first group ran


def _most_memorized(recorder, digits, n=2):
    """Forget the n least confident training examples (the most memorized by the confidence proxy)."""
    confidence = proxies.compute("confidence", recording=recorder)
    forget_ids = np.sort(confidence.nsmallest(n).index.to_numpy())
    retain_ids = np.setdiff1d(np.arange(len(digits.train)), forget_ids)
    return confidence, Subset(digits.train, forget_ids.tolist()), Subset(digits.train, retain_ids.tolist())


def test_rum_unlearns_the_most_memorized_examples_as_the_high_group(trained, digits):
    """A request for the 2 most memorized examples: ranked against the training set both are ``high`` and get
    unlearned; ranked against each other (the paper's split) they are ``low`` and ``medium``, no-ops here."""
    model, recorder, _, _ = trained
    confidence, forget, retain = _most_memorized(recorder, digits)
    assert top1_accuracy(model, forget) == 1.0
    before = _state(model)
    result = unlearn(model, forget=forget, retain=retain, proxy="confidence", recording=recorder,
                     policy="random_label_fast")
    assert [(s.group, s.method, sorted(s.indices)) for s in result.plan] == [
        ("high", "random_label", sorted(forget.indices))]
    assert result.grouping == "training_set"
    np.testing.assert_allclose(result.thresholds, np.quantile(confidence, [1 / 3, 2 / 3]))
    assert top1_accuracy(result.model, forget) < 1.0 and not _identical(result.model, before)
    request = unlearn(model, forget=forget, retain=retain, proxy="confidence", recording=recorder,
                      policy="random_label_fast", grouping="request")
    assert [(s.group, s.method, len(s.indices)) for s in request.plan] == [("low", "noop", 1), ("medium", "noop", 1)]
    assert _identical(request.model, before) and top1_accuracy(request.model, forget) == 1.0


def test_a_recording_of_another_training_set_is_refused(trained, digits):
    model, recorder, forget, retain = trained
    leave = {"low": None, "medium": None, "high": None}
    assert recorder.num_classes == 10 and recorder.labels.dtype == np.int64
    np.testing.assert_array_equal(recorder.labels, digits.train.targets.numpy())  # every example was presented
    unlearn(model, forget=forget, retain=retain, proxy="confidence", recording=recorder, policy=leave)  # its own
    # the same inputs under other labels (as another dataset of the same shape would have)
    other = IndexedDataset(digits.train.inputs, (digits.train.targets + 1) % 10)
    other_forget, other_retain = Subset(other, list(forget.indices)), Subset(other, list(retain.indices))
    with pytest.raises(ValueError, match=r"recording= was made on another training set: .*labels.* 1293 of 1293"):
        unlearn(model, forget=other_forget, retain=other_retain, proxy="confidence", recording=recorder,
                policy=leave)
    small = proxies.TrainingRecorder.from_values(recorder.values[:, :100], labels=recorder.labels[:100],
                                                 num_classes=10)
    with pytest.raises(ValueError, match=r"recording= holds 100 examples but .* training index 1292"):
        unlearn(model, forget=forget, retain=retain, proxy="confidence", recording=small, policy=leave)
    wider = create_model("digits_cnn", num_classes=12, in_channels=1)
    with pytest.raises(ValueError, match="recording= was made with 10 classes but the model returns 12"):
        unlearn(wider, forget=forget, retain=retain, proxy="confidence", recording=recorder, policy=leave)
    # the expected-accuracy estimate reads the recording too: refused just the same
    with pytest.raises(ValueError, match="another training set"):
        unlearn(model, forget=other_forget, retain=other_retain, scores=np.arange(90.0),
                higher_is_memorized=True, recording=recorder,
                policy=EXPECTED_POLICY)


def test_a_saved_recording_keeps_its_fingerprint_and_an_old_one_still_loads(trained, digits, tmp_path):
    model, recorder, forget, retain = trained
    recorder.save(tmp_path / "rec.npz")
    loaded = proxies.TrainingRecorder.load(tmp_path / "rec.npz")
    np.testing.assert_array_equal(loaded.labels, recorder.labels)
    assert loaded.num_classes == 10 and loaded.num_examples == len(digits.train)
    # written before recordings carried a fingerprint: only signals and columns; it loads, the check is skipped
    np.savez(tmp_path / "old.npz", signals=recorder.values, columns=np.array(recorder.columns))
    old = proxies.TrainingRecorder.load(tmp_path / "old.npz")
    assert old.labels is None and old.num_classes is None
    np.testing.assert_array_equal(old.values, recorder.values)
    other = IndexedDataset(digits.train.inputs, (digits.train.targets + 1) % 10)
    leave = {"low": None, "medium": None, "high": None}
    unlearn(model, forget=Subset(other, list(forget.indices)), retain=Subset(other, list(retain.indices)),
            proxy="confidence", recording=old, policy=leave)
    never = proxies.TrainingRecorder(5)
    assert never.labels.tolist() == [-1] * 5 and never.num_classes is None  # nothing presented yet
    with pytest.raises(ValueError, match="labels must be -1"):
        proxies.TrainingRecorder.from_values(recorder.values[:, :3], labels=np.array([0, -2, 1]))
    with pytest.raises(ValueError, match=r"labels must be \[3\]"):
        proxies.TrainingRecorder.from_values(recorder.values[:, :3], labels=np.array([0, 1]))


def test_a_methods_settings_pass_through_as_keywords_and_others_are_refused(trained):
    model, recorder, forget, retain = trained
    by_config = unlearn(model, forget=forget, retain=retain, method="finetune", config={"epochs": 1, "lr": 0.05})
    by_keyword = unlearn(model, forget=forget, retain=retain, method="finetune", config={"lr": 0.05}, epochs=1)
    assert by_keyword.plan[0].config == by_config.plan[0].config
    assert _identical(by_keyword.model, _state(by_config.model))
    # rum's settings too (policy= and grouping= are two of them): a keyword wins over config='s
    leave = {"low": None, "medium": None, "high": ("finetune", {"epochs": 1})}
    scores = pd.Series(np.arange(len(forget) + len(retain), dtype=float),
                       index=np.concatenate([forget.indices, retain.indices]))
    rum_config = unlearn(model, forget=forget, retain=retain, scores=scores, higher_is_memorized=True,
                         config=RUMConfig(policy=leave, retain_per_forget=2.0, groups=3))
    rum_keyword = unlearn(model, forget=forget, retain=retain, scores=scores,
                          higher_is_memorized=True, policy=leave, retain_per_forget=2.0,
                          config={"retain_per_forget": 8.0})
    assert [s.retain_size for s in rum_keyword.plan] == [s.retain_size for s in rum_config.plan]
    assert _identical(rum_keyword.model, _state(rum_config.model))
    with pytest.raises(ValueError, match=r"finetune does not take proxy=, policy= \(proxy is for method='rum'; "
                                         r"policy is for method='rum'\); its settings: epochs, lr, batch_size"):
        unlearn(model, forget=forget, retain=retain, method="finetune", proxy="confidence", policy="neggrad_plus")
    with pytest.raises(ValueError, match=r"neggrad does not take alpha= \(alpha is for methods .*'neggrad_plus'"):
        unlearn(model, forget=forget, retain=retain, method="neggrad", alpha=0.5)
    with pytest.raises(ValueError, match=r"rum does not take epoch=; its settings: groups, order, policy, "
                                         "retain_per_forget, grouping; its inputs: scores, proxy, recording"):
        unlearn(model, forget=forget, retain=retain, scores=scores,
                higher_is_memorized=True, epoch=None)  # a name no method takes: a typo
    assert unlearn(model, forget=forget, retain=retain, method="finetune", config={"epochs": 1},
                   scores=None, policy=None).plan  # None is as if not given


def test_a_method_declares_its_inputs_and_receives_them(trained):
    model, recorder, forget, retain = trained

    @dataclass
    class ShiftConfig:
        by: float = 0.0

    def shift(model, forget, retain, config, *, seed, device, offset=None):
        with torch.no_grad():
            next(model.parameters()).add_(config.by + (offset or 0.0))
        return model

    with pytest.raises(ValueError, match=r"inputs of method 'shift' must be keywords other than .*got \['seed'\]"):
        register_method("shift", config=ShiftConfig, inputs=("seed",))
    with pytest.raises(ValueError, match=r"and its config's fields; got \['by'\]"):
        register_method("shift", config=ShiftConfig, inputs=("by",))
    registry.methods()
    try:
        register_method("shift", config=ShiftConfig, inputs=("offset",))(shift)
        before = next(model.parameters()).detach().clone()
        result = unlearn(model, forget=forget, retain=retain, method="shift", by=1.0, offset=2.0)
        assert torch.equal(next(result.model.parameters()).detach(), before + 3.0)
        assert result.plan[0].config == {"by": 1.0} and result.plan[0].method == "shift"
        with pytest.raises(ValueError, match=r"shift does not take scores= .*its settings: by; its inputs: offset"):
            unlearn(model, forget=forget, retain=retain, method="shift", scores=np.zeros(90))
    finally:
        del registry._METHODS["shift"]


def test_a_result_saves_its_model_and_plan_whole(trained, tmp_path):
    import json

    import pandas as pd

    from unlearn import load_checkpoint

    model, recorder, forget, retain = trained
    result = unlearn(model, forget=forget, retain=retain, proxy="confidence", recording=recorder,
                     policy="random_label_fast")
    plan_path = result.save(tmp_path / "unlearned.pt")
    assert plan_path == tmp_path / "unlearned.plan.csv"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["unlearned.plan.csv", "unlearned.pt"]
    loaded = load_checkpoint(create_model("digits_cnn", num_classes=10, in_channels=1), tmp_path / "unlearned.pt")
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), result.model.state_dict().values(),
                                                  strict=True))
    plan = pd.read_csv(plan_path)
    assert plan["group"].tolist() == [step.group for step in result.plan]
    assert sorted(i for text in plan["indices"] for i in json.loads(text)) == sorted(forget.indices)
    assert [json.loads(c) for c in plan["config"]] == [json.loads(json.dumps(s.config, default=str))
                                                       for s in result.plan]
