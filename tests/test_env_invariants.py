"""AHMMemory env: any action of the declared space, with resets and copies in between, keeps the memory invariants.

Issue 17: every element of ``MultiDiscrete([K + 1, 2, 4, K + 1, 4])`` is a legal action;
a component the mask marks invalid now is a no-op counted in ``info["memory"]["invalid_noops"]``,
and a deepcopied or pickled env is the same env. Hypothesis draws programs of steps (each
component an integer in ``[0, nvec)``, never looked up in the masks), seeded resets and
``copy.deepcopy`` / pickle round trips; after every reset and step, of the env and of its
latest copy, the public state must satisfy:

* **occupancy**: ``info["memory"]["wm_entries"]`` is the number of occupied slots in the observation,
  and empty slots show age and similarities 0 (the docstring's "0 if empty");
* **capacity**: ``ltm_fill`` in [0, 1], ``ltm_entries = ltm_fill * capacity <= capacity``;
* **bytes**: ``info["memory"]["bytes"]`` is the entries held times their per-entry cost (a WM entry: key and value
  in float32; an LTM entry: the codecs' key and value codes), so 0 when empty;
* **no empty slot read**: the mask is what the observation implies (retrieve / forget only from a non-empty
  level or slot), and the operation counters grow exactly by the operations that the mask allowed: a
  retrieval, forget or LTM forget the mask refused is a no-op and counted in ``invalid_noops``;
* **copies**: the original and its copy, given the same actions and resets, return identical
  (observation, reward, terminated, truncated, info) at every step, and a reset empties the memory of both.

Small sizes keep it fast: 1,024 tokens in chunks of 64 (16 steps an episode), K = 3 slots and an
LTM of 3 entries (it overflows within an episode), the random default backbone.
"""

from __future__ import annotations

import copy
import pickle
from typing import Any

import gymnasium
import numpy as np
import torch
from gymnasium.utils.env_checker import data_equivalence
from hypothesis import Phase, currently_in_test_context, event, given, settings
from hypothesis import strategies as st

import ahm  # noqa: F401 - registers the ids
from ahm.backbone import RETRIEVE_BOTH, RETRIEVE_LTM, RETRIEVE_WM
from ahm.envs.episode_batch import OP_COUNTERS
from ahm.envs.spaces import ActionLayout

K, CAPACITY = 3, 3
LAYOUT = ActionLayout(K)
ENV_KWARGS = {"seq_len": 1024, "chunk_size": 64, "wm_slots": K, "ltm_capacity": CAPACITY, "backbone": "random"}


def component(n: int, rare: bool = False) -> st.SearchStrategy[int]:
    """Any value in [0, n); ``rare``: 0 (the no-op) three times in four, so forgets do not keep the memory empty
    and the LTM (capacity 3) fills and overflows."""
    return st.one_of(st.just(0), st.just(0), st.just(0), st.integers(0, n - 1)) if rare else st.integers(0, n - 1)


ACTIONS = st.tuples(*(component(int(n), rare=j >= 3) for j, n in enumerate(LAYOUT.nvec)))
# One program op: (kind, action, reset seed, copier); kind 0 resets (seeded), 1 copies, anything else steps,
# so 1 op in 20 is a seeded reset and 1 in 20 a copy; episodes (16 steps) also end and reset unseeded.
OPS = st.tuples(st.integers(0, 19), ACTIONS, st.integers(0, 3), st.sampled_from(["deepcopy", "pickle"]))


def note(what: str) -> None:
    """Count ``what`` in hypothesis's statistics (``--hypothesis-show-statistics``: how often a program reached it)."""
    if currently_in_test_context():
        event(what)


def make_env() -> gymnasium.Env:
    return gymnasium.make("AHMMemory-v0", **ENV_KWARGS)


def copy_env(env: gymnasium.Env, how: str) -> gymnasium.Env:
    return copy.deepcopy(env) if how == "deepcopy" else pickle.loads(pickle.dumps(env))


def entry_bytes(env: gymnasium.Env) -> tuple[int, int]:
    """(bytes of one WM entry, bytes of one LTM entry), from the backbone's public config and codecs."""
    model = env.unwrapped.model
    wm = (model.config.key_dim + model.config.resolved_value_dim) * torch.finfo(torch.float32).bits // 8
    ltm = model.key_codec.bytes_per_vector + model.value_codec.bytes_per_vector
    return wm, ltm


