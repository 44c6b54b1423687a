"""ahm.agents.learned: SB3 controllers, their training and checkpoints; the adapter's "noop" mode."""

from __future__ import annotations

import dataclasses
import glob
import json

import gymnasium as gym
import numpy as np
import pytest
import torch
from torch import nn

import ahm  # noqa: F401  (registers the env ids)
from ahm.agents import make_controller
from ahm.agents.learned import (
    ALGORITHMS,
    ControllerTrainConfig,
    Demonstrations,
    SB3Controller,
    TorchPolicyController,
    collect_demonstrations,
    env_spec_of,
    fit_controller,
    load_controller,
    save_controller,
    train_controller,
)
from ahm.agents.sb3_adapter import SB3VecEnvAdapter
from ahm.envs import AHMMemoryVectorEnv, random_backbone, save_ahm_checkpoint
from ahm.envs.vector_env import noop_invalid_actions

torch.set_num_threads(1)

SMALL = {"seq_len": 1024, "chunk_size": 64}
NVEC = np.array([9, 2, 4, 9, 4])
OFFSETS = np.concatenate(([0], np.cumsum(NVEC)[:-1]))


def small_config(algo: str, **overrides) -> ControllerTrainConfig:
    kwargs = dict(algo=algo, env_kwargs=dict(SMALL), num_envs=2, total_timesteps=256, n_steps=32, batch_size=32,
                  eval_freq=0,
                  policy_kwargs={"lstm_hidden_size": 16, "net_arch": [32]} if algo == "recurrent_ppo"
                  else {"net_arch": [32, 32]})
    kwargs.update(overrides)
    return ControllerTrainConfig(**kwargs)


def vector_env(num_envs: int = 2) -> AHMMemoryVectorEnv:
    return gym.make_vec("AHMMemory-v0", num_envs=num_envs, vectorization_mode="vector_entry_point", **SMALL)


