"""The SSM baselines ``s4d``, ``moe_mamba`` and ``jamba``: streaming, references, routing, budgets, errors."""

from __future__ import annotations

import doctest
import math
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from hf_reference import import_transformers
from hypothesis import given, settings
from hypothesis import strategies as st

import ahm
import ahm.backbone.baselines.hybrid  # noqa: F401  (registers moe_mamba and jamba)
import ahm.backbone.baselines.s4d  # noqa: F401  (registers s4d)
from ahm.backbone.baselines.base import SIZES, build_model, count_parameters, state_nbytes
from ahm.backbone.baselines.hybrid import (
    HybridLM,
    JambaConfig,
    MoEMambaConfig,
    SparseMoE,
    WindowAttention,
    load_balancing_loss,
)
from ahm.backbone.baselines.s4d import S4DLM, S4DConfig, S4DLayer, s4d_recurrence_ref
from ahm.backbone.errors import AHMConfigError

VOCAB = 16
TINY = {
    "s4d": lambda: S4DLM(S4DConfig(vocab_size=VOCAB, d_model=8, n_layer=2, d_state=6)),
    "moe_mamba": lambda: HybridLM(MoEMambaConfig(vocab_size=VOCAB, d_model=16, n_layer=2, d_state=4)),
    # n_layer 4: the attention layer sits at index 2; a window shorter than the test sequences.
    "jamba": lambda: HybridLM(JambaConfig(vocab_size=VOCAB, d_model=16, n_layer=4, d_state=4, window=6,
                                          n_kv_heads=2)),
}
NAMES = sorted(TINY)


