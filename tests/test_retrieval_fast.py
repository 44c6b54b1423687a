"""ahm.kernels.topk_cpu through ahm.kernels.retrieval: the numba CPU paths against their `_ref`s.

Indices must equal the reference's; scores agree to 1e-5. Where scores tie, the
reference (``torch.topk``) leaves the order unspecified, so tie cases are held
to the documented rule instead: best first, lower index first among equals.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import ahm.kernels.retrieval as retrieval
from ahm.kernels import quantize_int8, topk_similarity, topk_similarity_int8
from ahm.kernels.retrieval import topk_similarity_int8_ref, topk_similarity_ref
from ahm.kernels.topk_cpu import numba_available

pytestmark = pytest.mark.skipif(not numba_available(), reason="the fast CPU paths need numba")


@pytest.fixture(autouse=True, scope="module")
def numba_paths_on_small_memories():
    """Route every search of this module through the numba kernels: by default memories below
    ``_NUMBA_MIN_KEYS`` keys take the batched torch path instead, and the cases here are small."""
    old, retrieval._NUMBA_MIN_KEYS = retrieval._NUMBA_MIN_KEYS, 0
    yield
    retrieval._NUMBA_MIN_KEYS = old


def with_block(block: int, fn):
    """Run ``fn`` with the blocked backend's block size set to ``block`` (many blocks, odd edges)."""
    old, retrieval._BLOCK = retrieval._BLOCK, block
    try:
        return fn()
    finally:
        retrieval._BLOCK = old


def tie_rule_topk(queries, keys, k, mask=None):
    """Best first, lower index first among equal scores; -inf / -1 padding. Exact for integer-valued inputs."""
    scores = torch.matmul(queries.double(), keys.double().transpose(-1, -2))  # (b, q, m)
    if mask is not None:
        scores = scores.masked_fill(~mask[:, None, :], float("-inf"))
    m = scores.shape[-1]
    # Sort by (-score, index): a stable sort on the score keeps index order among equals.
    order = torch.sort(scores, dim=-1, descending=True, stable=True).indices[..., :k]
    vals = torch.gather(scores, -1, order)
    if m < k:
        pad = k - m
        vals = torch.cat([vals, vals.new_full((*vals.shape[:-1], pad), float("-inf"))], -1)
        order = torch.cat([order, order.new_full((*order.shape[:-1], pad), -1)], -1)
    order = torch.where(torch.isneginf(vals), torch.full_like(order, -1), order)
    return vals, order


def assert_same(got, want):
    (val, idx), (ref_val, ref_idx) = got, want
    assert torch.equal(idx, ref_idx)
    torch.testing.assert_close(val.double(), ref_val.double(), rtol=1e-5, atol=1e-5)


