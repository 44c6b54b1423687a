"""ahm.kernels.selective_scan: every backend against the sequential reference."""

from __future__ import annotations

import importlib

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ahm.kernels import available_backends, select_backend, selective_scan, selective_scan_ref
from ahm.kernels.scan_chunked import chunk_length

FAST_BACKENDS = [b for b in available_backends() if b != "ref"]
# Triton runs here through its interpreter (TRITON_INTERPRET=1, set in conftest), which
# costs milliseconds per time step: it is held to ref at small sizes only.
INTERPRETED = {"triton"} if not torch.cuda.is_available() else set()
COMPILED_OR_TORCH = [b for b in FAST_BACKENDS if b not in INTERPRETED]


def make_inputs(
    batch=2, dim=8, d_state=4, length=37, groups=None, dtype=torch.float64, seed=0,
    delta_max=1.0, grad=False,
):
    """Inputs in the ranges a Mamba block produces (delta >= 0, A < 0)."""
    g = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=g, dtype=dtype)

    bc_shape = (batch, d_state, length) if groups is None else (batch, groups, d_state, length)
    x = dict(
        u=randn(batch, dim, length),
        delta=torch.rand(batch, dim, length, generator=g, dtype=dtype) * delta_max,
        A=-torch.rand(dim, d_state, generator=g, dtype=dtype) * 4 - 0.1,
        B=randn(*bc_shape),
        C=randn(*bc_shape),
        D=randn(dim),
        z=randn(batch, dim, length),
        delta_bias=randn(dim) * 0.5,
        initial_state=randn(batch, dim, d_state),
    )
    if grad:
        for v in x.values():
            v.requires_grad_(True)
    return x


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()


