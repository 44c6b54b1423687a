"""Compiled CPU selective scan (numba): the state lives in a register-sized buffer.

Same recurrence as the reference (:mod:`ahm.kernels.selective_scan`)::

    h_t = exp(delta_t A) h_{t-1} + delta_t B_t u_t,     y_t = <C_t, h_t>

Each (sequence, channel) pair is an independent recurrence over time, so the
kernels run ``prange`` over b x d and walk time sequentially with the n-sized
state in a local array; nothing of size (b, d, l, n) is ever materialised: the decays
exp(delta_t A) come from torch's vectorised exp a block of steps at a time (:data:`DECAY_BLOCK_ELEMENTS`).

Backward: the forward keeps the state entering every ``T``-step segment
(checkpoints, (b, d, l / T, n)); the backward walks blocks of segments in reverse
(the block's decays from torch, as in the forward, the adjoint carried between
blocks in a (b, d, n) array), recomputes each segment's states into a (T, n)
buffer, and runs the adjoint recurrence ``g_t = C_t dy_t + exp(delta_{t+1} A) g_{t+1}``. B and C are
shared by the channels of a group, so their gradients are sums over channels:
each worker accumulates into its own slice of a (P, b, g, l, n) buffer (P =
number of workers) that is summed afterwards, so no two threads write the same
memory. Without autograd (``torch.no_grad`` or no input requiring grad) no
checkpoints are kept and streaming a 1M-token sequence costs O(b d n) memory.
"""

from __future__ import annotations

import contextlib
import os
import types
from collections.abc import Callable, Iterator

import numba
import numpy as np
import torch
from numba import prange
from torch import Tensor

__all__ = ["cpu_scan", "CHECKPOINT_EVERY", "in_forked_child"]

CHECKPOINT_EVERY = 64
"""Steps between saved states for the backward pass (memory l / 64 x the state)."""

DECAY_BLOCK_ELEMENTS = 1 << 18
"""The forward takes its decays exp(delta_t A) from torch's vectorised ``exp`` (numba has no vector exp without
Intel's SVML, so its scalar ``math.exp`` in the step loop bounded the scan), a block of time steps at a time:
about this many (b x d x steps x n) values per block (1 MiB in float32), at least :data:`MIN_DECAY_STEPS` steps.
A block's B_t / C_t rows also stay in cache while every channel reads them. Measured against the in-kernel exp
(one thread, dim 256, d_state 16, docs/results.md): forward 2.2-2.4x, forward + backward 1.7x."""

MIN_DECAY_STEPS = 4
"""Fewest steps per decay block (a batch of many sequences would otherwise pay a kernel call per step)."""

_VECTOR_MATH = {"reassoc", "contract"}
"""LLVM fast-math flags of both kernels: re-associating the sums over the state (and fusing multiply-adds) lets
the loops over n run as SIMD instead of a chain of n dependent adds per step; nothing else is relaxed (no-NaN /
no-inf assumptions stay off). Float64 results stay within 1e-12 of ``ref`` (tests)."""

PARALLEL_MIN_WORK = 1 << 18
"""Below this many state updates (b d l n) a call runs on one thread: waking the
thread pool costs more than the work (measured: 16 ms against 0.4 ms per
single-step call on a loaded 2-core machine, tests/benchmarks token-by-token)."""


# ---------------------------------------------------------------- threads, and processes forked from this one
_forked = False


def in_forked_child() -> bool:
    """Whether this process was forked from one that had imported this module (the kernels then run serially)."""
    return _forked


def _after_fork_in_child() -> None:
    """In a forked child: serial scan kernels and one torch thread (what ``torch.utils.data.DataLoader`` does in
    its forked workers, for the same reason).

    numba's parallel kernels run on GNU OpenMP where TBB is missing (numba's default layer order is
    tbb, omp, workqueue), and torch's CPU ops do too; an OpenMP thread team does not survive
    ``fork()``. After the backbone ran in the parent, a forked child (``gymnasium.make_vec(...,
    vectorization_mode="async")``, SB3's ``SubprocVecEnv`` with ``start_method="fork"``) died at
    its first parallel scan ("fork() called from a process already using GNU OpenMP"), and, past
    that, waited forever in its first multi-threaded torch op. Serial kernels and one torch
    thread use no thread team. Forked workers run one per core anyway; a child that wants more
    torch threads calls ``torch.set_num_threads`` itself.

    Why not numba's fork-safe ``workqueue`` layer everywhere instead: measured on 2 cores, it made
    the scan calls of a fresh 100K-token reset of ``AHMMemory-v0`` take 1.3 s instead of 0.7 s
    (the whole reset 2.1 s instead of 1.4 s); this hook costs nothing outside forked children.
    """
    global _forked
    _forked = True
    if torch.get_num_threads() > 1:
        torch.set_num_threads(1)