@given(
    b=st.integers(1, 2), q=st.integers(1, 17), m=st.integers(1, 300), d=st.integers(1, 40),
    k=st.integers(1, 12), masked=st.booleans(), block=st.sampled_from([1, 7, 37, 64, 100_000]),
    dtype=st.sampled_from([torch.float32, torch.float64]), seed=st.integers(0, 2**16),
)
@settings(max_examples=40, deadline=None)
def test_fp32_matches_ref(b, q, m, d, k, masked, block, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    queries = torch.randn(b, q, d, generator=g, dtype=dtype)
    keys = torch.randn(b, m, d, generator=g, dtype=dtype)
    mask = torch.rand(b, m, generator=g) > 0.5 if masked else None
    got = with_block(block, lambda: topk_similarity(queries, keys, k, mask, backend="blocked"))
    assert got[0].dtype == torch.float32 and got[1].dtype == torch.int64
    assert_same(got, topk_similarity_ref(queries, keys, k, mask))


@given(
    q=st.integers(1, 9), m=st.integers(1, 400), d=st.integers(1, 70), k=st.integers(1, 12),
    masked=st.booleans(), arithmetic=st.sampled_from(["int8", "float"]), seed=st.integers(0, 2**16),
)
@settings(max_examples=40, deadline=None)
def test_int8_matches_ref(q, m, d, k, masked, arithmetic, seed):
    g = torch.Generator().manual_seed(seed)
    queries, keys = torch.randn(2, q, d, generator=g), torch.randn(2, m, d, generator=g) * 3
    mask = torch.rand(2, m, generator=g) > 0.5 if masked else None
    codes, scales = quantize_int8(keys)
    got = with_block(37, lambda: topk_similarity_int8(queries, codes, scales, k, mask, arithmetic=arithmetic))
    assert_same(got, topk_similarity_int8_ref(queries, codes, scales, k, mask))


def integer_data(seed: int, m: int, d: int, levels: int):
    """Small-integer keys and queries: scores are exact in float32 and tie often."""
    g = torch.Generator().manual_seed(seed)
    queries = torch.randint(-2, 3, (2, 6, d), generator=g).float()
    keys = torch.randint(-levels, levels + 1, (2, m, d), generator=g).float()
    return queries, keys


@pytest.mark.parametrize("block", [1, 5, 16, 64])
@pytest.mark.parametrize("levels", [0, 1, 2])  # 0: every key equal (all zero)
def test_ties_rank_lower_index_first(block, levels):
    queries, keys = integer_data(levels, 64, 3, levels)
    mask = torch.rand(2, 64, generator=torch.Generator().manual_seed(1)) > 0.3
    for m_ in (None, mask):
        val, idx = with_block(block, lambda m_=m_: topk_similarity(queries, keys, 10, m_))
        want_val, want_idx = tie_rule_topk(queries, keys, 10, m_)
        assert torch.equal(idx, want_idx)
        assert torch.equal(val.double(), want_val)
        ref_val = topk_similarity_ref(queries, keys, 10, m_)[0]
        assert torch.equal(val, ref_val)  # same scores as the reference, whatever its tie order


@pytest.mark.parametrize("arithmetic", ["int8", "float"])
def test_int8_equal_keys_rank_lower_index_first(arithmetic):
    base = torch.randn(1, 5, 16, generator=torch.Generator().manual_seed(0))
    keys = base.repeat(1, 40, 1)  # (1, 200, 16): each of 5 keys 40 times
    keys[0, 100:] = keys[0, 0]  # and the second half all one key
    codes, scales = quantize_int8(keys)
    queries = torch.randn(1, 7, 16, generator=torch.Generator().manual_seed(1))
    val, idx = topk_similarity_int8(queries, codes, scales, 12, arithmetic=arithmetic)
    ref_val, _ = topk_similarity_int8_ref(queries, codes, scales, 12)
    torch.testing.assert_close(val, ref_val, rtol=1e-5, atol=1e-5)
    # Equal keys score equally: the 12 returned are the best scores, lowest indices first among equals.
    scores = torch.matmul(queries.double(), (codes.float() * scales[..., None]).double().transpose(1, 2))
    want = torch.sort(scores, dim=-1, descending=True, stable=True).indices[..., :12]
    assert torch.equal(idx, want)


@pytest.mark.parametrize("path", ["fp32", "int8"])
def test_fewer_valid_keys_than_k_and_all_masked(path):
    g = torch.Generator().manual_seed(3)
    queries, keys = torch.randn(2, 4, 8, generator=g), torch.randn(2, 50, 8, generator=g)
    mask = torch.zeros(2, 50, dtype=torch.bool)
    mask[0, [0, 17, 49]] = True  # block edges at block 17
    codes, scales = quantize_int8(keys)

    def run(mk):
        if path == "fp32":
            return with_block(17, lambda: topk_similarity(queries, keys, 6, mk))
        return topk_similarity_int8(queries, codes, scales, 6, mk)

    val, idx = run(mask)
    ref = topk_similarity_ref if path == "fp32" else None
    want = ref(queries, keys, 6, mask) if ref else topk_similarity_int8_ref(queries, codes, scales, 6, mask)
    assert_same((val, idx), want)
    assert set(idx[0, :, :3].flatten().tolist()) == {0, 17, 49}
    assert (idx[0, :, 3:] == -1).all() and torch.isneginf(val[0, :, 3:]).all()
    assert (idx[1] == -1).all() and torch.isneginf(val[1]).all()  # sequence 1: nothing stored


@pytest.mark.parametrize("m", [63, 64, 65, 128, 129])
def test_block_boundaries(m):
    g = torch.Generator().manual_seed(m)
    queries, keys = torch.randn(1, 5, 12, generator=g), torch.randn(1, m, 12, generator=g)
    keys[0, -1] = queries[0, 0] * 10  # the best key is the last one, alone in its block for m = 65, 129
    val, idx = with_block(64, lambda: topk_similarity(queries, keys, 8))
    assert_same((val, idx), topk_similarity_ref(queries, keys, 8))
    assert idx[0, 0, 0] == m - 1


def test_unbatched_int8_and_thread_count_is_kept():
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        g = torch.Generator().manual_seed(5)
        queries, keys = torch.randn(3, 32, generator=g), torch.randn(500, 32, generator=g)
        codes, scales = quantize_int8(keys)
        val, idx = topk_similarity_int8(queries, codes, scales, 4)
        assert val.shape == idx.shape == (3, 4)
        assert torch.equal(idx, topk_similarity_int8_ref(queries, codes, scales, 4)[1])
        assert torch.get_num_threads() == 1, "the int8 kernel changed the caller's torch thread count"
    finally:
        torch.set_num_threads(threads)


def test_the_int8_kernel_leaves_numba_s_thread_count_as_it_found_it():
    """numba's count is read by the scan kernels: a search that left it changed made later training differ."""
    import numba

    before, threads = numba.get_num_threads(), torch.get_num_threads()
    try:
        torch.set_num_threads(1)  # the kernel runs on the caller's torch count: here, not numba's
        codes, scales = quantize_int8(torch.randn(300, 16))
        topk_similarity_int8(torch.randn(3, 16), codes, scales, 4)
        assert numba.get_num_threads() == before
    finally:
        torch.set_num_threads(threads)


def test_bad_arithmetic_raises():
    codes, scales = quantize_int8(torch.randn(5, 4))
    with pytest.raises(ValueError, match="arithmetic must be 'int8' or 'float'"):
        topk_similarity_int8(torch.randn(2, 4), codes, scales, 1, arithmetic="fp16")
