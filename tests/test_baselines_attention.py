"""The attention baselines ``transformer``, ``longformer`` and ``bigbird`` (ahm.backbone.baselines.attention).

Each keeps the streaming contract of :mod:`ahm.backbone.baselines.base` (chunks == one call, also far past the
window; a state whose size does not grow) and computes, in float64, what an independent dense reference gives:
plain softmax attention under a boolean mask built token pair by token pair from the pattern's definition.
"""

from __future__ import annotations

import doctest
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import ahm.backbone.baselines.attention
from ahm.backbone.baselines.attention import (
    AttentionLM,
    BigBirdConfig,
    LongformerConfig,
    TransformerConfig,
    bigbird_block_hash,
)
from ahm.backbone.baselines.base import SIZES, build_model, count_parameters, detach_state, model_names, state_nbytes
from ahm.backbone.errors import AHMConfigError

V = 16
SHAPE = dict(vocab_size=V, d_model=32, n_layer=2, n_head=4)
CONFIGS = {
    "transformer": TransformerConfig(**SHAPE, window=6),
    "longformer": LongformerConfig(**SHAPE, window=5, n_global=3),
    "bigbird": BigBirdConfig(**SHAPE, block_size=3, window_blocks=1, n_global_blocks=1, n_random_blocks=2,
                             random_pool_blocks=4, seed=7),
}
EDGE_CONFIGS = {  # the corners of each pattern: no cache, no globals, no random blocks, one-token blocks
    "transformer_window_1": TransformerConfig(**SHAPE, window=1),
    "longformer_no_globals": LongformerConfig(**SHAPE, window=4, n_global=0),
    "bigbird_no_random": BigBirdConfig(**SHAPE, block_size=4, window_blocks=0, n_global_blocks=2, n_random_blocks=0),
    "bigbird_token_blocks": BigBirdConfig(**SHAPE, block_size=1, window_blocks=2, n_global_blocks=0,
                                          n_random_blocks=3, random_pool_blocks=3),
}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These models are tiny: on CI's 2 shared cores a second intra-op thread only waits (a forward and
    backward measured 40x slower with two threads than with one on the loaded machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_lm(config, seed: int = 0, dtype=torch.float32) -> AttentionLM:
    torch.manual_seed(seed)
    return AttentionLM(config).to(dtype)


def run_in_pieces(lm, tokens, bounds):
    state, outs = lm.init_state(tokens.shape[0]), []
    for s, e in zip(bounds[:-1], bounds[1:]):
        logits, state = lm(tokens[:, s:e], state)
        outs.append(logits)
    return torch.cat(outs, 1), state


# ----- the reference: written from the definitions in the module doc, sharing no code with the module -----


def _mix(x: int) -> int:
    for _ in range(2):
        x = (((x >> 16) ^ x) * 0x45D9F3B) % 2**32
    return (x >> 16) ^ x


def reference_hash(seed: int, layer: int, qb: int, kb: int) -> int:
    h = _mix(seed % 2**32)
    for part in (layer, qb, kb):
        h = _mix((h + part) % 2**32)
    return h


def reference_random_blocks(c: BigBirdConfig, layer: int, qb: int) -> set[int]:
    """The r pool blocks (the P blocks before the window, non-global) with the smallest (hash, block)."""
    pool_size = c.random_pool_blocks if c.random_pool_blocks is not None else 4 * max(c.window_blocks, 1)
    pool = [kb for kb in range(qb - c.window_blocks - pool_size, qb - c.window_blocks) if kb >= c.n_global_blocks]
    ranked = sorted(pool, key=lambda kb: (reference_hash(c.seed, layer, qb, kb), kb))
    return set(ranked[: c.n_random_blocks])


def reference_sees(c, layer: int, q: int, k: int) -> bool:
    """May the query at position q see the key at position k (the pattern's definition, k <= q)?"""
    if k > q:
        return False
    if isinstance(c, TransformerConfig):
        return q - k < c.window
    if isinstance(c, LongformerConfig):
        return q - k < c.window or k < c.n_global
    qb, kb = q // c.block_size, k // c.block_size
    return qb - kb <= c.window_blocks or kb < c.n_global_blocks or kb in reference_random_blocks(c, layer, qb)


def reference_mask(c, layer: int, length: int) -> torch.Tensor:
    return torch.tensor([[reference_sees(c, layer, q, k) for k in range(length)] for q in range(length)])


