"""Exact inner-product top-k retrieval over memory keys, fp32 and int8.

Glossary::

    b  sequences (each has its own memory)     q  queries per sequence
    m  keys (memory entries) per sequence      d  key dimension
    k  results per query

    queries (b, q, d)   keys (b, m, d)   mask (b, m) bool: True = the slot holds an entry
    -> scores (b, q, k) and indices (b, q, k) int64, best first

Unbatched inputs (queries (q, d), keys (m, d), mask (m,)) return (q, k) results.
Where fewer than ``k`` keys are valid, the missing results have score ``-inf``
and index ``-1``: an empty slot is never returned as a hit.

int8 keys (compressed long-term memory) are stored as ``codes`` (b, m, d) int8 and a
per-vector ``scales`` (b, m) float32 with ``key ~= scales * codes``
(:func:`quantize_int8`); their scores are exact inner products with those
dequantised keys (the queries are not quantised in the result).

Backends: ``ref`` materialises the whole (q x m) score matrix (the definition);
``blocked`` (CPU default) walks the keys in blocks and keeps a running top-k, so
memory is O(q * block) whatever m is; ``triton`` (CUDA default; CPU under
``TRITON_INTERPRET=1``) computes per-tile candidates in one kernel
(:mod:`ahm.kernels.retrieval_triton`).

On CPU with numba installed, ``blocked`` over memories of at least ``_NUMBA_MIN_KEYS`` (16K)
keys is (:mod:`ahm.kernels.topk_cpu`):

* fp32: one BLAS matmul per key block into a reused (block, q) buffer, then a
  numba pass that compares each key's q scores with the queries' running k-th
  best and inserts only the few that beat it;
* int8 (``arithmetic="int8"``, the default): int8 x int8 -> int32 dot products of
  the key codes with per-query int8 codes bound every score; only keys whose bound
  beats the running k-th best are rescored exactly (float query . dequantised
  key), so results are those of the dequantise-then-matmul definition.
  ``arithmetic="float"`` dequantises each block and uses the fp32 path instead.

Smaller memories, and any without numba, take a batched torch loop (same results): a
Python loop over sequences costs more there than the kernels save.

Exactness: the indices are those of the reference up to the float32 rounding
of the dot products themselves (two keys whose scores differ by a few ulp may
swap), and among equal scores the lower index ranks first (``torch.topk``,
and so ``ref``, leaves the order of equal scores unspecified). NaN scores are
never returned by the numba paths.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from . import topk_cpu
from ._backends import triton_usable

__all__ = [
    "retrieval_backends",
    "select_retrieval_backend",
    "quantize_int8",
    "dequantize_int8",
    "topk_similarity",
    "topk_similarity_int8",
    "topk_similarity_ref",
    "topk_similarity_int8_ref",
]

# Keys per block of the blocked backend: 64K keys x 64 queries is a 16 MB score
# buffer. Measured on 2 shared AVX2 cores (benchmarks/retrieval_topk.py, 1M keys):
# 16K-key blocks ran 1.3 s, 64K 0.52 s, the peer 0.8 s - every torch op is one
# OpenMP region, and fewer, larger regions suffer less from a busy neighbour.
_BLOCK = 65536

# The int8 kernel keeps its dot products in int32: |qc . c| <= 127^2 d < 2^31.
_INT8_MAX_DIM = (2**31 - 1) // 127**2

# The numba paths work one sequence at a time; below this many keys per sequence their fixed costs
# (a Python loop over the batch, numpy buffers, query quantisation, merging per-thread lists) outweigh
# what they save. Measured, one thread: 64 memories of 512 keys, one query each, took 3.6 ms (fp32) and
# 6.5 ms (int8) on the numba paths against 1.2 / 2.5 ms batched in torch; one memory of 64K keys 2.7 ms
# against 5.4 ms. Smaller memories take the batched torch path (``_topk_blocked``); all are exact.
_NUMBA_MIN_KEYS = 16384


def retrieval_backends(device: torch.device | str = "cpu") -> list[str]:
    """Backends of :func:`topk_similarity` that run on ``device``."""
    names = ["ref", "blocked"]
    if triton_usable(torch.device(device).type):
        names.append("triton")
    return names


def select_retrieval_backend(device: torch.device | str = "cpu") -> str:
    """What ``backend="auto"`` uses: ``triton`` on CUDA, ``blocked`` elsewhere."""
    return "triton" if torch.device(device).type == "cuda" and triton_usable("cuda") else "blocked"


def _resolve(backend: str, device: torch.device, what: str) -> str:
    names = retrieval_backends(device)
    name = select_retrieval_backend(device) if backend == "auto" else backend
    if name not in names:
        raise ValueError(f"{what}: backend {backend!r} is not available on {device}; choose 'auto' or one of {names}")
    return name


def quantize_int8(x: Tensor) -> tuple[Tensor, Tensor]:
    """Symmetric per-vector int8: x (..., d) -> codes (..., d) int8, scales (...) float32.

    ``scales * codes`` reconstructs ``x`` with per-element error at most ``scale / 2``.
    """
    x = x.float()
    scales = x.abs().amax(dim=-1) / 127.0
    safe = torch.where(scales > 0, scales, torch.ones_like(scales))
    codes = torch.round(x / safe[..., None]).clamp_(-127, 127).to(torch.int8)
    return codes, scales


def dequantize_int8(codes: Tensor, scales: Tensor) -> Tensor:
    """codes (..., d) int8, scales (...) -> float32 (..., d)."""
    return codes.float() * scales[..., None]


def _batched(queries: Tensor, keys: Tensor, mask: Tensor | None, k: int, what: str):
    """Validate and lift unbatched inputs to batched ones; returns (q, keys, mask, squeeze)."""
    if queries.dim() not in (2, 3) or keys.dim() != queries.dim():
        raise ValueError(
            f"{what}: queries and keys must both be (q, d) / (m, d) or (b, q, d) / (b, m, d); "
            f"got {tuple(queries.shape)} and {tuple(keys.shape)}"
        )
    squeeze = queries.dim() == 2
    if squeeze:
        queries, keys = queries[None], keys[None]
        mask = None if mask is None else mask[None]
    b, _, d = queries.shape
    if keys.shape[0] != b or keys.shape[2] != d:
        raise ValueError(
            f"{what}: keys must have shape (b, m, d) = ({b}, m, {d}) to match queries; got {tuple(keys.shape)}"
        )
    if mask is not None and (mask.shape != keys.shape[:2] or mask.dtype != torch.bool):
        raise ValueError(
            f"{what}: mask must be a bool tensor of shape (b, m) = {tuple(keys.shape[:2])}; "
            f"got {mask.dtype} {tuple(mask.shape)}"
        )
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"{what}: k must be a positive int, got {k!r}")
    return queries, keys, mask, squeeze


def _finish(scores: Tensor, idx: Tensor, squeeze: bool) -> tuple[Tensor, Tensor]:
    idx = torch.where(torch.isneginf(scores), torch.full_like(idx, -1), idx)
    return (scores[0], idx[0]) if squeeze else (scores, idx)


def _pad_topk(scores: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """top-k over the last dim, padded with -inf / -1 when there are fewer than k columns."""
    kk = min(k, scores.shape[-1])
    val, idx = torch.topk(scores, kk, dim=-1)
    if kk < k:
        pad = k - kk
        val = torch.cat([val, val.new_full((*val.shape[:-1], pad), float("-inf"))], -1)
        idx = torch.cat([idx, idx.new_full((*idx.shape[:-1], pad), -1)], -1)
    return val, idx


def topk_similarity_ref(queries: Tensor, keys: Tensor, k: int, mask: Tensor | None = None):
    """Reference: the full score matrix, masked, then ``torch.topk``."""
    queries, keys, mask, squeeze = _batched(queries, keys, mask, k, "topk_similarity")
    scores = torch.matmul(queries.float(), keys.float().transpose(1, 2))  # (b, q, m)
    if mask is not None:
        scores = scores.masked_fill(~mask[:, None, :], float("-inf"))
    return _finish(*_pad_topk(scores, k), squeeze)


def _topk_blocked(queries: Tensor, key_block, m: int, k: int, mask: Tensor | None, block: int):
    """Running top-k over key blocks; ``key_block(s, e)`` returns float keys (b, e - s, d).

    Per block: one matmul into a reused buffer, then a row maximum. Only rows whose
    block maximum beats their current k-th best can change, and after the first
    blocks those are few, so the expensive selection (``topk``) runs on them alone.
    """
    b, q, _ = queries.shape
    best_val = queries.new_full((b, q, k), float("-inf"))
    best_idx = torch.full((b, q, k), -1, dtype=torch.long, device=queries.device)
    buf = queries.new_empty(b, q, min(block, m))
    for s in range(0, m, block):
        e = min(s + block, m)
        scores = torch.matmul(queries, key_block(s, e).transpose(1, 2), out=buf[..., : e - s])  # (b, q, e - s)
        if mask is not None:
            scores.masked_fill_(~mask[:, None, s:e], float("-inf"))
        rows = (scores.amax(-1) > best_val[..., -1]).nonzero(as_tuple=True)  # rows that can improve
        if rows[0].numel() == 0:
            continue
        val, idx = _pad_topk(scores[rows], k)  # (r, k)
        # Merge with the best so far; on ties the earlier (lower) index stays first.
        val = torch.cat([best_val[rows], val], -1)
        idx = torch.cat([best_idx[rows], idx + s], -1)
        top, order = torch.topk(val, k, dim=-1)
        best_val[rows] = top
        best_idx[rows] = torch.gather(idx, -1, order)
    return best_val, best_idx


def _numba_cpu(queries: Tensor) -> bool:
    return queries.device.type == "cpu" and topk_cpu.numba_available()


def _valid_u8(mask: Tensor | None, b: int):
    """(m,) uint8 numpy view of one sequence's mask, or a dummy when there is none."""
    return np.ones(1, np.uint8) if mask is None else mask[b].to(torch.uint8).contiguous().numpy()


