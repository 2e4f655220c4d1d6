"""The C++ / CUDA custom ops directly: torch.library.opcheck, input checks, and agreement with the reference."""

import pytest
import torch

from proxies._backends import native, reference

pytestmark = pytest.mark.skipif(native.LOAD_ERROR is not None, reason=str(native.LOAD_ERROR))

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]


def _inputs(device, dtype=torch.float32, n=300, c=17):
    g = torch.Generator().manual_seed(0)
    logits = (torch.randn(n, c, generator=g, dtype=torch.float64) * 4).to(dtype)
    labels = torch.randint(0, c, (n,), generator=g)
    correct = torch.rand(40, n, generator=g) < 0.7
    return logits.to(device), labels.to(device), correct.to(device)


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device):
    logits, labels, correct = _inputs(device)
    torch.library.opcheck(torch.ops.memunlearn.signals.default, (logits, labels))
    torch.library.opcheck(torch.ops.memunlearn.learning_events.default, (correct,))
    torch.library.opcheck(torch.ops.memunlearn.symmetric_kl.default, (logits, logits.flip(0)))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("c", [1, 2, 10, 33, 100])
def test_ops_match_the_reference(device, dtype, c):
    logits, labels, correct = _inputs(device, dtype, c=c)
    tol = {"rtol": 1e-4, "atol": 1e-5} if dtype == torch.float32 else {"rtol": 1e-9, "atol": 1e-11}
    got, expected = native.signals(logits, labels).cpu(), reference.signals(logits.cpu(), labels.cpu())
    torch.testing.assert_close(got[:, :4], expected[:, :4], **tol)
    assert torch.equal(got[:, 4], expected[:, 4])
    torch.testing.assert_close(native.symmetric_kl(logits, logits.flip(0)).cpu(),
                               reference.symmetric_kl(logits.cpu(), logits.flip(0).cpu()), **tol)
    events, expected_events = native.learning_events(correct), reference.learning_events(correct.cpu())
    for key, value in expected_events.items():
        assert torch.equal(events[key].cpu(), value), key


@pytest.mark.parametrize("device", DEVICES)
def test_edge_cases(device):
    empty = torch.zeros(0, 3, device=device)
    assert native.signals(empty, torch.zeros(0, dtype=torch.long, device=device)).shape == (0, 5)
    no_epochs = native.learning_events(torch.zeros(0, 4, dtype=torch.bool, device=device))
    assert no_epochs["first_learned"].tolist() == [0] * 4
    ties = torch.tensor([[2.0, 2.0, 1.0], [2.0, 2.0, 1.0]], device=device)
    assert native.signals(ties, torch.tensor([0, 1], device=device))[:, 4].tolist() == [1.0, 0.0]
    extreme = torch.tensor([[1e4, -1e4, 0.0]], device=device)
    torch.testing.assert_close(native.signals(extreme, torch.tensor([1], device=device)).cpu(),
                               reference.signals(extreme.cpu(), torch.tensor([1])))
    strided = torch.randn(20, 12, device=device)[:, ::3]
    labels = torch.zeros(20, dtype=torch.long, device=device)
    torch.testing.assert_close(native.signals(strided, labels), native.signals(strided.contiguous(), labels))


def test_direct_calls_check_their_input():
    with pytest.raises(RuntimeError, match="float32 or float64"):
        torch.ops.memunlearn.signals(torch.zeros(2, 3, dtype=torch.int32), torch.zeros(2, dtype=torch.long))
    with pytest.raises(RuntimeError, match="labels must be int64"):
        torch.ops.memunlearn.signals(torch.zeros(2, 3), torch.zeros(2, dtype=torch.int32))
    with pytest.raises(RuntimeError, match="correct must be bool"):
        torch.ops.memunlearn.learning_events(torch.zeros(2, 3))
    with pytest.raises(RuntimeError, match="same shape"):
        torch.ops.memunlearn.symmetric_kl(torch.zeros(2, 3), torch.zeros(2, 4))
