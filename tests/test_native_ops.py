"""The C++ / CUDA custom ops of csrc/ against the pure-torch reference, plus opcheck and their own input checks."""

import pytest
import torch

from proxies._backends import native
from proxies._backends import pure_torch as reference_kernels

pytestmark = pytest.mark.skipif(native.LOAD_ERROR is not None, reason=str(native.LOAD_ERROR))

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]
TOLERANCE = {torch.float32: {"rtol": 1e-4, "atol": 1e-5}, torch.float64: {"rtol": 1e-9, "atol": 1e-11}}


@pytest.fixture(params=DEVICES)
def device(request):
    if request.param not in native.DEVICES:
        pytest.skip(f"the extension has no {request.param} kernels (built for {sorted(native.DEVICES)})")
    return request.param


def _logits(n, c, dtype, device, scale=4.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, c, generator=g, dtype=torch.float64) * scale
    if n and c > 1:  # ties for the maximum: argmax (and so correctness) must take the first one
        z[::4, -1] = z[::4].max(dim=1).values
        z[1::4, 0] = z[1::4].max(dim=1).values
    return z.to(dtype).to(device), torch.randint(0, c, (n,), generator=g).to(device)


def _assert_signals_match(logits, labels):
    got = native.signals(logits, labels)
    expected = reference_kernels.signals(logits.cpu(), labels.cpu())
    assert got.shape == expected.shape and got.dtype == logits.dtype and got.device == logits.device
    torch.testing.assert_close(got[:, :4].cpu(), expected[:, :4], **TOLERANCE[logits.dtype])
    assert torch.equal(got[:, 4].cpu(), expected[:, 4])


def _assert_events_match(correct):
    got, expected = native.learning_events(correct), reference_kernels.learning_events(correct.cpu())
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        assert got[key].dtype == torch.int64 and got[key].device == correct.device
        assert torch.equal(got[key].cpu(), value), key


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("c", [1, 2, 10, 17, 33, 100])
@pytest.mark.parametrize("n", [0, 1, 37])
def test_signals_and_symmetric_kl_match_the_reference(device, dtype, c, n):
    logits, labels = _logits(n, c, dtype, device)
    _assert_signals_match(logits, labels)
    other, _ = _logits(n, c, dtype, device, seed=1)
    got = native.symmetric_kl(logits, other)
    assert got.shape == (n,) and got.dtype == dtype
    torch.testing.assert_close(got.cpu(), reference_kernels.symmetric_kl(logits.cpu(), other.cpu()), **TOLERANCE[dtype])
    torch.testing.assert_close(native.symmetric_kl(logits, logits).cpu(), torch.zeros(n, dtype=dtype))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_extreme_logits_stay_finite(device, dtype):
    logits = torch.tensor([[1e4, -1e4, 0.0], [-1e4, 1e4, 0.0], [1e4, 1e4, -1e4]], dtype=dtype, device=device)
    labels = torch.tensor([1, 1, 1], device=device)
    _assert_signals_match(logits, labels)
    assert torch.isfinite(native.signals(logits, labels)).all()
    kl = native.symmetric_kl(logits, logits.flip(0))
    assert torch.isfinite(kl).all()
    torch.testing.assert_close(kl.cpu(), reference_kernels.symmetric_kl(logits.cpu(), logits.flip(0).cpu()),
                               **TOLERANCE[dtype])


def test_non_contiguous_inputs(device):
    base, labels = _logits(50, 24, torch.float32, device)
    transposed = base.t().contiguous().t()  # [50, 24] with column-major strides
    for view in (base[:, ::2], base[::3], transposed, base[:, 1:].t().contiguous().t()):
        _assert_signals_match(view, labels[: view.shape[0]] % view.shape[1])
        expected = reference_kernels.symmetric_kl(view.contiguous(), view.flip(1).contiguous()).to(device)
        torch.testing.assert_close(native.symmetric_kl(view, view.flip(1)), expected, **TOLERANCE[torch.float32])
    strided_labels = torch.stack([labels, labels], dim=1)[:, 0]
    _assert_signals_match(base, strided_labels)
    correct = torch.rand(120, 30, generator=torch.Generator().manual_seed(2)).to(device) < 0.6
    for view in (correct[:, ::2], correct[::2], correct.t().contiguous().t(), correct.t()):
        _assert_events_match(view)


@pytest.mark.parametrize("epochs", [0, 1, 2, 9, 300])  # 300: more presentations than uint8 state can count
@pytest.mark.parametrize("n", [0, 1, 63, 65, 200])
def test_learning_events_match_the_reference(device, epochs, n):
    g = torch.Generator().manual_seed(epochs * 1000 + n)
    for rate in (0.0, 0.6, 1.0):
        _assert_events_match((torch.rand(epochs, n, generator=g) < rate).to(device))


def test_opcheck(device):
    logits, labels = _logits(37, 10, torch.float32, device)
    correct = torch.rand(12, 37, generator=torch.Generator().manual_seed(3)).to(device) < 0.7
    torch.library.opcheck(torch.ops.memunlearn.signals.default, (logits, labels))
    torch.library.opcheck(torch.ops.memunlearn.learning_events.default, (correct,))
    torch.library.opcheck(torch.ops.memunlearn.symmetric_kl.default, (logits, logits.flip(0)))


def test_direct_calls_check_their_input():
    with pytest.raises(RuntimeError, match="float32 or float64"):
        torch.ops.memunlearn.signals(torch.zeros(2, 3, dtype=torch.int32), torch.zeros(2, dtype=torch.long))
    with pytest.raises(RuntimeError, match="at least one class"):
        torch.ops.memunlearn.signals(torch.zeros(2, 0), torch.zeros(2, dtype=torch.long))
    with pytest.raises(RuntimeError, match="labels must be int64"):
        torch.ops.memunlearn.signals(torch.zeros(2, 3), torch.zeros(2, dtype=torch.int32))
    with pytest.raises(RuntimeError, match=r"labels must lie in \[0, 3\)"):
        torch.ops.memunlearn.signals(torch.zeros(2, 3), torch.tensor([0, 3]))
    with pytest.raises(RuntimeError, match="correct must be bool"):
        torch.ops.memunlearn.learning_events(torch.zeros(2, 3))
    with pytest.raises(RuntimeError, match="same shape"):
        torch.ops.memunlearn.symmetric_kl(torch.zeros(2, 3), torch.zeros(2, 4))
    with pytest.raises(RuntimeError, match="same shape, dtype"):
        torch.ops.memunlearn.symmetric_kl(torch.zeros(2, 3), torch.zeros(2, 3, dtype=torch.float64))


def test_devices_lists_cpu():
    assert "cpu" in native.DEVICES
