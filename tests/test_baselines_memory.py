"""The memory baselines ``smr`` (State Memory Replay on Mamba) and ``lmn`` (Logarithmic Memory Networks).

Both keep the streaming contract of :mod:`ahm.backbone.baselines.base` (chunks == one call, constant
state, budgets, config errors, learning); each is checked against a float64 reference written from
its equations (the replay convolution; the binary tree of summaries read by single-vector attention).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import ahm.backbone.baselines.lmn
import ahm.backbone.baselines.smr  # noqa: F401  (registers "smr"; lmn above registers "lmn")
from ahm.backbone import MambaLM
from ahm.backbone.baselines.base import SIZES, build_model, count_parameters, detach_state, state_nbytes
from ahm.backbone.baselines.lmn import LMNLM, LMNConfig, LogarithmicMemoryBlock
from ahm.backbone.baselines.smr import SMRLM, SMRConfig, StateMemoryReplay
from ahm.backbone.errors import AHMConfigError

VOCAB = 16


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These models run many small ops; on a shared 2-core machine two torch threads per op were 10x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny(name: str, seed: int = 0, dtype: torch.dtype = torch.float32, **overrides) -> torch.nn.Module:
    """A small model with random (not identity) replay gates, so that every test exercises the memory."""
    torch.manual_seed(seed)
    if name == "smr":
        model = SMRLM(SMRConfig(**{"vocab_size": VOCAB, "d_model": 16, "d_state": 4, "replay_length": 3, **overrides}))
        with torch.no_grad():
            for replay in model.replays:
                replay.weight.normal_(0, 1.0)
                replay.bias.normal_(0, 0.5)
    else:
        model = LMNLM(LMNConfig(**{"vocab_size": VOCAB, "d_model": 16, "window": 3, "max_levels": 6, **overrides}))
    return model.to(dtype)


def run_in_pieces(model: torch.nn.Module, tokens: torch.Tensor, bounds: list[int]) -> torch.Tensor:
    state, outs = model.init_state(tokens.shape[0]), []
    for start, end in zip(bounds[:-1], bounds[1:]):
        logits, state = model(tokens[:, start:end], state)
        outs.append(logits)
    return torch.cat(outs, 1)


# --------------------------------------------------------------------------------------------------
# The streaming contract, for both models.


@pytest.mark.parametrize("name", ["smr", "lmn"])
@settings(max_examples=8)
@given(cuts=st.lists(st.integers(1, 23), max_size=5, unique=True), seed=st.integers(0, 3))
def test_chunks_give_one_call(name: str, cuts: list[int], seed: int) -> None:
    # max_levels=3 (lmn) fills the tree after 7 tokens: the saturated top level is streamed too.
    model = tiny(name, seed, **({"max_levels": 3} if name == "lmn" else {}))
    tokens = torch.randint(0, VOCAB, (2, 24), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        full, _ = model(tokens)
        pieces = run_in_pieces(model, tokens, [0, *sorted(cuts), 24])
    torch.testing.assert_close(pieces, full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["smr", "lmn"])
def test_token_by_token_float64(name: str) -> None:
    model = tiny(name, dtype=torch.float64)
    tokens = torch.randint(0, VOCAB, (2, 19), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full, state_full = model(tokens)
        steps = run_in_pieces(model, tokens, list(range(20)))
        _, state_steps = model(tokens[:, :7])
        _, state_steps = model(tokens[:, 7:], state_steps)
    torch.testing.assert_close(steps, full, atol=1e-10, rtol=1e-10)
    for a, b in zip(torch.utils._pytree.tree_leaves(state_full), torch.utils._pytree.tree_leaves(state_steps)):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("name", ["smr", "lmn"])
def test_state_bytes_constant_in_length(name: str) -> None:
    model = tiny(name)
    tokens = torch.randint(0, VOCAB, (1, 1024), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        _, short = model(tokens[:, :64])
        state = model.init_state(1)
        for start in range(0, 1024, 256):
            _, state = model(tokens[:, start : start + 256], state)
    assert state_nbytes(short) == state_nbytes(state) == state_nbytes(model.init_state(1))
    assert state_nbytes(state) > 0


@pytest.mark.parametrize("name", ["smr", "lmn"])
def test_outputs_depend_on_the_past_only(name: str) -> None:
    """Causality: changing token 10 leaves logits 0..9 unchanged and changes later ones."""
    model = tiny(name)
    tokens = torch.randint(0, VOCAB, (1, 16), generator=torch.Generator().manual_seed(3))
    other = tokens.clone()
    other[0, 10] = (other[0, 10] + 1) % VOCAB
    with torch.no_grad():
        a, _ = model(tokens)
        b, _ = model(other)
    torch.testing.assert_close(a[:, :10], b[:, :10])
    assert (a[:, 10:] - b[:, 10:]).abs().max() > 1e-4


@pytest.mark.parametrize("name", ["smr", "lmn"])
def test_deterministic_and_detachable(name: str) -> None:
    tokens = torch.randint(0, VOCAB, (2, 12), generator=torch.Generator().manual_seed(4))
    first, state = tiny(name, seed=5)(tokens)
    second, _ = tiny(name, seed=5)(tokens)
    torch.testing.assert_close(first, second, atol=0, rtol=0)
    detached = detach_state(state)
    assert all(not t.requires_grad for t in torch.utils._pytree.tree_leaves(detached))
    assert state_nbytes(detached) == state_nbytes(state)


@pytest.mark.parametrize("name", ["smr", "lmn"])
@pytest.mark.parametrize("size", ["0.1M", "1M"])
def test_parameter_budget(name: str, size: str) -> None:
    model = build_model(name, 256, size)
    count = count_parameters(model)
    assert abs(count - SIZES[size]) <= 0.15 * SIZES[size], f"{name} at {size}: {count} parameters"


@pytest.mark.parametrize(
    ("name", "overrides", "field"),
    [
        ("smr", {"replay_length": 0}, "replay_length"),
        ("smr", {"replay_length": 10_000}, "replay_length"),
        ("smr", {"n_layer": 0}, "n_layer"),
        ("smr", {"d_state": 2.5}, "d_state"),
        ("smr", {"window": 8}, "window"),  # not an SMR option
        ("lmn", {"window": 0}, "window"),
        ("lmn", {"window": 100_000}, "window"),
        ("lmn", {"max_levels": 0}, "max_levels"),
        ("lmn", {"max_levels": 100}, "max_levels"),
        ("lmn", {"n_heads": 0}, "n_heads"),
        ("lmn", {"d_model": 30, "n_heads": 4}, "n_heads"),
        ("lmn", {"experts": 4}, "experts"),  # not an LMN option
    ],
)
def test_bad_configs_name_the_field(name: str, overrides: dict, field: str) -> None:
    with pytest.raises(AHMConfigError, match=field):
        build_model(name, 256, "0.1M", **overrides)


@pytest.mark.parametrize("name", ["smr", "lmn"])
def test_a_tiny_training_run_lowers_the_loss(name: str) -> None:
    """Repeat task: 4 random tokens, repeated 4 times; 30 Adam steps must lower the held-out loss."""
    gen = torch.Generator().manual_seed(6)
    model = tiny(name, seed=6, d_model=32, **({"window": 4} if name == "lmn" else {}))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)

    def batch() -> torch.Tensor:
        return torch.randint(0, VOCAB, (16, 4), generator=gen).repeat(1, 4)  # (16, 16)

    def loss_on(tokens: torch.Tensor) -> torch.Tensor:
        logits, _ = model(tokens[:, :-1])
        return F.cross_entropy(logits.reshape(-1, VOCAB), tokens[:, 1:].reshape(-1))

    held_out = batch()
    with torch.no_grad():
        before = loss_on(held_out).item()
    for _ in range(30):
        optimizer.zero_grad()
        loss_on(batch()).backward()
        optimizer.step()
    with torch.no_grad():
        after = loss_on(held_out).item()
    # Chance is ln 16 = 2.77; copying 12 of the 15 targets could reach about 0.74.
    assert after < before - 0.3, f"{name}: loss {before:.3f} -> {after:.3f}"


# --------------------------------------------------------------------------------------------------
# SMR: the replay equation, and its reduction to plain Mamba.


def test_smr_replay_matches_its_equation() -> None:
    """u'_t = u_t * 2 sigmoid(b + sum_k w_k u_{t-(m-1)+k}), zeros before the start, in float64."""
    torch.manual_seed(7)
    replay = StateMemoryReplay(5, 3).double()
    with torch.no_grad():
        replay.weight.normal_()
        replay.bias.normal_()
    u = torch.randn(2, 9, 5, dtype=torch.float64)
    out, memory = replay(u, replay.init_state(2))
    w, b = replay.weight, replay.bias
    expected = torch.empty_like(u)
    for t in range(9):
        a = b.clone()
        for k in range(3):
            s = t - 2 + k
            if s >= 0:
                a = a + w[:, k] * u[:, s]
        expected[:, t] = u[:, t] * 2 * torch.sigmoid(a)
    torch.testing.assert_close(out, expected, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(memory, u[:, -2:])


def test_smr_with_zero_replay_is_plain_mamba() -> None:
    model = tiny("smr", seed=8)
    mamba = MambaLM(model.config.mamba_config())
    mamba.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("replays.")})
    tokens = torch.randint(0, VOCAB, (2, 15), generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        replayed, _ = model(tokens)
        plain, _ = mamba(tokens)
        assert (replayed - plain).abs().max() > 1e-3  # the random replay does change the model
        for replay in model.replays:
            replay.weight.zero_()
            replay.bias.zero_()
        reduced, _ = model(tokens)
    torch.testing.assert_close(reduced, plain, atol=1e-6, rtol=1e-6)
    # A freshly built SMR model starts as Mamba (zero replay, gain exactly 1).
    fresh = SMRLM(SMRConfig()).replays
    assert all(not r.weight.detach().any() and not r.bias.detach().any() for r in fresh)


# --------------------------------------------------------------------------------------------------
# LMN: the binary counter of summaries, and a dense float64 reference of one block.

POPCOUNT_1_TO_20 = [1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4, 1, 2, 2, 3, 2]
"""Occupied summary slots after n = 1..20 tokens, counted by hand (the set bits of n)."""


def test_lmn_occupied_slots_follow_a_binary_counter() -> None:
    model = tiny("lmn")
    tokens = torch.randint(0, VOCAB, (2, 20), generator=torch.Generator().manual_seed(9))
    state = model.init_state(2)
    with torch.no_grad():
        for n in range(1, 21):
            _, state = model(tokens[:, n - 1 : n], state)
            for layer in state.layers:
                counts = layer.occupied.sum(1).tolist()
                assert counts == [POPCOUNT_1_TO_20[n - 1]] * 2, f"after {n} tokens"
                assert counts[0] <= math.floor(math.log2(n)) + 1
                levels = [i for i in range(layer.occupied.shape[1]) if layer.occupied[0, i]]
                assert sum(1 << i for i in levels) == n  # level i occupied iff bit i of n is set
                assert float(layer.summaries[:, ~layer.occupied[0]].abs().sum()) == 0  # empty slots hold zeros


def test_lmn_full_tree_saturates_at_the_top_level() -> None:
    model = tiny("lmn", max_levels=3)  # holds 7 tokens; the 8th carries into the top level
    with torch.no_grad():
        _, state = model(torch.zeros(1, 8, dtype=torch.long))
    assert state.layers[0].occupied[0].tolist() == [False, False, True]


def block_reference(block: LogarithmicMemoryBlock, x: torch.Tensor) -> torch.Tensor:
    """One LMN block from its equations, position by position, with a hand-written softmax.

    After t + 1 tokens the memory is the binary decomposition of t + 1: for every set bit i, the
    aligned block of 2^i tokens starting at ((t + 1) >> (i + 1)) << (i + 1), summarised as a
    balanced binary tree of the summariser over its tokens; plus the last W tokens.
    """
    c = block.config
    heads, dh, window = c.n_heads, c.d_model // c.n_heads, c.window
    h = block.norm_read(x)

    def tree(start: int, level: int) -> torch.Tensor:  # (b, D): summary of h[start : start + 2^level]
        if level == 0:
            return h[:, start]
        half = 1 << (level - 1)
        return block.summarize(tree(start, level - 1), tree(start + half, level - 1))

    outs = []
    for t in range(x.shape[1]):
        n = t + 1
        inputs = [tree((n >> (i + 1)) << (i + 1), i) + block.level_embedding[i]
                  for i in range(n.bit_length()) if n >> i & 1]
        inputs += [h[:, s] + block.offset_embedding[window - 1 - (t - s)] for s in range(max(0, t - window + 1), t + 1)]
        slots = torch.stack(inputs, 1)  # (b, S, D)
        q = block.q_proj(h[:, t]).view(-1, heads, dh)
        k = block.k_proj(slots).view(slots.shape[0], -1, heads, dh)
        v = block.v_proj(slots).view(slots.shape[0], -1, heads, dh)
        weights = torch.softmax(torch.einsum("bhd,bshd->bhs", q, k) / math.sqrt(dh), dim=-1)
        outs.append(torch.einsum("bhs,bshd->bhd", weights, v).reshape(-1, c.d_model))
    y = x + block.out_proj(torch.stack(outs, 1))
    return y + block.ffn(block.norm_ffn(y))


def test_lmn_block_matches_the_dense_reference() -> None:
    torch.manual_seed(10)
    block = LogarithmicMemoryBlock(LMNConfig(d_model=8, n_heads=2, window=3, max_levels=8)).double()
    with torch.no_grad():  # a summariser away from its mean initialisation
        block.summarizer.weight.add_(0.3 * torch.randn_like(block.summarizer.weight))
        block.summarizer.bias.normal_(0, 0.1)
        x = torch.randn(2, 21, 8, dtype=torch.float64)
        got, _ = block(x, block.init_state(2))
        torch.testing.assert_close(got, block_reference(block, x), atol=1e-10, rtol=1e-10)
