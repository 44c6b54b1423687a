"""Triton top-k retrieval: per-tile candidates in one pass, then a small merge.

Stage 1 (the kernel): one program per (sequence, block of ``BLOCK_Q`` queries,
tile of ``BLOCK_M`` keys) computes the (BLOCK_Q, BLOCK_M) scores with ``tl.dot``
in full fp32 precision (``input_precision="ieee"``: no TF32, the search is exact),
masks empty slots and out-of-range keys to ``-inf``, and writes its own top-k by
k rounds of max / argmax. Only (b, q, tiles, k) candidates reach global memory,
never the (q x m) score matrix. int8 keys are converted in registers and scaled
per key.

Stage 2 (PyTorch): ``topk`` over each query's ``tiles * k`` candidates.

Triton reads ``TRITON_INTERPRET`` when a kernel is defined; on a machine without
a GPU set it to 1 before importing this module (the tests' conftest does).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

__all__ = ["triton_topk"]

BLOCK_Q = 16
BLOCK_M = 128


@triton.jit
def _tile_topk_kernel(
    q_ptr, k_ptr, scale_ptr, mask_ptr, out_val_ptr, out_idx_ptr,
    nq, m, d, n_tiles,
    K: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
    HAS_MASK: tl.constexpr, INT8: tl.constexpr,
):
    pid_b = tl.program_id(0)
    pid_q = tl.program_id(1)
    pid_m = tl.program_id(2)
    offs_q = pid_q * BLOCK_Q + tl.arange(0, BLOCK_Q)
    cols = tl.arange(0, BLOCK_M)
    offs_m = pid_m * BLOCK_M + cols
    offs_d = tl.arange(0, BLOCK_D)
    q_mask = (offs_q[:, None] < nq) & (offs_d[None, :] < d)
    k_mask = (offs_m[:, None] < m) & (offs_d[None, :] < d)
    qv = tl.load(q_ptr + pid_b * nq * d + offs_q[:, None] * d + offs_d[None, :], mask=q_mask, other=0.0)
    kv = tl.load(k_ptr + pid_b * m * d + offs_m[:, None] * d + offs_d[None, :], mask=k_mask, other=0)
    kv = kv.to(tl.float32)
    scores = tl.dot(qv, tl.trans(kv), input_precision="ieee")  # (BLOCK_Q, BLOCK_M)
    valid = offs_m < m
    if INT8:
        scores = scores * tl.load(scale_ptr + pid_b * m + offs_m, mask=valid, other=0.0)[None, :]
    if HAS_MASK:
        valid = valid & (tl.load(mask_ptr + pid_b * m + offs_m, mask=valid, other=0) != 0)
    scores = tl.where(valid[None, :], scores, float("-inf"))
    out_off = pid_b * nq * n_tiles * K + offs_q * n_tiles * K + pid_m * K
    for j in tl.static_range(K):
        best = tl.max(scores, axis=1)
        arg = tl.argmax(scores, axis=1)
        tl.store(out_val_ptr + out_off + j, best, mask=offs_q < nq)
        tl.store(out_idx_ptr + out_off + j, pid_m * BLOCK_M + arg, mask=offs_q < nq)
        scores = tl.where(cols[None, :] == arg[:, None], float("-inf"), scores)


def triton_topk(
    queries: Tensor, keys: Tensor, k: int, mask: Tensor | None = None, scales: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Batched exact top-k: queries (b, q, d) float, keys (b, m, d) float or int8 with
    ``scales`` (b, m), mask (b, m) bool or None. Returns (b, q, k) scores and indices;
    the caller maps ``-inf`` scores to index ``-1``.
    """
    b, nq, d = queries.shape
    m = keys.shape[1]
    n_tiles = triton.cdiv(m, BLOCK_M)
    kk = min(k, BLOCK_M)  # a tile cannot hold more than BLOCK_M distinct candidates
    queries = queries.float().contiguous()
    keys = keys.contiguous()
    int8 = keys.dtype == torch.int8
    if not int8:
        keys = keys.float()
    cand_val = queries.new_empty(b, nq, n_tiles, kk)
    cand_idx = torch.empty(b, nq, n_tiles, kk, dtype=torch.int64, device=queries.device)
    scale_arg = scales.float().contiguous() if int8 else queries  # unused when not int8
    mask_arg = mask.to(torch.int8).contiguous() if mask is not None else queries  # unused without mask
    grid = (b, triton.cdiv(nq, BLOCK_Q), n_tiles)
    _tile_topk_kernel[grid](
        queries, keys, scale_arg, mask_arg, cand_val, cand_idx, nq, m, d, n_tiles,
        K=kk, BLOCK_Q=BLOCK_Q, BLOCK_M=BLOCK_M, BLOCK_D=max(16, triton.next_power_of_2(d)),
        HAS_MASK=mask is not None, INT8=int8,
    )
    cand_val = cand_val.reshape(b, nq, n_tiles * kk)
    cand_idx = cand_idx.reshape(b, nq, n_tiles * kk)
    take = min(k, n_tiles * kk)
    val, order = torch.topk(cand_val, take, dim=-1)
    idx = torch.gather(cand_idx, -1, order)
    if take < k:
        val = torch.cat([val, val.new_full((b, nq, k - take), float("-inf"))], -1)
        idx = torch.cat([idx, idx.new_full((b, nq, k - take), -1)], -1)
    return val, idx
