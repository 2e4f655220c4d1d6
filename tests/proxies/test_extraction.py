"""Extraction probability, (n, p)-discoverable extraction, exact memorization and extraction strength, each against
a slow, obvious reference: a tiny GPT-2 trained briefly on Debian's fortunes, called on a growing prefix one token at
a time, and ``generate`` sampling for the extraction probability itself."""

import math
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn
from torch.utils.data import Subset

import proxies
from proxies.batching import IndexedDataset, Streamed
from proxies.extraction import (
    discoverable_extraction,
    exact_memorization,
    extraction_chance,
    extraction_probability,
    extraction_strength,
    samples_needed,
)
from proxies.sequences import IGNORE_INDEX, CausalLM, sequence_signals

transformers = pytest.importorskip("transformers")

FORTUNES = Path("/usr/share/games/fortunes")
VOCAB, LENGTH, PREFIX, SUFFIX = 64, 32, 8, 8


def read_fortunes(limit: int = 300) -> list[bytes]:
    """The first ``limit`` fortunes (entries between lines holding only ``%``), as Latin-1 bytes."""
    entries: list[bytes] = []
    for path in sorted(FORTUNES.iterdir()):
        if path.suffix in (".dat", ".u8") or not path.is_file():
            continue
        lines: list[str] = []
        for line in path.read_text(encoding="latin-1").splitlines():
            if line.strip() == "%":
                if lines:
                    entries.append("\n".join(lines).encode("latin-1"))
                lines = []
            else:
                lines.append(line)
        if len(entries) >= limit:
            break
    return entries[:limit]


def tokenize(entries: list[bytes], length: int = LENGTH) -> IndexedDataset:
    """Bytes as tokens ``1 + byte % 63`` (0 pads and ends text), cut to ``length``, right-padded, all scored."""
    ids = torch.zeros(len(entries), length, dtype=torch.long)
    for i, entry in enumerate(entries):
        tokens = [1 + b % (VOCAB - 1) for b in entry[:length]]
        ids[i, :len(tokens)] = torch.tensor(tokens)
    labels = ids.masked_fill(ids == 0, IGNORE_INDEX)
    return IndexedDataset(ids, labels, task=CausalLM(pad_id=0))


def tiny_gpt2() -> nn.Module:
    config = transformers.GPT2Config(vocab_size=VOCAB, n_positions=64, n_embd=32, n_layer=1, n_head=2,
                                     bos_token_id=0, eos_token_id=0)
    return transformers.GPT2LMHeadModel(config)


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see tests/conftest.py


@pytest.fixture(scope="module")
def fortunes() -> IndexedDataset:
    if not FORTUNES.is_dir():
        pytest.skip(f"Debian's fortunes are not installed ({FORTUNES}; apt-get install fortunes)")
    return tokenize(read_fortunes())


@pytest.fixture(scope="module")
def trained(fortunes):
    """A tiny GPT-2 trained 120 AdamW steps on 32 full-length fortunes (their positions returned too), enough to
    make some suffixes likely (p_z from 0.01 to 0.9) and leave the others unlikely."""
    torch.manual_seed(0)
    model = tiny_gpt2()
    lengths = (fortunes.targets != IGNORE_INDEX).sum(1)
    seen = torch.nonzero(lengths == LENGTH).flatten()[:32]
    task, optimizer = fortunes.task, torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(120):
        loss = task.loss(task.forward(model, fortunes.inputs[seen]), fortunes.targets[seen])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval(), seen


# ------------------------------------------------------------------------------------- the slow, obvious loops

def sampling_distribution(logits: torch.Tensor, temperature: float, top_k: int | None,
                          top_p: float | None) -> torch.Tensor:
    """The next-token distribution of a sampling scheme, built from its definition in float64."""
    logits = logits.double()
    if temperature == 0:
        return torch.nn.functional.one_hot(logits.argmax(), len(logits)).double()
    scaled = logits / temperature
    probs = scaled.softmax(0)
    if top_k is not None:
        kth = sorted(scaled.tolist(), reverse=True)[top_k - 1]
        probs = torch.where(scaled >= kth, probs, 0.0)
        probs = probs / probs.sum()
    if top_p is not None:
        kept, mass = [], 0.0
        for token in sorted(range(len(probs)), key=lambda j: -probs[j].item()):
            kept.append(token)
            mass += probs[token].item()
            if mass >= top_p:
                break
        mask = torch.zeros(len(probs), dtype=torch.bool)
        mask[kept] = True
        probs = torch.where(mask, probs, 0.0)
        probs = probs / probs.sum()
    return probs


