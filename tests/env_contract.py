"""The interface test every ``AHMMemory`` environment must pass (a reusable mixin, as dm_env's test suite).

Subclass :class:`EnvContract` in a test module, name the class ``Test...`` and
implement :meth:`EnvContract.make_env` (keyword overrides on top of a small,
fast configuration); every ``test_*`` method below then runs for it::

    class TestMyEnv(EnvContract):
        def make_env(self, **overrides):
            return gymnasium.make("AHMMemory-MQAR-v0", **{"seq_len": 2048, "chunk_size": 64, **overrides})

Each test asserts a property that could fail: the two env checkers pass without
warnings, rollouts are reproducible, observations stay in their space, episodes
have their documented length, invalid actions raise clear errors, and ground
truth does not reach the observation.
"""

from __future__ import annotations

import warnings
from typing import Any

import gymnasium
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env as gymnasium_check_env
from gymnasium.utils.env_checker import data_equivalence
from stable_baselines3.common.env_checker import check_env as sb3_check_env

import ahm.envs.episode_batch as memory_env  # _annotate, the ground-truth hook, lives with EpisodeBatch


def valid_action(env: gymnasium.Env) -> np.ndarray:
    """A uniformly random valid action (the action space's generator, the env's current mask)."""
    return env.action_space.sample(mask=env.unwrapped.action_mask_tuple())


def rollout(env: gymnasium.Env, seed: int | None, action_seed: int = 0, steps: int | None = None,
            episodes: int = 1) -> list[tuple[Any, ...]]:
    """Transitions (obs, reward, terminated, truncated, info) of ``episodes`` episodes from ``reset(seed=seed)``
    (later episodes reset without a seed), with masked random actions; the reset is the first entry."""
    env.action_space.seed(action_seed)
    out: list[tuple[Any, ...]] = []
    for e in range(episodes):
        obs, info = env.reset(seed=seed if e == 0 else None)
        out.append((obs, 0.0, False, False, info))
        n = 0
        while steps is None or n < steps:
            obs, reward, terminated, truncated, info = env.step(valid_action(env))
            out.append((obs, reward, terminated, truncated, info))
            n += 1
            if terminated or truncated:
                break
    return out