def reference_logits(lm: AttentionLM, tokens: torch.Tensor) -> torch.Tensor:
    """tokens (L,) -> logits (L, V) in float64: RMSNorm, RoPE (pairs rotated by p base^(-2i/dh)), per-head
    softmax(q k^T / sqrt(dh)) under the dense reference mask, SwiGLU, tied head."""
    c = lm.config
    w = {name: p.detach().double() for name, p in lm.named_parameters()}
    length, dh = tokens.shape[0], c.head_dim

    def norm(x, weight):
        return x / torch.sqrt((x * x).mean(-1, keepdim=True) + c.norm_eps) * weight

    pos = torch.arange(length, dtype=torch.float64)[:, None]
    theta = c.rope_base ** (-torch.arange(0, dh, 2, dtype=torch.float64) / dh)
    cos, sin = torch.cos(pos * theta), torch.sin(pos * theta)  # (L, dh/2)

    def rope(x):  # x (L, dh)
        out = torch.empty_like(x)
        out[:, 0::2] = x[:, 0::2] * cos - x[:, 1::2] * sin
        out[:, 1::2] = x[:, 0::2] * sin + x[:, 1::2] * cos
        return out

    h = w["embedding.weight"][tokens]
    for i in range(c.n_layer):
        mask = reference_mask(c, i, length)
        x = norm(h, w[f"layers.{i}.attn_norm.weight"])
        q, k, v = (x @ w[f"layers.{i}.attn.qkv.weight"].T).split(c.d_model, dim=1)
        heads = []
        for j in range(c.n_head):
            cols = slice(j * dh, (j + 1) * dh)
            scores = rope(q[:, cols]) @ rope(k[:, cols]).T / math.sqrt(dh)
            scores = torch.where(mask, scores, -math.inf)
            p = torch.exp(scores - scores.max(1, keepdim=True).values)
            heads.append((p / p.sum(1, keepdim=True)) @ v[:, cols])
        h = h + torch.cat(heads, 1) @ w[f"layers.{i}.attn.out_proj.weight"].T
        x = norm(h, w[f"layers.{i}.mlp_norm.weight"])
        gate, up = (x @ w[f"layers.{i}.mlp.gate_up.weight"].T).chunk(2, dim=1)
        h = h + (gate * torch.sigmoid(gate) * up) @ w[f"layers.{i}.mlp.down.weight"].T
    return norm(h, w["norm_f.weight"]) @ w["embedding.weight"].T


# ----- the pattern -----


@pytest.mark.parametrize("config", [*CONFIGS.values(), *EDGE_CONFIGS.values()],
                         ids=[*CONFIGS, *EDGE_CONFIGS])
