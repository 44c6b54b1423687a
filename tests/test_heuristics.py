"""``ahm.agents.heuristics``: every heuristic on every registered env (single and vector, row for row), the
rules of each (FIFO, LRU, surprise, dedupe), mask safety for arbitrary masks, and the oracle's use of ground truth.

The envs use the registry's ``test_kwargs`` with ``backbone="random"``: the controllers' contract does not depend
on the backbone's weights, and the random default keeps these tests independent of the shipped checkpoints
(tests/test_controllers.py runs the controllers on the default backbone).
"""

from __future__ import annotations

import gymnasium
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ahm.agents import CONTROLLER_NAMES, HEURISTICS, batch_info, batch_observation, make_controller, unbatch_action
from ahm.agents.heuristics import (
    DedupeController,
    LRUController,
    NoMemoryController,
    OracleController,
    RandomController,
    SurpriseController,
    UpdateController,
    WriteAllController,
    choose_write,
    component_masks,
    conform_to_mask,
    retrieve_from_available,
)
from ahm.envs import ENV_SPECS, AHMMemoryVectorEnv
from ahm.envs.streams import FACT_KINDS, TASKS, make_task

torch.set_num_threads(1)

STREAM_SEEDS = (11, 12, 13)
MASK_RESPECTING = ("random", "write_all", "lru", "surprise", "dedupe", "update")
"""Controllers that take only values their action mask allows, for any mask (``none`` always returns 0s)."""


def env_kwargs(env_id: str, **overrides) -> dict:
    return {**ENV_SPECS[env_id].test_kwargs, "backbone": "random", "stream_seeds": STREAM_SEEDS, **overrides}


def offsets(k: int) -> np.ndarray:
    return np.cumsum([0, k + 1, 2, 4, k + 1])


def allowed(mask: np.ndarray, actions: np.ndarray, k: int) -> np.ndarray:
    """(b, 5) bool: whether each chosen component value is allowed by the (b, 2 K + 12) mask."""
    b = len(actions)
    return mask[np.arange(b)[:, None], offsets(k)[None] + actions]


def run_single(env, name: str, stream_seed: int, **ctrl_kwargs) -> tuple[np.ndarray, list[dict], dict]:
    """One full episode of a fresh controller: (T, 5) actions, the infos it acted on, and the final info."""
    ctrl = make_controller(name, **ctrl_kwargs)
    ctrl.reset(1)
    obs, info = env.reset(options={"stream_seed": stream_seed})
    start, actions, infos, done = np.ones(1, dtype=bool), [], [], False
    k = env.unwrapped.config.wm_slots
    while not done:
        mask = env.unwrapped.action_masks()[None]
        a = ctrl.act(batch_observation(obs), mask, batch_info(info), start)
        assert a.shape == (1, 5) and a.dtype == np.int64
        assert allowed(mask, a, k).all(), (name, a)
        actions.append(unbatch_action(a))
        infos.append(info)
        obs, _, terminated, truncated, info = env.step(actions[-1])  # raises on an invalid action
        start, done = np.zeros(1, dtype=bool), terminated or truncated
    return np.array(actions), infos, info


def run_vector(env: AHMMemoryVectorEnv, name: str, extra_steps: int = 3) -> list[list[np.ndarray]]:
    """Every row's actions during its first episode, then ``extra_steps`` more steps across the autoresets."""
    ctrl = make_controller(name)
    ctrl.reset(env.num_envs)
    obs, info = env.reset(seed=0, options={"stream_seeds": list(STREAM_SEEDS)})
    start = np.ones(env.num_envs, dtype=bool)
    first = np.ones(env.num_envs, dtype=bool)
    per_row: list[list[np.ndarray]] = [[] for _ in range(env.num_envs)]
    after = 0
    while after < extra_steps:
        mask = env.action_masks()
        a = ctrl.act(obs, mask, info, start)
        assert a.shape == (env.num_envs, 5) and allowed(mask, a, env.config.wm_slots).all(), (name, a)
        for r in np.nonzero(first)[0]:
            per_row[r].append(a[r])
        step = env.step_arrays(a)  # raises on an invalid action
        obs, info, start = step.observation, step.info, step.terminated | step.truncated
        first &= ~start
        after += int(not first.any())
    return per_row


