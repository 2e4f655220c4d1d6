"""Exposure (the Secret Sharer): the rank estimate against its definition and tf-privacy's procedure, the
skew-normal one against scipy, and the model version end to end on a tiny GPT-2 that saw one canary."""

import math
import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats
from torch import nn

import proxies
from proxies.batching import IndexedDataset
from proxies.exposure import exposure, exposure_from_perplexities, log_perplexities, skewnorm_log_cdf
from proxies.sequences import IGNORE_INDEX, CausalLM

transformers = pytest.importorskip("transformers")

VOCAB = 64
FORMAT = b"the secret is "


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see tests/conftest.py


def secrets(digits: list[str], indices: list[int] | None = None) -> IndexedDataset:
    """``"the secret is " + digits`` as byte tokens ``1 + byte % 63``; only the digits are scored."""
    texts = [FORMAT + d.encode() for d in digits]
    length = max(map(len, texts))
    ids = torch.zeros(len(texts), length, dtype=torch.long)
    labels = torch.full((len(texts), length), IGNORE_INDEX)
    for i, text in enumerate(texts):
        tokens = torch.tensor([1 + b % (VOCAB - 1) for b in text])
        ids[i, :len(tokens)] = tokens
        labels[i, len(FORMAT):len(tokens)] = tokens[len(FORMAT):]
    return IndexedDataset(ids, labels, indices=None if indices is None else torch.tensor(indices),
                          task=CausalLM(pad_id=0))


def tiny_gpt2() -> nn.Module:
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=VOCAB, n_positions=32, n_embd=32, n_layer=1, n_head=2,
                                     bos_token_id=0, eos_token_id=0)
    return transformers.GPT2LMHeadModel(config).eval()


ALL_SECRETS = [f"{i:03d}" for i in range(1000)]
CANARY = "281"


