"""Triton selective scan, forward and backward (GPU; on CPU under ``TRITON_INTERPRET=1``).

Same recurrence as the reference (:mod:`ahm.kernels.selective_scan`)::

    h_t = exp(delta_t A) h_{t-1} + delta_t B_t u_t,     y_t = <C_t, h_t>

Grid: one program per (sequence, group, block of ``BLOCK_D`` channels of that
group). A program holds its (BLOCK_D, N) state in registers and walks time;
every ``EVERY`` steps it saves the state (checkpoints, (b, d, l / EVERY, N)).

Backward: per segment, newest first, the program recomputes the segment's states
into a private scratch buffer (b, d, EVERY, N), then runs the adjoint recurrence
``g_t = C_t dy_t + exp(delta_{t+1} A) g_{t+1}`` backwards. All channels of a
program share one group, so the gradients of B_t and C_t are summed over the
block in registers and added to global memory with one atomic add of N values
per step.

Triton reads ``TRITON_INTERPRET`` when a kernel is defined, so set it before this
module is first imported (the tests' conftest does, on machines without CUDA).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

__all__ = ["triton_scan", "EVERY"]

EVERY = 64
"""Steps between checkpoints (and rows of the backward's scratch buffer)."""


@triton.jit
def _fwd_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, h0_ptr, y_ptr, hlast_ptr, ckpt_ptr,
    dim, length, heads, d_state, n_seg,
    GROUPS: tl.constexpr, BLOCK_D: tl.constexpr, N: tl.constexpr, EVERY: tl.constexpr, KEEP: tl.constexpr,
):
    pid_b = tl.program_id(0)
    pid_g = tl.program_id(1)
    pid_d = tl.program_id(2)
    offs_h = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_d = pid_g * heads + offs_h  # channels of this program, all in group pid_g
    offs_n = tl.arange(0, N)
    mask_d = offs_h < heads
    mask_n = offs_n < d_state
    m2 = mask_d[:, None] & mask_n[None, :]
    state_off = pid_b * dim * d_state + offs_d[:, None] * d_state + offs_n[None, :]
    A = tl.load(A_ptr + offs_d[:, None] * d_state + offs_n[None, :], mask=m2, other=0.0)
    h = tl.load(h0_ptr + state_off, mask=m2, other=0.0)
    seq_off = pid_b * dim * length + offs_d * length
    bc_off = pid_b * GROUPS * d_state * length + pid_g * d_state * length + offs_n * length
    ckpt_off = pid_b * dim * n_seg * d_state + offs_d[:, None] * n_seg * d_state + offs_n[None, :]
    for t in range(0, length):
        if KEEP:
            if t % EVERY == 0:
                tl.store(ckpt_ptr + ckpt_off + (t // EVERY) * d_state, h, mask=m2)
        dt = tl.load(delta_ptr + seq_off + t, mask=mask_d, other=0.0)
        uu = tl.load(u_ptr + seq_off + t, mask=mask_d, other=0.0)
        Bt = tl.load(B_ptr + bc_off + t, mask=mask_n, other=0.0)
        Ct = tl.load(C_ptr + bc_off + t, mask=mask_n, other=0.0)
        h = tl.exp(dt[:, None] * A) * h + (dt * uu)[:, None] * Bt[None, :]
        y = tl.sum(h * Ct[None, :], axis=1)
        tl.store(y_ptr + seq_off + t, y, mask=mask_d)
    tl.store(hlast_ptr + state_off, h, mask=m2)


@triton.jit
def _bwd_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, ckpt_ptr, scratch_ptr, gy_ptr, glast_ptr,
    gu_ptr, gdelta_ptr, gA_ptr, gB_ptr, gC_ptr, gh0_ptr,
    dim, length, heads, d_state, n_seg,
    GROUPS: tl.constexpr, BLOCK_D: tl.constexpr, N: tl.constexpr, EVERY: tl.constexpr,
):
    pid_b = tl.program_id(0)
    pid_g = tl.program_id(1)
    pid_d = tl.program_id(2)
    offs_h = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_d = pid_g * heads + offs_h
    offs_n = tl.arange(0, N)
    mask_d = offs_h < heads
    mask_n = offs_n < d_state
    m2 = mask_d[:, None] & mask_n[None, :]
    state_off = pid_b * dim * d_state + offs_d[:, None] * d_state + offs_n[None, :]
    A = tl.load(A_ptr + offs_d[:, None] * d_state + offs_n[None, :], mask=m2, other=0.0)
    adj = tl.load(glast_ptr + state_off, mask=m2, other=0.0)
    gA = tl.zeros((BLOCK_D, N), dtype=A.dtype)
    seq_off = pid_b * dim * length + offs_d * length
    bc_off = pid_b * GROUPS * d_state * length + pid_g * d_state * length + offs_n * length
    ckpt_off = pid_b * dim * n_seg * d_state + offs_d[:, None] * n_seg * d_state + offs_n[None, :]
    scratch_off = pid_b * dim * EVERY * N + offs_d[:, None] * EVERY * N + offs_n[None, :]
    for seg_rev in range(0, n_seg):
        seg = n_seg - 1 - seg_rev
        s = seg * EVERY
        e = tl.minimum(s + EVERY, length)
        # Recompute the segment's states into scratch rows 0 .. e - s - 1.
        h = tl.load(ckpt_ptr + ckpt_off + seg * d_state, mask=m2, other=0.0)
        for t in range(s, e):
            dt = tl.load(delta_ptr + seq_off + t, mask=mask_d, other=0.0)
            uu = tl.load(u_ptr + seq_off + t, mask=mask_d, other=0.0)
            Bt = tl.load(B_ptr + bc_off + t, mask=mask_n, other=0.0)
            h = tl.exp(dt[:, None] * A) * h + (dt * uu)[:, None] * Bt[None, :]
            tl.store(scratch_ptr + scratch_off + (t - s) * N, h, mask=m2)
        # Adjoint recurrence, newest step first.
        for i in range(0, e - s):
            t = e - 1 - i
            dt = tl.load(delta_ptr + seq_off + t, mask=mask_d, other=0.0)
            uu = tl.load(u_ptr + seq_off + t, mask=mask_d, other=0.0)
            gy = tl.load(gy_ptr + seq_off + t, mask=mask_d, other=0.0)
            Bt = tl.load(B_ptr + bc_off + t, mask=mask_n, other=0.0)
            Ct = tl.load(C_ptr + bc_off + t, mask=mask_n, other=0.0)
            h_t = tl.load(scratch_ptr + scratch_off + (t - s) * N, mask=m2, other=0.0)
            if t == s:
                h_prev = tl.load(ckpt_ptr + ckpt_off + seg * d_state, mask=m2, other=0.0)
            else:
                h_prev = tl.load(scratch_ptr + scratch_off + (t - s - 1) * N, mask=m2, other=0.0)
            decay = tl.exp(dt[:, None] * A)
            gk = adj + gy[:, None] * Ct[None, :]  # dL/dh_t
            g_log = gk * h_prev * decay  # dL/d(delta_t A)
            gB_sum = tl.sum(gk * Bt[None, :], axis=1)
            g_dt = tl.sum(g_log * A, axis=1) + gB_sum * uu
            tl.store(gdelta_ptr + seq_off + t, g_dt, mask=mask_d)
            tl.store(gu_ptr + seq_off + t, gB_sum * dt, mask=mask_d)
            gA += g_log * dt[:, None]
            tl.atomic_add(gB_ptr + bc_off + t, tl.sum(gk * (dt * uu)[:, None], axis=0), mask=mask_n)
            tl.atomic_add(gC_ptr + bc_off + t, tl.sum(h_t * gy[:, None], axis=0), mask=mask_n)
            adj = decay * gk
    tl.store(gh0_ptr + state_off, adj, mask=m2)
    # One program per (b, channel block): A's gradient is summed over b on the host.
    tl.store(gA_ptr + state_off, gA, mask=m2)


def _launch_shape(u: Tensor, B: Tensor, d_state: int) -> tuple[tuple[int, int, int], int, int]:
    batch, dim, _ = u.shape
    groups = B.shape[1]
    heads = dim // groups
    block_d = min(32, triton.next_power_of_2(heads))
    grid = (batch, groups, triton.cdiv(heads, block_d))
    return grid, block_d, triton.next_power_of_2(d_state)


def _forward(u, delta, A, B, C, h0, keep: bool):
    batch, dim, length = u.shape
    d_state = A.shape[1]
    grid, block_d, n_pad = _launch_shape(u, B, d_state)
    n_seg = triton.cdiv(length, EVERY)
    y = torch.empty_like(u)
    h_last = torch.empty_like(h0)
    ckpt = u.new_empty(batch, dim, n_seg if keep else 1, d_state)
    _fwd_kernel[grid](
        u, delta, A, B, C, h0, y, h_last, ckpt, dim, length, dim // B.shape[1], d_state, n_seg,
        GROUPS=B.shape[1], BLOCK_D=block_d, N=n_pad, EVERY=EVERY, KEEP=keep,
    )
    return y, h_last, ckpt


class _TritonScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, h0):  # type: ignore[override]
        y, h_last, ckpt = _forward(u, delta, A, B, C, h0, keep=True)
        ctx.save_for_backward(u, delta, A, B, C, ckpt)
        return y, h_last

    @staticmethod
    def backward(ctx, grad_y, grad_last):  # type: ignore[override]
        u, delta, A, B, C, ckpt = ctx.saved_tensors
        batch, dim, length = u.shape
        d_state = A.shape[1]
        grid, block_d, n_pad = _launch_shape(u, B, d_state)
        grad_y = u.new_zeros(u.shape) if grad_y is None else grad_y.contiguous().to(u.dtype)
        grad_last = u.new_zeros(batch, dim, d_state) if grad_last is None else grad_last.contiguous().to(u.dtype)
        grad_u, grad_delta = torch.empty_like(u), torch.empty_like(u)
        grad_A = u.new_empty(batch, dim, d_state)
        grad_B, grad_C = torch.zeros_like(B), torch.zeros_like(C)
        grad_h0 = u.new_empty(batch, dim, d_state)
        scratch = u.new_empty(batch, dim, EVERY, n_pad)
        _bwd_kernel[grid](
            u, delta, A, B, C, ckpt, scratch, grad_y, grad_last,
            grad_u, grad_delta, grad_A, grad_B, grad_C, grad_h0,
            dim, length, dim // B.shape[1], d_state, ckpt.shape[2],
            GROUPS=B.shape[1], BLOCK_D=block_d, N=n_pad, EVERY=EVERY,
        )
        return grad_u, grad_delta, grad_A.sum(0), grad_B, grad_C, grad_h0


def triton_scan(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, h0: Tensor) -> tuple[Tensor, Tensor]:
    """The SSM core with Triton; same contract as :func:`ahm.kernels.scan_chunked.chunked_scan`."""
    inputs = [t.contiguous() for t in (u, delta, A, B, C, h0)]
    if torch.is_grad_enabled() and any(t.requires_grad for t in inputs):
        return _TritonScan.apply(*inputs)
    y, h_last, _ = _forward(*inputs, keep=False)
    return y, h_last
