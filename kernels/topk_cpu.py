"""Numba kernels of the CPU top-k retrieval path (:mod:`ahm.kernels.retrieval`).

Glossary (as in :mod:`ahm.kernels.retrieval`)::

    q  queries    m  keys    d  key dimension    k  results per query    B  keys per block

Two kernels, each exact (see the per-kernel docs for what "exact" rests on):

* :func:`select_block` - the selection half of the fp32 path: given one block of
  scores (B, q) from a BLAS matmul, keep a running per-query top-k. A key row is
  looked at only when one of its q scores beats that query's current k-th best
  (one vectorised compare per row), so after the first blocks almost every row
  costs a compare and nothing else.
* :func:`int8_topk` - int8 keys with int8 arithmetic: queries are quantised per
  vector like the keys (:func:`ahm.kernels.retrieval.quantize_int8`), each key's
  score is bounded from the int32 dot product of the codes, and only keys whose
  upper bound beats the current k-th best are rescored exactly (float64 dot of
  the float32 query with the dequantised key). Results are those of the
  dequantise-then-matmul definition, not of the quantised queries.

Tie rule everywhere: keys are visited in increasing index and a key enters a
query's list only with a score strictly above the current k-th best, so among
equal scores the lower index ranks first. NaN scores never enter.

Per-chunk lists are merged by :func:`merge_chunks` with a stable sort, chunks in
key order, so the tie rule holds across chunks too.

Numba is optional for the package; these kernels raise a clear ImportError when
called without it.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

try:
    import numba
    from numba import njit, prange
except ImportError:  # pragma: no cover - exercised only without numba
    numba = None

    def njit(*args, **kwargs):
        def wrap(fn):
            def missing(*a, **kw):
                raise ImportError(
                    "ahm.kernels.topk_cpu needs numba for the CPU retrieval kernels: "
                    "pip install numba, or pass backend='ref'"
                )

            return missing

        return wrap(args[0]) if args and callable(args[0]) else wrap

    prange = range

__all__ = ["numba_available", "select_block", "int8_topk", "merge_chunks", "get_threads", "set_threads"]

# Slack of the int8 screening bound, relative to |q| |key|: covers the float32
# rounding of the dequantised keys (2^-24 per element, summed over d by Cauchy-
# Schwarz) and the float64 arithmetic of the bound itself, with wide margin.
_REL_SLACK = 1e-6


def numba_available() -> bool:
    return numba is not None


def get_threads() -> int:
    """numba's current thread count for parallel loops (1 without numba)."""
    return 1 if numba is None else numba.get_num_threads()


def set_threads(n: int) -> int:
    """Run numba's parallel loops on ``n`` threads (capped by its pool); returns the count used."""
    if numba is None:
        return 1
    n = max(1, min(int(n), numba.config.NUMBA_NUM_THREADS))
    numba.set_num_threads(n)
    return n


@njit(cache=True, inline="always")
def _insert(vals, idxs, row, score, index):
    """Insert ``score`` (strictly above ``vals[row, -1]``) into the descending list ``row``.

    Equal scores already there stay ahead: they came from lower indices.
    """
    p = vals.shape[1] - 1
    while p > 0 and vals[row, p - 1] < score:
        vals[row, p] = vals[row, p - 1]
        idxs[row, p] = idxs[row, p - 1]
        p -= 1
    vals[row, p] = score
    idxs[row, p] = index


@njit(cache=True)
def select_block(scores, offset, valid, use_mask, vals, idxs):
    """Fold one block of scores into running top-k lists, in place.

    Args:
        scores: (B, q) float32, row j = key ``offset + j``.
        offset: index of the block's first key.
        valid: (m,) uint8, 1 where a key may be returned (read only if ``use_mask``).
        vals, idxs: (q, k) float32 / int64 running lists, best first (``-inf`` / ``-1`` empty).
    """
    n, nq = scores.shape
    k = vals.shape[1]
    thr = np.empty(nq, np.float32)
    for i in range(nq):
        thr[i] = vals[i, k - 1]
    for j in range(n):
        if use_mask and valid[offset + j] == 0:
            continue
        hit = False
        for i in range(nq):  # no early exit: vectorises
            hit |= scores[j, i] > thr[i]
        if not hit:
            continue
        for i in range(nq):
            s = scores[j, i]
            if s > thr[i]:
                _insert(vals, idxs, i, s, offset + j)
                thr[i] = vals[i, k - 1]


