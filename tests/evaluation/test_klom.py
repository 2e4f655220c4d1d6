"""KLoM against a direct transcription of its definition, and its protocol (N unlearned originals, N oracles)."""

import math

import numpy as np
import pytest
from torch import nn

from unlearn.data import load_dataset
from unlearn.evaluation.klom import FLOOR, klom, margins, train_klom_models


def klom_by_definition(p_margins, q_margins, bins=20, clip=100.0):
    """One example at a time, as the definition reads: clip, bin over the combined range with np.histogram (its
    last bin holds the right edge), fractions, q floored where p has mass, KL(p || q)."""
    values = []
    for p_column, q_column in zip(np.asarray(p_margins, float).T, np.asarray(q_margins, float).T, strict=True):
        p_clipped = [min(max(v, -clip), clip) for v in p_column]
        q_clipped = [min(max(v, -clip), clip) for v in q_column]
        low, high = min(p_clipped + q_clipped), max(p_clipped + q_clipped)
        if high <= low:
            high = low + 1.0
        p_counts, _ = np.histogram(p_clipped, bins=bins, range=(low, high))
        q_counts, _ = np.histogram(q_clipped, bins=bins, range=(low, high))
        total = 0.0
        for p_count, q_count in zip(p_counts, q_counts, strict=True):
            p, q = p_count / len(p_clipped), q_count / len(q_clipped)
            if p > 0:
                total += p * math.log(p / max(q, FLOOR))
        values.append(total)
    return np.array(values)


def test_klom_matches_its_definition_on_random_margins():
    rng = np.random.default_rng(0)
    unlearned = rng.normal(1.0, 2.0, (40, 30))
    oracle = rng.normal(0.0, 1.5, (25, 30))  # the two sides may count different models
    np.testing.assert_allclose(klom(unlearned, oracle), klom_by_definition(unlearned, oracle), rtol=1e-12)
    np.testing.assert_allclose(klom(unlearned, oracle, bins=7), klom_by_definition(unlearned, oracle, bins=7),
                               rtol=1e-12)


def test_klom_clips_floors_empty_bins_and_takes_constant_sides():
    # clipping: margins beyond +-clip land in the edge bins; without it the outliers stretch the range
    unlearned = np.array([[0.0], [1.0], [250.0], [-300.0]])
    oracle = np.array([[0.5], [1.5], [2.0], [99.0]])
    np.testing.assert_allclose(klom(unlearned, oracle), klom_by_definition(unlearned, oracle))
    np.testing.assert_allclose(klom(unlearned, oracle, clip=3.0), klom_by_definition(unlearned, oracle, clip=3.0))
    assert klom(unlearned, oracle, clip=3.0)[0] != klom(unlearned, oracle)[0]
    # the floor: all of p in a bin where q has nothing gives log(1 / 1e-5)
    np.testing.assert_allclose(klom([[10.0], [10.0]], [[0.0], [0.0]]), [math.log(1 / FLOOR)])
    # constant sides: the same constant is a zero-width range, [lo, lo + 1], and KL 0
    np.testing.assert_allclose(klom(np.full((5, 2), 3.0), np.full((4, 2), 3.0)), [0.0, 0.0])
    # a constant unlearned side inside a spread oracle: p is one bin, q's fraction of that bin
    oracle = np.array([[0.0], [0.0], [5.0], [10.0]])
    expected = math.log(1 / 0.5)  # p = 1 in the first bin, where q holds 2 of 4
    np.testing.assert_allclose(klom(np.zeros((3, 1)), oracle), [expected])
    np.testing.assert_allclose(klom(np.zeros((3, 1)), oracle), klom_by_definition(np.zeros((3, 1)), oracle))


def test_klom_counts_the_maximum_that_easydubs_binning_drops():
    # both sides' largest margin is the combined maximum: np.digitize over bins 1..B drops it, this counts it
    unlearned, oracle = np.array([[0.0], [4.0]]), np.array([[0.0], [0.0], [4.0]])
    counted = klom(unlearned, oracle)[0]
    np.testing.assert_allclose(counted, 0.5 * math.log(0.5 / (2 / 3)) + 0.5 * math.log(0.5 / (1 / 3)))
    edges = np.linspace(0.0, 4.0, 21)  # EasyDUB: the maximum has digitize index 21, outside bins 1..20
    assert np.digitize([4.0], edges)[0] == 21
    assert counted > 0.0  # with the maximum dropped each side is all zeros: KL 0


def test_klom_refuses_what_it_cannot_score():
    with pytest.raises(ValueError, match=r"same examples"):
        klom(np.zeros((3, 2)), np.zeros((3, 4)))
    with pytest.raises(ValueError, match=r"\[models, examples\]"):
        klom(np.zeros(3), np.zeros(3))
    with pytest.raises(ValueError, match="not finite"):
        klom([[np.nan]], [[0.0]])
    with pytest.raises(ValueError, match="bins must be an int"):
        klom([[0.0]], [[0.0]], bins=0)


def test_margins_are_the_true_logit_minus_the_logsumexp_of_the_others():
    logits = np.array([[2.0, 0.5, -1.0], [0.0, 3.0, 1.0]])
    labels = np.array([0, 2])
    expected = [2.0 - np.logaddexp(0.5, -1.0), 1.0 - np.logaddexp(0.0, 3.0)]
    np.testing.assert_allclose(margins(logits, labels), expected)


def mlp() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))


@pytest.mark.usefixtures("one_thread")
def test_the_klom_protocol_end_to_end_on_digits(tmp_path):
    splits = load_dataset("digits", train_size=120)
    forget_ids = np.arange(0, 120, 6)  # 20 examples
    common = {"forget_ids": forget_ids, "n": 3, "folder": tmp_path, "progress": False, "epochs": 4,
              "batch_size": 32, "lr": 0.1}
    models = train_klom_models(splits.train, splits.val, mlp, method="finetune", method_config={"epochs": 1},
                               **common)
    assert models.unlearned.shape == models.oracle.shape == (3, 120 + len(splits.val))
    assert (models.group == "forget").sum() == 20 and (models.group == "validation").sum() == len(splits.val)
    assert set(models.index[models.group == "forget"]) == set(forget_ids.tolist())
    # the oracles never saw the forget set: their margins there are lower than the originals' fine-tuned ones
    forget = models.group == "forget"
    assert models.oracle[:, forget].mean() < models.unlearned[:, forget].mean()
    # (three models a side separate every example's histograms: the values here test the bookkeeping only)
    summary = models.summary()
    assert list(summary.index) == ["forget", "retain", "validation"] and (summary >= 0).all().all()
    assert list(summary.columns) == ["original", "unlearned"]
    table = models.scores()
    np.testing.assert_allclose(table["klom"], klom_by_definition(models.unlearned, models.oracle))
    np.testing.assert_allclose(table["klom_original"], klom_by_definition(models.original, models.oracle))
    np.testing.assert_allclose(summary.loc["forget", "unlearned"],
                               np.percentile(table.loc[table["group"] == "forget", "klom"], 95))
    # a second call reads the models back from the folder
    again = train_klom_models(splits.train, splits.val, mlp, method="finetune", method_config={"epochs": 1},
                              **common)
    np.testing.assert_array_equal(again.oracle, models.oracle)
    with pytest.raises(ValueError, match="n must be an int >= 2"):
        train_klom_models(splits.train, splits.val, mlp, method="finetune", **{**common, "n": 1})
    with pytest.raises(ValueError, match="distinct training indices"):
        train_klom_models(splits.train, splits.val, mlp, method="finetune", **{**common, "forget_ids": [10_000]})