def _topk_blocked_numba(queries: Tensor, key_block, m: int, k: int, mask: Tensor | None, block: int):
    """fp32 blocked path: matmul per key block (BLAS, caller's threads) + numba selection.

    queries (b, q, d) float32; ``key_block(bi, s, e)`` returns sequence ``bi``'s float32
    keys (e - s, d) -> (b, q, k) scores, indices.
    """
    b, q, _ = queries.shape
    best_val = np.full((b, q, k), -np.inf, np.float32)
    best_idx = np.full((b, q, k), -1, np.int64)
    buf = queries.new_empty(min(block, m), q)  # (block, q): one row of q scores per key
    buf_np = buf.numpy()
    for bi in range(b):
        qt = queries[bi].t()  # (d, q)
        valid = _valid_u8(mask, bi)
        for s in range(0, m, block):
            e = min(s + block, m)
            torch.mm(key_block(bi, s, e), qt, out=buf[: e - s])  # (e - s, q)
            topk_cpu.select_block(buf_np[: e - s], s, valid, mask is not None, best_val[bi], best_idx[bi])
    return torch.from_numpy(best_val), torch.from_numpy(best_idx)


def topk_similarity(
    queries: Tensor, keys: Tensor, k: int, mask: Tensor | None = None, backend: str = "auto"
) -> tuple[Tensor, Tensor]:
    """Exact top-k inner products of ``queries`` against ``keys`` (see the module doc).

    Args:
        queries: (b, q, d) or (q, d).
        keys: (b, m, d) or (m, d).
        k: results per query.
        mask: optional (b, m) / (m,) bool, True where a key is valid.
        backend: ``"auto"`` or one of :func:`retrieval_backends`.

    Returns:
        scores (b, q, k) float32 and indices (b, q, k) int64, best first; ``-inf`` / ``-1``
        where fewer than ``k`` keys are valid.
    """
    name = _resolve(backend, queries.device, "topk_similarity")
    if name == "ref":
        return topk_similarity_ref(queries, keys, k, mask)
    queries, keys, mask, squeeze = _batched(queries, keys, mask, k, "topk_similarity")
    if name == "triton":
        from .retrieval_triton import triton_topk

        return _finish(*triton_topk(queries, keys, k, mask), squeeze)
    queries, keys = queries.detach().float().contiguous(), keys.detach().float()
    m = keys.shape[1]
    if _numba_cpu(queries) and m >= _NUMBA_MIN_KEYS:
        return _finish(*_topk_blocked_numba(queries, lambda bi, s, e: keys[bi, s:e], m, k, mask, _BLOCK), squeeze)
    return _finish(*_topk_blocked(queries, lambda s, e: keys[:, s:e], keys.shape[1], k, mask, _BLOCK), squeeze)


