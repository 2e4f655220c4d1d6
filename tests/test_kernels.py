import numpy as np
import pytest
import torch

from proxies import learning_events, signals, symmetric_kl


def _signals_numpy(logits, labels):
    z = logits.astype(np.float64)
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    rows = np.arange(len(z))
    with np.errstate(divide="ignore", invalid="ignore"):
        entropy = -np.where(p > 0, p * np.log(p), 0.0).sum(1)
    return np.stack([p[rows, labels], p.max(1), entropy, -np.log(p[rows, labels]),
                     (z.argmax(1) == labels).astype(float)], axis=1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_signals_match_numpy(dtype):
    g = torch.Generator().manual_seed(0)
    logits = (torch.randn(50, 7, generator=g) * 4).to(dtype)
    labels = torch.randint(0, 7, (50,), generator=g)
    out = signals(logits, labels)
    assert out.dtype == dtype and out.shape == (50, 5)
    np.testing.assert_allclose(out.numpy(), _signals_numpy(logits.numpy(), labels.numpy()), rtol=1e-5, atol=1e-6)


def test_signals_edge_cases():
    # ties: the first maximal logit is the prediction; one class: certain and correct; extreme logits stay finite
    out = signals(torch.tensor([[1.0, 1.0], [1.0, 1.0]]), torch.tensor([0, 1]))
    assert out[:, 4].tolist() == [1.0, 0.0]
    assert signals(torch.tensor([[5.0]]), torch.tensor([0])).tolist() == [[1.0, 1.0, 0.0, 0.0, 1.0]]
    extreme = signals(torch.tensor([[1e4, -1e4, 0.0]]), torch.tensor([1]))
    assert torch.isfinite(extreme).all() and extreme[0, 3] == pytest.approx(2e4)
    assert signals(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long)).shape == (0, 5)
    strided = torch.randn(6, 8)[:, ::2]
    torch.testing.assert_close(signals(strided, torch.zeros(6, dtype=torch.long)),
                               signals(strided.contiguous(), torch.zeros(6, dtype=torch.long)))


def test_signals_reject_bad_input():
    with pytest.raises(ValueError, match="NaN or infinite"):
        signals(torch.tensor([[0.0, float("nan")]]), torch.tensor([0]))
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\)"):
        signals(torch.zeros(1, 2), torch.tensor([2]))
    with pytest.raises(ValueError, match="must match"):
        signals(torch.zeros(2, 2), torch.tensor([0]))
    with pytest.raises(TypeError, match="integer"):
        signals(torch.zeros(1, 2), torch.tensor([0.0]))
    with pytest.raises(ValueError, match=r"\[N, C\]"):
        signals(torch.zeros(2), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="unknown backend"):
        signals(torch.zeros(1, 2), torch.tensor([0]), backend="jax")


def test_learning_events_by_hand():
    correct = torch.tensor([[1, 0, 0, 1], [0, 0, 1, 1], [1, 0, 0, 1], [0, 0, 1, 1]], dtype=torch.bool)
    events = learning_events(correct)
    assert events["forgetting_events"].tolist() == [2, 4, 1, 0]
    assert events["first_learned"].tolist() == [0, 4, 1, 0]
    assert events["presentations_needed"].tolist() == [4, 4, 3, 0]
    empty = learning_events(torch.zeros(0, 3, dtype=torch.bool))
    assert empty["forgetting_events"].tolist() == [0, 0, 0]


def test_symmetric_kl_matches_definition():
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(20, 5, generator=g, dtype=torch.float64), torch.randn(20, 5, generator=g, dtype=torch.float64)
    p, q = a.softmax(1).clamp_min(1e-10), b.softmax(1).clamp_min(1e-10)
    expected = 0.5 * ((p * (p / q).log()).sum(1) + (q * (q / p).log()).sum(1))
    torch.testing.assert_close(symmetric_kl(a, b), expected)
    assert symmetric_kl(a, a).abs().max() == 0
