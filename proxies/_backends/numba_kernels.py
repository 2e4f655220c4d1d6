"""numba CPU kernels: one parallel pass over rows (``prange``), compiled once and cached on disk.

Imported lazily by :mod:`proxies._backends` the first time the ``numba`` backend is used, so that importing
``proxies`` does not pay for numba.
"""

from __future__ import annotations

import numpy as np
import torch
from numba import njit, prange
from torch import Tensor

from ..devices import keep_torch_threads

CLAMP = 1e-10
LOG_CLAMP = float(np.log(CLAMP))
_COLUMN_CHUNK = 4096  # learning_events: columns per task, so each task streams whole cache lines of every row

# exp(x) for x <= 0 in float32 without a libm call, so that LLVM can vectorise the loops that use it:
# 2^t = 2^floor(t) * 2^frac(t), the integer power from a table, the fraction from a degree-7 polynomial
# (Taylor series of e^(f ln 2); relative error < 4e-6 over [-87, 0], below float32's own rounding of the sums).
_POW2 = np.array([2.0**k for k in range(-127, 1)], dtype=np.float32)
_P = tuple(np.float32(np.log(2.0) ** k / np.prod(np.arange(1, k + 1))) for k in range(8))


@njit(inline="always", fastmath=True)
def _exp_nonpositive_f32(x, pow2):
    t = max(x, np.float32(-87.0)) * np.float32(1.4426950408889634)
    n = np.floor(t)
    f = t - n
    poly = _P[0] + f * (_P[1] + f * (_P[2] + f * (_P[3] + f * (_P[4] + f * (_P[5] + f * (_P[6] + f * _P[7]))))))
    return poly * pow2[np.int32(n) + 127]


@njit(inline="always", fastmath=True)
def _exp_nonpositive_f64(x, pow2):
    return np.exp(x)


def _make_signals(exp_nonpositive):
    @njit(parallel=True, cache=True, nogil=True, fastmath=True)
    def kernel(z, labels, out, pow2):
        n, c = z.shape
        for i in prange(n):
            m = z[i, 0]
            best = 0
            for j in range(1, c):
                if z[i, j] > m:  # strict: the first maximal logit wins, as argmax
                    m = z[i, j]
                    best = j
            s = z[i, 0] * 0  # accumulate in the input's precision
            weighted = z[i, 0] * 0
            for j in range(c):
                d = z[i, j] - m
                e = exp_nonpositive(d, pow2)
                s += e
                weighted += e * d
            log_s = np.log(s)
            y = labels[i]
            log_p_true = z[i, y] - m - log_s
            out[i, 0] = np.exp(log_p_true)
            out[i, 1] = 1 / s
            out[i, 2] = log_s - weighted / s
            out[i, 3] = -log_p_true
            out[i, 4] = 1 if best == y else 0

    return kernel


_signals_f32 = _make_signals(_exp_nonpositive_f32)
_signals_f64 = _make_signals(_exp_nonpositive_f64)


@njit(parallel=True, cache=True, nogil=True)
def _learning_events(correct, forgetting, first, needed):
    """Branch-free over contiguous rows: every row of a column chunk is one streamed, vectorised pass."""
    epochs, n = correct.shape
    chunks = (n + _COLUMN_CHUNK - 1) // _COLUMN_CHUNK
    for k in prange(chunks):
        lo = k * _COLUMN_CHUNK
        hi = min(n, lo + _COLUMN_CHUNK)
        width = hi - lo
        forgets = np.zeros(width, np.int32)
        first_ok = np.full(width, epochs, np.int32)
        last_wrong = np.zeros(width, np.int32)  # last incorrect presentation + 1
        for e in range(epochs):
            now = correct[e, lo:hi]
            if e > 0:
                before = correct[e - 1, lo:hi]
                for j in range(width):
                    forgets[j] += np.int32(before[j]) & (1 - np.int32(now[j]))
            for j in range(width):
                wrong = 1 - np.int32(now[j])
                first_ok[j] = min(first_ok[j], e + wrong * epochs)
                last_wrong[j] = max(last_wrong[j], wrong * (e + 1))
        for j in range(width):
            forgetting[lo + j] = epochs if first_ok[j] == epochs else forgets[j]
            first[lo + j] = first_ok[j]
            needed[lo + j] = last_wrong[j]


@njit(parallel=True, cache=True, nogil=True, fastmath=True)
def _symmetric_kl(zp, zq, out):
    n, c = zp.shape
    for i in prange(n):
        mp = zp[i, 0]
        mq = zq[i, 0]
        for j in range(1, c):
            mp = max(mp, zp[i, j])
            mq = max(mq, zq[i, j])
        sp = 0.0
        sq = 0.0
        for j in range(c):
            sp += np.exp(zp[i, j] - mp)
            sq += np.exp(zq[i, j] - mq)
        log_sp = np.log(sp)
        log_sq = np.log(sq)
        total = 0.0
        for j in range(c):  # log p = z - m - log s: no log per element; clamping p clamps log p alike
            log_p = max(zp[i, j] - mp - log_sp, LOG_CLAMP)
            log_q = max(zq[i, j] - mq - log_sq, LOG_CLAMP)
            total += (np.exp(log_p) - np.exp(log_q)) * (log_p - log_q)
        out[i] = 0.5 * total


def _cpu_only(*tensors: Tensor) -> None:
    for t in tensors:
        if t.device.type != "cpu":
            raise ValueError(f"the numba backend runs on CPU tensors, got one on {t.device}")


def signals(logits: Tensor, labels: Tensor) -> Tensor:
    _cpu_only(logits, labels)
    out = torch.empty(logits.shape[0], 5, dtype=logits.dtype)
    if logits.shape[0]:
        kernel = _signals_f32 if logits.dtype == torch.float32 else _signals_f64
        with keep_torch_threads():  # numba's OpenMP start would change torch's thread count
            kernel(logits.contiguous().numpy(), labels.contiguous().numpy(), out.numpy(), _POW2)
    return out


def learning_events(correct: Tensor) -> dict[str, Tensor]:
    _cpu_only(correct)
    n = correct.shape[1]
    forgetting, first, needed = (torch.empty(n, dtype=torch.int64) for _ in range(3))
    if n:
        with keep_torch_threads():  # numba's OpenMP start would change torch's thread count
            _learning_events(correct.contiguous().view(torch.uint8).numpy(), forgetting.numpy(), first.numpy(),
                             needed.numpy())
    return {"forgetting_events": forgetting, "first_learned": first, "presentations_needed": needed}


def symmetric_kl(logits_p: Tensor, logits_q: Tensor) -> Tensor:
    _cpu_only(logits_p, logits_q)
    out = torch.empty(logits_p.shape[0], dtype=logits_p.dtype)
    if logits_p.shape[0]:
        with keep_torch_threads():  # numba's OpenMP start would change torch's thread count
            _symmetric_kl(logits_p.contiguous().numpy(), logits_q.contiguous().numpy(), out.numpy())
    return out