def mask_of_observation(obs: dict[str, np.ndarray]) -> np.ndarray:
    """(2 K + 12,) bool: the valid values that the observation implies (retrieve / forget need entries)."""
    occupied = obs["wm_occupied"] > 0.5
    wm_any, ltm_any = bool(occupied.any()), bool(obs["ltm_fill"][0] > 0)
    parts = [np.ones(K + 1, bool), np.ones(2, bool), np.array([True, wm_any, ltm_any, wm_any and ltm_any]),
             np.concatenate([[True], occupied]), np.array([True, ltm_any, ltm_any, ltm_any])]
    return LAYOUT.join_masks(parts)


def expected_counts(action: np.ndarray, mask: np.ndarray, occupied: np.ndarray) -> tuple[dict[str, int], int]:
    """The growth of each ``info["memory"]`` operation counter for ``action`` under ``mask``, and the number of
    invalid components (no-ops). Order within a step: retrieve, forget, evict-and-write (env docstring)."""
    effective = LAYOUT.noop_invalid(action[None], mask[None])[0]
    write, evict, retrieve, forget, ltm_forget = effective
    invalid = int(np.sum(effective != action))
    occupied = occupied.copy()
    if forget:
        occupied[forget - 1] = False
    displaced = bool(write) and bool(occupied[write - 1])
    counts = {"writes": int(write > 0), "moves_to_ltm": int(displaced and evict == 1),
              "drops": int(displaced and evict == 0),
              "retrievals_wm": int(retrieve in (RETRIEVE_WM, RETRIEVE_BOTH)),
              "retrievals_ltm": int(retrieve in (RETRIEVE_LTM, RETRIEVE_BOTH)),
              "forgets_wm": int(forget > 0), "forgets_ltm": int(ltm_forget > 0)}
    return counts, invalid


def assert_memory_invariants(env: gymnasium.Env, obs: dict[str, np.ndarray], info: dict[str, Any],
                             where: str = "") -> None:
    """Occupancy, capacity and bytes of the state that ``obs`` and ``info`` describe (module doc)."""
    assert env.observation_space.contains(obs), f"an observation left its space {where}"
    memory = info["memory"]
    occupied = obs["wm_occupied"] > 0.5
    assert memory["wm_entries"] == occupied.sum() <= K, f"wm_entries {memory['wm_entries']}, " \
        f"wm_occupied {obs['wm_occupied']} {where}"
    for key in ("wm_age", "wm_similarity", "wm_key_similarity"):
        assert np.all(obs[key][~occupied] == 0), f"{key} of an empty slot is {obs[key][~occupied]}, not 0 {where}"
    fill = float(obs["ltm_fill"][0])
    assert 0.0 <= fill <= 1.0 and 0 <= memory["ltm_entries"] <= CAPACITY, f"{fill}, {memory} {where}"
    assert round(fill * CAPACITY) == memory["ltm_entries"], \
        f"ltm_fill {fill} x capacity {CAPACITY} != ltm_entries {memory['ltm_entries']} {where}"
    if memory["ltm_entries"] == 0:
        assert obs["ltm_key_similarity"][0] == 0 and np.all(obs["ltm_topk_similarity"] == 0), \
            f"LTM similarities of an empty LTM {where}"
    wm_bytes, ltm_bytes = entry_bytes(env)
    assert memory["bytes"] == memory["wm_entries"] * wm_bytes + memory["ltm_entries"] * ltm_bytes, \
        f"bytes {memory['bytes']} != {memory['wm_entries']} x {wm_bytes} + {memory['ltm_entries']} x {ltm_bytes} " \
        f"{where}"


def assert_fresh_episode(env: gymnasium.Env, obs: dict[str, np.ndarray], info: dict[str, Any],
                         where: str = "") -> None:
    """A reset starts from an empty memory with zeroed counters (docstring, "Starting State")."""
    memory = info["memory"]
    assert memory["wm_entries"] == 0 and memory["ltm_entries"] == 0 and memory["bytes"] == 0, \
        f"reset kept memory: {memory} {where}"
    assert float(obs["ltm_fill"][0]) == 0.0 and not obs["wm_occupied"].any(), f"reset kept memory {where}"
    assert all(memory[name] == 0 for name in (*OP_COUNTERS, "invalid_noops")), f"{memory} {where}"
    assert_memory_invariants(env, obs, info, where)


def assert_same_transition(a: tuple, b: tuple, where: str) -> None:
    for name, x, y in zip(("observation", "reward", "terminated", "truncated", "info"), a, b):
        assert data_equivalence(x, y, exact=True), f"the copy's {name} differs from the original's {where}"