@pytest.fixture(scope="module")
def envs():
    """Per env id: a single env and a 3-env vector env on the same three streams (features cached after first use)."""
    cache: dict[str, tuple] = {}

    def get(env_id: str):
        if env_id not in cache:
            kw = env_kwargs(env_id)
            cache[env_id] = (gymnasium.make(env_id, **kw), AHMMemoryVectorEnv(3, **{**ENV_SPECS[env_id].kwargs, **kw}))
        return cache[env_id]

    return get


@pytest.mark.parametrize("env_id", list(ENV_SPECS))
def test_every_heuristic_on_every_env_single_and_vector_row_for_row(env_id, envs):
    """Full episodes through gymnasium.make and AHMMemoryVectorEnv(3): valid actions (the env raises otherwise),
    and every deterministic controller acts on row r of the vector env exactly as on a single env with r's stream."""
    env, vec = envs(env_id)
    k = env.unwrapped.config.wm_slots
    for name in CONTROLLER_NAMES:
        singles = {s: run_single(env, name, s) for s in STREAM_SEEDS}
        vector = run_vector(vec, name)
        for r, s in enumerate(STREAM_SEEDS):
            actions, _, final = singles[s]
            assert len(vector[r]) == len(actions) == final["episode_steps"]
            if name != "random":  # random draws for all rows from one generator
                assert np.array_equal(np.array(vector[r]), actions), (name, s)
                if name != "update":  # update drops the entry it overwrites in place
                    assert (actions[:, 1] == (actions[:, 0] > 0)).all(), f"{name} moves displaced entries to LTM"
            if name == "none" or (name == "oracle" and ENV_SPECS[env_id].task == "text"):
                assert not actions.any() and final["memory"]["writes"] == 0
            if name == "write_all":  # FIFO with no forgets: slots 0, 1, ..., K - 1, 0, 1, ...
                assert actions[:, 0].tolist() == [t % k + 1 for t in range(len(actions))]
                assert (actions[:, 1] == 1).all() and (actions[:, 3:] == 0).all()
            if name in ("lru", "dedupe", "surprise"):
                assert (actions[:, 3:] == 0).all(), f"{name} never forgets"


def test_random_is_deterministic_in_its_seed_and_reset_reseeds(envs):
    env, vec = envs("AHMMemory-MQAR-v0")
    a = run_single(env, "random", 11, seed=3)[0]
    assert np.array_equal(a, run_single(env, "random", 11, seed=3)[0])
    assert not np.array_equal(a, run_single(env, "random", 11, seed=4)[0])
    assert all(np.array_equal(x, y) for x, y in zip(run_vector(vec, "random"), run_vector(vec, "random")))
    ctrl = RandomController(seed=5)
    obs = {"wm_occupied": np.zeros((2, 4), dtype=np.float32)}
    first = ctrl.act(obs)
    ctrl.act(obs)
    ctrl.reset(2)
    assert np.array_equal(ctrl.act(obs), first)


def test_random_is_uniform_over_the_allowed_values_only():
    k, b = 3, 4000
    mask = np.ones((b, 2 * k + 12), dtype=bool)
    o = offsets(k)
    mask[:, o[2]:o[3]] = [False, True, False, True]  # retrieve: 1 or 3
    mask[:, o[3]:o[4]] = [True, False, True, True]  # forget: none, slot 1 or slot 2
    a = RandomController(seed=0).act({"wm_occupied": np.ones((b, k), dtype=np.float32)}, mask)
    assert set(a[:, 2].tolist()) == {1, 3} and set(a[:, 3].tolist()) == {0, 2, 3}
    # 4000 draws: each share is within 5 standard deviations of uniform
    for column, values in ((2, (1, 3)), (3, (0, 2, 3)), (0, range(k + 1))):
        p = 1 / len(values)
        share = np.array([(a[:, column] == v).mean() for v in values])
        assert np.abs(share - p).max() < 5 * np.sqrt(p * (1 - p) / b), (column, share)
    # without a mask: only the values valid in every state (no retrieve, no forget)
    a = RandomController(seed=0).act({"wm_occupied": np.ones((500, k), dtype=np.float32)})
    assert (a[:, 2:] == 0).all() and set(a[:, 0].tolist()) == set(range(k + 1)) and set(a[:, 1].tolist()) == {0, 1}