def growing_prefix_logits(model: nn.Module, tokens: torch.Tensor, start: int, stop: int) -> list[torch.Tensor]:
    """The model's next-token logits after ``tokens[:t]`` for t in ``start..stop-1``, one call per prefix."""
    with torch.no_grad():
        return [model(tokens[None, :t]).logits[0, -1] for t in range(start, stop)]


SCHEMES = {
    "greedy": {"temperature": 0.0},
    "temperature 0.7": {"temperature": 0.7},
    "top-k 5": {"top_k": 5},
    "top-p 0.9": {"top_p": 0.9},
    "combined": {"temperature": 0.7, "top_k": 5, "top_p": 0.9},
}


@pytest.fixture(scope="module")
def reference_case(fortunes, trained):
    """Twelve sequences (six the model trained on, six it did not) and their growing-prefix logits."""
    model, seen = trained
    unseen = [i for i in range(len(fortunes)) if i not in set(seen.tolist())
              and int((fortunes.targets[i] != IGNORE_INDEX).sum()) >= PREFIX + SUFFIX][:6]
    positions = seen[:6].tolist() + unseen
    logits = [growing_prefix_logits(model, fortunes.inputs[i], PREFIX, PREFIX + SUFFIX) for i in positions]
    return Subset(fortunes, positions), positions, logits


@pytest.mark.parametrize("scheme", SCHEMES.values(), ids=SCHEMES.keys())
@pytest.mark.slow  # trains a tiny GPT-2: make test-slow
def test_extraction_probability_matches_a_token_by_token_loop(fortunes, trained, reference_case, scheme):
    model, _ = trained
    data, positions, prefix_logits = reference_case
    got = extraction_probability(model, data, prefix_length=PREFIX, suffix_length=SUFFIX, batch_size=5,
                                 progress=False, **scheme)
    expected = []
    for i, rows in zip(positions, prefix_logits, strict=True):
        targets = fortunes.inputs[i, PREFIX:PREFIX + SUFFIX]
        q = [sampling_distribution(row, scheme.get("temperature", 1.0), scheme.get("top_k"), scheme.get("top_p"))
             for row in rows]
        expected.append(sum(math.log(d[t].item()) if d[t] > 0 else -math.inf for d, t in zip(q, targets, strict=True)))
    expected = np.array(expected)
    assert got.index.tolist() == positions
    assert np.isfinite(expected).sum() >= 3  # not a test of -inf == -inf alone
    np.testing.assert_array_equal(np.isneginf(got.to_numpy()), np.isneginf(expected))
    finite = np.isfinite(expected)
    np.testing.assert_allclose(got.to_numpy()[finite], expected[finite], rtol=1e-4, atol=1e-4)


@pytest.mark.slow  # trains a tiny GPT-2: make test-slow
def test_greedy_extraction_is_what_greedy_generation_reproduces(fortunes, trained):
    model, seen = trained
    positions = seen.tolist() + list(range(8))
    got = extraction_probability(model, Subset(fortunes, positions), prefix_length=PREFIX, suffix_length=SUFFIX,
                                 temperature=0, progress=False)
    prompts = fortunes.inputs[positions, :PREFIX]
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = model.generate(prompts, attention_mask=torch.ones_like(prompts), do_sample=False,
                             max_new_tokens=SUFFIX, pad_token_id=0)
    reproduced = (out[:, PREFIX:] == fortunes.inputs[positions, PREFIX:PREFIX + SUFFIX]).all(1)
    assert set(got.unique()) <= {0.0, -math.inf}
    assert (got == 0).tolist() == reproduced.tolist()
    assert 0 < int(reproduced.sum()) < len(positions)


def sampled_rate(model, tokens: torch.Tensor, samples: int, scheme: dict) -> float:
    """The fraction of ``generate`` samples after the prefix that reproduce the suffix exactly."""
    prompt = tokens[:PREFIX].repeat(samples, 1)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = model.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=True, max_new_tokens=SUFFIX,
                             temperature=scheme.get("temperature", 1.0), top_k=scheme.get("top_k", 0),
                             top_p=scheme.get("top_p", 1.0), pad_token_id=0)
    return float((out[:, PREFIX:PREFIX + SUFFIX] == tokens[PREFIX:PREFIX + SUFFIX]).all(1).double().mean())


@pytest.mark.parametrize("scheme", [pytest.param(s, marks=pytest.mark.slow) for name, s in SCHEMES.items()
                                    if name != "greedy"] + [pytest.param({}, marks=pytest.mark.slow)],
                         ids=[n for n in SCHEMES if n != "greedy"] + ["plain"])  # make test-slow: ~0.5 s each
