"""Every controller on every registered env (single and vector), the rules of the heuristics, the oracle's
use of ground truth, and the Controller protocol's adapters."""

from __future__ import annotations

import gymnasium
import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from ahm.agents import (
    CONTROLLER_NAMES,
    FunctionController,
    as_controller,
    batch_info,
    batch_observation,
    make_controller,
    unbatch_action,
)
from ahm.agents.heuristics import LRUController, RandomController, WriteAllController, retrieve_from_available
from ahm.envs import ENV_SPECS, AHMMemoryVectorEnv

torch.set_num_threads(1)


def run_single(env_id: str, name: str, seed: int = 0) -> list[np.ndarray]:
    env = gymnasium.make(env_id, **ENV_SPECS[env_id].test_kwargs)
    ctrl = make_controller(name)
    ctrl.reset(1)
    obs, info = env.reset(seed=seed)
    start, actions, done = np.ones(1, dtype=bool), [], False
    while not done:
        a = ctrl.act(batch_observation(obs), env.unwrapped.action_masks()[None], batch_info(info), start)
        actions.append(unbatch_action(a))
        obs, _, terminated, truncated, info = env.step(actions[-1])  # raises on an invalid action
        start, done = np.zeros(1, dtype=bool), terminated or truncated
    return actions


@pytest.mark.parametrize("env_id", list(ENV_SPECS))
@pytest.mark.parametrize("name", CONTROLLER_NAMES)
def test_every_controller_runs_on_every_env(env_id, name):
    actions = run_single(env_id, name)
    assert len(actions) >= 1 and all(a.shape == (5,) for a in actions)


@pytest.mark.parametrize("name", CONTROLLER_NAMES)
def test_every_controller_runs_on_the_vector_env_through_autoresets(name):
    env = AHMMemoryVectorEnv(3, **{**ENV_SPECS["AHMMemory-Decoy-v0"].test_kwargs, "max_steps": 12})
    ctrl = make_controller(name)
    ctrl.reset(3)
    obs, _ = env.reset(seed=1)
    info = env.episodes.info()
    start, ended = np.ones(3, dtype=bool), 0
    for _ in range(30):
        step = env.step_arrays(ctrl.act(obs, env.action_masks(), info, start))
        obs, info, start = step.observation, step.info, step.terminated | step.truncated
        ended += int(start.sum())
    assert ended >= 3


def test_random_is_deterministic_in_its_seed():
    assert [a.tolist() for a in run_single("AHMMemory-v0", "random")] == \
        [a.tolist() for a in run_single("AHMMemory-v0", "random")]


@given(st.integers(1, 6), st.integers(1, 5), st.integers(0, 2**31 - 1))
def test_random_and_write_all_never_pick_a_masked_value(k, b, seed):
    rng = np.random.default_rng(seed)
    nvec = [k + 1, 2, 4, k + 1, 3]
    # masks as the env makes them (HierarchicalMemory.op_masks): writes and evictions always valid,
    # retrieval from non-empty levels, forgetting occupied slots / a non-empty LTM
    occupied = rng.random((b, k)) < 0.5
    wm_any, ltm_any = occupied.any(1), rng.random(b) < 0.5
    yes = np.ones((b, 1), dtype=bool)
    mask = np.concatenate([np.ones((b, k + 1), dtype=bool), np.ones((b, 2), dtype=bool),
                           np.stack([yes[:, 0], wm_any, ltm_any, wm_any & ltm_any], 1),
                           np.concatenate([yes, occupied], 1), np.stack([yes[:, 0], ltm_any, ltm_any], 1)], 1)
    obs = {"wm_occupied": occupied.astype(np.float32), "wm_age": rng.random((b, k)).astype(np.float32),
           "wm_similarity": rng.random((b, k)).astype(np.float32), "ltm_fill": ltm_any[:, None].astype(np.float32),
           "ssm_features": rng.random((b, 4)).astype(np.float32)}
    for ctrl in (RandomController(seed), WriteAllController()):
        a = ctrl.act(obs, mask)
        offsets = np.cumsum([0, *nvec[:-1]])
        for j in range(5):
            assert mask[np.arange(b), offsets[j] + a[:, j]].all(), (ctrl.name, j)