def test_outputs_equal_the_dense_float64_reference(config):
    lm = make_lm(config, dtype=torch.float64)
    tokens = torch.randint(0, V, (1, 40), generator=torch.Generator().manual_seed(1))
    expected = reference_logits(lm, tokens[0])
    with torch.no_grad():
        full, _ = lm(tokens)
        chunked, _ = run_in_pieces(lm, tokens, [0, 1, 8, 23, 40])
    # 1e-6, not 1e-12: RMSNorm (shared with Mamba) normalises in float32 even in a float64 model. A wrong
    # mask moves them by about 0.2 (measured: a window one longer, one global fewer, another bigbird seed).
    torch.testing.assert_close(full[0], expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(chunked[0], expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", CONFIGS)
def test_masks_match_the_definition_far_into_a_stream(name):
    """The model's mask over absolute positions, for queries 150..179 after a cache, is the definition's."""
    c = CONFIGS[name]
    lm = make_lm(c)
    expected = [reference_mask(c, layer, 180) for layer in range(c.n_layer)]
    q_pos, k_pos = torch.arange(150, 180), torch.arange(180)
    for layer in range(c.n_layer):
        assert torch.equal(lm.attention_mask(q_pos, k_pos, layer), expected[layer][150:180])
    assert not torch.equal(expected[0], torch.ones(180, 180).tril().bool()), "the pattern should be sparse"
    if name == "bigbird":
        assert not torch.equal(expected[0], expected[1]), "the random blocks should differ between layers"


def test_block_hash_matches_its_definition():
    qb = torch.tensor([0, 1, 5, 77, 10**6, 2**31])
    kb = torch.tensor([0, 0, 2, 70, 10**6 - 9, 3])
    for seed, layer in [(0, 0), (7, 1), (2**40 + 3, 5)]:
        got = bigbird_block_hash(seed, layer, qb, kb).tolist()
        assert got == [reference_hash(seed, layer, q, k) for q, k in zip(qb.tolist(), kb.tolist())]


def test_bigbird_random_blocks_depend_on_the_seed():
    c = CONFIGS["bigbird"]
    other = BigBirdConfig(**{**c.__dict__, "seed": c.seed + 1})
    assert not torch.equal(reference_mask(c, 0, 90), reference_mask(other, 0, 90))
    lm, lm_other = make_lm(c), make_lm(other)
    q_pos = torch.arange(90)
    assert torch.equal(lm.attention_mask(q_pos, q_pos, 0), reference_mask(c, 0, 90))
    assert torch.equal(lm_other.attention_mask(q_pos, q_pos, 0), reference_mask(other, 0, 90))


# ----- streaming -----


@pytest.mark.parametrize("name", CONFIGS)
@given(length=st.integers(1, 90), cuts=st.lists(st.integers(1, 89), max_size=6), seed=st.integers(0, 1000))
@settings(max_examples=15)
def test_chunks_equal_one_call(name, length, cuts, seed):
    lm = make_lm(CONFIGS[name])
    tokens = torch.randint(0, V, (2, length), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        full, _ = lm(tokens)
        chunked, _ = run_in_pieces(lm, tokens, sorted({0, length, *[c for c in cuts if c < length]}))
    torch.testing.assert_close(chunked, full, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("config", [*CONFIGS.values(), *EDGE_CONFIGS.values()], ids=[*CONFIGS, *EDGE_CONFIGS])
def test_token_by_token_is_exact_in_float64(config):
    """150 tokens, 25+ windows long: stepping, chunks of 3 and 7, and one call agree, down to the final state."""
    lm = make_lm(config, dtype=torch.float64)
    tokens = torch.randint(0, V, (2, 150), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        full, last = lm(tokens)
        state, steps = lm.init_state(2), []
        for t in range(150):
            logits, state = lm.step(tokens[:, t], state)
            steps.append(logits)
        by3, state3 = run_in_pieces(lm, tokens, list(range(0, 150, 3)) + [150])
        by7, _ = run_in_pieces(lm, tokens, list(range(0, 150, 7)) + [150])
    for out in (torch.stack(steps, 1), by3, by7):
        torch.testing.assert_close(out, full, rtol=1e-12, atol=1e-12)
    for s in (state, state3):
        assert torch.equal(s.positions, last.positions) and int(s.next_position) == 150
        for a, b in zip(s.layers, last.layers):
            torch.testing.assert_close(a.keys, b.keys, rtol=1e-12, atol=1e-12)
            torch.testing.assert_close(a.values, b.values, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", CONFIGS)
def test_gradients_through_the_carried_cache_equal_one_call(name):
    lm = make_lm(CONFIGS[name], dtype=torch.float64)
    tokens = torch.randint(0, V, (2, 30))
    targets = torch.randint(0, V, (2, 30))

    def grads(bounds):
        lm.zero_grad()
        logits, _ = run_in_pieces(lm, tokens, bounds)
        torch.nn.functional.cross_entropy(logits.reshape(-1, V), targets.reshape(-1)).backward()
        return {n: p.grad.clone() for n, p in lm.named_parameters()}

    g_full, g_chunked = grads([0, 30]), grads([0, 4, 17, 30])
    for n in g_full:
        torch.testing.assert_close(g_chunked[n], g_full[n], rtol=1e-9, atol=1e-11, msg=n)


def expected_cache_slots(c) -> int:
    """The bound of the brief: window (and globals), or the blocks a later query may still reach."""
    if isinstance(c, TransformerConfig):
        return c.window - 1
    if isinstance(c, LongformerConfig):
        return c.n_global + c.window - 1
    reach = c.window_blocks + (c.random_pool_blocks if c.n_random_blocks else 0)
    return c.block_size * (c.n_global_blocks + reach + 1) - 1


@pytest.mark.parametrize("name", CONFIGS)
def test_state_size_is_bounded_by_the_window(name):
    c = CONFIGS[name]
    lm = make_lm(c)
    tokens = torch.randint(0, V, (2, 512))
    with torch.no_grad():
        _, after_64 = lm(tokens[:, :64])
        _, after_512 = run_in_pieces(lm, tokens, [0, 64, 200, 512])
    slots = expected_cache_slots(c)
    cache_bytes = c.n_layer * 2 * (2 * c.n_head * slots * c.head_dim) * 4  # keys and values, float32
    expected = cache_bytes + slots * 8 + 8  # slot positions and the position counter, int64
    assert state_nbytes(lm.init_state(2)) == state_nbytes(after_64) == state_nbytes(after_512) == expected
    # the slots hold the most recent positions a later query can see, and nothing older than needed
    assert int(after_512.positions.max()) == 511 and (after_512.positions >= 0).sum() <= slots
    assert state_nbytes(detach_state(after_512)) == expected


# ----- the registry, budgets and configs -----


def test_registered():
    assert {"transformer", "longformer", "bigbird"} <= set(model_names())


@pytest.mark.parametrize("size", sorted(SIZES))
@pytest.mark.parametrize("name", ["transformer", "longformer", "bigbird"])
def test_parameter_budget(name, size):
    model = build_model(name, 256, size)
    assert abs(count_parameters(model) - SIZES[size]) <= 0.15 * SIZES[size], count_parameters(model)


def test_width_is_fitted_to_the_heads():
    model = build_model("longformer", 256, "0.1M", n_head=3, window=32)
    assert model.config.d_model % 6 == 0 and model.config.window == 32
    assert abs(count_parameters(model) - 100_000) <= 15_000
    assert build_model("transformer", 32, "1M", d_model=48).config.d_model == 48


@pytest.mark.parametrize(
    ("name", "overrides", "match"),
    [
        ("transformer", {"window": 0}, "TransformerConfig.window"),
        ("transformer", {"window": True}, "TransformerConfig.window"),
        ("transformer", {"d_model": 30}, "d_model must be a multiple"),
        ("transformer", {"n_head": 0}, "n_head"),
        ("transformer", {"colour": "red"}, r"transformer: unknown option\(s\) \['colour'\]"),
        ("longformer", {"window": 0}, "LongformerConfig.window"),
        ("longformer", {"window": 2.5}, "LongformerConfig.window"),
        ("longformer", {"n_global": -1}, "LongformerConfig.n_global"),
        ("bigbird", {"block_size": 0}, "BigBirdConfig.block_size"),
        ("bigbird", {"window_blocks": -1}, "BigBirdConfig.window_blocks"),
        ("bigbird", {"n_global_blocks": -1}, "BigBirdConfig.n_global_blocks"),
        ("bigbird", {"n_random_blocks": -1}, "BigBirdConfig.n_random_blocks"),
        ("bigbird", {"random_pool_blocks": 0}, "BigBirdConfig.random_pool_blocks"),
        ("bigbird", {"n_random_blocks": 5, "random_pool_blocks": 4}, "n_random_blocks = 5 cannot be drawn"),
        ("bigbird", {"d_ff": 0}, "BigBirdConfig.d_ff"),
    ],
)
def test_bad_configs_name_the_field(name, overrides, match):
    with pytest.raises(AHMConfigError, match=match):
        build_model(name, 256, "0.1M", **overrides)


def test_bad_inputs():
    lm = make_lm(CONFIGS["longformer"])
    with pytest.raises(ValueError, match="token ids must lie"):
        lm(torch.tensor([[0, V]]))
    with pytest.raises(ValueError, match="batch"):
        lm(torch.zeros(3, 4, dtype=torch.long), lm.init_state(2))
    with pytest.raises(ValueError, match="integer"):
        lm(torch.zeros(1, 4))


# ----- learning and determinism -----


@pytest.mark.parametrize("name", CONFIGS)
def test_learns_a_repeating_pattern(name):
    """Each sequence repeats its own 3 random tokens: predictable from 3 tokens back, within every window."""
    torch.manual_seed(0)
    lm = make_lm(CONFIGS[name])
    optimiser = torch.optim.Adam(lm.parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(30):
        tokens = torch.randint(0, V, (16, 3), generator=gen).repeat(1, 8)  # (16, 24)
        logits, _ = lm(tokens[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits[:, 3:].reshape(-1, V), tokens[:, 4:].reshape(-1))
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.75 * first, losses  # from about ln 16 = 2.77 (chance) to below 2.1


@pytest.mark.parametrize("name", CONFIGS)
def test_deterministic(name):
    tokens = torch.randint(0, V, (2, 50))
    with torch.no_grad():
        a, _ = make_lm(CONFIGS[name], seed=5)(tokens)
        b, _ = make_lm(CONFIGS[name], seed=5)(tokens)
    assert torch.equal(a, b)


def test_doctest():
    result = doctest.testmod(ahm.backbone.baselines.attention)
    assert result.attempted > 0 and result.failed == 0
