"""The C++ / CUDA custom ops of csrc/ against the pure-torch reference, plus opcheck and their own input checks."""

import pytest
import torch

import proxies
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


# ------------------------------------------------ the CUDA kernels' thread mappings, checks and vector loads

cuda_ops = pytest.mark.skipif("cuda" not in native.DEVICES, reason="the extension has no CUDA kernels")


@pytest.mark.cuda
@cuda_ops
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("c", [1, 2, 3, 10, 31, 32, 33, 100, 1000])  # every group width: 1 .. 32 lanes per row
@pytest.mark.parametrize("n", [1, 37, 1000])  # 1000: several tiles of 256 / G rows, the last one partial
def test_cuda_group_widths_match_the_reference(dtype, c, n):
    logits, labels = _logits(n, c, dtype, "cuda")
    _assert_signals_match(logits, labels)
    other, _ = _logits(n, c, dtype, "cuda", seed=1)
    torch.testing.assert_close(native.symmetric_kl(logits, other).cpu(),
                               reference_kernels.symmetric_kl(logits.cpu(), other.cpu()), **TOLERANCE[dtype])


@pytest.mark.cuda
@cuda_ops
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("c", [3, 33])
def test_cuda_non_finite_rows(dtype, c):
    nan, inf = float("nan"), float("inf")
    logits, labels = _logits(6, c, dtype, "cuda")
    logits[0, 1], logits[1, 0], logits[2, -1] = nan, inf, -inf
    out = native.signals(logits, labels)  # the kernel's own rule: NaN in every column of a non-finite row
    assert torch.isnan(out[:3]).all() and torch.isfinite(out[3:]).all()
    _assert_signals_match(logits[3:], labels[3:])
    kl = native.symmetric_kl(logits, logits.flip(0))  # as the reference: NaN and +inf poison a row, -inf does not
    expected = reference_kernels.symmetric_kl(logits.cpu(), logits.flip(0).cpu())
    torch.testing.assert_close(kl.cpu(), expected, equal_nan=True, **TOLERANCE[dtype])
    assert torch.equal(torch.isnan(kl.cpu()), torch.isnan(expected))


@pytest.mark.cuda
@cuda_ops
def test_cuda_bad_labels_raise_on_the_host_and_leave_the_context_usable():
    logits, labels = _logits(40, 10, torch.float32, "cuda")
    for bad in (10, -1):
        wrong = labels.clone()
        wrong[17] = bad
        with pytest.raises(RuntimeError, match=rf"labels must lie in \[0, 10\), got {bad}"):
            native.signals(logits, wrong)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 10\)"):
        proxies.signals(logits, labels + 1)
    torch.cuda.synchronize()  # a device assert would surface here, and poison every later call
    _assert_signals_match(logits, labels)


def _misaligned(epochs, n, rate, seed):
    """A contiguous [E, N] bool tensor whose data starts one byte past an allocation's (aligned) start."""
    flat = torch.rand(epochs * n + 1, generator=torch.Generator().manual_seed(seed)) < rate
    return flat.cuda()[1:].view(epochs, n)


@pytest.mark.cuda
@cuda_ops
@pytest.mark.parametrize("epochs", [0, 1, 7, 255, 256, 600])  # 255 rows fill the byte counters; 600 flushes twice
@pytest.mark.parametrize("n", [1, 3, 4, 5, 15, 16, 17, 33, 1001, 4096])
def test_cuda_learning_events_any_width_and_alignment(epochs, n):
    for rate in (0.0, 0.5, 0.9, 1.0):
        correct = (torch.rand(epochs, n, generator=torch.Generator().manual_seed(n + epochs)) < rate).cuda()
        _assert_events_match(correct)  # rows start unaligned whenever N is not a multiple of the vector width
        _assert_events_match(_misaligned(epochs, n, rate, seed=n))


@pytest.mark.cuda
@cuda_ops
@pytest.mark.parametrize("extra", [0, 1, 13])
def test_cuda_learning_events_sixteen_column_path(extra):
    # wide enough that each thread takes 16 columns (one 16-byte load per row): N >= 16 x 256 x the SM count
    n = 16 * 256 * torch.cuda.get_device_properties(0).multi_processor_count + extra
    for epochs in (3, 300):
        correct = (torch.rand(epochs, n, generator=torch.Generator().manual_seed(extra)) < 0.7).cuda()
        _assert_events_match(correct)
    _assert_events_match(_misaligned(5, n, 0.5, seed=extra))