def test_extraction_probability_agrees_with_sampling(fortunes, trained, scheme):
    """Monte Carlo: 4,000 ``generate(do_sample=True)`` draws for the trained sequence whose p_z is nearest 0.5
    (p_z in [0.2, 0.9]): the binomial standard error is <= 3.2% of p_z, so 10% is >= 3 of them."""
    model, seen = trained
    log_p = extraction_probability(model, Subset(fortunes, seen.tolist()), prefix_length=PREFIX,
                                   suffix_length=SUFFIX, progress=False, **scheme)
    p_z = np.exp(log_p)
    candidates = p_z[(p_z >= 0.2) & (p_z <= 0.9)]
    assert len(candidates), f"no trained sequence has p_z in [0.2, 0.9]: {p_z.round(3).tolist()}"
    index = int((candidates - 0.5).abs().idxmin())
    torch.manual_seed(1)
    rate = sampled_rate(model, fortunes.inputs[index], 4000, scheme)
    assert abs(rate / p_z[index] - 1) < 0.1, (rate, p_z[index])


@pytest.mark.slow  # trains a tiny GPT-2: make test-slow
def test_batches_subsets_streams_and_the_registry_agree(fortunes, trained):
    model, _ = trained
    data = Subset(fortunes, list(range(40, 60)))
    options = {"prefix_length": PREFIX, "suffix_length": SUFFIX, "top_k": 5, "progress": False}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # some of these fortunes are too short
        whole = extraction_probability(model, data, batch_size=64, **options)
        pieces = extraction_probability(model, Streamed(data), batch_size=3, **options)
        registered = proxies.compute("extraction_probability", model=model, data=data, **options)
    pd.testing.assert_series_equal(whole, pieces, rtol=1e-5)
    assert whole.index.tolist() == list(range(40, 60))
    np.testing.assert_allclose(registered.to_numpy(), whole.to_numpy(), rtol=1e-6)
    assert registered.attrs["higher_is_memorized"] is True


@pytest.mark.slow  # trains a tiny GPT-2: make test-slow
def test_model_is_left_as_it_was(fortunes):
    model = tiny_gpt2().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    extraction_probability(model, Subset(fortunes, range(10, 30)), prefix_length=4, suffix_length=4,
                           progress=False, device="cpu")
    exact_memorization(model, Subset(fortunes, range(10, 30)), progress=False)
    assert model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.slow  # trains a tiny GPT-2: make test-slow
def test_too_short_sequences_get_nan_and_one_warning(fortunes, trained):
    """A sequence ends at its last scored token: three whose labels stop at 10 tokens are too short."""
    model, _ = trained
    labels = fortunes.targets[:7].clone()
    labels[[1, 4, 5], 10:] = IGNORE_INDEX
    data = IndexedDataset(fortunes.inputs[:7], labels, task=fortunes.task)
    with pytest.warns(UserWarning, match=r"3 of 7 sequences have fewer than prefix_length \+ suffix_length = 16") \
            as caught:
        got = extraction_probability(model, data, prefix_length=PREFIX, suffix_length=SUFFIX, batch_size=2,
                                     progress=False)
    assert len([w for w in caught if "fewer than" in str(w.message)]) == 1
    assert got.isna().tolist() == [False, True, False, False, True, True, False]


@pytest.mark.slow  # trains a tiny GPT-2: make test-slow
def test_no_sequence_long_enough_is_an_error(fortunes, trained):
    model, _ = trained
    longest = int((fortunes.targets[:20] != IGNORE_INDEX).sum(1).max())
    with pytest.raises(ValueError, match=f"= 40 tokens: the longest has {longest}"):
        extraction_probability(model, Subset(fortunes, range(20)), prefix_length=30, suffix_length=10,
                               progress=False)


class Refuses(nn.Module):
    def forward(self, x):
        raise AssertionError("the arguments should have been refused before any forward pass")