def run_program(program: list[tuple], first_seed: int) -> None:
    """Run ``program`` on a new env and on its latest copy (if any), checking every invariant after every op."""
    env = make_env()
    twin: gymnasium.Env | None = None
    obs, info = env.reset(seed=first_seed)
    assert_fresh_episode(env, obs, info, "(original, first reset)")
    for i, (kind, action, seed, how) in enumerate(program):
        where = f"at op {i} ({program[: i + 1]})"
        if kind == 1:
            twin = copy_env(env, how)
            note(f"copied by {how}")
            continue
        if kind == 0:
            out = env.reset(seed=seed)
            assert_fresh_episode(env, *out, f"(original) {where}")
            if twin is not None:
                twin_out = twin.reset(seed=seed)
                assert_fresh_episode(twin, *twin_out, f"(copy) {where}")
                assert_same_transition(out, twin_out, where)
            obs, info = out
            continue
        action = np.asarray(action, dtype=np.int64)
        mask = env.get_wrapper_attr("action_masks")()
        assert np.array_equal(mask, mask_of_observation(obs)), f"the mask disagrees with the observation {where}"
        counts, invalid = expected_counts(action, mask, obs["wm_occupied"] > 0.5)
        before = info["memory"]
        step = env.step(action)
        obs, _, terminated, truncated, info = step
        assert_memory_invariants(env, obs, info, f"(original) {where}")
        for name, grown in counts.items():
            assert info["memory"][name] - before[name] == grown, \
                f"{name} grew by {info['memory'][name] - before[name]}, expected {grown}: action {action.tolist()} " \
                f"with mask {LAYOUT.split_mask(mask)} {where}"
        assert info["memory"]["invalid_noops"] - before["invalid_noops"] == invalid, \
            f"invalid_noops grew by {info['memory']['invalid_noops'] - before['invalid_noops']}, expected {invalid} " \
            f"(components of {action.tolist()} the mask refused) {where}"
        if twin is not None:
            twin_step = twin.step(action)
            assert_memory_invariants(twin, twin_step[0], twin_step[4], f"(copy) {where}")
            assert_same_transition(step, twin_step, where)
        if info["memory"]["ltm_entries"] == CAPACITY:
            note("the LTM was full")
        if terminated or truncated:  # unseeded: both draw the next stream from their own (copied) np_random
            note("an episode ended")
            obs, info = env.reset()
            assert_fresh_episode(env, obs, info, f"(original, after the episode ended) {where}")
            if twin is not None:
                twin_out = twin.reset()
                assert_fresh_episode(twin, *twin_out, f"(copy, after the episode ended) {where}")
                assert_same_transition((obs, info), twin_out, f"after the episode ended {where}")


@settings(max_examples=60, deadline=None, phases=(Phase.explicit, Phase.reuse, Phase.generate))
# No shrinking: a failure names its program and op already, and shrinking one took minutes.
@given(program=st.lists(OPS, min_size=20, max_size=60), first_seed=st.integers(0, 3))
def test_declared_actions_resets_and_copies_keep_memory_invariants(program, first_seed):
    run_program(program, first_seed)


def test_every_declared_action_is_legal_and_invalid_components_are_counted_noops():
    """Deterministic companion of the hypothesis test: on an empty memory, every retrieve / forget value is a
    no-op counted once per refused component, and the memory stays empty."""
    env = make_env()
    obs, info = env.reset(seed=0)
    action = np.array([0, 1, RETRIEVE_BOTH, 1, 1])  # retrieve both, forget slot 0, LTM forget: all refused
    obs, _, _, _, info = env.step(action)
    assert info["memory"]["invalid_noops"] == 3, info["memory"]
    assert info["memory"]["retrievals_wm"] == info["memory"]["retrievals_ltm"] == 0
    assert info["memory"]["forgets_wm"] == info["memory"]["forgets_ltm"] == 0
    assert info["memory"]["wm_entries"] == info["memory"]["ltm_entries"] == info["memory"]["bytes"] == 0


def test_copies_restart_identically_after_ltm_forgets():
    """The issue's failing history: fill and overflow the LTM, forget from it, copy, then seeded resets of the
    original and the copy are identical and empty (a stale LTM entry used to survive in the copy)."""
    fill = [(2, (s % K + 1, 1, 0, 0, 0), 0, "deepcopy") for s in range(2 * K + CAPACITY)]
    forget = [(2, (0, 0, RETRIEVE_LTM, 0, f), 0, "deepcopy") for f in (1, 2, 3)]
    for how in ("deepcopy", "pickle"):
        run_program([*fill, *forget, (1, (0,) * 5, 0, how), (0, (0,) * 5, 1, how), *fill[:4], (0, (0,) * 5, 2, how)],
                    first_seed=0)
