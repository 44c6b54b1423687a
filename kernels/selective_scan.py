"""Selective scan: the recurrence at the heart of a Mamba block (Gu & Dao, 2023, Alg. 2).

Glossary (shapes follow ``mamba_ssm.ops.selective_scan_interface.selective_scan_fn``)::

    b  batch            d  channels ("dim", d_inner of a block)
    l  length (time)    n  d_state (SSM state size per channel)
    g  groups: B and C may be shared by d // g channels each

    u      (b, d, l)        input
    delta  (b, d, l)        step size Delta (before ``delta_bias`` / softplus)
    A      (d, n)           continuous-time state matrix (diagonal), usually negative
    B, C   (b, n, l) or (b, g, n, l)   input-dependent input / output matrices
    D      (d,)             skip connection
    z      (b, d, l)        gate: y <- y * silu(z)
    h      (b, d, n)        the state; ``initial_state`` enters before step 0

The recurrence, with the zero-order-hold discretisation of the paper (Eq. 4) and
its simplified input term (``B_bar ~= delta * B``, as in the reference code)::

    delta_t = softplus(delta_t + delta_bias)               (if requested)
    h_t     = exp(delta_t * A) * h_{t-1} + delta_t * B_t * u_t
    y_t     = <C_t, h_t> + D * u_t
    y_t     = y_t * silu(z_t)                              (if z is given)

Backends (see :func:`available_backends`): ``ref`` is the plain sequential loop
above, kept readable as the definition everything else is tested against;
``chunked`` is a differentiable pure-PyTorch path for any device
(:mod:`ahm.kernels.scan_chunked`); ``cpu`` is the compiled CPU kernel
(:mod:`ahm.kernels.scan_cpu`). ``auto`` picks the fastest correct one for the
device (:func:`select_backend`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from ._backends import triton_usable

__all__ = [
    "selective_scan",
    "selective_scan_ref",
    "available_backends",
    "select_backend",
]

# A backend computes the SSM core: (u, delta, A, B, C, h0) -> (y, h_last), where
# delta already has bias and softplus applied, B and C are (b, g, n, l), h0 is
# (b, d, n) and everything is in the compute dtype. D and the z-gate are applied
# by `selective_scan` around it, identically for every backend.
ScanCore = Callable[[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor], tuple[Tensor, Tensor]]


def _scan_core_ref(
    u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, h0: Tensor
) -> tuple[Tensor, Tensor]:
    """The sequential reference loop, one time step per iteration."""
    batch, dim, length = u.shape
    groups = B.shape[1]
    # Broadcast each group's B_t / C_t to its d // g channels: (b, g, n) -> (b, d, n).
    B = B.repeat_interleave(dim // groups, dim=1)  # (b, d, n, l)
    C = C.repeat_interleave(dim // groups, dim=1)  # (b, d, n, l)
    # One view per step via unbind: its backward stacks the step gradients once,
    # where indexing x[..., t] would allocate a full-size zero gradient per step.
    us, deltas, Bs, Cs = (x.unbind(-1) for x in (u, delta, B, C))
    h = h0  # (b, d, n)
    ys = []
    for t in range(length):
        dt = deltas[t][:, :, None]  # (b, d, 1)
        h = torch.exp(dt * A) * h + dt * Bs[t] * us[t][:, :, None]
        ys.append((h * Cs[t]).sum(-1))  # (b, d)
    return torch.stack(ys, dim=-1), h


def _scan_core_chunked(
    u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, h0: Tensor
) -> tuple[Tensor, Tensor]:
    from .scan_chunked import chunked_scan

    return chunked_scan(u, delta, A, B, C, h0)


def _scan_core_cpu(
    u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, h0: Tensor
) -> tuple[Tensor, Tensor]:
    from .scan_cpu import cpu_scan  # numba compiles on first use; keep `import ahm` light

    return cpu_scan(u, delta, A, B, C, h0)


def _scan_core_triton(
    u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, h0: Tensor
) -> tuple[Tensor, Tensor]:
    from .scan_triton import triton_scan

    return triton_scan(u, delta, A, B, C, h0)


_BACKENDS: dict[str, ScanCore] = {
    "ref": _scan_core_ref,
    "chunked": _scan_core_chunked,
    "cpu": _scan_core_cpu,
    "triton": _scan_core_triton,
}


def _mamba_ssm_fn():
    """``mamba_ssm``'s CUDA ``selective_scan_fn``, or None when it does not import."""
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
    except ImportError:  # not installed (the 'cuda' extra), or built without CUDA
        return None
    return selective_scan_fn