@pytest.mark.parametrize(("options", "error", "match"), [
    ({"prefix_length": 0}, ValueError, "prefix_length must be >= 1"),
    ({"suffix_length": 0}, ValueError, "suffix_length must be >= 1"),
    ({"prefix_length": 2.5}, TypeError, "prefix_length must be a whole number"),
    ({"suffix_length": True}, TypeError, "suffix_length must be a whole number"),
    ({"temperature": -0.5}, ValueError, "temperature must be a finite number >= 0"),
    ({"temperature": math.nan}, ValueError, "temperature must be a finite number >= 0"),
    ({"temperature": math.inf}, ValueError, "temperature must be a finite number >= 0"),
    ({"top_k": 0}, ValueError, "top_k must be >= 1"),
    ({"top_k": 2.0}, TypeError, "top_k must be a whole number"),
    ({"top_p": 0.0}, ValueError, r"top_p must be a number in \(0, 1\]"),
    ({"top_p": 1.5}, ValueError, r"top_p must be a number in \(0, 1\]"),
    ({"batch_size": 0}, ValueError, "batch_size must be a whole number >= 1"),
])
def test_bad_arguments_are_refused_before_any_work(fortunes, options, error, match):
    arguments = {"prefix_length": 4, "suffix_length": 4, "progress": False, **options}
    with pytest.raises(error, match=match):
        extraction_probability(Refuses(), fortunes, **arguments)


# ------------------------------------------------------------------------------------ (n, p)-discoverability

def test_discoverable_extraction_edge_cases():
    log_p = np.array([0.0, -np.inf, np.log(1e-300), np.log(0.5), np.nan])
    # p_z = 1: one sample does it, whatever p; p_z = 0: nothing does; p_z = 1e-300 with n = 1e300: 1 - 1/e = 0.632
    assert discoverable_extraction(log_p, n=1, p=1.0).tolist() == [True, False, False, False, False]
    assert discoverable_extraction(log_p, n=1e300, p=0.6).tolist() == [True, False, True, True, False]
    assert discoverable_extraction(log_p, n=1e300, p=0.65).tolist() == [True, False, False, True, False]
    # p = 1 needs p_z = 1, though 1 - 0.5^1000 rounds to 1.0 in a double
    assert discoverable_extraction(log_p, n=1000, p=1.0).tolist() == [True, False, False, False, False]
    np.testing.assert_allclose(extraction_chance(log_p[:4], n=1e300), [1.0, 0.0, 1 - math.exp(-1), 1.0])
    np.testing.assert_allclose(extraction_chance(np.array([np.log(1e-300)]), n=3), [3e-300], rtol=1e-12)
    # a p_z that underflows a double (e^-800) still counts, given as its log: n p_z = e^-109 = 2.6e-48
    assert discoverable_extraction(np.array([-800.0, -800.0]), n=1e300, p=1e-47).tolist() == [False, False]
    assert discoverable_extraction(np.array([-800.0]), n=1e300, p=1e-48).tolist() == [True]


def test_samples_needed_edge_cases():
    log_p = np.array([0.0, -np.inf, np.log(1e-300), np.log(0.9), np.log(0.5), np.nan])
    got = samples_needed(log_p, p=0.5)
    assert got[[0, 3, 4]].tolist() == [1.0, 1.0, 1.0]  # p_z >= p: one sample
    assert got[1] == np.inf and np.isnan(got[5])
    np.testing.assert_allclose(got[2], math.log(2) * 1e300, rtol=1e-12)
    assert samples_needed(log_p, p=1.0)[:5].tolist() == [1.0, np.inf, np.inf, np.inf, np.inf]


def test_samples_needed_is_the_first_n_that_is_discoverable():
    rng = np.random.default_rng(0)
    log_p = np.concatenate([np.log(rng.uniform(0.01, 0.95, 200)), -rng.uniform(5, 60, 50)])
    for p in (0.1, 0.5, 0.9, 0.999):
        n = samples_needed(log_p, p=p)
        assert all(discoverable_extraction(log_p[i:i + 1], n=n[i], p=p)[0] for i in range(len(n)))
        assert not any(discoverable_extraction(log_p[i:i + 1], n=n[i] - 1, p=p)[0] for i in range(len(n))
                       if 1 < n[i] < 2**53)  # (beyond, n - 1 rounds to n)
        for i in range(200):  # moderate p_z: the plain loop, 1 - (1 - p_z)^n
            p_z, k = math.exp(log_p[i]), 1
            while 1 - (1 - p_z) ** k < p:
                k += 1
            assert n[i] == k


def test_series_in_series_out_and_bad_n_or_p():
    log_p = pd.Series([0.0, np.log(0.1)], index=pd.Index([7, 3], name="index"))
    assert discoverable_extraction(log_p, n=2, p=0.5).to_dict() == {7: True, 3: False}
    assert samples_needed(log_p, p=0.5).to_dict() == {7: 1.0, 3: 7.0}
    for bad in ({"n": 0, "p": 0.5}, {"n": 2, "p": 0.0}, {"n": 2, "p": 1.5}, {"n": math.nan, "p": 0.5},
                {"n": math.inf, "p": 0.5}):
        with pytest.raises(ValueError, match="must be"):
            discoverable_extraction(log_p, **bad)