@pytest.fixture(autouse=True)
def _one_thread():
    """These models are tiny: on a shared 2-core machine a second intra-op thread only adds contention
    (a 6x slower training test, measured); the previous setting is restored for the tests after."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def make(name: str, seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    torch.manual_seed(seed)
    return TINY[name]().to(dtype)


def run_in_pieces(model, tokens, bounds):
    state, outs = model.init_state(tokens.shape[0]), []
    for s, e in zip(bounds[:-1], bounds[1:]):
        logits, state = model(tokens[:, s:e], state)
        outs.append(logits)
    return torch.cat(outs, 1), state


def assert_states_close(a, b, **tol):
    for x, y in zip(torch.utils._pytree.tree_leaves(a), torch.utils._pytree.tree_leaves(b)):
        torch.testing.assert_close(x, y, **tol)


# --- streaming: chunks of any size give the outputs of one call ------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
@given(length=st.integers(1, 40), cuts=st.lists(st.integers(1, 39), max_size=5), seed=st.integers(0, 1000))
@settings(max_examples=8, deadline=None)
def test_chunks_equal_one_call(name, length, cuts, seed):
    model = make(name, seed)
    tokens = torch.randint(0, VOCAB, (2, length), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        full, last = model(tokens)
        chunked, state = run_in_pieces(model, tokens, sorted({0, length, *[c for c in cuts if c < length]}))
    torch.testing.assert_close(chunked, full, rtol=1e-5, atol=1e-5)
    assert_states_close(state, last, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_chunks_and_single_steps_exact_in_float64(name):
    model = make(name, dtype=torch.float64)
    tokens = torch.randint(0, VOCAB, (2, 30), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full, last = model(tokens)
        chunked, state = run_in_pieces(model, tokens, [0, 1, 4, 11, 12, 30])
        steps, step_state = run_in_pieces(model, tokens, list(range(31)))
    torch.testing.assert_close(chunked, full, rtol=1e-11, atol=1e-11)
    torch.testing.assert_close(steps, full, rtol=1e-11, atol=1e-11)
    assert_states_close(state, last, rtol=1e-11, atol=1e-11)
    assert_states_close(step_state, last, rtol=1e-11, atol=1e-11)


@pytest.mark.parametrize("name", NAMES)
def test_state_bytes_constant_in_length(name):
    model = make(name)
    with torch.no_grad():
        short = state_nbytes(model(torch.zeros(2, 3, dtype=torch.long))[1])
        long = state_nbytes(model(torch.zeros(2, 200, dtype=torch.long))[1])
    assert short == long == state_nbytes(model.init_state(2)) > 0


# --- s4d: the FFT kernel path against the recurrence ------------------------------------------------------------


@pytest.mark.parametrize("init", ["lin", "inv"])
def test_s4d_kernel_mode_equals_recurrence_float64(init):
    """Outputs and the closed-form last state of the FFT path equal the step-by-step recurrence, from a
    non-zero carried-in state (the term dA^(t+1) s)."""
    torch.manual_seed(0)
    config = S4DConfig(vocab_size=VOCAB, d_model=6, n_layer=1, d_state=8, init=init, dt_max=0.5)
    layer = S4DLayer(config).double()
    u = torch.randn(3, 6, 57, dtype=torch.float64)
    state = torch.randn(3, 6, 4, dtype=torch.complex128)
    with torch.no_grad():
        y, last = layer(u, state)
        y_ref, last_ref = s4d_recurrence_ref(u, state, *layer.discretize()[1:], layer.D)
    assert y.abs().max() > 0.1 and last.abs().max() > 0.1
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(last, last_ref, rtol=1e-10, atol=1e-10)


def test_s4d_model_modes_agree_float64():
    model = make("s4d", dtype=torch.float64)
    recurrent = S4DLM(replace(model.config, mode="recurrence")).double()
    recurrent.load_state_dict(model.state_dict())
    tokens = torch.randint(0, VOCAB, (2, 25))
    with torch.no_grad():
        a, state_a = model(tokens)
        b, state_b = recurrent(tokens)
    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    assert_states_close(state_a, state_b, rtol=1e-10, atol=1e-12)


def test_s4d_initialisation_follows_the_paper():
    torch.manual_seed(0)
    lin = S4DLayer(S4DConfig(d_model=4, d_state=8, init="lin"))
    inv = S4DLayer(S4DConfig(d_model=4, d_state=8, init="inv"))
    n = torch.arange(4, dtype=torch.float32)
    torch.testing.assert_close(lin.A_imag[0], math.pi * n)  # S4D-Lin: A_n = -1/2 + i pi n
    torch.testing.assert_close(inv.A_imag[0], 8 / math.pi * (8 / (2 * n + 1) - 1))  # S4D-Inv
    torch.testing.assert_close(-torch.exp(lin.log_A_real), torch.full((4, 4), -0.5))
    dt = torch.exp(lin.log_dt)
    assert bool(((dt >= 1e-3) & (dt <= 1e-1)).all())


# --- MoE routing and the load-balancing loss --------------------------------------------------------------------


def test_switch_routing_sends_each_token_to_one_expert_scaled_by_its_gate():
    torch.manual_seed(0)
    moe = SparseMoE(d_model=8, d_ff=12, n_experts=4, top_k=1).double()
    x = torch.randn(3, 10, 8, dtype=torch.float64)
    with torch.no_grad():
        out, _ = moe(x)
        routing = moe.route(x.reshape(-1, 8))
    assert routing.expert_index.shape == (30, 1)
    torch.testing.assert_close(routing.gates[:, 0], routing.probs.max(-1).values)
    flat = x.reshape(-1, 8)
    for t in range(30):
        e = int(routing.expert_index[t, 0])
        expected = routing.probs[t, e] * moe.experts[e](flat[t])
        torch.testing.assert_close(out.reshape(-1, 8)[t], expected)


def test_load_balancing_loss_on_a_hand_built_routing():
    probs = torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]])
    index = torch.tensor([[0], [0], [1], [0]])
    # f = (3/4, 1/4), P = (0.65, 0.35): 2 * (0.75 * 0.65 + 0.25 * 0.35) = 1.15
    torch.testing.assert_close(load_balancing_loss(probs, index, 2), torch.tensor(1.15))


@pytest.mark.parametrize("top_k", [1, 2])
def test_load_balancing_loss_is_one_for_uniform_routing(top_k):
    n_experts, tokens = 4, 8
    probs = torch.full((tokens, n_experts), 1 / n_experts)
    index = (torch.arange(tokens)[:, None] + torch.arange(top_k)[None]) % n_experts
    torch.testing.assert_close(load_balancing_loss(probs, index, n_experts), torch.tensor(1.0))


def test_aux_loss_is_set_each_forward_and_reaches_the_router():
    model = make("moe_mamba")
    model(torch.randint(0, VOCAB, (2, 12)))
    first = model.aux_loss
    assert first.dim() == 0 and first >= 1.0 - 1e-6  # E sum f_i P_i >= 1 for top-1 routing (f and P agree)
    first.backward()
    assert all(block.ffn.router.weight.grad.abs().sum() > 0 for block in model.layers)
    model(torch.randint(0, VOCAB, (2, 5)))
    assert model.aux_loss is not first


# --- jamba: the layer plan and windowed attention ---------------------------------------------------------------


def test_jamba_layer_plan():
    assert [m for m, _ in JambaConfig(n_layer=4).layer_plan()] == ["mamba", "mamba", "attention", "mamba"]
    plan = JambaConfig(n_layer=16).layer_plan()
    assert [i for i, (m, _) in enumerate(plan) if m == "attention"] == [4, 12]  # Jamba's 1:7, offset 4
    assert [i for i, (_, f) in enumerate(plan) if f == "moe"] == list(range(1, 16, 2))
    assert [m for m, _ in JambaConfig(n_layer=3, attn_period=2, attn_offset=0).layer_plan()] == [
        "attention", "mamba", "attention"]


def attention_reference(x, layer, window):
    """Softmax attention from the equations, float64, with a dense (t - window, t] causal mask."""
    b, length, _ = x.shape
    h, hk, d = layer.n_heads, layer.n_kv_heads, layer.d_head
    q = layer.q_proj(x).view(b, length, h, d).transpose(1, 2)
    k = layer.k_proj(x).view(b, length, hk, d).transpose(1, 2).repeat_interleave(h // hk, dim=1)
    v = layer.v_proj(x).view(b, length, hk, d).transpose(1, 2).repeat_interleave(h // hk, dim=1)
    t = torch.arange(length)
    allowed = (t[None, :] <= t[:, None]) & (t[:, None] - t[None, :] < window)
    scores = (q @ k.transpose(-1, -2) / math.sqrt(d)).masked_fill(~allowed, float("-inf"))
    out = torch.softmax(scores, -1) @ v
    return layer.o_proj(out.transpose(1, 2).reshape(b, length, h * d))


@pytest.mark.parametrize(("window", "kv_heads"), [(50, 4), (40, 2), (5, 2), (1, 1)])
def test_window_attention_matches_dense_reference(window, kv_heads):
    """Window >= length is full causal attention; shorter windows match the dense banded mask, in chunks too."""
    torch.manual_seed(0)
    layer = WindowAttention(d_model=16, n_heads=4, n_kv_heads=kv_heads, window=window).double()
    x = torch.randn(2, 40, 16, dtype=torch.float64)
    with torch.no_grad():
        expected = attention_reference(x, layer, window)
        full, _ = layer(x, layer.init_state(2))
        state, outs = layer.init_state(2), []
        for s, e in [(0, 3), (3, 4), (4, 23), (23, 40)]:
            out, state = layer(x[:, s:e], state)
            outs.append(out)
    torch.testing.assert_close(full, expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(torch.cat(outs, 1), expected, rtol=1e-12, atol=1e-12)


def _import_hf_jamba():
    return import_transformers("JambaConfig", "JambaForCausalLM")


def _hf_to_ours(hf_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Hugging Face Jamba parameter names and layouts -> :class:`HybridLM`'s."""
    renames = [("model.", ""), ("embed_tokens", "embedding"), ("final_layernorm", "norm_f"),
               ("input_layernorm", "input_norm"), ("pre_ff_layernorm", "ffn_norm"), (".mamba.", ".mixer."),
               (".self_attn.", ".mixer."), (".feed_forward.", ".ffn."), ("x_proj.weight", "x_proj.linear.weight"),
               ("dt_layernorm", "x_proj.dt_norm"), ("b_layernorm", "x_proj.b_norm"), ("c_layernorm", "x_proj.c_norm")]
    ours = {}
    for name, value in hf_state.items():
        for old, new in renames:
            name = name.replace(old, new, 1) if old == "model." else name.replace(old, new)
        if name.endswith("ffn.experts.gate_up_proj"):  # (E, 2F, D): gate rows, then up rows
            for e, weight in enumerate(value):
                gate, up = weight.chunk(2, dim=0)
                ours[name.replace("gate_up_proj", f"{e}.gate_proj.weight")] = gate
                ours[name.replace("gate_up_proj", f"{e}.up_proj.weight")] = up
        elif name.endswith("ffn.experts.down_proj"):  # (E, D, F)
            for e, weight in enumerate(value):
                ours[name.replace("down_proj", f"{e}.down_proj.weight")] = weight
        else:
            ours[name] = value
    return ours


