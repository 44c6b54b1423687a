"""ahm.kernels.retrieval: exact top-k against brute force, fp32 and int8."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import ahm.kernels.retrieval as retrieval
from ahm.kernels import (
    dequantize_int8,
    quantize_int8,
    retrieval_backends,
    select_retrieval_backend,
    topk_similarity,
    topk_similarity_int8,
)
from ahm.kernels.retrieval import topk_similarity_int8_ref, topk_similarity_ref

FAST = [b for b in retrieval_backends() if b != "ref"]


def brute_force(queries, keys, k, mask=None):
    """Independent of the module: Python sort of every (score, index) pair."""
    out_val, out_idx = [], []
    for b in range(queries.shape[0]):
        rows_v, rows_i = [], []
        for qi in range(queries.shape[1]):
            pairs = [
                (float(queries[b, qi].double() @ keys[b, j].double()), j)
                for j in range(keys.shape[1])
                if mask is None or mask[b, j]
            ]
            pairs.sort(key=lambda p: (-p[0], p[1]))
            pairs = pairs[:k] + [(float("-inf"), -1)] * (k - len(pairs[:k]))
            rows_v.append([p[0] for p in pairs])
            rows_i.append([p[1] for p in pairs])
        out_val.append(rows_v)
        out_idx.append(rows_i)
    return torch.tensor(out_val, dtype=torch.float64), torch.tensor(out_idx)


@pytest.mark.parametrize("backend", retrieval_backends())
@given(
    b=st.integers(1, 2), q=st.integers(1, 20), m=st.integers(1, 300), d=st.integers(1, 40),
    k=st.integers(1, 12), masked=st.booleans(), seed=st.integers(0, 2**16),
)
@settings(max_examples=15)
def test_matches_brute_force(backend, b, q, m, d, k, masked, seed):
    g = torch.Generator().manual_seed(seed)
    queries, keys = torch.randn(b, q, d, generator=g), torch.randn(b, m, d, generator=g)
    mask = torch.rand(b, m, generator=g) > 0.4 if masked else None
    block, retrieval._BLOCK = retrieval._BLOCK, 37  # many blocks, and sizes that do not divide m
    try:
        val, idx = topk_similarity(queries, keys, k, mask, backend=backend)
    finally:
        retrieval._BLOCK = block
    ref_val, ref_idx = brute_force(queries, keys, k, mask)
    assert torch.equal(idx, ref_idx)
    torch.testing.assert_close(val.double(), ref_val, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", FAST)
def test_int8_matches_dequantised_reference(backend):
    g = torch.Generator().manual_seed(0)
    queries, keys = torch.randn(3, 9, 48, generator=g), torch.randn(3, 1000, 48, generator=g)
    mask = torch.rand(3, 1000, generator=g) > 0.2
    codes, scales = quantize_int8(keys)
    val, idx = topk_similarity_int8(queries, codes, scales, 8, mask, backend=backend)
    ref_val, ref_idx = topk_similarity_int8_ref(queries, codes, scales, 8, mask)
    assert torch.equal(idx, ref_idx)
    torch.testing.assert_close(val, ref_val, rtol=1e-5, atol=1e-5)


@given(x=st.lists(st.floats(-1e4, 1e4, width=32), min_size=1, max_size=64))
def test_int8_quantisation_error_is_at_most_half_a_step(x):
    t = torch.tensor([x])
    codes, scales = quantize_int8(t)
    assert codes.dtype == torch.int8 and scales.shape == (1,)
    err = (dequantize_int8(codes, scales) - t).abs().max()
    assert err <= scales[0] / 2 + 1e-6 * t.abs().max()


@pytest.mark.parametrize("backend", FAST)
def test_empty_slots_are_never_returned(backend):
    keys = torch.randn(1, 50, 8)
    mask = torch.zeros(1, 50, dtype=torch.bool)
    mask[0, [3, 17]] = True
    val, idx = topk_similarity(torch.randn(1, 4, 8), keys, 5, mask, backend=backend)
    assert set(idx[0, :, :2].flatten().tolist()) <= {3, 17}
    assert (idx[0, :, 2:] == -1).all() and torch.isneginf(val[0, :, 2:]).all()
    val, idx = topk_similarity(torch.randn(1, 4, 8), keys, 5, torch.zeros_like(mask), backend=backend)
    assert (idx == -1).all()


def test_unbatched_inputs_and_defaults():
    q, k = torch.randn(5, 16), torch.randn(100, 16)
    val, idx = topk_similarity(q, k, 3)
    assert val.shape == idx.shape == (5, 3)
    assert torch.equal(idx, topk_similarity_ref(q, k, 3)[1])
    assert select_retrieval_backend("cpu") == "blocked"


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: topk_similarity(torch.randn(2, 3, 4), torch.randn(2, 5, 3), 1), r"keys must have shape \(b, m, d\)"),
        (lambda: topk_similarity(torch.randn(3, 4), torch.randn(2, 5, 4), 1), "must both be"),
        (lambda: topk_similarity(torch.randn(3, 4), torch.randn(5, 4), 0), "k must be a positive int"),
        (lambda: topk_similarity(torch.randn(3, 4), torch.randn(5, 4), 1, torch.ones(5)), "mask must be a bool"),
        (lambda: topk_similarity(torch.randn(3, 4), torch.randn(5, 4), 1, backend="gpu"), "backend 'gpu' is not"),
        (lambda: topk_similarity_int8(torch.randn(3, 4), torch.randn(5, 4), torch.ones(5), 1), "codes must be int8"),
        (lambda: topk_similarity_int8(torch.randn(3, 4), torch.zeros(5, 4, dtype=torch.int8), torch.ones(4), 1),
         "scales must have shape"),
    ],
)
def test_bad_inputs_raise_clear_errors(call, message):
    with pytest.raises(ValueError, match=message):
        call()
