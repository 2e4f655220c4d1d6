"""NPO and SimNPO: their losses against the formulas written out by hand, the step they take on a classifier
against one computed by hand, and what they do to a tiny GPT-2 on real fortunes."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Subset

import unlearn.algorithms.npo as npo_module
from proxies.sequences import CausalLM
from proxies.tasks import CLASSIFICATION
from tests.algorithms.test_methods import CLASSES, FEATURES, RecordingLinear, _data
from tests.conftest import requires_fortunes
from unlearn import unlearn
from unlearn.algorithms.npo import NPOConfig, SimNPOConfig, frozen_reference, log_likelihood, npo_loss, simnpo_loss
from unlearn.algorithms.registry import get_method, make_config
from unlearn.data import load_dataset
from unlearn.models import create_model
from unlearn.training import train


def _log_sigmoid(z: float) -> float:
    return -math.log1p(math.exp(-z))


# the losses, by hand


@pytest.mark.parametrize("beta", [0.1, 1.0, 4.5])
def test_npo_loss_is_the_formula(beta):
    log_p = [-12.0, -3.5, -40.0, -0.25]
    log_p_ref = [-10.0, -3.5, -20.0, -2.0]
    expected = [-(2 / beta) * _log_sigmoid(-beta * (p - r)) for p, r in zip(log_p, log_p_ref, strict=True)]
    got = npo_loss(torch.tensor(log_p, dtype=torch.float64), torch.tensor(log_p_ref, dtype=torch.float64), beta)
    torch.testing.assert_close(got, torch.tensor(expected, dtype=torch.float64), rtol=1e-12, atol=0)


@pytest.mark.parametrize("beta", [0.1, 0.5, 2.0])
def test_npo_loss_at_the_reference_is_2_over_beta_log_2(beta):
    log_p = torch.tensor([-5.0, -17.25, 0.0], dtype=torch.float64)
    expected = torch.full((3,), 2 / beta * math.log(2), dtype=torch.float64)
    torch.testing.assert_close(npo_loss(log_p, log_p.clone(), beta), expected, rtol=1e-12, atol=0)


def test_npo_loss_falls_as_the_forget_likelihood_falls():
    log_p = torch.linspace(-30.0, -5.0, 26, dtype=torch.float64, requires_grad=True)
    loss = npo_loss(log_p, torch.full_like(log_p, -10.0), beta=0.1)
    assert bool((loss.diff() > 0).all())  # a lower log pi, a lower loss: minimising it pushes log pi down
    loss.sum().backward()
    assert bool((log_p.grad > 0).all())
    # at pi = pi_ref the gradient is that of ascent on the NLL: d loss / d log pi = 2 sigmoid(0) = 1
    at_start = torch.tensor([-7.0], dtype=torch.float64, requires_grad=True)
    npo_loss(at_start, torch.tensor([-7.0], dtype=torch.float64), beta=0.1).backward()
    assert at_start.grad.item() == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize(("beta", "delta"), [(4.5, 0.0), (1.0, 0.5), (2.5, 3.0)])
def test_simnpo_loss_is_the_formula(beta, delta):
    nll_mean = [0.1, 1.0, 2.75, 0.0]
    expected = [-(2 / beta) * _log_sigmoid(beta * (n - delta)) for n in nll_mean]
    got = simnpo_loss(torch.tensor(nll_mean, dtype=torch.float64), beta, delta)
    torch.testing.assert_close(got, torch.tensor(expected, dtype=torch.float64), rtol=1e-12, atol=0)


def test_simnpo_loss_falls_as_the_forget_nll_rises():
    nll_mean = torch.linspace(0.0, 5.0, 21, dtype=torch.float64, requires_grad=True)
    loss = simnpo_loss(nll_mean, beta=4.5)
    assert bool((loss.diff() < 0).all())
    loss.sum().backward()
    assert bool((nll_mean.grad < 0).all())
    assert simnpo_loss(torch.zeros(1), beta=4.5).item() == pytest.approx(2 / 4.5 * math.log(2))


def test_the_log_likelihood_of_a_sequence_is_its_sum_of_token_log_probs():
    logits = torch.tensor([[[0.0, 1.0, 2.0], [2.0, 0.0, 0.0], [0.5, 0.5, 0.0], [1.0, 1.0, 1.0]],
                           [[1.0, 0.0, 0.0], [0.0, 3.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]])
    labels = torch.tensor([[-100, 2, 0, -100], [-100, 1, 2, 0]])  # 2 and 3 tokens scored
    log_softmax = logits.log_softmax(-1)
    first = log_softmax[0, 0, 2] + log_softmax[0, 1, 0]
    second = log_softmax[1, 0, 1] + log_softmax[1, 1, 2] + log_softmax[1, 2, 0]
    torch.testing.assert_close(log_likelihood(CausalLM(), logits, labels), torch.stack([first, second]))


def test_the_log_likelihood_of_a_label_is_its_log_probability():
    logits, labels = torch.tensor([[2.0, 0.0, -1.0], [0.0, 1.0, 3.0]]), torch.tensor([0, 1])
    expected = logits.log_softmax(1)[torch.arange(2), labels]
    torch.testing.assert_close(log_likelihood(CLASSIFICATION, logits, labels), expected)


# the reference model and the settings


def test_the_reference_is_a_frozen_copy_of_the_start():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Dropout(0.5), nn.Linear(4, 2)).train()
    reference = frozen_reference(model)
    assert reference is not model and not reference.training and model.training
    assert all(not p.requires_grad for p in reference.parameters())
    for (name, p), q in zip(model.named_parameters(), reference.parameters(), strict=True):
        assert torch.equal(p, q) and p.data_ptr() != q.data_ptr(), name


@pytest.mark.slow
def test_npo_keeps_its_reference_at_the_start_while_it_unlearns(monkeypatch):
    made = []
    monkeypatch.setattr(npo_module, "frozen_reference", lambda m: made.append(frozen_reference(m)) or made[-1])
    model, forget, retain = _classifier(), _data(6, seed=2), _data(10, seed=1)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    result = unlearn(model, forget=forget, retain=retain, method="npo", config={"epochs": 3, "lr": 0.5})
    assert len(made) == 1
    assert all(torch.equal(made[0].state_dict()[k], v) for k, v in start.items())
    assert not torch.equal(result.model.weight, start["weight"])


@pytest.mark.parametrize("bad", [{"beta": 0.0}, {"beta": -0.1}, {"beta": float("nan")}, {"forget_weight": 0.0},
                                 {"retain_weight": -1.0}, {"lr": -1e-3}, {"epochs": -1}, {"delta": -0.5}])
@pytest.mark.parametrize("method", ["npo", "simnpo"])
def test_bad_settings_are_refused_before_any_work(method, bad):
    if "delta" in bad and method == "npo":
        with pytest.raises(ValueError, match="unknown settings"):
            make_config(get_method(method), bad)
        return
    name = next(iter(bad))
    with pytest.raises(ValueError, match=name):
        make_config(get_method(method), bad)
    with pytest.raises(ValueError, match=name):  # refused before any training step
        unlearn(Untrainable(), forget=_data(6, seed=2), retain=_data(10, seed=1), method=method, config=bad)


class Untrainable(nn.Linear):
    """A classifier that answers in eval mode (``unlearn``'s model check) and raises in training mode."""

    def __init__(self) -> None:
        super().__init__(FEATURES, CLASSES, dtype=torch.float64)

    def forward(self, x):
        if self.training:
            raise RuntimeError("the model was trained")
        return super().forward(x)


def test_a_setting_of_the_wrong_type_is_a_type_error():
    with pytest.raises(TypeError, match="beta"):
        NPOConfig(beta="0.1")
    with pytest.raises(TypeError, match="delta"):
        SimNPOConfig(delta=None)


# one step on a classifier against the formula


def _classifier() -> RecordingLinear:
    return RecordingLinear()


def _forget_loss(method, logits, labels, start_logits, config):
    log_p = -F.cross_entropy(logits, labels, reduction="none")
    if method == "npo":
        return npo_loss(log_p, -F.cross_entropy(start_logits, labels, reduction="none"), config["beta"])
    return simnpo_loss(-log_p, config["beta"], config["delta"])


@pytest.mark.parametrize("retain_weight", [0.0, 0.7])
@pytest.mark.parametrize("method", ["npo", "simnpo"])
def test_a_step_on_a_classifier_descends_the_formula(method, retain_weight):
    """One batch each (batch size above both sets' sizes), one step of plain SGD: the weights move by lr times
    the gradient of ``forget_weight * mean L_F + retain_weight * CE(retain)``, with ``|y| = 1``."""
    forget, retain = _data(5, seed=2), _data(9, seed=1)
    config = {"beta": 0.7, "forget_weight": 0.4, "retain_weight": retain_weight, "epochs": 1, "lr": 0.3,
              "batch_size": 16, "momentum": 0.0, "weight_decay": 0.0}
    if method == "simnpo":
        config["delta"] = 0.2
    model = _classifier()
    start = nn.Linear(FEATURES, CLASSES, dtype=torch.float64)
    start.load_state_dict(model.state_dict())
    result = unlearn(model, forget=forget, retain=retain, method=method, config=config)
    assert len(result.model.seen) == (2 if retain_weight else 1)  # the forget batch, then the retain batch
    xf, yf = forget.inputs, forget.targets
    loss = config["forget_weight"] * _forget_loss(method, start(xf), yf, start(xf).detach(), config).mean()
    if retain_weight:
        loss = loss + retain_weight * F.cross_entropy(start(retain.inputs), retain.targets)
    loss.backward()
    with torch.no_grad():
        torch.testing.assert_close(result.model.weight, start.weight - 0.3 * start.weight.grad, rtol=0, atol=1e-12)
        torch.testing.assert_close(result.model.bias, start.bias - 0.3 * start.bias.grad, rtol=0, atol=1e-12)


def test_each_forget_batch_goes_with_a_retain_batch_and_the_retain_set_is_walked_through_across_epochs():
    forget, retain = _data(4, seed=2), _data(8, seed=1)  # batches of 4: 1 forget batch an epoch, 2 retain a pass
    result = unlearn(_classifier(), forget=forget, retain=retain, method="npo",
                     config={"epochs": 4, "batch_size": 4, "lr": 0.01})
    seen = result.model.seen
    assert len(seen) == 2 * 4  # each step: the forget batch, then a retain batch
    assert all(len(x) == 4 for x in seen)
    assert all(bool((x[:, None, :] == forget.inputs[None]).all(2).any(1).all()) for x in seen[0::2])
    # 4 steps draw 4 retain batches: two whole passes (a pass does not start afresh each epoch)
    counts = (torch.cat(seen[1::2])[:, None, :] == retain.inputs[None]).all(2).sum(0)
    assert counts.tolist() == [2] * 8


# on real fortunes


@pytest.fixture
def lm(memorized_lm):
    return memorized_lm


def _per_sequence_loss(model, data):
    ids = torch.stack([data[i][0] for i in range(len(data))])
    labels = torch.stack([data[i][1] for i in range(len(data))])
    with torch.no_grad():
        return CausalLM().loss(model(ids).logits, labels, reduction="none")


# Settings stronger than the defaults (chosen on canaries, see the configs): plain SGD barely moves near-certain
# tokens (the gradient of log p vanishes as p -> 1), and SimNPO's forget term is small beside its retain term.
STRONG = {"npo": {"lr": 0.03}, "simnpo": {"forget_weight": 1.0, "epochs": 10}}


@requires_fortunes
@pytest.mark.slow
@pytest.mark.parametrize("method", ["npo", "simnpo"])
def test_the_forget_term_raises_the_forget_loss_of_real_fortunes(lm, method):
    """Against the same run without the forget term (weight 1e-9: the same batches, the retain term alone), which
    by itself moves the forget loss a little (the retain set is not yet learnt to the end)."""
    model, forget, retain = lm
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = unlearn(model, forget=forget, retain=retain, method=method, config=STRONG[method])
    control = unlearn(model, forget=forget, retain=retain, method=method,
                      config={**STRONG[method], "forget_weight": 1e-9})
    assert result.model is not model
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    after = result.model.state_dict()
    assert all(torch.isfinite(v).all() for v in after.values() if v.is_floating_point())
    forget_before = _per_sequence_loss(model, forget).mean()
    forget_after = _per_sequence_loss(result.model, forget).mean()
    assert forget_after > forget_before + 0.5
    assert forget_after > _per_sequence_loss(control.model, forget).mean() + 0.15
    retain_rise = _per_sequence_loss(result.model, retain).mean() - _per_sequence_loss(model, retain).mean()
    assert forget_after - forget_before > 2 * retain_rise  # selective: the forget set's loss rises the more


@requires_fortunes
@pytest.mark.slow
def test_the_defaults_unlearn_canaries_and_keep_the_retain_set():
    """The setting the defaults were chosen on (see the configs): 300 fortunes and 4 canaries of 10 copies each,
    learnt for 60 epochs; unlearning the 40 copies."""
    splits = load_dataset("fortunes", train_size=300, vocab_size=512, max_tokens=48, canaries=4, canary_repeats=(10,))
    torch.manual_seed(0)
    model = create_model("tiny_gpt", vocab_size=splits.vocab_size, n_positions=splits.max_tokens, n_embd=32,
                         n_layer=1, n_head=2)
    model, _ = train(model, splits.train, epochs=60, lr=5e-3, batch_size=32, momentum=0.0, weight_decay=0.0,
                     optimizer="adamw", progress=False, device="cpu")
    copies = set(splits.canaries["index"].tolist())
    forget = Subset(splits.train, sorted(copies))
    retain = Subset(splits.train, [i for i in range(len(splits.train)) if i not in copies])
    canaries, never_inserted = _per_sequence_loss(model, forget).mean(), _per_sequence_loss(model, splits.references)
    retain_before = _per_sequence_loss(model, retain).mean()
    assert canaries < 0.5  # memorized
    npo_model = unlearn(model, forget=forget, retain=retain, method="npo").model
    assert _per_sequence_loss(npo_model, forget).mean() > never_inserted.mean()
    assert _per_sequence_loss(npo_model, retain).mean() < retain_before + 0.15
    simnpo_model = unlearn(model, forget=forget, retain=retain, method="simnpo").model
    assert _per_sequence_loss(simnpo_model, forget).mean() > 2 * canaries
    assert _per_sequence_loss(simnpo_model, retain).mean() < retain_before + 0.05