def test_jamba_matches_hugging_face_transformers():
    """A tiny Jamba with Hugging Face's weights gives Hugging Face's logits (window >= length: full attention)."""
    HFJambaConfig, JambaForCausalLM = _import_hf_jamba()
    torch.manual_seed(0)
    hf_config = HFJambaConfig(
        vocab_size=VOCAB, hidden_size=16, intermediate_size=32, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=2, num_experts=4, num_experts_per_tok=2, expert_layer_period=2, expert_layer_offset=1,
        attn_layer_period=8, attn_layer_offset=2, mamba_d_state=4, mamba_d_conv=4, mamba_expand=2,
        rms_norm_eps=1e-6, tie_word_embeddings=False, pad_token_id=None, use_mamba_kernels=False)
    hf = JambaForCausalLM(hf_config).eval()
    with torch.no_grad():  # norms start at 1: move them so the mapping of every norm is checked
        for name, p in hf.named_parameters():
            if "norm" in name:
                p.add_(0.3 * torch.randn_like(p))
    ours = HybridLM(JambaConfig(vocab_size=VOCAB, d_model=16, n_layer=4, n_heads=4, n_kv_heads=2, n_experts=4,
                                top_k=2, ff_mult=2.0, d_state=4, window=64, norm_eps=1e-6, tie_embeddings=False))
    ours.load_state_dict(_hf_to_ours(hf.state_dict()), strict=True)
    tokens = torch.randint(0, VOCAB, (2, 24))
    with torch.no_grad():
        expected = hf(input_ids=tokens).logits
        logits, _ = ours(tokens)
        chunked, _ = run_in_pieces(ours, tokens, [0, 5, 6, 24])
    torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(chunked, expected, rtol=1e-4, atol=1e-5)