@st.composite
def masked_batches(draw):
    """An observation and an arbitrary action mask with at least one allowed value per component."""
    k, b = draw(st.integers(1, 5)), draw(st.integers(1, 4))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    parts = []
    for n in (k + 1, 2, 4, k + 1, 4):
        m = rng.random((b, n)) < draw(st.sampled_from([0.2, 0.5, 0.9]))
        m[np.arange(b), rng.integers(0, n, b)] = True
        parts.append(m)
    obs = {"wm_occupied": (rng.random((b, k)) < 0.6).astype(np.float32),
           "wm_age": rng.random((b, k)).astype(np.float32),
           "wm_similarity": rng.uniform(-1, 1, (b, k)).astype(np.float32),
           "wm_key_similarity": rng.uniform(-1, 1, (b, k)).astype(np.float32),
           "ltm_fill": rng.random((b, 1)).astype(np.float32),
           "ltm_topk_similarity": rng.uniform(-1, 1, (b, 4)).astype(np.float32),
           "ltm_key_similarity": rng.uniform(-1, 1, (b, 1)).astype(np.float32),
           "ssm_features": rng.normal(size=(b, 6)).astype(np.float32)}
    gt = {"fact_kind": rng.integers(-1, len(FACT_KINDS), b), "query_fact_id": rng.integers(-1, 3, b),
          "wm_fact_id": rng.integers(-1, 4, (b, k)), "query_fact_in_wm": rng.random(b) < 0.5,
          "query_fact_in_ltm": rng.random(b) < 0.5}
    return k, obs, np.concatenate(parts, 1), {"ground_truth": gt, "chunk": rng.integers(0, 3, b)}


@settings(max_examples=60)
@given(masked_batches())
def test_no_controller_picks_a_masked_value_for_arbitrary_masks(batch):
    k, obs, mask, info = batch
    b = len(mask)
    for name in (*MASK_RESPECTING, "oracle"):
        ctrl = make_controller(name)
        ctrl.reset(b)
        for step in range(3):  # stateful controllers: their second and third steps too
            a = ctrl.act(obs, mask, info, np.full(b, step == 0))
            assert allowed(mask, a, k).all(), (name, a, mask)


@settings(max_examples=30)
@given(masked_batches())
def test_write_all_prefers_its_rule_and_falls_back_to_the_best_allowed_value(batch):
    k, obs, mask, _ = batch
    a = WriteAllController().act(obs, mask)
    w = component_masks(mask, len(mask), k)[0]
    occupied = obs["wm_occupied"] > 0.5
    for r in range(len(mask)):
        free = [s for s in range(k) if w[r, s + 1] and not occupied[r, s]]
        used = [s for s in range(k) if w[r, s + 1] and occupied[r, s]]
        want = free[0] if free else (max(used, key=lambda s: obs["wm_age"][r, s]) if used else -1)
        assert a[r, 0] == want + 1


def test_masks_that_allow_nothing_or_have_the_wrong_shape_are_refused():
    obs = {"wm_occupied": np.zeros((2, 3), dtype=np.float32), "wm_age": np.zeros((2, 3), dtype=np.float32),
           "ltm_fill": np.zeros((2, 1), dtype=np.float32)}
    mask = np.ones((2, 18), dtype=bool)
    mask[1, offsets(3)[2]:offsets(3)[3]] = False
    with pytest.raises(ValueError, match=r"allows no value of 'retrieve' for environment\(s\) \[1\]"):
        WriteAllController().act(obs, mask)
    with pytest.raises(ValueError, match=r"shape \(2, 18\)"):
        RandomController().act(obs, np.ones((2, 15), dtype=bool))
    with pytest.raises(ValueError, match="batched"):
        WriteAllController().act({k: v[0] for k, v in obs.items()})