def is_valid(actions: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """(b,) bool: every component of every row in range and allowed by its mask."""
    in_range = ((actions >= 0) & (actions < NVEC)).all(1)
    idx = OFFSETS + np.clip(actions, 0, NVEC - 1)
    return in_range & np.take_along_axis(masks, idx, axis=1).all(1)


def rollout(controllers: list, steps: int, seed: int = 3) -> list[np.ndarray]:
    """Drive one env with the first controller; every controller acts on the same observations.

    Returns each controller's (steps, b, 5) actions; asserts the driving actions are valid."""
    env = vector_env()
    obs, _ = env.reset(seed=seed)
    for c in controllers:
        c.reset(env.num_envs)
    start = np.ones(env.num_envs, dtype=bool)
    out: list[list[np.ndarray]] = [[] for _ in controllers]
    for _ in range(steps):
        masks = env.action_masks()
        acts = [c.act(obs, masks, None, start) for c in controllers]
        for o, a in zip(out, acts):
            o.append(a)
        assert acts[0].shape == (2, 5) and acts[0].dtype == np.int64
        assert is_valid(acts[0], masks).all(), (acts[0], masks)
        s = env.step_arrays(acts[0])  # the env raises on an invalid action
        obs, start = s.observation, s.terminated | s.truncated
    return [np.stack(o) for o in out]


# ---------------------------------------------------------------------- the noop rule and the adapter
def test_noop_invalid_actions_replaces_exactly_the_invalid_components() -> None:
    rng = np.random.default_rng(0)
    masks = rng.random((64, int(NVEC.sum()))) < 0.5
    masks[:, OFFSETS] = True  # 0 is valid in every state (the env's op_masks)
    actions = rng.integers(0, NVEC, size=(64, 5))
    out = noop_invalid_actions(actions, masks, NVEC)
    valid = np.take_along_axis(masks, OFFSETS + actions, axis=1)
    np.testing.assert_array_equal(out, np.where(valid, actions, 0))
    assert is_valid(out, masks).all() and valid.sum() < valid.size  # something was replaced
    # out-of-range values are malformed, not masked: left for the env to reject
    bad = actions.copy()
    bad[0, 2] = 7
    assert noop_invalid_actions(bad, masks, NVEC)[0, 2] == 7


def test_adapter_noop_mode_makes_invalid_actions_valid_and_raise_mode_raises() -> None:
    invalid = np.array([[1, 0, 1, 3, 1]] * 2)  # write slot 0; retrieve WM, forget slot 2, forget LTM: all invalid
    strict = SB3VecEnvAdapter(vector_env())
    strict.reset()
    strict.step_async(invalid)
    with pytest.raises(ValueError, match="action_masks"):
        strict.step_wait()

    venv = SB3VecEnvAdapter(vector_env(), invalid_actions="noop")
    venv.reset()
    venv.step_async(invalid)
    _, _, _, infos = venv.step_wait()
    for info in infos:  # the write ran, the three invalid operations became no-ops
        assert (info["memory"]["writes"], info["memory"]["retrievals_wm"], info["memory"]["forgets_wm"],
                info["memory"]["forgets_ltm"]) == (1, 0, 0, 0)
    venv.step_async(np.array([[0, 0, 1, 1, 0]] * 2))  # now valid: retrieve from WM, forget slot 0
    _, _, _, infos = venv.step_wait()
    for info in infos:
        memory = info["memory"]
        assert (memory["retrievals_wm"], memory["forgets_wm"], memory["wm_entries"]) == (1, 1, 0)
    with pytest.raises(ValueError, match="invalid_actions"):
        SB3VecEnvAdapter(vector_env(), invalid_actions="clip")


# ---------------------------------------------------------------------- training, controllers, checkpoints
@pytest.fixture(scope="module", params=list(ALGORITHMS))
def trained(request):
    config = small_config(request.param)
    return config, train_controller(config)


def test_each_algorithm_trains_and_its_controller_sends_only_valid_actions(trained) -> None:
    config, model = trained
    assert model.num_timesteps >= config.total_timesteps
    greedy, sampled = SB3Controller(model), SB3Controller(model, deterministic=False)
    assert greedy.name == config.algo
    rollout([greedy], steps=40)
    rollout([sampled], steps=40)  # sampling proposes invalid values more often; all must be made valid


def test_save_then_load_gives_identical_actions(trained, tmp_path) -> None:
    config, model = trained
    path = save_controller(tmp_path / "ctrl", model, env_spec_of(config))
    loaded = load_controller(path)
    assert loaded.algo == config.algo and isinstance(make_controller(path), SB3Controller)
    meta = json.loads((path / "controller.json").read_text())
    assert meta["action_space"]["nvec"] == NVEC.tolist() and meta["env_spec"]["env_kwargs"] == SMALL
    ours, theirs = rollout([SB3Controller(model), loaded], steps=40)  # recurrent: the LSTM state is carried too
    np.testing.assert_array_equal(ours, theirs)
    for a, b in zip(model.policy.state_dict().values(), loaded.model.policy.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_training_continues_from_a_model_and_checks_it(tmp_path) -> None:
    config = small_config("a2c", total_timesteps=128)
    model = train_controller(config)
    before = [p.detach().clone() for p in model.policy.parameters()]
    again = train_controller(config, model=model)
    assert again is model and model.num_timesteps == 256  # counted on, not reset
    assert any(not torch.equal(a, b) for a, b in zip(before, model.policy.parameters()))
    with pytest.raises(ValueError, match="config.algo"):
        train_controller(small_config("ppo"), model=model)
    with pytest.raises(ValueError, match="num_envs"):
        train_controller(small_config("a2c", num_envs=3), model=model)
    # a loaded model trains on too
    loaded = load_controller(save_controller(tmp_path / "c", model), num_envs=2)
    assert train_controller(config, model=loaded.model).num_timesteps == 384


def test_tensorboard_gets_sb3_memory_reward_and_eval_keys(tmp_path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    config = small_config("maskable_ppo", total_timesteps=128, eval_freq=1, eval_episodes=2,
                          tensorboard_log=str(tmp_path))
    train_controller(config)
    (run,) = glob.glob(str(tmp_path / "maskable_ppo_*"))
    events = EventAccumulator(run)
    events.Reload()
    tags = set(events.Tags()["scalars"])
    want = {"rollout/ep_rew_mean", "train/loss", "memory/writes", "memory/bytes", "memory/wm_entries",
            "reward/task_outcome", "reward/memory_cost", "task/accuracy", "eval/success", "eval/accuracy"}
    assert want <= tags, want - tags
    assert all(0.0 <= e.value <= 1.0 for e in events.Scalars("eval/success"))
    assert all(0.0 <= e.value <= 8 for e in events.Scalars("memory/wm_entries"))  # K = 8 slots
    assert all(e.value >= 0 for e in events.Scalars("memory/writes"))


def test_train_on_a_given_env_and_on_a_backbone_checkpoint(tmp_path) -> None:
    backbone = random_backbone(vocab_size=256)
    env = AHMMemoryVectorEnv(num_envs=2, backbone=backbone, **SMALL)
    model = train_controller(small_config("a2c", total_timesteps=64), env=env)
    assert model.get_env().num_envs == 2 and model.num_timesteps == 64
    save_ahm_checkpoint(tmp_path / "backbone", backbone)
    config = small_config("a2c", total_timesteps=64, env_kwargs={**SMALL, "backbone": str(tmp_path / "backbone")})
    assert train_controller(config).num_timesteps == 64
    assert env_spec_of(config)["env_kwargs"]["backbone"] == str(tmp_path / "backbone")
    with pytest.raises(ValueError, match="num_envs"):
        train_controller(small_config("a2c", num_envs=4), env=env)


def test_corrupted_or_missing_checkpoints_raise_clear_errors(tmp_path) -> None:
    config = small_config("a2c", total_timesteps=64)
    model = train_controller(config)
    path = save_controller(tmp_path / "c", model)
    weights, meta = path / "controller.safetensors", path / "controller.json"
    blob = bytearray(weights.read_bytes())
    blob[-5] ^= 0xFF  # one flipped bit pattern in the last tensor's data
    weights.write_bytes(bytes(blob))
    with pytest.raises(ValueError, match="corrupted"):
        load_controller(path)
    save_controller(path, model)
    meta.write_text(meta.read_text()[:50])
    with pytest.raises(ValueError, match="not a saved controller"):
        load_controller(path)
    save_controller(path, model)
    bad = json.loads(meta.read_text())
    bad["policy_kwargs"]["activation_fn"] = {"class": "system"}  # only torch.nn classes are looked up
    meta.write_text(json.dumps(bad))
    with pytest.raises(ValueError, match="not a Module"):
        load_controller(path)
    save_controller(path, model)
    bad = json.loads(meta.read_text())
    bad["observation_space"]["spaces"]["wm_age"]["shape"] = [3]
    bad["observation_space"]["spaces"]["wm_age"]["low"] = [0.0] * 3
    bad["observation_space"]["spaces"]["wm_age"]["high"] = [1.0] * 3
    meta.write_text(json.dumps(bad))
    with pytest.raises(ValueError, match="do not match"):
        load_controller(path)
    weights.unlink()
    with pytest.raises(FileNotFoundError, match="controller.safetensors"):
        load_controller(path)
    with pytest.raises(FileNotFoundError):
        load_controller(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="unknown controller"):
        make_controller(tmp_path / "nowhere")


def test_unsaveable_policy_kwargs_are_refused(tmp_path) -> None:
    class Custom(nn.ReLU):
        pass

    model = train_controller(small_config("a2c", total_timesteps=64, policy_kwargs={"activation_fn": Custom}))
    with pytest.raises(ValueError, match="activation_fn"):
        save_controller(tmp_path / "c", model)
    assert not (tmp_path / "c" / "controller.json").exists()


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="algo"):
        ControllerTrainConfig(algo="dqn")
    with pytest.raises(ValueError, match="num_envs"):
        ControllerTrainConfig(num_envs=0)
    with pytest.raises(ValueError, match="env_kwargs"):
        ControllerTrainConfig(env_kwargs={"num_envs": 2})
    with pytest.raises(ValueError, match="forget_prior"):
        ControllerTrainConfig(forget_prior=1.0)
    with pytest.raises(ValueError, match="write_prior"):
        ControllerTrainConfig(write_prior=1.0)
    with pytest.raises(ValueError, match="gae_lambda"):
        ControllerTrainConfig(gae_lambda=1.5)


def test_discount_and_gae_lambda_reach_the_algorithm_and_its_checkpoint(tmp_path) -> None:
    model = train_controller(small_config("ppo", gamma=0.995, gae_lambda=1.0, total_timesteps=64))
    assert (model.gamma, model.gae_lambda, model.rollout_buffer.gae_lambda) == (0.995, 1.0, 1.0)
    loaded = load_controller(save_controller(tmp_path / "c", model)).model
    assert (loaded.gamma, loaded.gae_lambda) == (0.995, 1.0)


@pytest.mark.parametrize("algo", list(ALGORITHMS))
def test_forget_prior_sets_the_starting_distribution_of_the_forget_components(algo) -> None:
    """Before any update (0 timesteps would not build the model: the first rollout's 32 steps at lr 1e-12), the
    policy samples "forget nothing" in the WM and LTM forget components with the prior's probability, and the
    other components stay near uniform."""
    model = train_controller(small_config(algo, forget_prior=0.9, learning_rate=1e-12, total_timesteps=64))
    env = vector_env()
    obs, _ = env.reset(seed=0)
    tensor_obs, _ = model.policy.obs_to_tensor({k: v for k, v in obs.items()})
    with torch.no_grad():
        if algo == "recurrent_ppo":
            features = model.policy.extract_features(tensor_obs)
            latent = model.policy.mlp_extractor.forward_actor(features.new_zeros(2, 16))
        else:
            latent = model.policy.mlp_extractor.forward_actor(model.policy.extract_features(tensor_obs))
        logits = model.policy.action_net(latent)
    probs = [torch.softmax(part, -1) for part in torch.split(logits, NVEC.tolist(), dim=-1)]
    for j in (3, 4):
        assert probs[j][:, 0].numpy() == pytest.approx(0.9, abs=0.02)
    for j in (0, 1, 2):
        assert probs[j].max().item() < 2.0 / NVEC[j]


def test_write_prior_sets_the_starting_probability_of_writing_nothing() -> None:
    model = train_controller(small_config("ppo", write_prior=0.8, learning_rate=1e-12, total_timesteps=64))
    obs, _ = vector_env().reset(seed=0)
    tensor_obs, _ = model.policy.obs_to_tensor({k: v for k, v in obs.items()})
    with torch.no_grad():
        logits = model.policy.action_net(model.policy.mlp_extractor.forward_actor(
            model.policy.extract_features(tensor_obs)))
    probs = [torch.softmax(part, -1) for part in torch.split(logits, NVEC.tolist(), dim=-1)]
    assert probs[0][:, 0].numpy() == pytest.approx(0.8, abs=0.02)
    for j in (1, 2, 3, 4):
        assert probs[j].max().item() < 2.0 / NVEC[j]


# ---------------------------------------------------------------------- torch modules
class FixedLogits(nn.Module):
    """Logits that prefer the *largest* value of every component (often invalid early in an episode)."""

    def __init__(self, split: bool) -> None:
        super().__init__()
        self.split = split
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, obs):
        b = obs["progress"].shape[0]
        heads = [self.scale * torch.arange(n, dtype=torch.float32).expand(b, n) for n in NVEC.tolist()]
        return heads if self.split else torch.cat(heads, 1)


@pytest.mark.parametrize("split", [True, False])
def test_torch_policy_controller_takes_the_best_valid_value(split: bool) -> None:
    controller = TorchPolicyController(FixedLogits(split))
    env = vector_env()
    obs, _ = env.reset(seed=0)
    masks = env.action_masks()
    actions = controller.act(obs, masks)
    # reference: the largest valid value of each component
    expected = np.array([[np.nonzero(m[o:o + n])[0].max() for o, n in zip(OFFSETS, NVEC)] for m in masks])
    np.testing.assert_array_equal(actions, expected)
    assert (actions[:, 2] == 0).all()  # empty memory: no retrieval possible
    np.testing.assert_array_equal(controller.act(obs), np.tile(NVEC - 1, (2, 1)))  # unmasked: the largest
    rollout([controller], steps=20)


def test_torch_policy_controller_checks_shapes() -> None:
    controller = TorchPolicyController(lambda obs: torch.zeros(2, 7))
    obs, _ = vector_env().reset(seed=0)
    with pytest.raises(ValueError, match="sum\\(nvec\\)"):
        controller.act(obs)


# ---------------------------------------------------------------------- imitation (behaviour cloning)
def test_demonstrations_record_the_teachers_actions_and_discounted_returns() -> None:
    env = vector_env()
    demos = collect_demonstrations(make_controller("update"), env, steps=65, gamma=0.9, seed=5)
    # 33 rounds: two whole episodes per sub-env (15 steps each) and a cut-off third
    assert len(demos) == 66 and demos.episodes == 4 and demos.observations["wm_age"].shape == (66, 8)
    assert demos.masks.shape == (66, 2 * 8 + 12) and is_valid(demos.actions, demos.masks).all()
    again = rollout([make_controller("update")], steps=33, seed=5)[0]  # the same teacher, the same streams
    np.testing.assert_array_equal(demos.actions, again.reshape(-1, 5))
    rewards, dones, returns = (a.reshape(33, 2) for a in (demos.rewards, demos.dones, demos.returns))
    last = np.nonzero(dones[:, 0])[0][-1]
    assert dones.sum() == 4 and (dones[:, 0] == dones[:, 1]).all() and last < 32
    for i in range(2):
        expected, running = np.full(33, np.nan), np.nan
        for t in range(32, -1, -1):
            running = rewards[t, i] if dones[t, i] else rewards[t, i] + 0.9 * running
            expected[t] = running
        np.testing.assert_allclose(returns[:, i], expected)
    assert np.isnan(returns[last + 1:]).all() and np.isfinite(returns[: last + 1]).all()  # the cut-off episode
    streams = demos.streams.reshape(33, 2)  # one stream per episode, a new one after each end
    changes = streams[1:] != streams[:-1]
    np.testing.assert_array_equal(changes, dones[:-1])


def test_imitation_makes_a_new_policy_act_like_its_teacher() -> None:
    config = small_config("ppo", total_timesteps=0, imitate="update", imitation_steps=2048, imitation_epochs=10,
                      batch_size=64, policy_kwargs={"net_arch": [64, 64]})
    untrained = train_controller(dataclasses.replace(config, imitate="", total_timesteps=1))
    model, stats = fit_controller(config)
    assert model.num_timesteps == 0 and stats["demonstrations"] == 2048
    assert stats["streams"] > 10 and 0 < stats["holdout_rows"] < 2048 / 3  # whole streams held out
    assert 1 <= stats["epochs"] <= 10  # the epoch of the lowest held-out loss
    assert stats["holdout_agreement"] > 0.95 and stats["holdout_policy_loss"] < stats["train_policy_loss"] + 0.5
    teacher, cloned, before = rollout([make_controller("update"), SB3Controller(model), SB3Controller(untrained)],
                                      steps=48, seed=99)  # other streams than the demonstrations
    assert (cloned == teacher).all(-1).mean() > 0.9
    assert (before == teacher).all(-1).mean() < 0.5  # the agreement is learnt, not the start


def test_dagger_demonstrations_follow_the_driver_and_carry_the_teachers_labels() -> None:
    # the driver (no memory) acts; the teacher (write_all) only labels: it would write every chunk, the memory
    # stays empty, and the returns and accuracy are those of the driver's episodes
    driven = collect_demonstrations(make_controller("write_all"), vector_env(), steps=64, gamma=0.9, seed=5,
                                    driver=make_controller("none"))
    own = collect_demonstrations(make_controller("none"), vector_env(), steps=64, gamma=0.9, seed=5)
    assert (driven.actions[:, 0] > 0).all() and (own.actions == 0).all()
    assert (driven.observations["wm_occupied"] == 0).all()
    np.testing.assert_array_equal(driven.rewards, own.rewards)
    np.testing.assert_array_equal(driven.streams, own.streams)
    assert driven.accuracy == own.accuracy and driven.driver == "none" and own.driver == ""
    written = collect_demonstrations(make_controller("write_all"), vector_env(), steps=64, gamma=0.9, seed=6)
    assert (written.observations["wm_occupied"] > 0).any()  # the teacher acting: its writes are in memory
    both = Demonstrations.concatenate([written, driven])
    assert len(both) == 2 * 64 and both.episodes == written.episodes + driven.episodes and both.driver == "none"
    np.testing.assert_array_equal(both.actions[64:], driven.actions)
    np.testing.assert_array_equal(both.observations["wm_occupied"][:64], written.observations["wm_occupied"])
    with pytest.raises(ValueError, match="different teachers"):
        Demonstrations.concatenate([own, driven])  # 'none' and 'write_all' labelled them
    with pytest.raises(ValueError, match="no demonstrations"):
        Demonstrations.concatenate([])


def test_dagger_rounds_run_on_the_clones_own_states() -> None:
    config = small_config("ppo", total_timesteps=0, imitate="update", imitation_steps=512, imitation_epochs=2,
                          batch_size=64, dagger_rounds=2)
    stats = fit_controller(config).imitation_stats
    plain = fit_controller(dataclasses.replace(config, dagger_rounds=0)).imitation_stats
    assert stats["demonstrations"] == 3 * 512 and plain["demonstrations"] == 512  # two rounds' steps aggregated
    assert stats["teacher_accuracy"] == plain["teacher_accuracy"]  # the teacher's own, not the aggregate's
    assert 0.0 <= stats["dagger_1_policy_accuracy"] <= 1.0 and 0.0 <= stats["dagger_2_policy_accuracy"] <= 1.0
    with pytest.raises(ValueError, match="dagger_rounds needs imitate"):
        small_config("ppo", dagger_rounds=1)
    with pytest.raises(ValueError, match="dagger_rounds must be"):
        small_config("ppo", imitate="update", dagger_rounds=-1)


def test_imitation_is_logged_and_refused_where_it_cannot_apply(tmp_path) -> None:
    config = small_config("maskable_ppo", total_timesteps=64, imitate="update", imitation_steps=256,
                          imitation_epochs=1, tensorboard_log=str(tmp_path))
    model, stats = fit_controller(config)
    assert model.num_timesteps >= 64 and 0.0 <= stats["train_agreement"] <= 1.0
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (run,) = glob.glob(str(tmp_path / "maskable_ppo_*"))
    events = EventAccumulator(run)
    events.Reload()
    assert {"imitation/holdout_agreement", "imitation/train_policy_loss"} <= set(events.Tags()["scalars"])
    with pytest.raises(ValueError, match="imitate must be"):
        small_config("ppo", imitate="copy_everything")
    with pytest.raises(ValueError, match="recurrent_ppo"):
        small_config("recurrent_ppo", imitate="update")
    with pytest.raises(ValueError, match="total_timesteps"):
        small_config("ppo", total_timesteps=0)
    with pytest.raises(ValueError, match="new model only"):
        train_controller(small_config("maskable_ppo", imitate="update"), model=model)
    with pytest.raises(ValueError, match="steps must be"):
        collect_demonstrations(make_controller("update"), vector_env(), steps=0, gamma=0.9)