# --------------------------------------------------------------------------------- exact memorization, ES

def argmax_matches_by_loop(model, ids: torch.Tensor, labels: torch.Tensor) -> list[bool]:
    """Whether each scored token (label not -100, after the first) is the argmax after its true prefix."""
    with torch.no_grad():
        return [int(model(ids[None, :t]).logits[0, -1].argmax()) == int(labels[t])
                for t in range(1, len(ids)) if labels[t] != IGNORE_INDEX]


@pytest.fixture(scope="module")
def argmax_case(fortunes, trained):
    """Eight sequences (four trained on) with the first five labels unscored, and their matches by loop."""
    model, seen = trained
    positions = seen[:4].tolist() + [1, 2, 5, 9]
    labels = fortunes.targets.clone()
    labels[:, :5] = IGNORE_INDEX
    data = IndexedDataset(fortunes.inputs, labels, task=fortunes.task)
    matches = [argmax_matches_by_loop(model, fortunes.inputs[i], labels[i]) for i in positions]
    return Subset(data, positions), positions, matches


@pytest.mark.slow  # trains a tiny GPT-2: make test-slow
def test_exact_memorization_matches_a_loop_and_token_accuracy(trained, argmax_case):
    model, _ = trained
    data, positions, matches = argmax_case
    got = exact_memorization(model, data, batch_size=3, progress=False)
    assert got.index.tolist() == positions
    np.testing.assert_allclose(got.to_numpy(), [sum(m) / len(m) for m in matches], rtol=1e-12)
    assert 0 < got.min() and got.max() <= 1 and got.iloc[:4].mean() > got.iloc[4:].mean()
    ids, labels = data.dataset.inputs[positions], data.dataset.targets[positions]
    with torch.no_grad():
        signals = sequence_signals(model(ids).logits, labels)
    np.testing.assert_allclose(got.to_numpy(), signals[:, -1].double().numpy(), rtol=1e-6)  # token_accuracy
    registered = proxies.compute("exact_memorization", model=model, data=data, progress=False)
    pd.testing.assert_series_equal(registered, got.rename("exact_memorization").rename_axis("index"),
                                   check_names=False)


@pytest.mark.slow  # trains a tiny GPT-2: make test-slow
def test_extraction_strength_matches_its_definition(trained, argmax_case):
    model, _ = trained
    data, positions, matches = argmax_case
    got = extraction_strength(model, data, batch_size=3, progress=False)
    expected = []
    for m in matches:  # k*: the first k from which every later token matches (N when the last one does not)
        k = next(k for k in range(len(m) + 1) if all(m[k:]))
        expected.append(1 - k / len(m))
    np.testing.assert_allclose(got.to_numpy(), expected, rtol=1e-12)
    assert got.index.tolist() == positions


def test_extraction_strength_is_zero_where_the_last_token_misses():
    """open-unlearning's loop would report 1/N here; the definition says 0."""
    bigram = nn.Embedding(3, 3)
    bigram.weight.data.copy_(torch.eye(3).roll(1, dims=1))  # predicts token + 1 (mod 3)
    ids = torch.tensor([[0, 1, 2, 0, 2], [0, 2, 2, 2, 0], [0, 0, 0, 0, 0]])
    labels = ids.clone()
    labels[2] = IGNORE_INDEX
    data = IndexedDataset(ids, labels, task=CausalLM())
    assert extraction_strength(bigram, data, progress=False).tolist()[:2] == [0.0, 0.25]
    assert exact_memorization(bigram, data, progress=False).tolist()[:2] == [0.75, 0.25]
    assert extraction_strength(bigram, data, progress=False).isna().tolist() == [False, False, True]


@pytest.mark.slow  # trains a tiny GPT-2: make test-slow
def test_scores_are_the_same_on_every_device(fortunes, trained, device):
    model, _ = trained
    data = Subset(fortunes, list(range(20, 36)))
    options = {"prefix_length": PREFIX, "suffix_length": SUFFIX, "top_k": 5, "top_p": 0.9, "progress": False}
    here = extraction_probability(model, data, **options)
    there = extraction_probability(model, data, device=device, **options)
    np.testing.assert_array_equal(np.isneginf(there), np.isneginf(here))
    np.testing.assert_allclose(there[np.isfinite(here)], here[np.isfinite(here)], rtol=1e-4, atol=1e-4)
    for score in (exact_memorization, extraction_strength):
        np.testing.assert_allclose(score(model, data, device=device, progress=False),
                                   score(model, data, progress=False), atol=1 / LENGTH)  # an argmax may flip
    assert next(model.parameters()).device.type == "cpu"