@pytest.mark.parametrize("backend", FAST_BACKENDS)
@pytest.mark.parametrize("groups", [None, 1, 2])
@pytest.mark.parametrize("optional", [True, False])
def test_backend_matches_ref_float64(backend, groups, optional):
    x = make_inputs(groups=groups)
    if not optional:
        for k in ("D", "z", "delta_bias", "initial_state"):
            x[k] = None
    kw = dict(delta_softplus=optional, return_last_state=True)
    y, h = selective_scan(**x, **kw, backend=backend)
    y_ref, h_ref = selective_scan_ref(**x, **kw)
    assert y.dtype == torch.float64 and h.dtype == torch.float64
    torch.testing.assert_close(y, y_ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(h, h_ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("backend", available_backends())
def test_float32_relative_error_against_float64_ref(backend):
    x64 = make_inputs(batch=2, dim=16, d_state=8, length=300)
    x32 = {k: v.float() for k, v in x64.items()}
    y64, h64 = selective_scan_ref(**x64, delta_softplus=True, return_last_state=True)
    y32, h32 = selective_scan(**x32, delta_softplus=True, return_last_state=True, backend=backend)
    assert y32.dtype == torch.float32
    assert rel_err(y32, y64) < 1e-5
    assert rel_err(h32, h64) < 1e-5


@pytest.mark.parametrize("backend", FAST_BACKENDS)
@pytest.mark.parametrize("groups", [None, 2])
def test_gradients_match_autograd_of_ref_float64(backend, groups):
    x = make_inputs(batch=2, dim=4, d_state=3, length=29, groups=groups, grad=True)
    weights = torch.randn(2, 4, 29, dtype=torch.float64)
    names = list(x)

    def loss(fn_backend):
        y, h = selective_scan(**x, delta_softplus=True, return_last_state=True, backend=fn_backend)
        return (y * weights).sum() + (h**2).sum()

    g_ref = torch.autograd.grad(loss("ref"), [x[k] for k in names])
    g_fast = torch.autograd.grad(loss(backend), [x[k] for k in names])
    for name, a, b in zip(names, g_fast, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10, msg=f"gradient of {name}")


@pytest.mark.skipif("cpu" not in FAST_BACKENDS, reason="numba missing")
@pytest.mark.parametrize("groups", [None, 2])
def test_cpu_scan_decay_blocks_match_ref_float64(monkeypatch, groups):
    """The cpu backend takes its decays from torch a block of steps at a time: with 4-step blocks (the least),
    150 steps cross many blocks and the backward's 64-step checkpoints; values and gradients stay the ref's."""
    from ahm.kernels import scan_cpu

    monkeypatch.setattr(scan_cpu, "DECAY_BLOCK_ELEMENTS", 1)
    x = make_inputs(batch=2, dim=4, d_state=3, length=150, groups=groups, grad=True)
    weights = torch.randn(2, 4, 150, dtype=torch.float64)
    outs = {}
    for backend in ("ref", "cpu"):
        y, h = selective_scan(**x, delta_softplus=True, return_last_state=True, backend=backend)
        grads = torch.autograd.grad((y * weights).sum() + (h**2).sum(), list(x.values()))
        outs[backend] = (y.detach(), h.detach(), grads)
    torch.testing.assert_close(outs["cpu"][0], outs["ref"][0], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(outs["cpu"][1], outs["ref"][1], rtol=1e-12, atol=1e-12)
    for name, a, b in zip(x, outs["cpu"][2], outs["ref"][2]):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10, msg=f"gradient of {name}")


@pytest.mark.parametrize("backend", COMPILED_OR_TORCH)
def test_backward_passes_gradcheck(backend):
    """Finite differences check the hand-written backward independently of ref."""
    x = make_inputs(batch=1, dim=2, d_state=2, length=11, groups=1, grad=True)
    names = list(x)

    def fn(*args):
        kw = dict(zip(names, args))
        return selective_scan(**kw, delta_softplus=True, return_last_state=True, backend=backend)

    assert torch.autograd.gradcheck(fn, tuple(x[k] for k in names))


@pytest.mark.parametrize("backend", [b for b in available_backends() if b not in INTERPRETED])
@given(
    batch=st.integers(1, 3),
    heads=st.integers(1, 3),
    groups=st.sampled_from([None, 1, 2]),
    d_state=st.integers(1, 5),
    length=st.integers(1, 70),
    cuts=st.lists(st.integers(1, 69), max_size=4),
    seed=st.integers(0, 2**16),
)
def test_streaming_in_chunks_equals_one_call(backend, batch, heads, groups, d_state, length, cuts, seed):
    """Chaining chunks through initial_state / return_last_state is exact."""
    dim = heads * (groups or 1)
    x = make_inputs(batch, dim, d_state, length, groups, seed=seed)
    y_full, h_full = selective_scan(**x, delta_softplus=True, return_last_state=True, backend=backend)
    bounds = sorted({0, length, *[c for c in cuts if c < length]})
    h, ys = x["initial_state"], []
    for s, e in zip(bounds[:-1], bounds[1:]):
        part = {k: (v[..., s:e] if k in ("u", "delta", "z", "B", "C") else v) for k, v in x.items()}
        part["initial_state"] = h
        y, h = selective_scan(**part, delta_softplus=True, return_last_state=True, backend=backend)
        ys.append(y)
    torch.testing.assert_close(torch.cat(ys, -1), y_full, rtol=1e-11, atol=1e-11)
    torch.testing.assert_close(h, h_full, rtol=1e-11, atol=1e-11)


@pytest.mark.parametrize("backend", COMPILED_OR_TORCH)
@given(
    batch=st.integers(1, 4),
    dim=st.integers(1, 9),
    d_state=st.integers(1, 6),
    length=st.integers(1, 600),
    seed=st.integers(0, 2**16),
)
def test_random_shapes_match_ref(backend, batch, dim, d_state, length, seed):
    """Lengths that are not multiples of any chunk size, including length 1."""
    x = make_inputs(batch, dim, d_state, length, seed=seed)
    # softplus keeps delta >= 0 (a negative delta_bias without it makes the state grow without bound)
    y, h = selective_scan(**x, delta_softplus=True, return_last_state=True, backend=backend)
    y_ref, h_ref = selective_scan_ref(**x, delta_softplus=True, return_last_state=True)
    torch.testing.assert_close(y, y_ref, rtol=1e-11, atol=1e-11)
    torch.testing.assert_close(h, h_ref, rtol=1e-11, atol=1e-11)


@pytest.mark.skipif(not INTERPRETED, reason="on a GPU the random-shape tests above cover triton")
@given(
    batch=st.integers(1, 2),
    heads=st.integers(1, 40),
    groups=st.sampled_from([None, 1, 2]),
    d_state=st.integers(1, 17),
    length=st.integers(1, 70),
    cut=st.integers(1, 69),
    seed=st.integers(0, 2**16),
)
@settings(max_examples=8)
def test_interpreted_triton_random_shapes_and_streaming(batch, heads, groups, d_state, length, cut, seed):
    """Block sizes that do not divide the channels / states, chained chunks, vs ref."""
    dim = heads * (groups or 1)
    x = make_inputs(batch, dim, d_state, length, groups, seed=seed)
    y_ref, h_ref = selective_scan_ref(**x, delta_softplus=True, return_last_state=True)
    y, h = selective_scan(**x, delta_softplus=True, return_last_state=True, backend="triton")
    torch.testing.assert_close(y, y_ref, rtol=1e-11, atol=1e-11)
    torch.testing.assert_close(h, h_ref, rtol=1e-11, atol=1e-11)
    if cut < length:
        first = {k: (v[..., :cut] if k in ("u", "delta", "z", "B", "C") else v) for k, v in x.items()}
        rest = {k: (v[..., cut:] if k in ("u", "delta", "z", "B", "C") else v) for k, v in x.items()}
        y1, h1 = selective_scan(**first, delta_softplus=True, return_last_state=True, backend="triton")
        rest["initial_state"] = h1
        y2, h2 = selective_scan(**rest, delta_softplus=True, return_last_state=True, backend="triton")
        torch.testing.assert_close(torch.cat([y1, y2], -1), y_ref, rtol=1e-11, atol=1e-11)
        torch.testing.assert_close(h2, h_ref, rtol=1e-11, atol=1e-11)


@pytest.mark.parametrize("backend", available_backends())
def test_length_one(backend):
    x = make_inputs(length=1)
    y, h = selective_scan(**x, return_last_state=True, backend=backend)
    # One step by hand: h = exp(delta A) h0 + delta B u; y = (<C, h> + D u) silu(z).
    dt = x["delta"][..., 0, None] + x["delta_bias"][:, None]
    h_hand = torch.exp(dt * x["A"]) * x["initial_state"] + dt * x["B"][:, None, :, 0] * x["u"][..., 0, None]
    y_hand = (h_hand * x["C"][:, None, :, 0]).sum(-1) + x["D"] * x["u"][..., 0]
    y_hand = y_hand * torch.nn.functional.silu(x["z"][..., 0])
    torch.testing.assert_close(h, h_hand)
    torch.testing.assert_close(y[..., 0], y_hand)


def test_sequence_longer_than_65536_steps():
    """Past 2**16 steps (where some implementations index wrongly), stays equal and finite."""
    length = 70_001
    x = make_inputs(batch=1, dim=2, d_state=3, length=length, dtype=torch.float32, delta_max=1.0)
    x["A"] = -torch.arange(1.0, 4.0).repeat(2, 1) * 5  # strong decay: exp(-15) per step
    y_ref, h_ref = selective_scan_ref(**x, delta_softplus=True, return_last_state=True)
    for backend in COMPILED_OR_TORCH:
        y, h = selective_scan(**x, delta_softplus=True, return_last_state=True, backend=backend)
        assert torch.isfinite(y).all() and torch.isfinite(h).all()
        assert rel_err(y, y_ref) < 1e-5
        # The last steps depend only on the last inputs: compare them elementwise.
        torch.testing.assert_close(y[..., -100:], y_ref[..., -100:], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(h, h_ref, rtol=1e-5, atol=1e-5)


# The compiled kernels; `chunked` (a Python loop over steps, ~1 min here) meets the same
# recurrence in test_sequence_longer_than_65536_steps.
@pytest.mark.parametrize("backend", [b for b in COMPILED_OR_TORCH if b != "chunked"])
def test_no_overflow_past_one_million_steps_with_delta_up_to_one(backend):
    """Large delta and strong decay over 2**20 + 3 steps: finite, and the end agrees with ref.

    A chunked formulation that divides by cumulative decays (exp(-cumsum(delta A)))
    overflows here in float32 within a few steps; the recurrence must not.
    """
    length, tail = (1 << 20) + 3, 500
    x = make_inputs(batch=1, dim=2, d_state=16, length=length, dtype=torch.float32, delta_max=1.0)
    x["A"] = -torch.arange(1.0, 17.0).repeat(2, 1)  # S4D-real init: A = -(1 .. 16)
    x["delta_bias"] = None
    y, h = selective_scan(**x, return_last_state=True, backend=backend)
    assert torch.isfinite(y).all() and torch.isfinite(h).all()
    # The last `tail` steps, re-run by ref from the state the backend reached before them.
    head = {k: (v[..., :-tail] if k in ("u", "delta", "z", "B", "C") else v) for k, v in x.items()}
    _, h_head = selective_scan(**head, return_last_state=True, backend=backend)
    last = {k: (v[..., -tail:] if k in ("u", "delta", "z", "B", "C") else v) for k, v in x.items()}
    last["initial_state"] = h_head
    y_ref, h_ref = selective_scan_ref(**last, return_last_state=True)
    torch.testing.assert_close(y[..., -tail:], y_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(h, h_ref, rtol=1e-5, atol=1e-5)


def test_half_precision_inputs_return_their_dtype():
    x = make_inputs(dim=8, length=50, dtype=torch.float32)
    y32 = selective_scan(**x, delta_softplus=True)
    y16 = selective_scan(**{k: v.bfloat16() for k, v in x.items()}, delta_softplus=True)
    assert y16.dtype == torch.bfloat16
    assert rel_err(y16.float(), y32) < 3e-2  # bf16 rounding of inputs and output


def test_chunk_length_is_bounded():
    assert chunk_length(1, 1, 1, 5) == 5
    assert 8 <= chunk_length(64, 512, 16, 10_000) <= 256
    assert chunk_length(1, 256, 16, 100_000) == 256


def test_auto_backend_is_reported():
    assert select_backend("cpu") in available_backends("cpu")
    x = make_inputs(dtype=torch.float32)
    torch.testing.assert_close(
        selective_scan(**x, backend="auto"), selective_scan(**x, backend=select_backend("cpu"))
    )


@pytest.mark.parametrize(
    "name, bad, expected",
    [
        ("u", lambda x: x["u"][0], "u must have shape (batch, dim, length)"),
        ("delta", lambda x: x["delta"][:, :, :-1], "delta must have shape"),
        ("A", lambda x: x["A"][:-1], "A must have shape (dim, d_state)"),
        ("B", lambda x: x["B"][:, :-1], "B must have shape"),
        ("C", lambda x: x["C"][..., :-1], "C must have shape"),
        ("D", lambda x: x["D"][:-1], "D must have shape (dim,)"),
        ("z", lambda x: x["z"][:1], "z must have shape"),
        ("delta_bias", lambda x: x["delta_bias"][None], "delta_bias must have shape"),
        ("initial_state", lambda x: x["initial_state"][:, :, :-1], "initial_state must have shape"),
        ("B", lambda x: x["B"][:, None].expand(2, 3, 4, 37), "B must have shape"),  # 8 % 3 != 0
        ("u", lambda x: x["u"].long(), "u must be a real floating tensor"),
    ],
)
def test_bad_shapes_raise_value_error_naming_the_argument(name, bad, expected):
    x = make_inputs()
    x[name] = bad(x)
    with pytest.raises(ValueError) as info:
        selective_scan(**x)
    assert expected in str(info.value)
    if "shape" in expected:
        assert "got (" in str(info.value)  # the received shape is named


def test_empty_sequence_and_unknown_backend_raise():
    x = make_inputs(length=0)
    with pytest.raises(ValueError, match="at least 1"):
        selective_scan(**x)
    with pytest.raises(ValueError, match="unknown backend 'fastest' is not available"):
        selective_scan(**make_inputs(), backend="fastest")


def test_mamba_ssm_adapter_passes_arguments_through(monkeypatch):
    """The adapter hands mamba_ssm's selective_scan_fn the same arguments, in its order.

    mamba_ssm needs CUDA, so a stand-in with its signature (computing with ref) takes
    its place; on a GPU machine benchmarks/gpu_kernels.py compares the real kernel.
    """
    scan_module = importlib.import_module("ahm.kernels.selective_scan")  # the package re-exports the function

    calls = []

    def fake_selective_scan_fn(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                               return_last_state=False):
        calls.append((delta_softplus, return_last_state))
        return selective_scan_ref(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)

    monkeypatch.setattr(scan_module, "_mamba_ssm_fn", lambda: fake_selective_scan_fn)
    monkeypatch.setattr(scan_module, "available_backends", lambda device="cpu": ["ref", "mamba_ssm"])
    x = make_inputs()
    h0 = x.pop("initial_state")
    y, h = selective_scan(**x, delta_softplus=True, return_last_state=True, backend="mamba_ssm")
    y_ref, h_ref = selective_scan_ref(**x, delta_softplus=True, return_last_state=True)
    assert calls == [(True, True)]
    torch.testing.assert_close(y, y_ref, rtol=0, atol=0)
    torch.testing.assert_close(h, h_ref, rtol=0, atol=0)
    with pytest.raises(ValueError, match="takes no initial_state"):
        selective_scan(**x, initial_state=h0, backend="mamba_ssm")


def test_auto_never_picks_mamba_ssm_with_an_initial_state(monkeypatch):
    scan_module = importlib.import_module("ahm.kernels.selective_scan")  # the package re-exports the function

    names = ["ref", "chunked", "triton", "mamba_ssm"]
    monkeypatch.setattr(scan_module, "available_backends", lambda device="cpu": names)
    assert scan_module.select_backend("cuda", initial_state=False) == "mamba_ssm"
    assert scan_module.select_backend("cuda", initial_state=True) == "triton"
    assert scan_module.select_backend("cpu") == "cpu"


def test_cpu_backend_leaves_torch_thread_count_alone():
    """numba and torch share OpenMP: a scan call must not change torch's thread count."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for length in (3, 5000):  # one-thread and parallel paths
            x = make_inputs(batch=1, dim=64, d_state=16, length=length, dtype=torch.float32)
            selective_scan(**x, backend="cpu")
            assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_cpu_backend_runs_on_torchs_thread_count():
    """--threads N sets torch's count; the numba kernels follow it (they once took every core regardless)."""
    numba = pytest.importorskip("numba")
    from ahm.kernels import scan_cpu

    before, pool = torch.get_num_threads(), numba.get_num_threads()
    try:
        for asked in sorted({1, min(2, pool)}):
            torch.set_num_threads(asked)
            with scan_cpu._threads_for(scan_cpu.PARALLEL_MIN_WORK) as threads:
                assert threads == asked and numba.get_num_threads() == asked
            assert numba.get_num_threads() == pool and torch.get_num_threads() == asked
            with scan_cpu._threads_for(scan_cpu.PARALLEL_MIN_WORK - 1) as threads:  # small work: one thread
                assert threads == 1
    finally:
        torch.set_num_threads(before)