def test_conform_to_mask_keeps_allowed_values_and_replaces_others_by_the_lowest_allowed():
    k = 2
    mask = np.ones((1, 2 * k + 12), dtype=bool)
    o = offsets(k)
    mask[0, o[2]:o[3]] = [False, True, True, False]
    a = conform_to_mask(np.array([[2, 1, 3, 1, 0]]), mask)
    assert a.tolist() == [[2, 1, 1, 1, 0]]


class SimulatedWM:
    """The WM bookkeeping the env does, for hand-made observations: occupancy and age (chunks since written)."""

    def __init__(self, k: int, n_chunks: int = 100):
        self.occupied, self.age, self.n = np.zeros(k, dtype=bool), np.zeros(k), n_chunks

    def observation(self, similarity=None, features=None) -> dict[str, np.ndarray]:
        k = len(self.occupied)
        obs = {"wm_occupied": self.occupied[None].astype(np.float32),
               "wm_age": (np.where(self.occupied, self.age, 0) / self.n)[None].astype(np.float32),
               "wm_similarity": np.zeros((1, k), dtype=np.float32) if similarity is None else np.array([similarity]),
               "ltm_fill": np.zeros((1, 1), dtype=np.float32)}
        if features is not None:
            obs["ssm_features"] = np.asarray(features, dtype=np.float32)[None]
        return obs

    def apply(self, action: np.ndarray) -> None:
        self.age += 1
        if action[0] > 0:
            self.occupied[action[0] - 1], self.age[action[0] - 1] = True, 0


def test_fifo_writes_the_first_free_slot_then_the_oldest():
    wm, ctrl, slots = SimulatedWM(3), WriteAllController(), []
    for _ in range(7):
        a = ctrl.act(wm.observation())[0]
        slots.append(a[0] - 1)
        wm.apply(a)
    assert slots == [0, 1, 2, 0, 1, 2, 0]
    # a hole is filled first, whatever the ages; with none, the largest wm_age goes
    obs = {"wm_occupied": np.array([[1, 0, 1], [1, 1, 1]], dtype=np.float32),
           "wm_age": np.array([[0.5, 0, 0.1], [0.2, 0.9, 0.4]], dtype=np.float32),
           "ltm_fill": np.array([[0.0], [0.3]], dtype=np.float32)}
    a = WriteAllController().act(obs)
    assert a[:, 0].tolist() == [2, 2] and a[:, 1].tolist() == [1, 1] and a[:, 2].tolist() == [1, 3]


def test_retrieve_reads_every_non_empty_level_and_what_the_mask_allows():
    obs = {"wm_occupied": np.array([[1, 0], [0, 0], [1, 1], [0, 0]], dtype=np.float32),
           "ltm_fill": np.array([[0.0], [0.5], [0.1], [0.0]], dtype=np.float32)}
    assert retrieve_from_available(obs, None).tolist() == [1, 2, 3, 0]
    mask = np.ones((4, 2 * 2 + 12), dtype=bool)
    mask[:, offsets(2)[2]:offsets(2)[3]] = [[1, 1, 1, 0], [1, 0, 1, 0], [1, 0, 0, 0], [1, 1, 1, 1]]
    assert retrieve_from_available(obs, mask).tolist() == [1, 2, 0, 3]