def available_backends(device: torch.device | str = "cpu") -> list[str]:
    """Names of the backends that can run on ``device`` (``auto`` excluded).

    ``ref`` and ``chunked`` run anywhere; ``cpu`` on CPU tensors; ``triton`` on CUDA,
    or on CPU under ``TRITON_INTERPRET=1``; ``mamba_ssm`` on CUDA when the optional
    ``mamba_ssm`` package imports (the ``cuda`` extra).
    """
    kind = torch.device(device).type
    names = ["ref", "chunked"]
    if kind == "cpu":
        names.append("cpu")
    if triton_usable(kind):
        names.append("triton")
    if kind == "cuda" and _mamba_ssm_fn() is not None:
        names.append("mamba_ssm")
    return names


def select_backend(device: torch.device | str = "cpu", initial_state: bool = False) -> str:
    """The backend ``backend="auto"`` uses on ``device``: the fastest correct one.

    CPU: the compiled ``cpu`` kernel (``benchmarks/scan_backends.py`` measures every
    backend). CUDA: ``mamba_ssm``'s kernel when installed and no ``initial_state`` is
    given (it has no such input), else ``triton``. Anything else: ``chunked``.
    """
    kind = torch.device(device).type
    if kind == "cpu":
        return "cpu"
    names = available_backends(device)
    if "mamba_ssm" in names and not initial_state:
        return "mamba_ssm"
    return "triton" if "triton" in names else "chunked"


def _check_inputs(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None,
    z: Tensor | None,
    delta_bias: Tensor | None,
    initial_state: Tensor | None,
) -> None:
    """Raise ``ValueError`` naming the argument, the expected and the received shape."""

    def fail(name: str, expected: str, got: Tensor) -> None:
        raise ValueError(
            f"selective_scan: {name} must have shape {expected}, got {tuple(got.shape)}"
        )

    if u.dim() != 3:
        fail("u", "(batch, dim, length)", u)
    batch, dim, length = u.shape
    if length < 1:
        raise ValueError("selective_scan: the sequence length (u.shape[2]) must be at least 1")
    if delta.shape != u.shape:
        fail("delta", f"(batch, dim, length) = {tuple(u.shape)}", delta)
    if A.dim() != 2 or A.shape[0] != dim:
        fail("A", f"(dim, d_state) = ({dim}, d_state)", A)
    d_state = A.shape[1]
    for name, M in (("B", B), ("C", C)):
        if M.dim() == 3 and M.shape == (batch, d_state, length):
            continue
        if (
            M.dim() == 4
            and M.shape[0] == batch
            and M.shape[2:] == (d_state, length)
            and M.shape[1] >= 1
            and dim % M.shape[1] == 0
        ):
            continue
        fail(
            name,
            f"(batch, d_state, length) = ({batch}, {d_state}, {length}) or "
            f"(batch, groups, d_state, length) with dim ({dim}) divisible by groups",
            M,
        )
    if B.dim() == 4 and C.dim() == 4 and B.shape[1] != C.shape[1]:
        raise ValueError(
            f"selective_scan: B and C must have the same number of groups, "
            f"got {B.shape[1]} and {C.shape[1]}"
        )
    if D is not None and D.shape != (dim,):
        fail("D", f"(dim,) = ({dim},)", D)
    if delta_bias is not None and delta_bias.shape != (dim,):
        fail("delta_bias", f"(dim,) = ({dim},)", delta_bias)
    if z is not None and z.shape != u.shape:
        fail("z", f"(batch, dim, length) = {tuple(u.shape)}", z)
    if initial_state is not None and initial_state.shape != (batch, dim, d_state):
        fail("initial_state", f"(batch, dim, d_state) = ({batch}, {dim}, {d_state})", initial_state)

    tensors = {"u": u, "delta": delta, "A": A, "B": B, "C": C, "D": D, "z": z}
    tensors.update({"delta_bias": delta_bias, "initial_state": initial_state})
    for name, t in tensors.items():
        if t is None:
            continue
        if not t.is_floating_point() or t.is_complex():
            raise ValueError(f"selective_scan: {name} must be a real floating tensor, got {t.dtype}")
        if t.device != u.device:
            raise ValueError(
                f"selective_scan: all tensors must be on one device; u is on {u.device}, "
                f"{name} is on {t.device}"
            )