def _check_int8(codes: Tensor, scales: Tensor) -> None:
    if codes.dtype != torch.int8:
        raise ValueError(f"topk_similarity_int8: codes must be int8, got {codes.dtype}")
    if scales.shape != codes.shape[:-1]:
        raise ValueError(
            f"topk_similarity_int8: scales must have shape {tuple(codes.shape[:-1])} (one per key); "
            f"got {tuple(scales.shape)}"
        )


def topk_similarity_int8_ref(queries: Tensor, codes: Tensor, scales: Tensor, k: int, mask: Tensor | None = None):
    """Reference for int8 keys: dequantise everything, then :func:`topk_similarity_ref`."""
    _check_int8(codes, scales)
    return topk_similarity_ref(queries, dequantize_int8(codes, scales), k, mask)


def _topk_int8_numba(queries: Tensor, codes: Tensor, scales: Tensor, k: int, mask: Tensor | None):
    """int8 path: int32 screening + exact rescoring (:func:`ahm.kernels.topk_cpu.int8_topk`), per sequence."""
    torch_threads = torch.get_num_threads()
    numba_threads = topk_cpu.get_threads()
    n_chunks = 4 * topk_cpu.set_threads(torch_threads)  # a few chunks per thread: load balance
    try:
        vals, idxs = _int8_sequences(queries, codes, scales, k, mask, n_chunks)
    finally:
        # Leave both counts as found: numba's is process-wide for the calling thread (the scan kernels read it:
        # a count left at 1 here once made later training runs differ from a fresh process's), and numba's
        # OpenMP layer shares one runtime with torch.
        topk_cpu.set_threads(numba_threads)
        if torch.get_num_threads() != torch_threads:
            torch.set_num_threads(torch_threads)
    return vals, idxs