def test_lru_keeps_the_slot_it_reads_and_otherwise_replaces_the_least_recently_used():
    wm, lru, slots = SimulatedWM(3), LRUController(), []
    lru.reset(1)
    for _ in range(9):  # slot 0 is the most similar to every query, so it is used at every step
        a = lru.act(wm.observation(similarity=[0.9, 0.1, 0.0]), None, None, np.array([not slots]))[0]
        slots.append(a[0] - 1)
        wm.apply(a)
    assert slots[:3] == [0, 1, 2] and 0 not in slots[3:] and slots[3:] == [1, 2] * 3
    # no retrieval (nothing stored as far as retrieval is concerned): LRU reduces to FIFO
    wm, lru, slots = SimulatedWM(3), LRUController(), []
    for _ in range(6):
        obs = wm.observation(similarity=[0.9, 0.1, 0.0])
        mask = np.ones((1, 18), dtype=bool)
        mask[0, offsets(3)[2] + 1:offsets(3)[3]] = False  # reads not allowed
        a = lru.act(obs, mask)[0]
        slots.append(a[0] - 1)
        wm.apply(a)
    assert slots == [0, 1, 2, 0, 1, 2]
    # an episode start forgets the ages
    lru.act(wm.observation(), None, None, np.array([True]))
    assert (lru.age <= 1).all()


def test_surprise_writes_at_a_jump_of_the_state_only():
    rng = np.random.default_rng(0)
    feats = np.cumsum(rng.normal(0, 0.01, (30, 8)), axis=0)
    feats[20:] += 1.0  # one large move of the state at chunk 20
    wm, ctrl, writes = SimulatedWM(4), SurpriseController(threshold=3.0), []
    ctrl.reset(1)
    for t in range(30):
        a = ctrl.act(wm.observation(features=feats[t]), None, None, np.array([t == 0]))[0]
        writes.append(a[0] > 0)
        wm.apply(a)
    assert np.nonzero(writes)[0].tolist() == [20]
    # a new episode restarts the statistics: its first chunk is never surprising, however far it is
    a = ctrl.act(wm.observation(features=feats[0] + 100), None, None, np.array([True]))
    assert a[0, 0] == 0
    with pytest.raises(ValueError, match="threshold"):
        SurpriseController(threshold=float("nan"))


def test_dedupe_skips_chunks_similar_to_what_it_wrote():
    wm, ctrl = SimulatedWM(3), DedupeController(threshold=0.95)
    ctrl.reset(1)
    e = np.eye(4)
    wrote = []
    for x in (e[0], e[0] * 2, e[1], e[0] + 0.01 * e[2], e[2], e[3], e[0]):
        a = ctrl.act(wm.observation(features=x))[0]
        wrote.append(int(a[0]) - 1)
        wm.apply(a)
    # e0 written to slot 0; its multiple and a near copy are skipped; e1, e2 fill slots 1, 2; e3 replaces the
    # oldest (slot 0, e0), so e0 is new again and replaces slot 1 (e1)
    assert wrote == [0, -1, 1, -1, 2, 0, 1]
    with pytest.raises(ValueError, match="cosine"):
        DedupeController(threshold=1.5)


def key_update_observation(row1_ltm_key_similarity: float) -> dict[str, np.ndarray]:
    """Two rows: row 0's chunk key matches WM slot 1 and the LTM; row 1's key matches no WM slot."""
    return {"wm_occupied": np.array([[1, 1, 1], [1, 1, 0]], dtype=np.float32),
            "wm_age": np.array([[0.3, 0.1, 0.2], [0.5, 0.1, 0.0]], dtype=np.float32),
            "wm_similarity": np.array([[0.5, 0.2, 0.1], [0.9, 0.0, 0.0]], dtype=np.float32),
            "wm_key_similarity": np.array([[0.2, 0.95, 0.3], [0.5, 0.8, 0.0]], dtype=np.float32),
            "ltm_fill": np.array([[0.1], [0.1]], dtype=np.float32),
            "ltm_topk_similarity": np.array([[0.8, 0.1], [0.3, 0.2]], dtype=np.float32),
            "ltm_key_similarity": np.array([[0.97], [row1_ltm_key_similarity]], dtype=np.float32)}