def test_fifo_writes_first_free_then_oldest():
    obs = {"wm_occupied": np.array([[1, 0, 1], [1, 1, 1]], dtype=np.float32),
           "wm_age": np.array([[0.5, 0, 0.1], [0.2, 0.9, 0.4]], dtype=np.float32),
           "ltm_fill": np.zeros((2, 1), dtype=np.float32)}
    a = WriteAllController().act(obs)
    assert a[:, 0].tolist() == [2, 2]  # slot 1 (free) / slot 1 (oldest), as write_slot + 1
    assert a[:, 1].tolist() == [1, 1] and a[:, 2].tolist() == [1, 1]


def test_lru_replaces_the_least_recently_used_slot():
    lru = LRUController()
    occ = np.ones((1, 3), dtype=np.float32)
    base = {"wm_occupied": occ, "wm_age": np.zeros((1, 3), dtype=np.float32), "ltm_fill": np.zeros((1, 1))}
    # slot 2 is read (most similar) at every step, so slot 0 or 1 becomes least recently used; never slot 2
    for _ in range(4):
        a = lru.act({**base, "wm_similarity": np.array([[0.0, 0.1, 0.9]], dtype=np.float32)})
        assert a[0, 0] - 1 != 2


def test_retrieve_reads_every_non_empty_level():
    obs = {"wm_occupied": np.array([[1, 0], [0, 0], [1, 1], [0, 0]], dtype=np.float32),
           "ltm_fill": np.array([[0.0], [0.5], [0.1], [0.0]], dtype=np.float32)}
    assert retrieve_from_available(obs, None).tolist() == [1, 2, 3, 0]


@pytest.mark.parametrize("env_id", ["AHMMemory-v0", "AHMMemory-MQAR-v0", "AHMMemory-Forget-v0", "AHMMemory-Decoy-v0"])
def test_oracle_stores_targets_only_and_reads_the_queried_fact(env_id):
    env = gymnasium.make(env_id, **ENV_SPECS[env_id].test_kwargs)
    oracle = make_controller("oracle")
    for seed in range(3):
        obs, info = env.reset(seed=seed)
        done, queries = False, 0
        while not done:
            gt = info["ground_truth"]
            a = unbatch_action(oracle.act(batch_observation(obs), env.unwrapped.action_masks()[None], batch_info(info)))
            assert (a[0] > 0) == (gt["fact_kind"] == 0), "writes exactly the target facts"
            if gt["query_fact_id"] >= 0:
                queries += 1
                assert gt["query_fact_in_wm"] or gt["query_fact_in_ltm"], "the queried fact was stored"
                assert a[2] in ((1,) if gt["query_fact_in_wm"] else (2,)), "and is read from where it is"
            obs, _, terminated, truncated, info = env.step(a)
            done = terminated or truncated
        assert queries >= 1


def test_oracle_refuses_to_act_without_ground_truth():
    with pytest.raises(ValueError, match="ground_truth"):
        make_controller("oracle").act({"wm_occupied": np.zeros((1, 2)), "wm_age": np.zeros((1, 2))}, None, None)


def test_protocol_adapters():
    ctrl = as_controller(lambda obs, mask: np.zeros((len(obs["progress"]), 5), dtype=np.int64))
    assert isinstance(ctrl, FunctionController)
    assert ctrl.act({"progress": np.zeros((2, 1))}).shape == (2, 5)
    bad = FunctionController(lambda obs, mask: np.zeros((1, 4)), name="bad")
    with pytest.raises(ValueError, match="shape"):
        bad.act({"progress": np.zeros((1, 1))})
    with pytest.raises(TypeError, match="cannot use"):
        as_controller(42)
    with pytest.raises(ValueError, match="unknown controller"):
        make_controller("no-such-controller")