# --- budgets, errors, training, determinism ---------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("size", sorted(SIZES))
def test_parameter_budget(name, size):
    model = build_model(name, 256, size)
    assert abs(count_parameters(model) - SIZES[size]) <= 0.15 * SIZES[size]


def test_jamba_budget_with_other_head_counts():
    model = build_model("jamba", 256, "0.1M", n_heads=3, n_kv_heads=1)
    assert model.config.d_model % 3 == 0
    assert abs(count_parameters(model) - SIZES["0.1M"]) <= 0.15 * SIZES["0.1M"]


@pytest.mark.parametrize(("name", "overrides", "match"), [
    ("s4d", {"d_state": 5}, "d_state"),
    ("s4d", {"init": "legs"}, "init"),
    ("s4d", {"mode": "fast"}, "mode"),
    ("s4d", {"dt_min": 0.5, "dt_max": 0.1}, "dt_min"),
    ("s4d", {"width": 3}, "unknown option.*width"),
    ("moe_mamba", {"n_experts": 0}, "n_experts"),
    ("moe_mamba", {"ff_mult": 0}, "ff_mult"),
    ("moe_mamba", {"window": 8}, "unknown option.*window"),
    ("jamba", {"n_experts": 0}, "n_experts"),
    ("jamba", {"attn_period": 0}, "attn_period"),
    ("jamba", {"attn_offset": 8}, "attn_offset"),
    ("jamba", {"attn_offset": 5}, "attn_offset.*no attention layer"),
    ("jamba", {"moe_period": 2, "moe_offset": 2}, "moe_offset"),
    ("jamba", {"window": 0}, "window"),
    ("jamba", {"window": 10**6}, "window"),
    ("jamba", {"top_k": 5}, "top_k"),
    ("jamba", {"n_heads": 3, "d_model": 16}, "n_heads"),
    ("jamba", {"n_kv_heads": 3}, "n_kv_heads"),
    ("jamba", {"d_state": 0}, "d_state"),
    ("jamba", {"experts": 4}, "unknown option.*experts"),
])
def test_bad_configs_name_the_field(name, overrides, match):
    with pytest.raises(AHMConfigError, match=match):
        build_model(name, 256, "0.1M", **overrides)


@pytest.mark.parametrize("name", NAMES)
def test_a_tiny_training_run_lowers_the_loss(name):
    """30 Adam steps on a repeating pattern (the next token is predictable from the last few)."""
    model = make(name)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    pattern = torch.randint(0, VOCAB, (1, 5), generator=torch.Generator().manual_seed(0))
    tokens = pattern.repeat(4, 8)  # (4, 40)
    losses = []
    for _ in range(30):
        logits, _ = model(tokens[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, VOCAB), tokens[:, 1:].reshape(-1))
        losses.append(loss.item())
        aux = getattr(model, "aux_loss", None)
        total = loss + model.config.aux_loss_coef * aux if aux is not None else loss
        optimiser.zero_grad()
        total.backward()
        optimiser.step()
    assert losses[-1] < 0.5 * losses[0], losses


@pytest.mark.parametrize("name", NAMES)
def test_deterministic_given_the_seed(name):
    tokens = torch.randint(0, VOCAB, (2, 20))
    with torch.no_grad():
        a, _ = make(name, seed=3)(tokens)
        b, _ = make(name, seed=3)(tokens)
        c, _ = make(name, seed=4)(tokens)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


def test_doctest():
    result = doctest.testmod(ahm.backbone.baselines.s4d)
    assert result.attempted > 0 and result.failed == 0
