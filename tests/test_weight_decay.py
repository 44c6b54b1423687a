"""Weight decay follows the reference Mamba recipe: matrices only, never A_log, D, biases or norms."""

from __future__ import annotations

import pytest
import torch

from ahm.backbone import MambaConfig, MambaLM, weight_decay_groups
from ahm.backbone.baselines import build_model
from ahm.backbone.optim import decays


def _names(model: torch.nn.Module, group: dict) -> set[str]:
    ids = {id(p) for p in group["params"]}
    return {name for name, p in model.named_parameters() if id(p) in ids}


def test_mamba_decays_its_matrices_and_nothing_of_the_ssm():
    lm = MambaLM(MambaConfig(vocab_size=32, d_model=16, n_layer=2))
    decayed, kept = weight_decay_groups(lm.parameters(), 0.1)
    assert decayed["weight_decay"] == 0.1 and kept["weight_decay"] == 0.0
    kept_names = _names(lm, kept)
    for layer in range(2):
        mixer = f"backbone.layers.{layer}.mixer."
        assert {mixer + "A_log", mixer + "D", mixer + "dt_proj.bias", mixer + "conv1d.bias",
                f"backbone.layers.{layer}.norm.weight"} <= kept_names
        assert {mixer + "in_proj.weight", mixer + "x_proj.weight", mixer + "dt_proj.weight",
                mixer + "out_proj.weight"} <= _names(lm, decayed)
    assert "backbone.embedding.weight" in _names(lm, decayed)  # the tied embedding is a matrix
    assert len(decayed["params"]) + len(kept["params"]) == len(list(lm.parameters()))  # each once


def test_a_step_without_gradient_shrinks_matrices_and_leaves_a_log_alone():
    lm = MambaLM(MambaConfig(vocab_size=32, d_model=16, n_layer=1))
    mixer = lm.backbone.layers[0].mixer
    before = {name: p.detach().clone() for name, p in lm.named_parameters()}
    opt = torch.optim.AdamW(weight_decay_groups(lm.parameters(), 0.5), lr=0.1)
    for p in lm.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    torch.testing.assert_close(mixer.A_log, before["backbone.layers.0.mixer.A_log"], rtol=0, atol=0)
    torch.testing.assert_close(mixer.dt_proj.bias, before["backbone.layers.0.mixer.dt_proj.bias"], rtol=0, atol=0)
    torch.testing.assert_close(mixer.in_proj.weight, before["backbone.layers.0.mixer.in_proj.weight"] * (1 - 0.1 * 0.5))


def test_s4d_keeps_its_kernel_out_of_weight_decay():
    model = build_model("s4d", 32, "0.1M")
    kept = {name.rsplit(".", 1)[-1] for name, p in model.named_parameters() if not decays(p)}
    assert {"log_dt", "log_A_real", "A_imag"} <= kept
    assert any(decays(p) for name, p in model.named_parameters() if name.endswith(".C"))


def test_options_reach_both_groups_and_empty_groups_are_left_out():
    w, b = torch.nn.Parameter(torch.ones(2, 2)), torch.nn.Parameter(torch.ones(2))
    assert [g["lr"] for g in weight_decay_groups([w, b], 0.1, lr=7.0)] == [7.0, 7.0]
    assert [g["weight_decay"] for g in weight_decay_groups([b], 0.1)] == [0.0]
    with pytest.raises(ValueError, match="weight_decay must be >= 0"):
        weight_decay_groups([w], -0.1)
