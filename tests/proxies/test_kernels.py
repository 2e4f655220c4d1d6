import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import proxies
from proxies import learning_events, signals, symmetric_kl
from proxies._backends import pure_torch as reference_kernels


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


@pytest.mark.parametrize("backend", [b for b in proxies.backends() if b != "cuda"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_unchecked_non_finite_rows_are_nan_on_every_backend(backend, dtype):
    # the recorder scores a diverged model's logits with check_finite=False: one rule everywhere, no crash
    nan, inf = float("nan"), float("inf")
    logits = torch.tensor([[nan, 1.0, 2.0], [1.0, nan, 0.0], [inf, 1.0, 2.0], [-inf, -inf, 0.0], [1.0, 2.0, 3.0]],
                          dtype=dtype)
    labels = torch.tensor([0, 0, 0, 2, 2])
    out = signals(logits, labels, backend=backend, check_finite=False)
    assert torch.isnan(out[:4]).all()
    torch.testing.assert_close(out[4:], signals(logits[4:], labels[4:], backend="torch"))
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"):  # checked whether or not check_finite
        signals(logits, labels + 1, backend=backend, check_finite=False)


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


# ------------------------------------------------------------------ every backend against the torch reference

CPU_BACKENDS = [b for b in proxies.backends() if b != "cuda"]


@st.composite
def logits_and_labels(draw):
    n = draw(st.integers(0, 40))
    c = draw(st.integers(1, 12))
    dtype = draw(st.sampled_from([torch.float32, torch.float64]))
    scale = draw(st.sampled_from([0.0, 1.0, 30.0, 1e4]))  # 0: every logit ties
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(n, c, generator=g, dtype=torch.float64) * scale)
    if draw(st.booleans()):  # integer logits: many ties between classes
        logits = logits.round()
    labels = torch.randint(0, c, (n,), generator=g)
    if draw(st.booleans()) and c > 1:  # a non-contiguous view of the same values
        wide = torch.zeros(n, 2 * c, dtype=torch.float64)
        wide[:, ::2] = logits
        logits = wide[:, ::2]
    return logits.to(dtype), labels


def _tolerance(dtype, scale: float = 1.0):
    """float32: a few ulps of its 24 bits; float64: 1e-12 absolute per unit of the largest logit (a loss is a
    difference of logsumexp and a logit: its rounding error grows with their size, 4e-12 at logits of 2e4)."""
    if dtype == torch.float32:
        return {"rtol": 1e-4, "atol": 1e-5}
    return {"rtol": 1e-10, "atol": 1e-12 * max(1.0, scale)}


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@settings(max_examples=60, deadline=None)
@given(data=logits_and_labels())
def test_signals_backends_agree_with_reference(backend, data):
    logits, labels = data
    got = signals(logits, labels, backend=backend)
    expected = reference_kernels.signals(logits, labels)
    assert got.dtype == logits.dtype and got.shape == (len(labels), 5)
    scale = float(logits.abs().max()) if logits.numel() else 1.0
    torch.testing.assert_close(got[:, :4], expected[:, :4], **_tolerance(logits.dtype, scale))
    assert torch.equal(got[:, 4], expected[:, 4])


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@settings(max_examples=60, deadline=None)
@given(epochs=st.integers(0, 30), n=st.integers(0, 5000), p=st.floats(0.0, 1.0), seed=st.integers(0, 2**31 - 1),
       transpose=st.booleans())
def test_learning_events_backends_agree_with_reference(backend, epochs, n, p, seed, transpose):
    g = torch.Generator().manual_seed(seed)
    correct = torch.rand(epochs, n, generator=g) < p
    if transpose:  # the same shape as a non-contiguous view
        correct = correct.T.contiguous().T
    got = learning_events(correct, backend=backend)
    expected = reference_kernels.learning_events(correct)
    for key in expected:
        assert got[key].dtype == torch.int64
        assert torch.equal(got[key], expected[key]), key


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@settings(max_examples=60, deadline=None)
@given(p_data=logits_and_labels(), shift=st.floats(-3.0, 3.0))
def test_symmetric_kl_backends_agree_with_reference(backend, p_data, shift):
    logits_p, _ = p_data
    logits_q = logits_p.flip(0) + shift
    got = symmetric_kl(logits_p, logits_q, backend=backend)
    torch.testing.assert_close(got, reference_kernels.symmetric_kl(logits_p, logits_q), **_tolerance(logits_p.dtype))


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_auto_on_cuda_agrees_with_reference(dtype):
    g = torch.Generator().manual_seed(0)
    logits, labels = torch.randn(3000, 100, generator=g, dtype=dtype) * 5, torch.randint(0, 100, (3000,), generator=g)
    torch.testing.assert_close(signals(logits.cuda(), labels.cuda()).cpu(), reference_kernels.signals(logits, labels))
    correct = torch.rand(50, 3000, generator=g) < 0.7
    got = learning_events(correct.cuda())
    for key, value in reference_kernels.learning_events(correct).items():
        assert torch.equal(got[key].cpu(), value)


def test_backend_choice_errors():
    assert proxies.backends()[0] == "torch"
    with pytest.raises(ValueError, match="unknown backend 'tpu'"):
        signals(torch.zeros(1, 2), torch.tensor([0]), backend="tpu")
    if "cuda" not in proxies.backends():
        with pytest.raises(ModuleNotFoundError, match="not available"):
            signals(torch.zeros(1, 2), torch.tensor([0]), backend="cuda")
    if "numba" in proxies.backends():
        with pytest.raises(ValueError, match="runs on cpu tensors"):
            from proxies._backends import resolve
            resolve("numba", "cuda")


# ------------------------------------------------------------- where the pipeline's scoring kernels run

def _recording(epochs=6, n=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    values = torch.rand(epochs, n, 5, generator=g).numpy()
    values[..., 4] = (values[..., 4] > 0.4).astype(np.float32)
    values[2, 3] = np.nan  # a missed presentation, forward-filled
    values[:, 5] = np.nan  # never presented
    return proxies.TrainingRecorder.from_values(values)


@pytest.mark.parametrize("name", ["forgetting_events", "first_learned", "presentations_needed"])
def test_learning_event_proxies_count_on_the_given_device(name, monkeypatch):
    import proxies.learning_speed as learning_speed

    rec = _recording()
    default = proxies.compute(name, recording=rec)
    seen = []

    def spy(correct, *, backend):
        seen.append(correct.device.type)
        if correct.device.type == "meta":  # no values to count: zeros, as if they came back from the device
            return {k: torch.zeros(correct.shape[1], dtype=torch.int64) for k in default_keys}
        return reference_kernels.learning_events(correct)

    default_keys = ("forgetting_events", "first_learned", "presentations_needed")

    monkeypatch.setattr(learning_speed, "learning_events", spy)
    fn = getattr(learning_speed, name)
    fn(rec)
    fn(rec, device="cpu")
    assert seen == ["cpu", "cpu"]  # default: the CPU, where the recording is
    fn(rec, device="meta")  # "meta" stands in for a GPU: the [E, N] matrix goes there
    assert seen[-1] == "meta"
    monkeypatch.undo()
    np.testing.assert_array_equal(fn(rec, device="cpu"), default.to_numpy())  # bit-identical either way


@pytest.mark.cuda
def test_learning_event_proxies_on_cuda_match_the_cpu():
    rec = _recording(epochs=30, n=3001)
    for name in ("forgetting_events", "first_learned", "presentations_needed"):
        np.testing.assert_array_equal(proxies.compute(name, recording=rec, device="cuda").to_numpy(),
                                      proxies.compute(name, recording=rec).to_numpy())


def test_holdout_scores_where_the_predictions_are_made(monkeypatch):
    from torch import nn

    import proxies.holdout as holdout

    assert holdout._scoring_device(torch.device("cuda")) == torch.device("cuda")
    assert holdout._scoring_device(torch.device("cuda", 1)) == torch.device("cuda", 1)
    for other in ("cpu", "meta"):  # a meta model's predictions carry no values to score
        assert holdout._scoring_device(torch.device(other)) == torch.device("cpu")
    data = proxies.IndexedDataset(torch.randn(6, 3), torch.tensor([0, 1, 1, 0, 1, 0]))
    model = nn.Linear(3, 2)
    seen = []
    real = holdout.symmetric_kl

    def spy(p, q, *, backend):
        seen.append((p.device.type, q.device.type, p.dtype))
        return real(p.cpu(), q.cpu(), backend=backend) if p.device.type == "cpu" else torch.zeros(len(p))

    monkeypatch.setattr(holdout, "symmetric_kl", spy)
    scores = holdout.holdout_retraining(model, data, data, fine_tune=lambda m, d, **kw: (m, None), progress=False)
    assert seen == [("cpu", "cpu", torch.float64)] and np.allclose(scores.to_numpy(), 0.0)
    monkeypatch.setattr(holdout, "_scoring_device", lambda device: torch.device("meta"))  # stands in for a GPU
    holdout.holdout_retraining(model, data, data, fine_tune=lambda m, d, **kw: (m, None), progress=False)
    assert seen[-1] == ("meta", "meta", torch.float64)


@pytest.mark.slow  # a fresh interpreter: its imports and numba's start take seconds
def test_numba_kernels_leave_torch_thread_count_alone():
    """numba's OpenMP layer sets the process's OpenMP thread count when it starts, which torch shares: in a fresh
    process told to use one thread, neither a LiRA fit nor the numba backend's kernels may leave torch with more."""
    import os
    import subprocess
    import sys

    script = """
import numpy as np, torch
from proxies._backends import numba_kernels
from unlearn.evaluation.attacks import lira
lira(np.array([4.0]), np.array([[3.0], [0.0], [5.0], [2.0]]), np.array([[True], [False], [True], [False]]))
logits = torch.randn(8, 3)
numba_kernels.signals(logits, torch.zeros(8, dtype=torch.long))
numba_kernels.learning_events(torch.rand(4, 8) > 0.5)
numba_kernels.symmetric_kl(logits, logits.flip(0))
print(torch.get_num_threads())
"""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, env=env)
    assert out.stdout.strip().splitlines()[-1] == "1"
