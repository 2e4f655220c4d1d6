"""numba CPU kernels: one parallel pass over rows (``prange``), compiled once and cached on disk.

Imported lazily by :mod:`proxies._backends` the first time the ``numba`` backend is used, so that importing
``proxies`` does not pay for numba.
"""

from __future__ import annotations

import numpy as np
import torch
from numba import njit, prange
from torch import Tensor

CLAMP = 1e-10
_COLUMN_CHUNK = 2048  # learning_events: columns per task, so each task streams whole cache lines of every row


@njit(parallel=True, cache=True, nogil=True)
def _signals(z, labels, out):
    n, c = z.shape
    for i in prange(n):
        m = z[i, 0]
        best = 0
        for j in range(1, c):
            if z[i, j] > m:  # strict: the first maximal logit wins, as argmax
                m = z[i, j]
                best = j
        s = 0.0
        weighted = 0.0
        for j in range(c):
            d = z[i, j] - m
            e = np.exp(d)
            s += e
            weighted += e * d
        log_s = np.log(s)
        y = labels[i]
        log_p_true = z[i, y] - m - log_s
        out[i, 0] = np.exp(log_p_true)
        out[i, 1] = 1.0 / s
        out[i, 2] = log_s - weighted / s
        out[i, 3] = -log_p_true
        out[i, 4] = 1.0 if best == y else 0.0


@njit(parallel=True, cache=True, nogil=True)
def _learning_events(correct, forgetting, first, needed):
    epochs, n = correct.shape
    chunks = (n + _COLUMN_CHUNK - 1) // _COLUMN_CHUNK
    for k in prange(chunks):
        lo = k * _COLUMN_CHUNK
        hi = min(n, lo + _COLUMN_CHUNK)
        for j in range(lo, hi):
            forgetting[j] = 0
            first[j] = epochs
            needed[j] = 0
        for e in range(epochs):  # rows outer: every row is read contiguously
            for j in range(lo, hi):
                now = correct[e, j]
                if e > 0:
                    forgetting[j] += correct[e - 1, j] & (1 - now)
                if now:
                    first[j] = min(first[j], e)
                else:
                    needed[j] = e + 1
        for j in range(lo, hi):
            if first[j] == epochs:
                forgetting[j] = epochs


@njit(parallel=True, cache=True, nogil=True)
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
        total = 0.0
        for j in range(c):
            p = max(np.exp(zp[i, j] - mp) / sp, CLAMP)
            q = max(np.exp(zq[i, j] - mq) / sq, CLAMP)
            total += (p - q) * (np.log(p) - np.log(q))
        out[i] = 0.5 * total


def _cpu_only(*tensors: Tensor) -> None:
    for t in tensors:
        if t.device.type != "cpu":
            raise ValueError(f"the numba backend runs on CPU tensors, got one on {t.device}")


def signals(logits: Tensor, labels: Tensor) -> Tensor:
    _cpu_only(logits, labels)
    out = torch.empty(logits.shape[0], 5, dtype=logits.dtype)
    if logits.shape[0]:
        _signals(logits.contiguous().numpy(), labels.contiguous().numpy(), out.numpy())
    return out


def learning_events(correct: Tensor) -> dict[str, Tensor]:
    _cpu_only(correct)
    n = correct.shape[1]
    forgetting, first, needed = (torch.empty(n, dtype=torch.int64) for _ in range(3))
    if n:
        _learning_events(correct.contiguous().view(torch.uint8).numpy(), forgetting.numpy(), first.numpy(),
                         needed.numpy())
    return {"forgetting_events": forgetting, "first_learned": first, "presentations_needed": needed}


def symmetric_kl(logits_p: Tensor, logits_q: Tensor) -> Tensor:
    _cpu_only(logits_p, logits_q)
    out = torch.empty(logits_p.shape[0], dtype=logits_p.dtype)
    if logits_p.shape[0]:
        _symmetric_kl(logits_p.contiguous().numpy(), logits_q.contiguous().numpy(), out.numpy())
    return out