def _int8_sequences(queries: Tensor, codes: Tensor, scales: Tensor, k: int, mask: Tensor | None, n_chunks: int):
    vals, idxs = [], []
    for bi in range(queries.shape[0]):
        qcodes, qscales, qerr = topk_cpu.quantize_queries(queries[bi])
        v, ix, _ = topk_cpu.int8_topk(
            queries[bi].numpy(), qcodes, qscales, qerr, codes[bi].contiguous().numpy(),
            scales[bi].float().contiguous().numpy(), _valid_u8(mask, bi), mask is not None, k, n_chunks,
        )
        v, ix = topk_cpu.merge_chunks(torch.from_numpy(v), torch.from_numpy(ix), k)  # (q, k)
        vals.append(v.float())
        idxs.append(ix)
    return torch.stack(vals), torch.stack(idxs)


def topk_similarity_int8(
    queries: Tensor,
    codes: Tensor,
    scales: Tensor,
    k: int,
    mask: Tensor | None = None,
    backend: str = "auto",
    arithmetic: str = "int8",
) -> tuple[Tensor, Tensor]:
    """:func:`topk_similarity` over int8 keys ``scales * codes`` (see :func:`quantize_int8`).

    Args:
        queries: (b, q, d) or (q, d) float.
        codes: (b, m, d) / (m, d) int8; scales: (b, m) / (m,) float32.
        k, mask, backend: as in :func:`topk_similarity`.
        arithmetic: how the CPU ``blocked`` backend scores keys: ``"int8"`` (int8 x int8
            -> int32 bounds, exact rescoring of the few keys that can enter; needs numba,
            and memories of at least ``_NUMBA_MIN_KEYS`` keys: smaller ones are dequantised)
            or ``"float"`` (dequantise each block, fp32 matmul). Both return the
            reference's result; other backends ignore it.

    Returns:
        scores (b, q, k) float32 and indices (b, q, k) int64, as :func:`topk_similarity`.
    """
    _check_int8(codes, scales)
    if arithmetic not in ("int8", "float"):
        raise ValueError(f"topk_similarity_int8: arithmetic must be 'int8' or 'float', got {arithmetic!r}")
    name = _resolve(backend, queries.device, "topk_similarity_int8")
    if name == "ref":
        return topk_similarity_int8_ref(queries, codes, scales, k, mask)
    queries, codes_b, mask, squeeze = _batched(queries, codes, mask, k, "topk_similarity_int8")
    scales_b = scales if not squeeze else scales[None]
    if name == "triton":
        from .retrieval_triton import triton_topk

        return _finish(*triton_topk(queries, codes_b, k, mask, scales=scales_b), squeeze)
    queries = queries.detach().float().contiguous()
    m = codes_b.shape[1]
    if _numba_cpu(queries) and m >= _NUMBA_MIN_KEYS:
        if arithmetic == "int8" and queries.shape[-1] <= _INT8_MAX_DIM:
            return _finish(*_topk_int8_numba(queries, codes_b, scales_b, k, mask), squeeze)

        def block_b(bi: int, s: int, e: int) -> Tensor:
            return dequantize_int8(codes_b[bi, s:e], scales_b[bi, s:e])

        return _finish(*_topk_blocked_numba(queries, block_b, m, k, mask, _BLOCK), squeeze)

    def block(s: int, e: int) -> Tensor:
        return dequantize_int8(codes_b[:, s:e], scales_b[:, s:e])

    return _finish(*_topk_blocked(queries, block, m, k, mask, _BLOCK), squeeze)
