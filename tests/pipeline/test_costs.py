"""What a plan costs against retraining, estimated before it runs, and the run's default policy that keeps it
bounded."""

import numpy as np
import pandas as pd
import pytest
from torch.utils.data import Subset

from unlearn.algorithms.rum import plan_cost
from unlearn.pipeline import RunConfig
from unlearn.pipeline.stages import warn_if_costlier_than_retraining

POLICY = {"low": None, "medium": ("finetune", {"epochs": 3}),
          "high": [("neggrad", {"epochs": 2}), ("random_label", {"epochs": 1, "retain_per_forget": 2})]}


def test_a_plans_cost_counts_what_each_step_passes_over_per_epoch():
    # medium: fine-tuning passes over the retain set, 3 x 100; high: gradient ascent over the group, 2 x 3, then
    # random labels over the group and a sample of 2 per example, 1 x (3 + 6)
    assert plan_cost(POLICY, {"low": 5, "medium": 4, "high": 3}, 100) == 300 + 6 + 9
    assert plan_cost(POLICY, {"low": 5, "medium": 0, "high": 3}, 100) == 15  # a group without examples: no steps
    assert plan_cost(POLICY, {"low": 5, "medium": 4, "high": 3}, 100, retain_per_forget=1) == 3 * 4 + 6 + 9
    # a sample as large as the retain set is the retain set
    assert plan_cost(POLICY, {"low": 0, "medium": 0, "high": 80}, 100) == 2 * 80 + (80 + 100)


def test_the_run_follows_a_bounded_policy_unless_told_otherwise():
    assert RunConfig().chosen_policy == "random_label_to_expected"
    assert RunConfig(dataset="fortunes").chosen_policy == "npo_graded"
    assert RunConfig(policy="finetune_salun").chosen_policy == "finetune_salun"
    assert RunConfig(method="finetune").chosen_policy is None
    assert RunConfig(method_config={"policy": "neggrad_plus"}).chosen_policy is None  # the method's own setting
    assert RunConfig().policy is None  # config.toml keeps what the user chose: nothing


def test_a_plan_costlier_than_retraining_is_warned_of_before_it_runs(digits):
    train = digits.train
    scores = pd.Series(np.linspace(0, 1, len(train)), name="memorization")  # a registered name: its direction
    forget, retain = Subset(train, range(0, len(train), 10)), Subset(train, [i for i in range(len(train)) if i % 10])
    config = RunConfig(epochs=3)
    with pytest.warns(UserWarning, match=r"policy finetune_salun passes over about 5\.\dx as many examples as "
                                         r"retraining .* the recipe's 3 epochs .* cheaper: --policy random_label_fast"):
        ratio = warn_if_costlier_than_retraining("finetune_salun", scores, forget, retain, config)
    assert ratio == pytest.approx(plan_cost("finetune_salun", {"low": 43, "medium": 43, "high": 44}, len(retain))
                                  / (3 * len(retain)), rel=0.05)
    with pytest.warns(UserWarning, match="passes over up to .* stop early once a group falls to its expected"):
        warn_if_costlier_than_retraining("random_label_to_expected", scores, forget, retain, config)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert warn_if_costlier_than_retraining("random_label_fast", scores, forget, retain, config) < 1
        assert warn_if_costlier_than_retraining("finetune_salun", scores, forget, retain, RunConfig()) < 1  # 30 ep