@pytest.fixture(scope="module")
def inserted():
    """A tiny GPT-2 trained 30 AdamW steps on the one canary sentence (the Secret Sharer's insertion)."""
    model = tiny_gpt2().train()
    canary = secrets([CANARY])
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(30):
        loss = canary.task.loss(canary.task.forward(model, canary.inputs), canary.targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


# ------------------------------------------------------------------------------------ from log-perplexities

def rank_by_definition(canary: list[float], references: list[float]) -> list[float]:
    """``log2 |R| - log2 rank``, rank 1 + the references at or below the canary, one canary at a time."""
    return [math.log2(len(references)) - math.log2(1 + sum(r <= c for r in references)) for c in canary]


def rank_as_tf_privacy(canary: list[float], references: list[float]) -> list[float]:
    """tf-privacy's procedure: sort (perplexity, -1 for a reference / i for secret i), so that a reference goes
    before a secret it ties with, and count the references before each secret."""
    ordered = sorted([(r, -1) for r in references] + [(c, i) for i, c in enumerate(canary)])
    seen, ranks = 0, {}
    for _, who in ordered:
        if who == -1:
            seen += 1
        else:
            ranks[who] = seen + 1
    return [math.log2(len(references)) - math.log2(ranks[i]) for i in range(len(canary))]


def test_rank_exposure_matches_its_definition_and_tf_privacy():
    rng = np.random.default_rng(0)
    references = rng.integers(0, 40, 300).astype(float)  # many ties
    canary = np.concatenate([rng.integers(-5, 45, 50).astype(float), [-1.0, 100.0]])
    got = exposure_from_perplexities(canary, references, method="rank")
    np.testing.assert_allclose(got, rank_by_definition(canary.tolist(), references.tolist()), rtol=1e-12)
    np.testing.assert_allclose(got, rank_as_tf_privacy(canary.tolist(), references.tolist()), rtol=1e-12)
    assert got[-2] == math.log2(300)  # ahead of every reference
    assert got[-1] == math.log2(300) - math.log2(301)  # behind every reference


def test_skewnorm_exposure_is_scipys():
    rng = np.random.default_rng(1)
    references = 20 + rng.gamma(2.0, 3.0, 400)  # a right-skewed spread
    canary = np.array([-50.0, 15.0, 20.0, 24.0, 30.0, 45.0])
    got = exposure_from_perplexities(canary, references, method="skewnorm")
    params = stats.skewnorm.fit(references)
    assert (np.diff(got) < 0).all()  # lower perplexity, higher exposure
    np.testing.assert_allclose(got[2:], -np.log2(stats.skewnorm.cdf(canary[2:], *params)), rtol=1e-9)
    # in the left tail scipy's cdf loses digits (at 15: 2e-7) and then rounds to 0, its logcdf to -inf (at -50):
    # there the exposure is the integral's, finite and right
    assert stats.skewnorm.logcdf(15.0, *params) < -50 and np.isneginf(stats.skewnorm.logcdf(-50.0, *params))
    np.testing.assert_allclose(got[:2], [-skewnorm_log_cdf_by_mpmath(x, *params) / math.log(2) for x in canary[:2]],
                               rtol=1e-12)


def skewnorm_log_cdf_by_mpmath(x: float, shape: float, loc: float, scale: float) -> float:
    """The skew-normal log cdf by 40-digit quadrature of its density (slow, obvious, no underflow)."""
    mpmath = pytest.importorskip("mpmath")
    mpmath.mp.dps = 40
    a, z = mpmath.mpf(shape), (mpmath.mpf(x) - loc) / scale
    density = lambda t: 2 * mpmath.npdf(t) * mpmath.ncdf(a * t)  # noqa: E731
    top = mpmath.log(density(z))
    steps = [0, *(10.0 ** -k for k in range(5, -1, -1)), mpmath.inf]
    return float(top + mpmath.log(mpmath.quad(lambda u: mpmath.exp(mpmath.log(density(z - u)) - top), steps)))


@pytest.mark.slow
def test_skewnorm_log_cdf_is_continuous_where_it_switches_to_the_integral():
    """Either side of the switch (log cdf -50), scipy's and the integral agree: the switch is seamless."""
    shape = 4.0
    near = [x for x in np.linspace(-3.0, -1.0, 120) if -60 < stats.skewnorm.logcdf(x, shape) < -40]
    assert near
    got = skewnorm_log_cdf(np.array(near), shape)
    np.testing.assert_allclose(got, stats.skewnorm.logcdf(np.array(near), shape), rtol=1e-7)
    assert got[0] == pytest.approx(skewnorm_log_cdf_by_mpmath(near[0], shape, 0.0, 1.0), rel=1e-12)


def test_sum_or_mean_of_one_format_ranks_alike():
    rng = np.random.default_rng(2)
    sums, canary = rng.normal(30, 4, 200), rng.normal(26, 4, 10)
    tokens = 9  # every candidate of one format has as many scored tokens
    np.testing.assert_array_equal(exposure_from_perplexities(canary, sums),
                                  exposure_from_perplexities(canary / tokens, sums / tokens))
    np.testing.assert_allclose(exposure_from_perplexities(canary, sums, method="skewnorm"),
                               exposure_from_perplexities(canary / tokens, sums / tokens, method="skewnorm"),
                               rtol=1e-3)


def test_series_nan_and_bad_inputs():
    canary = pd.Series([1.0, np.nan], index=pd.Index([12, 40], name="index"))
    got = exposure_from_perplexities(canary, [0.5, 2.0])
    assert got.index.tolist() == [12, 40] and got.iloc[0] == 0.0 and np.isnan(got.iloc[1])
    with pytest.raises(ValueError, match=r"unknown exposure method 'zlib'; expected one of \['rank', 'skewnorm'\]"):
        exposure_from_perplexities([1.0], [2.0], method="zlib")
    with pytest.raises(ValueError, match="references is empty"):
        exposure_from_perplexities([1.0], [])
    with pytest.raises(ValueError, match="references must be finite"):
        exposure_from_perplexities([1.0], [2.0, np.nan])
    with pytest.raises(ValueError, match="needs at least 3 reference perplexities"):
        exposure_from_perplexities([1.0], [2.0, 3.0], method="skewnorm")
    with pytest.raises(ValueError, match="not all equal"):
        exposure_from_perplexities([1.0], [2.0, 2.0, 2.0], method="skewnorm")


# ------------------------------------------------------------------------------------------- from a model

@pytest.mark.slow  # a tiny GPT-2: make test-slow
def test_log_perplexity_is_the_summed_nll_of_the_scored_tokens():
    model = tiny_gpt2()
    data = secrets(["281", "7", "12345"])  # padded to different lengths
    expected = []
    with torch.no_grad():
        for ids, labels in zip(data.inputs, data.targets, strict=True):
            expected.append(sum(-torch.log_softmax(model(ids[None, :t]).logits[0, -1], -1)[ids[t]].item()
                                for t in range(1, len(ids)) if labels[t] != IGNORE_INDEX))
    got = log_perplexities(model, data, batch_size=2, progress=False)
    np.testing.assert_allclose(got.to_numpy(), expected, rtol=1e-5)


@pytest.mark.slow
def test_the_inserted_canary_has_the_top_exposure(inserted):
    canaries = secrets([CANARY, "117", "999"], indices=[500, 501, 502])
    every = log_perplexities(inserted, secrets(ALL_SECRETS), batch_size=256, progress=False)
    assert int(every.idxmin()) == int(CANARY)  # the model ranks the inserted secret first of all 1000
    for method in ("rank", "skewnorm"):
        references = secrets([s for s in ALL_SECRETS if s not in (CANARY, "117", "999")])
        got = proxies.compute("exposure", model=inserted, canaries=canaries, references=references, method=method,
                              batch_size=256, progress=False)
        assert got.index.tolist() == [500, 501, 502] and got.attrs["higher_is_memorized"] is True
        others = every.drop([int(CANARY), 117, 999]).to_numpy()
        mine = every.loc[[int(CANARY), 117, 999]].to_numpy()
        np.testing.assert_allclose(got.to_numpy(), exposure_from_perplexities(mine, others, method=method),
                                   rtol=1e-6)
        if method == "rank":
            assert got.loc[500] == math.log2(997)  # lowest perplexity: exposure log2 |R|
        assert got.loc[500] > got.loc[501] and got.loc[500] > got.loc[502]


def test_canaries_and_references_of_other_lengths_are_warned_about():
    model = tiny_gpt2()
    with pytest.warns(UserWarning, match=r"score different numbers of tokens \(\[3, 4\]\)"):
        exposure(model, secrets(["281"]), secrets(["1234", "5678", "0000"]), progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        exposure(model, secrets(["281"]), secrets(["123", "567", "000"]), progress=False)
    with pytest.raises(ValueError, match="unknown exposure method"):
        exposure(model, secrets(["281"]), secrets(["123"]), method="interpolation")


@pytest.mark.slow  # a tiny GPT-2: make test-slow
def test_exposure_is_the_same_on_every_device(inserted, device):
    canaries, references = secrets([CANARY, "117"]), secrets([f"{i:03d}" for i in range(300, 400)])
    here = exposure(inserted, canaries, references, progress=False)
    there = exposure(inserted, canaries, references, device=device, progress=False)
    assert there.iloc[0] == here.iloc[0] == math.log2(100)
    np.testing.assert_allclose(log_perplexities(inserted, references, device=device, progress=False),
                               log_perplexities(inserted, references, progress=False), rtol=1e-4)
    assert next(inserted.parameters()).device.type == "cpu"
