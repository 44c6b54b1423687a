"""ahm.backbone.codecs: bytes per vector, reconstruction error and recall@k bounds, exact search.

Bounds are measured on one fixed seeded set (``dataset``): 4,000 unit vectors in
d = 32 lying near a rank-8 subspace (noise 0.1 per dim before normalisation, the
shape of learnt keys), 64 queries that are perturbed stored vectors. recall@8 is
the fraction of the exact fp32 top-8 (inner product) that the codec's search
returns in its top-8. Measured values (torch 2.13 CPU) are in ``BOUNDS``'s comments;
each bound leaves a margin for platform differences, and a codec that regressed
(wrong decoding, broken search, k-means not converging) falls well outside it.
"""

from __future__ import annotations

import sys

import pytest
import torch
import torch.nn.functional as F

import ahm.backbone.codecs as codecs_module
from ahm.backbone.codecs import CODECS, CodecOptions, faiss_available, make_codec
from ahm.kernels.retrieval import topk_similarity_int8_ref, topk_similarity_ref

D = 32


def dataset(n: int = 4000, d: int = D, rank: int = 8, noise: float = 0.1, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    basis = torch.randn(rank, d, generator=g)
    x = torch.randn(n, rank, generator=g) @ basis / rank**0.5 + noise * torch.randn(n, d, generator=g)
    x = F.normalize(x, dim=-1)
    q = x[torch.randperm(n, generator=g)[:64]] + 0.05 * torch.randn(64, d, generator=g)
    return x, F.normalize(q, dim=-1)


def recall_at(found: torch.Tensor, true: torch.Tensor) -> float:
    """Mean |found_i & true_i| / k over queries; found, true: (q, k)."""
    hits = sum(len(set(a.tolist()) & set(b.tolist())) for a, b in zip(found, true))
    return hits / true.numel()


# codec (pq backend) -> (max mean relative L2 reconstruction error, min recall@8); measured in comments.
BOUNDS = {
    ("none", None): (0.0, 1.0),  # 0, 1.000
    ("int8", None): (0.01, 0.97),  # 0.0053, 0.990
    ("pq", "builtin"): (0.26, 0.55),  # 0.219, 0.648
    ("pq", "faiss"): (0.26, 0.55),  # 0.218, 0.625
    ("autoencoder", None): (0.20, 0.80),  # 0.150, 0.883 (500 Adam steps)
    ("hash", None): (0.55, 0.45),  # 0.504, 0.520 (128 bits)
}
BYTES = {"none": 4 * D, "int8": D + 4, "pq": D // 4, "autoencoder": 2 * (D // 4), "hash": 4 * D // 8 + 2}


def _params():
    out = []
    for (name, backend) in BOUNDS:
        marks = [pytest.mark.skipif(not faiss_available(), reason="needs faiss")] if backend == "faiss" else []
        out.append(pytest.param(name, backend, marks=marks, id=f"{name}-{backend}" if backend else name))
    return out


@pytest.fixture(scope="module")
def data():
    x, q = dataset()
    _, true = topk_similarity_ref(q, x, 8)
    return x, q, true


@pytest.mark.parametrize("name", sorted(CODECS))
def test_bytes_per_vector(name):
    assert make_codec(name, D).bytes_per_vector == BYTES[name]


@pytest.mark.parametrize(("name", "backend"), _params())
def test_reconstruction_and_recall_bounds(data, name, backend):
    x, q, true = data
    codec = make_codec(name, D, CodecOptions(pq_backend=backend or "auto"))
    codec.fit(x)
    codes = codec.encode(x)
    for f, c in zip(codec.fields, codes):
        assert c.shape == (x.shape[0], *f.shape) and c.dtype == f.dtype
    rel = ((codec.decode(codes) - x).norm(dim=-1) / x.norm(dim=-1)).mean().item()
    _, found = codec.search(q[None], tuple(c[None] for c in codes), 8)
    recall = recall_at(found[0], true)
    max_err, min_recall = BOUNDS[(name, backend)]
    assert rel <= max_err + 1e-7, f"{name}: reconstruction error {rel:.4f} above the bound {max_err}"
    assert recall >= min_recall, f"{name}: recall@8 {recall:.3f} below the bound {min_recall}"


@pytest.mark.parametrize("name", sorted(CODECS))
def test_search_is_exact_over_the_codec_similarity(name, monkeypatch):
    """Blocked search (tiny blocks, so merging is exercised) equals brute force over the decoded vectors."""
    monkeypatch.setattr(codecs_module, "_SEARCH_BLOCK", 37)
    g = torch.Generator().manual_seed(1)
    x = F.normalize(torch.randn(2, 300, D, generator=g), dim=-1)
    q = F.normalize(torch.randn(2, 5, D, generator=g), dim=-1)
    mask = torch.rand(2, 300, generator=g) < 0.6
    codec = make_codec(name, D, CodecOptions(pq_backend="builtin", pq_bits=4, pq_iters=5))
    codec.fit(x.reshape(-1, D))
    codes = codec.encode(x)
    scores, idx = codec.search(q, codes, 10, mask)
    assert scores.shape == idx.shape == (2, 5, 10)
    assert bool(mask.gather(1, idx.flatten(1)).all()), "search returned an empty slot"
    if name == "hash":  # ranks by Hamming distance: compare distances (ties are many), and the score formula
        ham = codec.hamming(q, codes).masked_fill(~mask[:, None, :], 10**6)
        want = ham.sort(-1).values[..., :10]
        got = ham.gather(-1, idx)
        assert torch.equal(got, want)
        torch.testing.assert_close(scores, torch.cos(torch.pi * got / codec.n_bits))
        return
    if name == "int8":
        ref_s, ref_i = topk_similarity_int8_ref(q, codes[0], codes[1], 10, mask)
    else:
        ref_s, ref_i = topk_similarity_ref(q, codec.decode(codes), 10, mask)
    torch.testing.assert_close(scores, ref_s, rtol=1e-5, atol=1e-5)
    assert torch.equal(idx, ref_i)


@pytest.mark.parametrize("name", ["pq", "hash"])
def test_lookup_tables_equal_decoding(name):
    """pq and hash search with lookup tables for <= 16 queries per call and decode blocks for more: same results."""
    x, q = dataset(n=1000)
    codec = make_codec(name, D, CodecOptions(pq_backend="builtin", pq_iters=5))
    codec.fit(x)
    codes = tuple(c[None] for c in codec.encode(x))
    many_s, many_i = codec.search(q[None, :32], codes, 8)  # decoding path
    few_s, few_i = codec.search(q[None, :16], codes, 8)  # lookup tables
    torch.testing.assert_close(few_s, many_s[:, :16], rtol=1e-5, atol=1e-5)
    if name == "pq":  # hash distances are integers with many ties: the scores say it all
        assert torch.equal(few_i, many_i[:, :16])


def test_fewer_valid_than_k_pads_with_minus_one():
    codec = make_codec("none", 4)
    codes = codec.encode(torch.randn(1, 6, 4))
    mask = torch.tensor([[True, False, True, False, False, False]])
    scores, idx = codec.search(torch.randn(1, 2, 4), codes, 4, mask)
    assert sorted(idx[0, 0, :2].tolist()) == [0, 2] and idx[..., 2:].eq(-1).all()
    assert torch.isneginf(scores[..., 2:]).all()


def test_leading_dims_round_trip_and_encode_does_not_track_gradients():
    for name in CODECS:
        codec = make_codec(name, 8, CodecOptions(pq_bits=2, pq_backend="builtin"))
        codec.fit(torch.randn(64, 8))
        x = torch.randn(3, 5, 8, requires_grad=True)
        codes = codec.encode(x)
        assert all(not c.requires_grad for c in codes)
        assert codec.decode(codes).shape == (3, 5, 8)


def test_pq_needs_fit_and_enough_samples():
    codec = make_codec("pq", D, CodecOptions(pq_backend="builtin"))
    with pytest.raises(ValueError, match="not fitted"):
        codec.encode(torch.randn(2, D))
    with pytest.raises(ValueError, match="at least 256"):
        codec.fit(torch.randn(100, D))
    with pytest.raises(ValueError, match="multiple of pq_subvector_dim"):
        make_codec("pq", 30, CodecOptions(pq_subvector_dim=4))


def test_pq_fit_is_deterministic_per_seed():
    x, _ = dataset(n=600)
    a, b = (make_codec("pq", D, CodecOptions(pq_backend="builtin", pq_iters=5)) for _ in range(2))
    a.fit(x)
    b.fit(x)
    assert torch.equal(a.codebooks, b.codebooks)


def test_autoencoder_reconstruction_loss_trains_it():
    x, _ = dataset(n=1000)
    codec = make_codec("autoencoder", D)
    before = codec.reconstruction_loss(x).item()
    codec.fit(x, steps=200)
    after = codec.reconstruction_loss(x).item()
    assert after < 0.2 * before
    assert next(codec.parameters()).grad is not None  # trained through the loss


def test_unknown_codec_and_bad_options():
    with pytest.raises(ValueError, match="unknown codec 'zip'"):
        make_codec("zip", 8)
    with pytest.raises(ValueError, match="pq_bits"):
        CodecOptions(pq_bits=9)
    with pytest.raises(ValueError, match="hash_bits"):
        CodecOptions(hash_bits=12)
    with pytest.raises(ValueError, match=r"shape \(\.\.\., 8\)"):
        make_codec("int8", 8).encode(torch.randn(3, 7))


def test_missing_faiss_is_a_clear_error_and_auto_falls_back(monkeypatch):
    monkeypatch.setitem(sys.modules, "faiss", None)  # makes `import faiss` raise ImportError
    assert not faiss_available()
    with pytest.raises(ImportError, match=r"pip install 'ahm-ssm\[ann\]'"):
        make_codec("pq", D, CodecOptions(pq_backend="faiss"))
    codec = make_codec("pq", D, CodecOptions(pq_backend="auto", pq_bits=2, pq_iters=2))
    assert codec.backend == "builtin"
    codec.fit(torch.randn(64, D))
    assert codec.is_fitted
