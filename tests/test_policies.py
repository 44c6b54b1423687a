"""ahm.agents.policies: the slot feature extractor scores every WM slot with one network, its policy starts with
slot i's scores as slot i's write / forget logits, and it trains, saves and loads like any SB3 policy."""

from __future__ import annotations

import json

import gymnasium as gym
import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import ahm  # noqa: F401  (registers the env ids)
from ahm.agents.learned import ControllerTrainConfig, SB3Controller, load_controller, save_controller, train_controller
from ahm.agents.policies import SLOT_KEYS, SlotFeaturesExtractor, wire_slot_scores

torch.set_num_threads(1)

SMALL = {"seq_len": 1024, "chunk_size": 64}


def observation_space() -> gym.spaces.Dict:
    env = gym.make("ahm:AHMMemory-v0", **SMALL)
    return env.observation_space


def slots_config(**overrides) -> ControllerTrainConfig:
    kwargs = dict(env_kwargs=dict(SMALL), num_envs=2, total_timesteps=64, n_steps=32, batch_size=32, eval_freq=0,
                  features="slots", policy_kwargs={"features_extractor_kwargs": {"hidden": 16, "slot_hidden": 8}})
    kwargs.update(overrides)
    return ControllerTrainConfig(**kwargs)


@given(seed=st.integers(0, 2**31 - 1))
def test_slot_scores_follow_their_slots_under_any_permutation(seed) -> None:
    space = observation_space()
    torch.manual_seed(0)
    extractor = SlotFeaturesExtractor(space, hidden=8, slot_hidden=8)
    rng = np.random.default_rng(seed)
    obs = {key: torch.as_tensor(rng.random((3, *box.shape), dtype=np.float32)) for key, box in space.spaces.items()}
    k = space["wm_occupied"].shape[0]
    perm = torch.as_tensor(rng.permutation(k))
    moved = {key: (value[:, perm] if key in SLOT_KEYS else value) for key, value in obs.items()}
    out, out_moved = extractor(obs), extractor(moved)
    assert out.shape == (3, 8 + 2 * k)
    for first in (8, 8 + k):  # write scores, forget scores
        torch.testing.assert_close(out_moved[:, first : first + k], out[:, first : first + k][:, perm])


def test_the_new_policy_starts_with_slot_scores_as_slot_logits_and_survives_a_checkpoint(tmp_path) -> None:
    model = train_controller(slots_config(forget_prior=0.9))
    policy = model.policy
    assert isinstance(policy.features_extractor, SlotFeaturesExtractor) and policy.net_arch == []
    fresh = train_controller(slots_config(total_timesteps=1, learning_rate=1e-9))  # trains, but moves nothing
    weight = fresh.policy.action_net.weight.detach()
    k, h = 8, 16
    torch.testing.assert_close(weight[1 : k + 1, h : h + k], torch.eye(k), atol=1e-5, rtol=0)
    offset3 = 9 + 2 + 4  # component 3 (forget WM slot) starts after the values of components 0-2
    forget_block = weight[offset3 + 1 : offset3 + k + 1, h + k : h + 2 * k]
    torch.testing.assert_close(forget_block, torch.eye(k), atol=1e-5, rtol=0)

    path = save_controller(tmp_path / "c", model)
    assert json.loads((path / "controller.json").read_text())["policy_kwargs"]["features_extractor_class"] == {
        "class": "SlotFeaturesExtractor"}
    loaded = load_controller(path)
    env = gym.make_vec("AHMMemory-v0", num_envs=2, vectorization_mode="vector_entry_point", **SMALL)
    obs, _ = env.reset(seed=4)
    a, b = SB3Controller(model), loaded
    a.reset(2), b.reset(2)
    for _ in range(20):
        masks = env.action_masks()
        actions = a.act(obs, masks)
        np.testing.assert_array_equal(actions, b.act(obs, masks))
        obs = env.step_arrays(actions).observation


def test_slot_features_are_refused_where_they_cannot_apply() -> None:
    with pytest.raises(ValueError, match="features must be"):
        slots_config(features="graph")
    with pytest.raises(ValueError, match="recurrent_ppo"):
        slots_config(algo="recurrent_ppo")
    flat = train_controller(slots_config(features="flat", policy_kwargs={"net_arch": [8]}))
    with pytest.raises(ValueError, match="SlotFeaturesExtractor"):
        wire_slot_scores(flat.policy)
    with pytest.raises(ValueError, match="linear action head"):
        train_controller(slots_config(policy_kwargs={"net_arch": [8]}))
    space = gym.spaces.Dict({"wm_age": gym.spaces.Box(0, 1, (4,))})
    with pytest.raises(ValueError, match="missing keys"):
        SlotFeaturesExtractor(space)