class EnvContract:
    """The shared interface test; subclasses implement :meth:`make_env`."""

    def make_env(self, **overrides: Any) -> gymnasium.Env:
        raise NotImplementedError("EnvContract subclasses implement make_env(**overrides)")

    # ---------------------------------------------------------------- checkers
    def test_passes_the_gymnasium_env_checker_without_warnings(self):
        env = self.make_env()
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            gymnasium_check_env(env.unwrapped)

    def test_passes_the_sb3_env_checker_without_warnings(self):
        env = self.make_env()
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            sb3_check_env(env.unwrapped, warn=True)

    # ---------------------------------------------------------------- determinism
    def test_same_seed_gives_identical_rollouts_on_two_instances(self):
        a = rollout(self.make_env(), seed=7, episodes=2)
        b = rollout(self.make_env(), seed=7, episodes=2)
        assert len(a) == len(b)
        for i, (ta, tb) in enumerate(zip(a, b)):
            assert data_equivalence(ta, tb, exact=True), f"transition {i} differs between two instances"
        c = rollout(self.make_env(), seed=8, episodes=1)
        assert c[0][4]["ground_truth"]["stream_seed"] != a[0][4]["ground_truth"]["stream_seed"]

    # ---------------------------------------------------------------- spaces
    def test_observations_stay_inside_their_space(self):
        env = self.make_env()
        space = env.observation_space
        assert isinstance(space, gymnasium.spaces.Dict)
        for box in space.values():
            assert isinstance(box, gymnasium.spaces.Box) and box.dtype == np.float32
            assert np.isfinite(box.low).all() and np.isfinite(box.high).all()
        for i, (obs, *_) in enumerate(rollout(env, seed=1)):
            assert space.contains(obs), f"observation {i} is outside the space: {obs}"

    def test_action_masks_have_the_flat_maskable_ppo_layout(self):
        env = self.make_env()
        env.reset(seed=0)
        nvec = env.action_space.nvec
        mask = env.unwrapped.action_masks()
        assert mask.dtype == bool and mask.shape == (int(nvec.sum()),)
        parts = env.unwrapped.action_mask_tuple()
        assert [len(p) for p in parts] == nvec.tolist()
        assert np.array_equal(np.concatenate(parts).astype(bool), mask)
        # With an empty memory: every write is valid, retrieving / forgetting is not.
        assert parts[0].all() and parts[1].all()
        assert parts[2].tolist() == [1, 0, 0, 0] and parts[3].tolist() == [1] + [0] * (nvec[3] - 1)
        assert parts[4].tolist() == [1, 0, 0, 0]

    # ---------------------------------------------------------------- episodes
    def test_episodes_have_the_documented_length(self):
        env = self.make_env()
        steps = rollout(env, seed=2)
        stream = env.unwrapped.stream
        length = stream.last_query_chunk + 1
        assert len(steps) - 1 == length == steps[-1][4]["episode_steps"]
        assert steps[-1][2] is True and steps[-1][3] is False
        assert not any(t[2] or t[3] for t in steps[:-1])
        with pytest.raises(RuntimeError, match="reset"):
            env.unwrapped.step(np.zeros(5, dtype=np.int64))

    def test_truncates_at_max_steps(self):
        env = self.make_env(max_steps=3)
        steps = rollout(env, seed=2)
        assert len(steps) - 1 == 3 and steps[-1][3] is True and steps[-1][2] is False

    def test_reward_is_the_sum_of_the_logged_terms(self):
        for _, reward, _, _, info in rollout(self.make_env(), seed=4)[1:]:
            assert set(info["reward_terms"]) == {"task_outcome", "retrieval_gain", "store_then_use", "memory_cost",
                                                 "information_gain", "discard"}
            assert reward == pytest.approx(sum(info["reward_terms"].values()), abs=1e-12)

    # ---------------------------------------------------------------- invalid actions
    def test_invalid_actions_raise_a_clear_error(self):
        env = self.make_env()
        env.reset(seed=0)
        k = env.action_space.nvec[0] - 1
        for action, component in (([0, 0, 1, 0, 0], "retrieve"), ([0, 0, 0, 1, 0], "forget_slot"),
                                  ([0, 0, 0, 0, 2], "ltm_forget")):
            with pytest.raises(ValueError, match=rf"component \d \({component}\).*invalid now.*action_masks"):
                env.step(np.array(action))
        with pytest.raises(ValueError, match=r"write_slot\) = .* outside the action space"):
            env.step(np.array([k + 1, 0, 0, 0, 0]))
        with pytest.raises(ValueError, match="shape"):
            env.step(np.array([0, 0, 0]))
        obs, *_ = env.step(np.array([1, 0, 0, 0, 0]))  # nothing changed above: the env still steps
        assert obs["wm_occupied"][0] == 1.0

    # ---------------------------------------------------------------- honesty
    def test_ground_truth_does_not_reach_the_observation(self, monkeypatch):
        """Scrambling every answer and fact of the episode changes rewards / info, never the observations."""
        plain = rollout(self.make_env(), seed=5)
        real = memory_env._annotate

        def scrambled(stream):
            a = real(stream)
            shift = lambda x: np.where(x >= 0, (x + 1) % stream.vocab_size, x)
            return a._replace(target=shift(a.target), fact_at=np.roll(a.fact_at, 1), fact_kind=np.roll(a.fact_kind, 1))

        monkeypatch.setattr(memory_env, "_annotate", scrambled)
        changed = rollout(self.make_env(), seed=5)
        assert len(plain) == len(changed)
        for i, (p, c) in enumerate(zip(plain, changed)):
            assert data_equivalence(p[0], c[0], exact=True), f"observation {i} depends on the ground truth"
        assert not all(data_equivalence(p[4]["ground_truth"], c[4]["ground_truth"]) for p, c in zip(plain, changed))
        keys = set(plain[0][0])
        assert keys == set(memory_env.OBSERVATION_KEYS)
