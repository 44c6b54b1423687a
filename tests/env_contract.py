"""The interface test every ``AHMMemory`` environment must pass (a reusable mixin, as dm_env's test suite).

Subclass :class:`EnvContract` in a test module, name the class ``Test...`` and
implement :meth:`EnvContract.make_env` (keyword overrides on top of a small,
fast configuration); every ``test_*`` method below then runs for it::

    class TestMyEnv(EnvContract):
        def make_env(self, **overrides):
            return gymnasium.make("AHMMemory-MQAR-v0", **{"seq_len": 2048, "chunk_size": 64, **overrides})

Each test asserts a property that could fail: the two env checkers pass without
warnings, rollouts are reproducible, observations stay in their space, episodes
have their documented length, every action of the declared space is legal
(masked-invalid components are counted no-ops; the strict mode raises clear
errors), and ground truth does not reach the observation.
"""

from __future__ import annotations

import copy
import pickle
import warnings
from typing import Any

import gymnasium
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env as gymnasium_check_env
from gymnasium.utils.env_checker import data_equivalence
from stable_baselines3.common.env_checker import check_env as sb3_check_env

import ahm.envs.episode_batch as memory_env  # _annotate, the ground-truth hook, lives with EpisodeBatch
from ahm.envs.config import INVALID_ACTION_PENALTY
from ahm.envs.spaces import ActionLayout


def valid_action(env: gymnasium.Env) -> np.ndarray:
    """A uniformly random valid action (the action space's generator, the env's current mask)."""
    return env.action_space.sample(mask=env.unwrapped.action_mask_tuple())


def any_action(env: gymnasium.Env, rng: np.random.Generator) -> np.ndarray:
    """A uniformly random element of the declared ``MultiDiscrete`` space, ignoring the masks (what a generic
    client sends)."""
    return rng.integers(0, env.action_space.nvec).astype(np.int64)


def masks_of(env: gymnasium.Env) -> np.ndarray:
    """The env's flat action mask, reached through its wrappers the way Gymnasium 1.x and sb3-contrib do."""
    return env.get_wrapper_attr("action_masks")()


def unmasked_rollout(env: gymnasium.Env, seed: int, actions: list[np.ndarray]) -> list[tuple[Any, ...]]:
    """Transitions of ``reset(seed=seed)`` then ``actions`` (resetting without a seed after an episode ends)."""
    out: list[tuple[Any, ...]] = [(*env.reset(seed=seed), 0.0, False, False)]
    for action in actions:
        obs, reward, terminated, truncated, info = env.step(action)
        out.append((obs, info, reward, terminated, truncated))
        if terminated or truncated:
            out.append((*env.reset(), 0.0, False, False))
    return out


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
        env = self.make_env(invalid_actions="raise")  # the strict mode (the default runs them as counted no-ops)
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

    def test_every_action_of_the_declared_space_is_legal(self):
        """Unmasked actions run: each masked-invalid component is the no-op 0 (the step equals a twin stepped
        with the masked action), flagged in info["invalid_components"] and counted in info["memory"]."""
        env, twin = self.make_env(max_steps=24), self.make_env(max_steps=24)
        env.reset(seed=3)
        twin.reset(seed=3)
        with pytest.raises(ValueError, match=r"retrieve\) = 4 .*outside the action space"):
            env.step(np.array([0, 0, 4, 0, 0]))  # not in the space: refused in every mode, nothing changed
        layout = ActionLayout.from_nvec(env.action_space.nvec)
        rng = np.random.default_rng(0)
        sent_invalid = 0
        for step in range(24):
            action, mask = any_action(env, rng), masks_of(env)
            invalid = ~layout.valid(action[None], mask[None])[0]
            sent_invalid += int(invalid.sum())
            got = env.step(action)
            want = twin.step(layout.noop_invalid(action[None], mask[None])[0])
            assert np.array_equal(got[4]["invalid_components"], invalid), f"step {step}"
            assert got[4]["memory"]["invalid_noops"] == sent_invalid, f"step {step}: not the running count"
            assert want[4]["memory"]["invalid_noops"] == 0 and not want[4]["invalid_components"].any()
            assert data_equivalence(got[0], want[0], exact=True) and got[1] == want[1], f"step {step}"
            assert env.observation_space.contains(got[0])
            if got[2] or got[3]:
                break
        assert sent_invalid > 0  # the random actions did hit invalid components

    def test_penalty_mode_charges_each_invalid_component_as_a_logged_term(self):
        plain, penalised = self.make_env(), self.make_env(invalid_actions="penalty")
        plain.reset(seed=4)
        penalised.reset(seed=4)
        rng = np.random.default_rng(1)
        charged = 0
        for _ in range(12):
            action = any_action(plain, rng)
            p, q = plain.step(action), penalised.step(action)
            n_invalid = int(q[4]["invalid_components"].sum())
            charged += n_invalid
            assert q[4]["reward_terms_raw"]["invalid_action"] == n_invalid
            assert q[1] == pytest.approx(p[1] + INVALID_ACTION_PENALTY * n_invalid, abs=1e-12)
            assert q[1] == pytest.approx(sum(q[4]["reward_terms"].values()), abs=1e-12)
            assert "invalid_action" not in p[4]["reward_terms"]
            if p[2] or p[3]:
                break
        assert charged > 0

    def test_masks_reach_through_the_wrappers(self):
        env = self.make_env()
        env.reset(seed=0)
        assert env is not env.unwrapped  # gymnasium.make wraps it
        env.step(np.array([1, 0, 0, 0, 0]))
        assert np.array_equal(masks_of(env), env.unwrapped.action_masks())
        parts = env.get_wrapper_attr("action_mask_tuple")()
        assert np.array_equal(np.concatenate(parts).astype(bool), masks_of(env)) and parts[2][1] == 1  # WM readable

    # ---------------------------------------------------------------- copies
    def test_copies_restore_an_identical_env(self):
        """A deepcopy and a pickle round trip, made mid-episode after LTM forgets filled a small LTM, step
        exactly as the original; their seeded resets equal a fresh env's."""
        env = self.make_env(ltm_capacity=3)
        rng = np.random.default_rng(5)
        env.reset(seed=9)
        for _ in range(14):  # writes that displace entries into the 3-slot LTM, and LTM forgets, at random
            env.step(any_action(env, rng))
        assert env.unwrapped._episodes.memory.ltm.count[0] > 0, "the history must leave LTM entries behind"
        copies = [copy.deepcopy(env), pickle.loads(pickle.dumps(env))]
        actions = [any_action(env, rng) for _ in range(40)]
        runs = [[env.step(a) for a in actions[:8]]] + [[c.step(a) for a in actions[:8]] for c in copies]
        for i, run in enumerate(runs[1:]):
            assert data_equivalence(runs[0], run, exact=True), f"copy {i} stepped differently from the original"
        fresh = unmasked_rollout(self.make_env(ltm_capacity=3), 21, actions[8:])
        for i, c in enumerate([env, *copies]):
            assert data_equivalence(unmasked_rollout(c, 21, actions[8:]), fresh, exact=True), \
                f"env {i} (0: the original) after reset(seed=21) differs from a fresh env's"

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