def test_update_replaces_what_the_key_re_assigns_and_reads_the_level_that_matches():
    """Row 0: slot 1 holds the chunk's key -> overwrite it, dropping the old entry; the LTM matches too -> forget
    its nearest entry; the LTM's best query match (0.8) beats the WM's (0.5) -> read the LTM only. Row 1: nothing
    matches the key -> write_all's write (the free slot 2, evict), no forget; the WM matches the query -> read it."""
    obs = key_update_observation(0.6)
    a = UpdateController().act(obs)
    assert a.tolist() == [[2, 0, 2, 0, 3], [3, 1, 1, 0, 0]]
    assert UpdateController(threshold=0.99).act(obs)[0].tolist() == [1, 1, 2, 0, 0]  # oldest slot 0, no forget
    with pytest.raises(ValueError, match="cosine"):
        UpdateController(threshold=2.0)


def test_the_keep_gated_rule_acts_as_update_only_where_the_keep_head_says_keep():
    """benchmarks/keep_gated_rule.py's diagnostic: update's action where keep_score > t; elsewhere no write, no
    eviction, no LTM forget, but the same read."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "keep_gated_rule.py"
    spec = importlib.util.spec_from_file_location("keep_gated_rule", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    obs = key_update_observation(0.97)
    update = UpdateController().act(obs)
    assert update.tolist() == [[2, 0, 2, 0, 3], [3, 1, 1, 0, 3]]
    gated = module.KeepGatedUpdate(0.1).act({**obs, "keep_score": np.array([[0.9], [0.05]], dtype=np.float32)})
    assert gated.tolist() == [[2, 0, 2, 0, 3], [0, 0, 1, 0, 0]]
    no_ltm_forget = module.KeepGatedUpdate(0.1, ltm_forgets=False)
    assert no_ltm_forget.act({**obs, "keep_score": np.array([[0.9], [0.9]], dtype=np.float32)}).tolist() == [
        [2, 0, 2, 0, 0], [3, 1, 1, 0, 0]]  # update's action, the LTM forget alone taken away
    with pytest.raises(ValueError, match="keep_score"):
        module.KeepGatedUpdate(0.1).act(obs)


def test_query_outcomes_swaps_only_the_named_components():
    """benchmarks/query_outcomes.py's Swapped: the controller's action with the named components from the donor."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "query_outcomes.py"
    spec = importlib.util.spec_from_file_location("query_outcomes", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    obs = key_update_observation(0.97)
    swapped = module.Swapped(NoMemoryController(), UpdateController(), (2, 4), "reads and LTM forgets")
    swapped.reset(2)
    assert swapped.act(obs).tolist() == [[0, 0, 2, 0, 3], [0, 0, 1, 0, 3]]  # update's [[2,0,2,0,3],[3,1,1,0,3]]
    assert swapped.name == "none, reads and LTM forgets"


@pytest.mark.parametrize("env_id", ["AHMMemory-v0", "AHMMemory-MQAR-v0", "AHMMemory-Forget-v0", "AHMMemory-Decoy-v0",
                                    "AHMMemory-Copy-v0"])
@pytest.mark.parametrize("wm_slots", [8, 2])
def test_oracle_stores_targets_only_and_reads_every_queried_fact(env_id, wm_slots):
    """With 2 slots, the facts that do not fit move to the LTM and the oracle must read them from there."""
    env = gymnasium.make(env_id, **env_kwargs(env_id, wm_slots=wm_slots))
    from_ltm = 0
    for s in STREAM_SEEDS:
        actions, infos, final = run_single(env, "oracle", s)
        queries = 0
        for a, info in zip(actions, infos):
            gt = info["ground_truth"]
            assert (a[0] > 0) == (gt["fact_kind"] == FACT_KINDS.index("target")), "writes exactly the target facts"
            assert a[3] == 0 and a[4] == 0, "never forgets"
            if gt["query_fact_id"] >= 0:
                queries += 1
                assert gt["query_fact_in_wm"] or gt["query_fact_in_ltm"], "the queried fact is in memory"
                assert a[2] == (1 if gt["query_fact_in_wm"] else 2), "and is read from where it is"
                from_ltm += int(a[2] == 2)
            else:
                assert a[2] == 0, "reads only at queries"
        assert queries == final["targets"]["total"] >= 1
        written = {int(i["ground_truth"]["fact_id"]) for a, i in zip(actions, infos) if a[0] > 0}
        kinds = [FACT_KINDS[int(i["ground_truth"]["fact_kind"])] for a, i in zip(actions, infos) if a[0] > 0]
        assert set(kinds) == {"target"} and len(written) == len(kinds)
    if wm_slots == 2 and env_id != "AHMMemory-v0":  # more targets than slots
        assert from_ltm > 0


def test_oracle_replaces_a_slot_without_a_fact_then_an_asked_fact_then_the_oldest():
    oracle = OracleController()
    oracle.reset(1)
    obs = {"wm_occupied": np.ones((1, 3), dtype=np.float32), "wm_age": np.array([[0.9, 0.1, 0.5]], dtype=np.float32)}

    def info(wm_fact, kind=0, query=-1, in_wm=False, chunk=5):
        return {"chunk": np.array([chunk]), "ground_truth": {
            "fact_kind": np.array([kind]), "query_fact_id": np.array([query]), "wm_fact_id": np.array([wm_fact]),
            "query_fact_in_wm": np.array([in_wm]), "query_fact_in_ltm": np.array([False])}}

    assert oracle.act(obs, None, info([3, 4, -1]))[0, 0] == 3  # the slot with no fact, though the youngest but one
    assert oracle.act(obs, None, info([3, 4, 5]))[0, 0] == 1  # no asked fact: the oldest
    a = oracle.act(obs, None, info([3, 4, 5], kind=-1, query=4, in_wm=True))  # fact 4 is asked now (and read)
    assert a[0].tolist() == [0, 0, 1, 0, 0]
    assert oracle.act(obs, None, info([3, 4, 5]))[0, 0] == 2  # fact 4 is no longer needed
    assert oracle.act(obs, None, info([3, 4, 5], chunk=0))[0, 0] == 1  # a new episode: nothing asked yet
    for kind in ("decoy", "stale"):
        assert oracle.act(obs, None, info([3, 4, 5], kind=FACT_KINDS.index(kind)))[0, 0] == 0


@pytest.mark.parametrize("task", sorted(TASKS))
def test_the_task_facts_the_oracle_relies_on(task):
    """Its replacement rule drops asked facts first (each fact is asked at most once), and it never writes stale
    facts (each is re-assigned before any query), for every shipped task, at the test and default chunk sizes."""
    for seq_len, chunk_size, seed in ((2048, 64, 0), (8192, 64, 1), (16384, 256, 2)):
        s = make_task(task, seq_len, chunk_size, seed, **({"max_documents": 5} if task == "text" else {}))
        asked = [q.fact_id for q in s.queries]
        assert len(asked) == len(set(asked)), "a fact is asked twice"
        first_query = min((q.chunk for q in s.queries), default=s.n_chunks)
        for f in s.facts:
            if f.kind == "stale":
                assert s.facts[f.superseded_by].chunk < first_query


def test_oracle_refuses_to_act_without_ground_truth():
    obs = {"wm_occupied": np.zeros((1, 2)), "wm_age": np.zeros((1, 2))}
    for info in (None, {"chunk": np.zeros(1)}):
        with pytest.raises(ValueError, match=r"info\['ground_truth'\]"):
            make_controller("oracle").act(obs, None, info)


def test_choose_write_skips_rows_that_do_not_want_to_write_unless_no_write_is_masked():
    occupied = np.array([[True, False], [True, True], [True, True]])
    mask = np.array([[True, True, True], [True, True, True], [False, True, True]])
    out = choose_write(occupied, np.array([[0.0, 0], [0.1, 0.2], [0.3, 0.1]]), mask, np.array([True, False, False]))
    assert out.tolist() == [2, 0, 1]


def test_registry_names_match_the_classes():
    for name in HEURISTICS:
        assert make_controller(name).name == name