@njit(cache=True, parallel=True)
def int8_topk(queries, qcodes, qscales, qerr, codes, scales, valid, use_mask, k, n_chunks):
    """Exact top-k over int8 keys ``scales * codes`` with int8 x int8 -> int32 screening.

    With ``q = qs * qc + e`` (the query's own int8 quantisation and its residual)
    and a key ``key = s * c``::

        q . key = s * qs * (qc . c)  +  s * (e . c),   |s * (e . c)| <= s |c| |e|

    so ``ub = s * qs * (qc . c) + s |c| qerr`` (``qerr = |e| + slack |q|``) bounds the
    score from above. A key whose bound does not beat the query's current k-th best
    cannot enter; the others are rescored exactly, as the reference defines the
    score: the float32 query against the float32 dequantised key, accumulated in
    float64.

    Args:
        queries: (q, d) float32. qcodes: (q, d) int16 query codes (|code| <= 127).
        qscales, qerr: (q,) float64. codes: (m, d) int8. scales: (m,) float32.
        valid: (m,) uint8 (read only if ``use_mask``).

    Returns:
        vals (n_chunks, q, k) float64, idxs (n_chunks, q, k) int64, and the number
        of exact rescorings (n_chunks,) int64 (how well the screen worked).
    """
    m, d = codes.shape
    nq = queries.shape[0]
    vals = np.full((n_chunks, nq, k), -np.inf, np.float64)
    idxs = np.full((n_chunks, nq, k), -1, np.int64)
    rescored = np.zeros(n_chunks, np.int64)
    size = (m + n_chunks - 1) // n_chunks
    for c in prange(n_chunks):
        v, ix = vals[c], idxs[c]
        thr = np.full(nq, -np.inf, np.float64)
        n_exact = 0
        for j in range(c * size, min(m, (c + 1) * size)):
            if use_mask and valid[j] == 0:
                continue
            sq = np.int32(0)
            for t in range(d):
                sq = np.int32(sq + codes[j, t] * codes[j, t])
            s = np.float64(scales[j])
            radius = s * math.sqrt(np.float64(sq))
            for i in range(nq):
                dot = np.int32(0)
                for t in range(d):  # int16 x int16 -> int32: exact, |dot| <= 127^2 d
                    dot = np.int32(dot + qcodes[i, t] * codes[j, t])  # kept in int32: numba would widen to int64
                if np.float64(dot) * qscales[i] * s + radius * qerr[i] > thr[i]:
                    n_exact += 1
                    exact = 0.0
                    for t in range(d):
                        exact += np.float64(queries[i, t]) * np.float64(np.float32(codes[j, t]) * scales[j])
                    if exact > thr[i]:
                        _insert(v, ix, i, exact, j)
                        thr[i] = v[i, k - 1]
        rescored[c] = n_exact
    return vals, idxs, rescored


def merge_chunks(vals: Tensor, idxs: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Per-chunk lists (c, q, k), chunks in key order -> (q, k), best first, lower index first on ties."""
    c, nq, kk = vals.shape
    if c == 1:
        return vals[0], idxs[0]
    flat_v = vals.permute(1, 0, 2).reshape(nq, c * kk)  # (q, c * k), key order within equal scores
    flat_i = idxs.permute(1, 0, 2).reshape(nq, c * kk)
    top, order = torch.sort(flat_v, dim=-1, descending=True, stable=True)
    return top[:, :k], torch.gather(flat_i, -1, order[:, :k])


def quantize_queries(queries: Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-query int8 codes (as int16), scales and screening error ``|q - qs * qc| + slack |q|`` (float64)."""
    q32 = queries.float()
    scales = q32.abs().amax(dim=-1).double() / 127.0  # (q,)
    safe = torch.where(scales > 0, scales, torch.ones_like(scales))
    codes = torch.round(q32.double() / safe[:, None]).clamp_(-127, 127)  # (q, d), integral float64
    resid = (q32.double() - codes * scales[:, None]).norm(dim=-1)
    err = resid + _REL_SLACK * q32.double().norm(dim=-1)
    return codes.to(torch.int16).numpy(), scales.numpy(), err.numpy()