if hasattr(os, "register_at_fork"):  # POSIX; spawn and forkserver children import this module afresh
    os.register_at_fork(after_in_child=_after_fork_in_child)


@contextlib.contextmanager
def _threads_for(work: int) -> Iterator[int]:
    """Run the enclosed kernel calls on torch's thread count (what ``torch.set_num_threads`` and every
    ``--threads`` option set; capped by numba's pool), or on one thread if ``work`` is small; yields the
    thread count (always 1 in a forked child, where the serial kernels run and numba's thread pool is not
    touched).

    The kernels once ran on numba's own count (every core) whatever torch's was: two ``--threads 1`` jobs
    on 2 cores then ran 4 threads, and each streamed a 0.1M Mamba at 7.6-8.9K tokens/s instead of
    20-21K (24K alone).

    numba's OpenMP layer and torch share one OpenMP runtime, so setting numba's thread
    count can change torch's: torch's count is restored on the way out.
    """
    if _forked:
        yield 1
        return
    torch_threads = torch.get_num_threads()
    previous = numba.get_num_threads()
    threads = min(previous, torch_threads) if work >= PARALLEL_MIN_WORK else 1
    numba.set_num_threads(threads)
    try:
        yield threads
    finally:
        numba.set_num_threads(previous)
        if torch.get_num_threads() != torch_threads:
            torch.set_num_threads(torch_threads)


