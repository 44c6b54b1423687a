"""ahm.backbone.MambaLM: streaming state, gradients, learning, and input checks."""

from __future__ import annotations

import doctest

import pytest
import torch
from hf_reference import import_transformers
from hypothesis import given, settings
from hypothesis import strategies as st

import ahm.backbone.mamba
from ahm.backbone import MambaConfig, MambaLM

SMALL = MambaConfig(vocab_size=16, d_model=16, n_layer=2, d_state=4)


def make_lm(config: MambaConfig = SMALL, seed: int = 0, dtype=torch.float32) -> MambaLM:
    torch.manual_seed(seed)
    return MambaLM(config).to(dtype)


def run_in_pieces(lm: MambaLM, tokens: torch.Tensor, bounds: list[int]) -> torch.Tensor:
    state, outs = lm.init_state(tokens.shape[0]), []
    for s, e in zip(bounds[:-1], bounds[1:]):
        logits, state = lm(tokens[:, s:e], state)
        outs.append(logits)
    return torch.cat(outs, 1)


@given(
    length=st.integers(1, 80),
    cuts=st.lists(st.integers(1, 79), max_size=5),
    seed=st.integers(0, 1000),
)
@settings(max_examples=25)
def test_one_call_chunks_and_steps_agree(length, cuts, seed):
    lm = make_lm(seed=seed)
    tokens = torch.randint(0, 16, (2, length), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        full, last = lm(tokens)
        chunked = run_in_pieces(lm, tokens, sorted({0, length, *[c for c in cuts if c < length]}))
        state, steps = lm.init_state(2), []
        for t in range(length):
            logits, state = lm.step(tokens[:, t], state)
            steps.append(logits)
    torch.testing.assert_close(chunked, full, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(torch.stack(steps, 1), full, rtol=1e-5, atol=1e-5)
    for a, b in zip(state.layers, last.layers):
        torch.testing.assert_close(a.ssm, b.ssm, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(a.conv, b.conv, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("d_conv", [1, 2, 4])
def test_streaming_is_exact_in_float64(d_conv):
    config = MambaConfig(vocab_size=16, d_model=8, n_layer=3, d_state=3, d_conv=d_conv)
    lm = make_lm(config, dtype=torch.float64)
    tokens = torch.randint(0, 16, (3, 300))
    with torch.no_grad():
        full, _ = lm(tokens)
        chunked = run_in_pieces(lm, tokens, [0, 1, 2, 50, 177, 299, 300])
    torch.testing.assert_close(chunked, full, rtol=1e-12, atol=1e-12)


def test_gradients_flow_through_carried_state():
    """Backprop through two chained chunks equals backprop through one call."""
    lm = make_lm(dtype=torch.float64)
    tokens = torch.randint(0, 16, (2, 40))
    targets = torch.randint(0, 16, (2, 40))

    def grads(bounds):
        lm.zero_grad()
        logits = run_in_pieces(lm, tokens, bounds)
        torch.nn.functional.cross_entropy(logits.reshape(-1, 16), targets.reshape(-1)).backward()
        return {n: p.grad.clone() for n, p in lm.named_parameters()}

    g_full, g_chunked = grads([0, 40]), grads([0, 13, 40])
    for name in g_full:
        torch.testing.assert_close(g_chunked[name], g_full[name], rtol=1e-9, atol=1e-11, msg=name)


def test_detached_state_cuts_the_graph():
    lm = make_lm()
    _, state = lm(torch.randint(0, 16, (1, 5)))
    assert state.layers[0].ssm.requires_grad
    assert not any(s.ssm.requires_grad or s.conv.requires_grad for s in state.detach().layers)
    assert state.nbytes() == sum(s.ssm.nbytes + s.conv.nbytes for s in state.layers)


def test_same_seed_same_model_and_outputs():
    tokens = torch.randint(0, 16, (2, 20))
    a, b, c = make_lm(seed=1), make_lm(seed=1), make_lm(seed=2)
    with torch.no_grad():
        torch.testing.assert_close(a(tokens)[0], b(tokens)[0], rtol=0, atol=0)
        assert not torch.allclose(a(tokens)[0], c(tokens)[0])


def test_learns_a_repeating_pattern():
    """A few Adam steps on a periodic sequence must drive the loss far below chance."""
    lm = make_lm(MambaConfig(vocab_size=16, d_model=32, n_layer=2, d_state=8), seed=0)
    pattern = torch.tensor([3, 1, 4, 1, 5, 9, 2, 6])
    tokens = pattern.repeat(4, 8)  # (4, 64)
    opt = torch.optim.Adam(lm.parameters(), lr=1e-2)
    losses = []
    for _ in range(60):
        logits, _ = lm(tokens[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, 16), tokens[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[0] > 2.0  # about log(16) = 2.77 at initialisation
    assert losses[-1] < 0.3 * losses[0]


@pytest.mark.parametrize(
    "tokens, message",
    [
        (torch.tensor([[0, 16]]), r"token ids must lie in \[0, 16\); got values in \[0, 16\]"),
        (torch.tensor([[-1, 2]]), "token ids must lie in"),
        (torch.zeros(2, 3), "integer tensor"),
        (torch.zeros(3, dtype=torch.long), r"shape \(batch, length\)"),
        (torch.zeros(1, 0, dtype=torch.long), "at least one step"),
    ],
)
def test_bad_tokens_raise(tokens, message):
    with pytest.raises(ValueError, match=message):
        make_lm()(tokens)


def test_state_of_wrong_batch_raises():
    lm = make_lm()
    with pytest.raises(ValueError, match="state is for batch 3, tokens have batch 2"):
        lm(torch.zeros(2, 4, dtype=torch.long), lm.init_state(3))
    with pytest.raises(ValueError, match=r"shape \(batch,\)"):
        lm.step(torch.zeros(2, 1, dtype=torch.long), lm.init_state(2))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(d_model=0), "d_model must be a positive int"),
        (dict(dt_min=0.5, dt_max=0.1), "dt_min <= dt_max"),
        (dict(dt_rank=0), "dt_rank must be None or a positive int"),
    ],
)
def test_config_rejects_bad_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MambaConfig(**kwargs)


def test_config_round_trips_and_rejects_unknown_fields():
    config = MambaConfig(d_model=32, dt_rank=3)
    assert MambaConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="unknown fields"):
        MambaConfig.from_dict({"d_modle": 3})


def test_parameter_count_matches_the_design():
    c = MambaConfig(vocab_size=16, d_model=16, n_layer=1, d_state=4, d_conv=4, expand=2)
    di, r = 32, 1
    per_block = (
        16 * 2 * di  # in_proj
        + di * 4 + di  # conv weight + bias
        + di * (r + 2 * 4)  # x_proj
        + r * di + di  # dt_proj
        + di * 4 + di  # A_log, D
        + di * 16  # out_proj
        + 16  # norm
    )
    expected = 16 * 16 + per_block + 16  # tied embedding/head, final norm
    assert sum(p.numel() for p in MambaLM(c).parameters()) == expected


def test_docstring_examples_run():
    result = doctest.testmod(ahm.backbone.mamba)
    assert result.attempted > 0 and result.failed == 0


def test_depthwise_conv_equals_torch_conv1d():
    """The shifted multiply-add conv is F.conv1d(groups=channels), values and gradients."""
    torch.manual_seed(0)
    mixer = make_lm(MambaConfig(vocab_size=16, d_model=8, n_layer=1, d_conv=4), dtype=torch.float64)
    mixer = mixer.backbone.layers[0].mixer
    x_full = torch.randn(2, mixer.config.d_inner, 3 + 20, dtype=torch.float64, requires_grad=True)
    ours = mixer._depthwise_conv(x_full, 20)
    theirs = torch.nn.functional.conv1d(x_full, mixer.conv1d.weight, mixer.conv1d.bias, groups=x_full.shape[1])
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)
    w = torch.randn_like(ours)
    g1 = torch.autograd.grad((ours * w).sum(), [x_full, mixer.conv1d.weight])
    g2 = torch.autograd.grad((theirs * w).sum(), [x_full, mixer.conv1d.weight])
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_mamba_lm_matches_hugging_face_transformers():
    """With Hugging Face's MambaForCausalLM weights (norms and biases moved off their init), MambaLM gives its
    logits and gradients, in one call and streamed in pieces: an independent implementation of the same model."""
    HFConfig, MambaForCausalLM = import_transformers("MambaConfig", "MambaForCausalLM")
    torch.manual_seed(0)
    hf = MambaForCausalLM(HFConfig(vocab_size=16, hidden_size=16, num_hidden_layers=2, state_size=4, expand=2,
                                   conv_kernel=4, use_cache=False, layer_norm_epsilon=1e-5)).eval()
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if "norm" in name or name.endswith("bias") or name.endswith(".D"):
                p.add_(0.3 * torch.randn_like(p))
    ours = make_lm(MambaConfig(vocab_size=16, d_model=16, n_layer=2, d_state=4, d_conv=4))  # HF's scan is float32
    ours.load_state_dict({k.replace("embeddings", "embedding"): v for k, v in hf.state_dict().items()}, strict=True)
    tokens = torch.randint(0, 16, (2, 40))
    expected = hf(input_ids=tokens).logits
    logits, _ = ours(tokens)
    torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-5)
    state, pieces = ours.init_state(2), []
    for start, end in ((0, 7), (7, 8), (8, 40)):
        out, state = ours(tokens[:, start:end], state)
        pieces.append(out)
    torch.testing.assert_close(torch.cat(pieces, 1), expected, rtol=1e-4, atol=1e-5)
    w = torch.randn_like(expected)
    hf_leaves = [hf.backbone.layers[0].mixer.A_log, hf.backbone.embeddings.weight]
    theirs = torch.autograd.grad((expected * w).sum(), hf_leaves)
    our_leaves = [ours.backbone.layers[0].mixer.A_log, ours.backbone.embedding.weight]
    mine = torch.autograd.grad((logits * w).sum(), our_leaves)
    for a, b in zip(mine, theirs):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