def selective_scan(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
    initial_state: Tensor | None = None,
    backend: str = "auto",
) -> Tensor | tuple[Tensor, Tensor]:
    """Selective scan with the semantics of ``mamba_ssm``'s ``selective_scan_fn``.

    Args:
        u: (b, d, l) input.
        delta: (b, d, l) step sizes, before ``delta_bias`` and softplus.
        A: (d, n) state matrix (real).
        B, C: (b, n, l) or (b, g, n, l) with ``d % g == 0``.
        D: optional (d,) skip connection.
        z: optional (b, d, l) gate; the output is multiplied by ``silu(z)``.
        delta_bias: optional (d,) added to ``delta`` before the softplus.
        delta_softplus: apply ``softplus`` to ``delta`` (after the bias).
        return_last_state: also return the state after the last step.
        initial_state: optional (b, d, n) state before step 0 (zeros if None), so
            that chunks of a long sequence can be chained exactly.
        backend: ``"auto"`` or one of :func:`available_backends`.

    Returns:
        ``y`` of shape (b, d, l) in ``u``'s dtype, and, if ``return_last_state``,
        the last state (b, d, n) in the compute dtype (float32, or float64 when an
        input is float64).

    Raises:
        ValueError: a shape, dtype or device is wrong (the message names the
            argument, the expected and the received shape), or the backend is unknown.
    """
    _check_inputs(u, delta, A, B, C, D, z, delta_bias, initial_state)
    name = select_backend(u.device, initial_state is not None) if backend == "auto" else backend
    if name not in available_backends(u.device):
        known = "" if name in (*_BACKENDS, "mamba_ssm") else "unknown "
        raise ValueError(
            f"selective_scan: {known}backend {backend!r} is not available on {u.device}; choose 'auto' or "
            f"one of {available_backends(u.device)}"
        )
    if name == "mamba_ssm":
        if initial_state is not None:
            raise ValueError(
                "selective_scan: mamba_ssm's kernel takes no initial_state; use backend='triton' "
                "(or 'auto', which does) to chain chunks"
            )
        return _mamba_ssm_fn()(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)

    # Compute in float32, or float64 if any input is float64 (half inputs are upcast).
    inputs = [u, delta, A, B, C, D, z, delta_bias, initial_state]
    wide = any(t is not None and t.dtype == torch.float64 for t in inputs)
    cdtype = torch.float64 if wide else torch.float32
    out_dtype = u.dtype

    u_c = u.to(cdtype)
    delta_c = delta.to(cdtype)
    if delta_bias is not None:
        delta_c = delta_c + delta_bias.to(cdtype)[:, None]
    if delta_softplus:
        delta_c = F.softplus(delta_c)
    B_c = (B if B.dim() == 4 else B.unsqueeze(1)).to(cdtype)
    C_c = (C if C.dim() == 4 else C.unsqueeze(1)).to(cdtype)
    batch, dim, _ = u.shape
    if initial_state is None:
        h0 = u_c.new_zeros(batch, dim, A.shape[1])
    else:
        h0 = initial_state.to(cdtype)

    y, last_state = _BACKENDS[name](u_c, delta_c, A.to(cdtype), B_c, C_c, h0)
    if D is not None:
        y = y + u_c * D.to(cdtype)[:, None]
    if z is not None:
        y = y * F.silu(z.to(cdtype))
    y = y.to(out_dtype)
    return (y, last_state) if return_last_state else y


def selective_scan_ref(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
    initial_state: Tensor | None = None,
) -> Tensor | tuple[Tensor, Tensor]:
    """:func:`selective_scan` with ``backend="ref"``: the sequential definition."""
    return selective_scan(
        u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state,
        initial_state, backend="ref",
    )