@numba.njit(parallel=True, cache=True, nogil=True, fastmath=_VECTOR_MATH)
def _forward_kernel(u, delta, decay, Bt, Ct, h, y, checkpoints, every, start):  # pragma: no cover
    """Steps ``start .. start + decay.shape[2]`` of the scan; ``h`` (b, d, n) the state in and out, ``decay``
    (b, d, steps, n) = exp(delta A) of those steps."""
    batch, dim, steps, d_state = decay.shape
    groups = Bt.shape[1]
    heads = dim // groups
    keep = checkpoints.shape[2] > 0
    for job in prange(batch * dim):
        b = job // dim
        d = job % dim
        g = d // heads
        hd = h[b, d]
        for i in range(steps):
            t = start + i
            if keep and t % every == 0:
                checkpoints[b, d, t // every] = hd
            x = delta[b, d, t] * u[b, d, t]
            acc = 0.0
            for k in range(d_state):
                hd[k] = decay[b, d, i, k] * hd[k] + x * Bt[b, g, t, k]
                acc += hd[k] * Ct[b, g, t, k]
            y[b, d, t] = acc


@numba.njit(parallel=True, cache=True, nogil=True, fastmath=_VECTOR_MATH)
def _backward_kernel(
    u, delta, A, Bt, Ct, checkpoints, every, grad_y, adj_all, decay, first_seg,
    grad_u, grad_delta, grad_A_part, grad_B_part, grad_C_part,
):  # pragma: no cover - compiled
    """Segments ``first_seg .. first_seg + decay.shape[2] / every`` (newest first) of the backward; ``adj_all``
    (b, d, n) the adjoint dL/dh entering from the later steps, updated in place; ``decay`` (b, d, steps, n) =
    exp(delta A) of those segments' steps."""
    batch, dim, length = u.shape
    groups = Bt.shape[1]
    d_state = A.shape[1]
    heads = dim // groups
    workers = grad_B_part.shape[0]
    block_start = first_seg * every
    last_seg = min(-(-(block_start + decay.shape[2]) // every), checkpoints.shape[2]) - 1
    # Job = (sequence, group, worker); the worker handles a slice of the group's channels.
    for job in prange(batch * groups * workers):
        p = job % workers
        bg = job // workers
        b = bg // groups
        g = bg % groups
        hs = np.empty((every, d_state), dtype=u.dtype)
        for d in range(g * heads + p, (g + 1) * heads, workers):
            a = A[d]
            adj = adj_all[b, d]
            for seg in range(last_seg, first_seg - 1, -1):
                s = seg * every
                e = min(s + every, length)
                # Recompute the segment's states from its checkpoint.
                h_prev = checkpoints[b, d, seg]
                for t in range(s, e):
                    x = delta[b, d, t] * u[b, d, t]
                    i = t - s
                    for k in range(d_state):
                        prev = h_prev[k] if i == 0 else hs[i - 1, k]
                        hs[i, k] = decay[b, d, t - block_start, k] * prev + x * Bt[b, g, t, k]
                # Adjoint recurrence, newest step first.
                for t in range(e - 1, s - 1, -1):
                    i = t - s
                    dt = delta[b, d, t]
                    uu = u[b, d, t]
                    gy = grad_y[b, d, t]
                    g_dt = 0.0
                    g_u = 0.0
                    for k in range(d_state):
                        gk = adj[k] + gy * Ct[b, g, t, k]  # dL/dh_t
                        prev = h_prev[k] if i == 0 else hs[i - 1, k]
                        dk = decay[b, d, t - block_start, k]
                        g_log = gk * prev * dk  # dL/d(delta_t a_k)
                        g_dt += g_log * a[k] + gk * Bt[b, g, t, k] * uu
                        g_u += gk * Bt[b, g, t, k]
                        grad_A_part[b, d, k] += g_log * dt
                        grad_B_part[p, b, g, t, k] += gk * dt * uu
                        grad_C_part[p, b, g, t, k] += hs[i, k] * gy
                        adj[k] = dk * gk  # dL/dh_{t-1} through h_t
                    grad_delta[b, d, t] = g_dt
                    grad_u[b, d, t] = g_u * dt


def _serial_twin(kernel: Callable, name: str) -> Callable:
    """``kernel`` compiled without ``parallel`` (its ``prange`` runs as ``range``): what a forked child runs.

    A renamed copy of the Python function, so numba caches it apart from the parallel one (numba's
    cache is keyed by the function's qualified name, not by its compile flags). Compiled on first call.
    """
    fn = kernel.py_func
    twin = types.FunctionType(fn.__code__, fn.__globals__, name, fn.__defaults__, fn.__closure__)
    twin.__qualname__ = name
    return numba.njit(cache=True, nogil=True, fastmath=kernel.targetoptions.get("fastmath", False))(twin)


_forward_kernel_serial = _serial_twin(_forward_kernel, "_forward_kernel_serial")
_backward_kernel_serial = _serial_twin(_backward_kernel, "_backward_kernel_serial")


def _decay_steps(batch: int, dim: int, d_state: int) -> int:
    """Time steps per block of decays (:data:`DECAY_BLOCK_ELEMENTS`)."""
    return max(MIN_DECAY_STEPS, DECAY_BLOCK_ELEMENTS // max(1, batch * dim * d_state))


def _decays(delta: Tensor, A: Tensor, start: int, stop: int, buffer: Tensor) -> Tensor:
    """(b, d, stop - start, n) = exp(delta_t A) of steps ``start .. stop``, written into ``buffer`` (reused)."""
    decay = buffer[:, :, : stop - start]
    torch.mul(delta.detach()[:, :, start:stop, None], A.detach()[:, None, :], out=decay)
    return decay.exp_()


def _np(t: Tensor) -> np.ndarray:
    return t.detach().contiguous().numpy()


def _forward(u, delta, A, B, C, h0, keep_checkpoints: bool):
    batch, dim, length = u.shape
    d_state = A.shape[1]
    Bt = B.transpose(2, 3).contiguous()  # (b, g, l, n): each step's n values contiguous
    Ct = C.transpose(2, 3).contiguous()
    y = torch.empty_like(u)
    h = h0.detach().clone()
    n_seg = -(-length // CHECKPOINT_EVERY) if keep_checkpoints else 0
    checkpoints = u.new_empty(batch, dim, n_seg, d_state)
    steps = _decay_steps(batch, dim, d_state)
    kernel = _forward_kernel_serial if _forked else _forward_kernel
    un, dn, Bn, Cn, hn, yn, cn = (_np(t) for t in (u, delta, Bt, Ct, h, y, checkpoints))
    buffer = u.new_empty(batch, dim, min(steps, length), d_state)  # reused: a fresh block per call page-faulted
    with _threads_for(batch * dim * length * d_state):
        for start in range(0, length, steps):
            block = min(steps, length - start)
            decay = _decays(delta, A, start, start + block, buffer)
            kernel(un, dn, _np(decay), Bn, Cn, hn, yn, cn, CHECKPOINT_EVERY, start)
    return y, h, checkpoints, Bt, Ct


class _CpuScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, h0):  # type: ignore[override]
        y, h_last, checkpoints, Bt, Ct = _forward(u, delta, A, B, C, h0, keep_checkpoints=True)
        ctx.save_for_backward(u, delta, A, Bt, Ct, checkpoints)
        return y, h_last

    @staticmethod
    def backward(ctx, grad_y, grad_last):  # type: ignore[override]
        u, delta, A, Bt, Ct, checkpoints = ctx.saved_tensors
        batch, dim, length = u.shape
        d_state = A.shape[1]
        with _threads_for(batch * dim * length * d_state) as threads:
            return _CpuScan._backward(u, delta, A, Bt, Ct, checkpoints, grad_y, grad_last, threads)

    @staticmethod
    def _backward(u, delta, A, Bt, Ct, checkpoints, grad_y, grad_last, threads: int):
        batch, dim, length = u.shape
        groups, d_state = Bt.shape[1], A.shape[1]
        workers = max(1, min(threads, dim // groups))
        grad_y = u.new_zeros(u.shape) if grad_y is None else grad_y.contiguous().to(u.dtype)
        if grad_last is None:
            grad_last = u.new_zeros(batch, dim, d_state)
        grad_last = grad_last.contiguous().to(u.dtype)
        grad_u, grad_delta = torch.empty_like(u), torch.empty_like(u)
        grad_A_part = u.new_zeros(batch, dim, d_state)
        grad_B_part = u.new_zeros(workers, batch, groups, length, d_state)
        grad_C_part = u.new_zeros(workers, batch, groups, length, d_state)
        adj = grad_last.clone()  # dL/dh entering each segment from the later ones; at the start, dL/dh0
        n_seg = checkpoints.shape[2]
        segs = max(1, _decay_steps(batch, dim, d_state) // CHECKPOINT_EVERY)  # segments per decay block
        buffer = u.new_empty(batch, dim, min(segs * CHECKPOINT_EVERY, length), d_state)
        kernel = _backward_kernel_serial if _forked else _backward_kernel
        arrays = [_np(t) for t in (u, delta, A, Bt, Ct, checkpoints)]
        grads = [t.numpy() for t in (grad_u, grad_delta, grad_A_part, grad_B_part, grad_C_part)]
        for first in range(((n_seg - 1) // segs) * segs, -1, -segs):  # blocks of segments, newest first
            start, stop = first * CHECKPOINT_EVERY, min((first + segs) * CHECKPOINT_EVERY, length)
            decay = _decays(delta, A, start, stop, buffer)
            kernel(*arrays, CHECKPOINT_EVERY, grad_y.numpy(), adj.numpy(), _np(decay), first, *grads)
        grad_h0 = adj
        grad_B = grad_B_part.sum(0).transpose(2, 3)  # (b, g, n, l)
        grad_C = grad_C_part.sum(0).transpose(2, 3)
        return grad_u, grad_delta, grad_A_part.sum(0), grad_B, grad_C, grad_h0


def cpu_scan(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, h0: Tensor) -> tuple[Tensor, Tensor]:
    """The SSM core on CPU tensors; same contract as :func:`ahm.kernels.scan_chunked.chunked_scan`.

    u, delta: (b, d, l); A: (d, n); B, C: (b, g, n, l); h0: (b, d, n); all float32 or
    all float64. Returns y (b, d, l) and the last state (b, d, n).
    """
    if u.device.type != "cpu":
        raise ValueError(f"the 'cpu' scan backend needs CPU tensors, got {u.device}; use backend='auto'")
    inputs = [t.contiguous() for t in (u, delta, A, B, C, h0)]
    if torch.is_grad_enabled() and any(t.requires_grad for t in inputs):
        return _CpuScan.apply(*inputs)
    y, h_last, _, _, _ = _forward(*inputs, keep_checkpoints=False)
    return y, h_last
