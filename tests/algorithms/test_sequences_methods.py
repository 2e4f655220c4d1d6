"""The unlearning methods that run on token sequences through the causal-LM task, on real fortunes."""

import pytest
import torch
from torch.utils.data import Subset

from proxies.sequences import CausalLM
from tests.conftest import requires_fortunes
from unlearn import unlearn
from unlearn.models import create_model
from unlearn.training import train

SEQUENCE_METHODS = ("finetune", "l1_sparse", "neggrad", "neggrad_plus", "npo", "random_label", "salun", "scrub",
                    "sga", "sharp_minmax", "simnpo", "tau")
"""The methods the README says run on sequences today."""

NEVER_STOP = {"sga": {"stop_below": 0.0}, "tau": {"snapshot_below": 0.0, "stop_below": 0.0, "descent_epochs": 1}}
"""Settings that keep sga and tau stepping on the barely trained model (its fortunes are far below their default
thresholds of memorization, where they would stop before any step)."""


@pytest.fixture(scope="module")
def lm(fortunes):
    torch.manual_seed(0)
    model = create_model("tiny_gpt", vocab_size=fortunes.vocab_size, n_positions=fortunes.max_tokens, n_embd=32,
                         n_layer=1, n_head=2)
    data = Subset(fortunes.train, range(64))
    model, _ = train(model, data, epochs=2, lr=3e-3, batch_size=32, momentum=0.0, weight_decay=0.0,
                     optimizer="adamw", progress=False, device="cpu")
    return model, Subset(fortunes.train, range(8)), Subset(fortunes.train, range(8, 64))


def _per_sequence_loss(model, data):
    ids = torch.stack([data[i][0] for i in range(len(data))])
    labels = torch.stack([data[i][1] for i in range(len(data))])
    with torch.no_grad():
        return CausalLM().loss(model(ids).logits, labels)


@requires_fortunes
@pytest.mark.slow
@pytest.mark.parametrize("method", SEQUENCE_METHODS)
def test_a_method_unlearns_sequences_into_a_new_finite_model(lm, method):
    model, forget, retain = lm
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = unlearn(model, forget=forget, retain=retain, method=method,
                     config={"epochs": 1, **NEVER_STOP.get(method, {})})
    assert result.model is not model
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    after = result.model.state_dict()
    assert all(torch.isfinite(v).all() for v in after.values() if v.is_floating_point())
    assert any(not torch.equal(after[k], before[k]) for k in before), f"{method} changed nothing"
    if method in ("neggrad", "sga"):  # gradient ascent on the forget set alone pushes its loss up
        assert _per_sequence_loss(result.model, forget) > _per_sequence_loss(model, forget)


@requires_fortunes
@pytest.mark.slow
def test_retrain_builds_a_language_model_afresh_from_its_config_and_trains_it_on_the_retain_set(lm):
    model, forget, retain = lm
    recipe = {"epochs": 1, "lr": 3e-3, "batch_size": 32, "momentum": 0.0, "weight_decay": 0.0, "optimizer": "adamw"}
    first = unlearn(model, forget=forget, retain=retain, method="retrain", config=recipe, seed=3).model
    again = unlearn(model, forget=forget, retain=retain, method="retrain", config=recipe, seed=3).model
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), again.state_dict().values(),
                                                 strict=True))
    # the same as training a new GPT-2 of the model's config, built under the seed, on the retain set alone
    with torch.random.fork_rng():
        torch.manual_seed(3)
        fresh = type(model)(model.config)
    expected, _ = train(fresh, retain, seed=3, progress=False, device="cpu", **recipe)
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), expected.state_dict().values(),
                                                 strict=True))
    by_name = unlearn(model, forget=forget, retain=retain, method="retrain", seed=3,
                      config={**recipe, "model_fn": "tiny_gpt",
                              "model_kwargs": {"n_positions": model.config.n_positions, "n_embd": 32,
                                               "n_layer": 1, "n_head": 2}}).model
    assert by_name.config.vocab_size == model.config.vocab_size


@requires_fortunes
def test_a_forget_set_from_another_tokenizer_is_refused_before_any_work(lm):
    """Token ids past the model's embedding (another, larger vocabulary) are refused by unlearn() before a step,
    naming what went wrong; the caller's model is untouched."""
    from unlearn.data import load_dataset

    model, _, retain = lm
    other = load_dataset("fortunes", train_size=40, vocab_size=1024, max_tokens=48)  # another, larger vocabulary
    assert other.vocab_size > model.get_input_embeddings().num_embeddings
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="token ids reach .* but the model embeds"):
        unlearn(model, forget=Subset(other.train, range(40)), retain=retain, method="npo")
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


@requires_fortunes
@pytest.mark.slow
def test_rum_follows_the_text_policy_on_sequences_by_default(lm):
    import pandas as pd

    from unlearn.algorithms.rum.policies import DEFAULT_POLICIES, get_policy

    model, forget, retain = lm
    scores = pd.Series(torch.linspace(0, 1, 64).numpy(), index=pd.RangeIndex(64, name="index"))
    scores.attrs["higher_is_memorized"] = True
    result = unlearn(model, forget=forget, retain=retain, method="rum", scores=scores)
    assert result.facts()["policy"] == DEFAULT_POLICIES["causal_lm"] == "npo_graded"
    steps = {step.group: step.method for step in result.plan}
    expected = {group: entry[0] for group, entry in get_policy("npo_graded").items() if entry is not None}
    assert steps and all(steps[group] == expected[group] for group in steps)
