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
dequantised keys.

Backends: ``ref`` materialises the whole (q x m) score matrix (the definition);
``blocked`` (CPU default) walks the keys in blocks and keeps a running top-k, so
memory is O(q * block) whatever m is, and int8 blocks are dequantised one at a
time; ``triton`` (CUDA default; CPU under ``TRITON_INTERPRET=1``) computes
per-tile candidates in one kernel (:mod:`ahm.kernels.retrieval_triton`).
"""

from __future__ import annotations

import torch
from torch import Tensor

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

# Keys per block of the blocked backend: (q x block) scores stay in cache for the
# common q <= 64.
_BLOCK = 16384


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
    queries, keys = queries.float(), keys.float()
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


def topk_similarity_int8(
    queries: Tensor, codes: Tensor, scales: Tensor, k: int, mask: Tensor | None = None, backend: str = "auto"
) -> tuple[Tensor, Tensor]:
    """:func:`topk_similarity` over int8 keys ``scales * codes`` (see :func:`quantize_int8`)."""
    _check_int8(codes, scales)
    name = _resolve(backend, queries.device, "topk_similarity_int8")
    if name == "ref":
        return topk_similarity_int8_ref(queries, codes, scales, k, mask)
    queries, codes_b, mask, squeeze = _batched(queries, codes, mask, k, "topk_similarity_int8")
    scales_b = scales if not squeeze else scales[None]
    if name == "triton":
        from .retrieval_triton import triton_topk

        return _finish(*triton_topk(queries, codes_b, k, mask, scales=scales_b), squeeze)
    queries = queries.float()

    def block(s: int, e: int) -> Tensor:
        return dequantize_int8(codes_b[:, s:e], scales_b[:, s:e])

    return _finish(*_topk_blocked(queries, block, codes_b.shape[1], k, mask, _BLOCK), squeeze)
