"""ahm.envs: every registered AHMMemory id passes the env contract; the native vector env equals the single env
step for step; the SB3 adapter trains MaskablePPO; the readout the rewards use is the model's own; registration,
checkpoints, rendering, caching, state integration."""

from __future__ import annotations

import doctest
import subprocess
import sys
import warnings

import gymnasium
import numpy as np
import pytest
import torch
from env_contract import EnvContract, rollout, valid_action
from gymnasium.utils.env_checker import data_equivalence
from gymnasium.vector import AutoresetMode, SyncVectorEnv

import ahm
import ahm.envs.memory_env
import ahm.envs.vector_env
from ahm.agents.sb3_adapter import SB3VecEnvAdapter
from ahm.backbone import MemoryOps
from ahm.envs import (
    ENV_SPECS,
    AHMMemoryEnv,
    AHMMemoryVectorEnv,
    env_list_markdown,
    load_ahm_checkpoint,
    random_backbone,
    save_ahm_checkpoint,
)
from ahm.envs.streams import FACT_KINDS
from ahm.rewards import RewardTerm


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Memory operations are tiny tensor ops: one thread (the env's documented setting, AHMMemoryEnv "Performance")."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)

IDS = list(ENV_SPECS)


def make(env_id: str, **overrides) -> gymnasium.Env:
    return gymnasium.make(env_id, **{**ENV_SPECS[env_id].test_kwargs, **overrides})


class TestRegisteredEnvs(EnvContract):
    """The contract, for every id of the registry."""

    @pytest.fixture(autouse=True, params=IDS)
    def _env_id(self, request):
        self.env_id = request.param

    def make_env(self, **overrides):
        return make(self.env_id, **overrides)


# ---------------------------------------------------------------- the vector env
@pytest.mark.parametrize("env_id, integration", [(i, "readout") for i in IDS] + [("AHMMemory-MQAR-v0", "state")])
def test_vector_env_equals_the_single_env_step_for_step(env_id, integration):
    """Native vector env against SyncVectorEnv(SAME_STEP) of single envs, same seeds, through autoresets.

    Equal up to float rounding: batched einsums over 3 memories round differently from 3 single ones (~3e-8);
    integers, booleans, masks and every discrete decision are exactly equal."""
    n, kwargs = 3, {**ENV_SPECS[env_id].test_kwargs, "max_steps": 9, "integration": integration}
    native = gymnasium.make_vec(env_id, num_envs=n, vectorization_mode="vector_entry_point", **kwargs)
    assert isinstance(native.unwrapped, AHMMemoryVectorEnv)
    reference = SyncVectorEnv([lambda: gymnasium.make(env_id, **kwargs) for _ in range(n)],
                              autoreset_mode=AutoresetMode.SAME_STEP)
    assert data_equivalence(native.reset(seed=11), reference.reset(seed=11), exact=True)
    rng = np.random.default_rng(0)
    ended = 0
    for step in range(20):
        masks = native.unwrapped.action_masks()
        assert np.array_equal(masks, np.stack([e.unwrapped.action_masks() for e in reference.envs]))
        offsets = np.cumsum([0, *native.unwrapped.single_action_space.nvec])
        actions = np.array([[rng.choice(np.nonzero(m[offsets[j] : offsets[j + 1]])[0]) for j in range(5)]
                            for m in masks])
        got, want = native.step(actions), reference.step(actions)
        for name, g, w in zip(("observation", "reward", "terminated", "truncated", "info"), got, want):
            assert data_equivalence(g, w), f"step {step}: {name} differs"
        ended += int(got[3].sum() + got[2].sum())
    assert ended >= n  # autoresets happened (max_steps=9) and matched


def test_vector_env_metadata_spaces_and_invalid_actions():
    envs = gymnasium.make_vec("AHMMemory-v0", num_envs=2, vectorization_mode="vector_entry_point",
                              **ENV_SPECS["AHMMemory-v0"].test_kwargs, invalid_actions="raise")  # the strict mode
    assert envs.metadata["autoreset_mode"] == AutoresetMode.SAME_STEP
    obs, _ = envs.reset(seed=0)
    assert envs.observation_space.contains(obs)
    assert envs.unwrapped.action_masks().shape == (2, 28)
    with pytest.raises(ValueError, match=r"retrieve\) = 1 \(environment 1\) is invalid now"):
        envs.step(np.array([[0, 0, 0, 0, 0], [0, 0, 1, 0, 0]]))
    for _ in range(3):
        obs, *_ = envs.step(envs.action_space.sample())  # the unmasked sample is always valid
        assert envs.observation_space.contains(obs)


def test_sb3_adapter_trains_maskable_ppo_and_reports_episode_ends():
    from sb3_contrib import MaskablePPO
    from sb3_contrib.common.maskable.utils import get_action_masks, is_masking_supported
    from stable_baselines3.common.vec_env import VecMonitor

    vec = gymnasium.make_vec("AHMMemory-v0", num_envs=2, vectorization_mode="vector_entry_point",
                             **ENV_SPECS["AHMMemory-v0"].test_kwargs, max_steps=10)
    venv = SB3VecEnvAdapter(vec.unwrapped)
    assert is_masking_supported(venv)
    obs = venv.reset()
    assert get_action_masks(venv).shape == (2, 28)
    for _ in range(10):
        obs, rewards, dones, infos = venv.step(np.stack([venv.action_space.sample() for _ in range(2)]))
    assert dones.all() and all(i["TimeLimit.truncated"] for i in infos)
    assert all(set(i["terminal_observation"]) == set(obs) and "is_success" in i for i in infos)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model = MaskablePPO("MultiInputPolicy", VecMonitor(venv), n_steps=16, batch_size=32, n_epochs=1, seed=0)
        model.learn(64)  # an invalid action would raise: the masks reach the policy


@pytest.mark.parametrize("env_id", ["AHMMemory-MQAR-v0"])
def test_next_step_autoreset_equals_gymnasiums_sync_vector_env(env_id):
    """autoreset_mode=NEXT_STEP against SyncVectorEnv(NEXT_STEP) of single envs: the step after a done returns the
    reset observation and info, reward 0, not done, and ignores that sub-env's action (actions are unmasked)."""
    n, kwargs = 3, {**ENV_SPECS[env_id].test_kwargs, "max_steps": 5}
    native = gymnasium.make_vec(env_id, num_envs=n, vectorization_mode="vector_entry_point",
                                autoreset_mode=AutoresetMode.NEXT_STEP, **kwargs)
    assert native.metadata["autoreset_mode"] == AutoresetMode.NEXT_STEP
    assert AHMMemoryVectorEnv.metadata["autoreset_mode"] == AutoresetMode.SAME_STEP  # per instance, not per class
    reference = SyncVectorEnv([lambda: gymnasium.make(env_id, **kwargs) for _ in range(n)],
                              autoreset_mode=AutoresetMode.NEXT_STEP)
    assert data_equivalence(native.reset(seed=3), reference.reset(seed=3), exact=True)
    rng = np.random.default_rng(0)
    resets = 0
    for step in range(14):
        actions = rng.integers(0, native.single_action_space.nvec, size=(n, 5))
        got, want = native.step(actions), reference.step(actions)
        for name, g, w in zip(("observation", "reward", "terminated", "truncated", "info"), got, want):
            assert data_equivalence(g, w), f"step {step}: {name} differs"
        was_reset = got[4]["steps"] == 0
        assert not (got[2] | got[3])[was_reset].any() and (got[1][was_reset] == 0).all()
        resets += int(was_reset.sum())
    assert resets >= n  # every sub-env went through a NEXT_STEP reset (max_steps=5)
    with pytest.raises(ValueError, match="autoreset_mode must be"):
        AHMMemoryVectorEnv(2, autoreset_mode=AutoresetMode.DISABLED, **ENV_SPECS[env_id].test_kwargs)


@pytest.mark.parametrize("wrapper", ["FlattenObservation", "NormalizeObservation"])
def test_gymnasiums_vector_wrappers_run_on_the_next_step_native_env(wrapper):
    from gymnasium.wrappers import vector as vector_wrappers

    envs = gymnasium.make_vec("AHMMemory-v0", num_envs=2, vectorization_mode="vector_entry_point",
                              autoreset_mode="NextStep", **ENV_SPECS["AHMMemory-v0"].test_kwargs, max_steps=20)
    if wrapper == "NormalizeObservation":  # it normalises a Box: flatten the Dict first
        envs = vector_wrappers.FlattenObservation(envs)
    envs = getattr(vector_wrappers, wrapper)(envs)
    obs, _ = envs.reset(seed=0)
    width = gymnasium.spaces.flatdim(envs.unwrapped.single_observation_space)
    assert obs.shape == (2, width)
    envs.action_space.seed(0)
    dones = 0
    for _ in range(50):
        obs, reward, terminated, truncated, info = envs.step(envs.action_space.sample())
        assert obs.shape == (2, width) and np.isfinite(obs).all()
        dones += int((terminated | truncated).sum())
    assert dones >= 4  # episodes of 20 steps ended and were reset through the wrapper


def test_action_masker_reaches_the_masks_through_gymnasium_make():
    """sb3-contrib's ActionMasker, with the convention of Gymnasium 1.x wrappers (get_wrapper_attr), feeds
    MaskablePPO the env's masks; strict mode proves no masked-invalid action reached the env."""
    from sb3_contrib import MaskablePPO
    from sb3_contrib.common.maskable.utils import get_action_masks
    from sb3_contrib.common.wrappers import ActionMasker
    from stable_baselines3.common.vec_env import DummyVecEnv

    def masked_env():
        env = make("AHMMemory-v0", max_steps=8, invalid_actions="raise")
        return ActionMasker(env, lambda e: e.get_wrapper_attr("action_masks")())

    venv = DummyVecEnv([masked_env])
    venv.reset()
    assert np.array_equal(get_action_masks(venv)[0], venv.envs[0].unwrapped.action_masks())
    model = MaskablePPO("MultiInputPolicy", venv, n_steps=16, batch_size=16, n_epochs=1, seed=0)
    model.learn(32)  # "raise" mode: an unmasked invalid action would have raised
    assert model.num_timesteps == 32


_ASYNC_AFTER_THE_BACKBONE = """
import json
import gymnasium, numba, numpy as np, torch
import ahm
torch.set_num_threads(2)
parent = gymnasium.make("AHMMemory-v0", seq_len=2048, chunk_size=64)
parent.reset(seed=0)  # the backbone (torch and the numba scan, both multi-threaded) has run in the parent
envs = gymnasium.make_vec("AHMMemory-v0", 2, vectorization_mode="async", seq_len=2048, chunk_size=64)
envs.reset(seed=0)
rng = np.random.default_rng(0)
ok = True
for _ in range(20):  # unmasked random actions: legal too
    obs, reward, terminated, truncated, info = envs.step(rng.integers(0, envs.single_action_space.nvec, (2, 5)))
    ok &= bool(envs.observation_space.contains(obs) and np.isfinite(reward).all())
envs.close()
print(json.dumps({"ok": ok, "invalid_noops": info["memory"]["invalid_noops"].tolist(),
                  "layer": numba.threading_layer(), "torch_threads": torch.get_num_threads()}))
"""


def test_make_vec_async_works_after_the_parent_ran_the_backbone():
    """Forked workers survive a parent that ran the backbone multi-threaded on OpenMP (serial scan kernels and one
    torch thread after a fork: ahm.kernels.scan_cpu). In a fresh process, killed with its workers if it hangs (what
    a half fix did: the workers waited forever on the parent's OpenMP threads)."""
    import json
    import os
    import signal

    proc = subprocess.Popen([sys.executable, "-c", _ASYNC_AFTER_THE_BACKBONE], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail("make_vec(..., vectorization_mode='async') hung after the parent ran the backbone")
    assert proc.returncode == 0, err[-3000:]
    result = json.loads(out.strip().splitlines()[-1])
    assert result["ok"] and min(result["invalid_noops"]) > 0
    assert result["torch_threads"] == 2  # the parent keeps its threads and its (fast) threading layer


# ---------------------------------------------------------------- the readout the rewards use
class _Replay:
    """A controller that replays recorded MemoryOps (to run the model's own streaming path)."""

    def __init__(self, ops: list[MemoryOps]) -> None:
        self.ops = iter(ops)

    def __call__(self, obs):
        return next(self.ops)


@pytest.mark.parametrize("integration", ["readout", "state"])
def test_env_scores_the_models_own_readout_at_the_boundary(integration):
    """Cached features + memory steps reproduce AHMModel.stream; the answer is readout(h_last, r_t)."""
    env = make("AHMMemory-MQAR-v0", integration=integration, reward_weights={"retrieval_gain": 1.0})
    env.action_space.seed(0)
    obs, info = env.reset(seed=3)
    actions, observations, infos = [], [obs], []
    while True:
        actions.append(valid_action(env))
        obs, _, terminated, _, info = env.step(actions[-1])
        observations.append(obs)
        infos.append(info)
        if terminated:
            break
    model, stream = env.unwrapped.model, env.unwrapped.stream
    ops = [MemoryOps(*(torch.tensor([int(v)]) for v in (a[0] - 1, a[1], a[2], a[3] - 1, a[4]))) for a in actions]
    tokens = torch.from_numpy(stream.tokens(0, stream.seq_len))[None]
    with torch.no_grad():
        outs = list(model.stream(tokens[:, : (len(actions)) * stream.chunk_size], _Replay(ops),
                                 chunk_size=stream.chunk_size))
    n_queries = len(stream.queries)
    for t, (out, info) in enumerate(zip(outs, infos)):
        want = np.tanh(out.features.boundary.ssm_features[0].numpy())
        np.testing.assert_allclose(observations[t]["ssm_features"], want, rtol=1e-5, atol=1e-6)
        if info["scored"]:
            h, r = out.features.hidden[:, -1:], out.state.retrieved
            target = torch.tensor([stream.queries[info["targets"]["answered"] - 1].answer[0]])
            loss = torch.nn.functional.cross_entropy(model.readout(h, r)[:, 0], target)
            loss0 = torch.nn.functional.cross_entropy(model.readout(h, torch.zeros_like(r))[:, 0], target)
            gain = info["reward_terms_raw"]["retrieval_gain"] * n_queries
            assert gain == pytest.approx(float(loss0 - loss), abs=1e-5)
            assert info["correct"] == bool(model.readout(h, r)[0, 0].argmax() == target[0])
            if integration == "state":
                assert gain == 0.0  # r_t reaches only the next chunk's input
    assert sum(i["scored"] for i in infos) == n_queries


class FactReadWeight(RewardTerm):
    """A custom term (test): the raw read weight on the target fact's entry."""

    name = "fact_read_weight"

    def _compute(self, ctx):
        return np.where(ctx.scored, ctx.fact_read_weight, 0.0)


@pytest.mark.parametrize("via_ltm", [False, True])
def test_store_then_use_sees_the_entry_written_at_the_fact(via_ltm):
    """An oracle-like policy from info["ground_truth"]: write the fact, (move it to LTM,) read it at the query."""
    env = make("AHMMemory-Passkey-v0", extra_reward_terms=[FactReadWeight(0.0)])
    obs, info = env.reset(seed=0)
    moved = False
    while True:
        gt = info["ground_truth"]
        action = [0, 0, 0, 0, 0]
        if gt["fact_kind"] == 0:  # the target fact ends at this chunk: write it into slot 0
            action[0] = 1
        elif via_ltm and obs["wm_occupied"][0] and not moved:  # displace it into the LTM
            action[:2], moved = [1, 1], True
        if gt["query_fact_id"] >= 0:
            assert gt["query_fact_in_ltm"] == via_ltm and gt["query_fact_in_wm"] == (not via_ltm)
            action[2] = 2 if via_ltm else 1
        obs, _, terminated, _, info = env.step(np.array(action))
        if info["scored"]:
            assert info["reward_terms_raw"]["fact_read_weight"] == pytest.approx(1.0)
            assert info["reward_terms"]["fact_read_weight"] == 0.0
        if terminated:
            break
    assert info["targets"]["answered"] == 1


@pytest.mark.parametrize("fast", [True, False])
def test_discard_reward_follows_the_entries_that_leave_memory(fast, monkeypatch):
    """On a Forget stream: writing a stale fact costs 1 / n_targets and forgetting it pays it back; a target fact
    moved to the LTM and forgotten there (ltm_forget=3, the entry nearest to the chunk's key: the only one) is
    charged as needed, and the ground truth no longer finds it in the LTM."""
    if not fast:
        monkeypatch.setattr(ahm.envs.memory_env.EpisodeBatch, "_fast", lambda self: None)
    env = make("AHMMemory-Forget-v0", reward_weights={"discard": 1.0})
    obs, info = env.reset(seed=0)
    stale, target = FACT_KINDS.index("stale"), FACT_KINDS.index("target")
    plan: list[tuple[list[int], float]] = []  # the next steps' (action, discard * n_targets for what leaves)
    done: list[str] = []
    got, want = [], []
    while True:
        gt = info["ground_truth"]
        n = info["targets"]["total"]
        action, leaves = [0, 0, 0, 0, 0], 0.0
        if plan:
            action, leaves = plan.pop(0)
        elif gt["fact_kind"] == stale and "stale" not in done:
            done.append("stale")
            action, plan = [1, 0, 0, 0, 0], [([0, 0, 0, 1, 0], 1.0)]  # write it into slot 0, then forget slot 0
        elif gt["fact_kind"] == target and done == ["stale"]:
            done.append("target")  # into slot 1, displaced into the LTM by the next write, forgotten there
            action, plan = [2, 0, 0, 0, 0], [([2, 1, 0, 0, 0], 0.0), ([0, 0, 0, 0, 3], -1.0)]
            forgotten = int(gt["fact_id"])
        if done == ["stale", "target"] and not plan and gt["query_fact_id"] == forgotten:
            assert not gt["query_fact_in_ltm"] and not gt["query_fact_in_wm"]  # the ground truth knows it is gone
            done.append("asked")
        writes_stale = action[0] > 0 and gt["fact_kind"] == stale
        obs, _, terminated, _, info = env.step(np.array(action))
        got.append(info["reward_terms_raw"]["discard"] * n)
        want.append(leaves - writes_stale)
        if action[4] == 3:
            assert info["memory"]["ltm_entries"] == 0
        if terminated:
            break
    assert done == ["stale", "target", "asked"]
    np.testing.assert_allclose(got, want, atol=1e-12)


# ---------------------------------------------------------------- registration, import, docs
def test_every_registry_entry_is_registered_with_both_entry_points():
    for env_id, entry in ENV_SPECS.items():
        spec = gymnasium.spec(env_id)
        assert spec.entry_point == "ahm.envs.memory_env:AHMMemoryEnv"
        assert spec.vector_entry_point == "ahm.envs.vector_env:AHMMemoryVectorEnv"
        assert spec.kwargs["task"] == entry.task
        assert f"`{env_id}`" in env_list_markdown()
    default = gymnasium.make("AHMMemory-v0").unwrapped  # the registered default: 100K tokens, 8 WM slots
    assert (default.config.seq_len, default.config.wm_slots, default.config.task) == (100_000, 8, "passkey")


def test_import_ahm_is_light_and_registers_and_make_with_module_prefix_works():
    """`import ahm` loads neither torch nor gymnasium, yet the ids are there once gymnasium is imported (either
    order); gymnasium.make("ahm:...") works in a fresh interpreter that never imported ahm."""
    code = ("import sys, ahm\n"
            "light = not ({'torch', 'gymnasium'} & set(sys.modules))\n"
            "import gymnasium\n"
            "print(light, all(i in gymnasium.registry for i in ahm.envs.registry.ENV_SPECS))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["True", "True"]
    code = ("import gymnasium\n"
            "env = gymnasium.make('ahm:AHMMemory-v0', seq_len=2048, chunk_size=64)\n"
            "print(type(env.unwrapped).__name__, 'AHMMemory-Text-v0' in gymnasium.registry)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["AHMMemoryEnv", "True"]


def test_docstring_examples_run():
    for module in (ahm.envs.memory_env, ahm.envs.vector_env):
        result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
        assert result.failed == 0 and result.attempted > 0, module.__name__


# ---------------------------------------------------------------- backbones, caching, rendering
def test_checkpoint_round_trip_gives_the_same_environment(tmp_path):
    model = random_backbone(256)
    save_ahm_checkpoint(tmp_path / "ckpt", model, extra={"note": "test"})
    loaded, extra = load_ahm_checkpoint(tmp_path / "ckpt")
    assert extra == {"note": "test"}
    for (name, p), q in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(p, q), name
    a = rollout(make("AHMMemory-v0", backbone=model), seed=1, steps=12)
    b = rollout(make("AHMMemory-v0", backbone=str(tmp_path / "ckpt")), seed=1, steps=12)
    assert data_equivalence(a, b, exact=True)
    with pytest.raises(FileNotFoundError, match="no ahm_model.json"):
        load_ahm_checkpoint(tmp_path / "missing")
    with pytest.raises(ValueError, match="integration='state' but the backbone was built with 'readout'"):
        make("AHMMemory-v0", backbone=model, integration="state")
    with pytest.raises(ValueError, match="vocabulary 256 is smaller"):
        make("AHMMemory-MQAR-v0", backbone=model)


def test_feature_cache_reuses_features_and_changes_nothing():
    cached = make("AHMMemory-v0", feature_cache_size=4).unwrapped
    fresh = make("AHMMemory-v0", feature_cache_size=0).unwrapped
    first = rollout(cached, seed=3, steps=10)
    calls = []
    original = cached._episodes._compute_features
    cached._episodes._compute_features = lambda streams: calls.append(len(streams)) or original(streams)
    again = rollout(cached, seed=3, steps=10)
    assert calls == []  # the same seed: the cached features, no backbone pass
    assert data_equivalence(first, again, exact=True)
    assert data_equivalence(first, rollout(fresh, seed=3, steps=10), exact=True)


def test_stream_seeds_draw_from_a_fixed_set_and_build_each_stream_once():
    pool = [11, 22, 33]
    envs = gymnasium.make_vec("AHMMemory-v0", num_envs=4, vectorization_mode="vector_entry_point",
                              **ENV_SPECS["AHMMemory-v0"].test_kwargs, stream_seeds=pool, max_steps=3)
    batch = envs.unwrapped.episodes
    built = []
    original = batch._compute_features
    batch._compute_features = lambda streams: built.extend(s.seed for s in streams) or original(streams)
    _, info = envs.reset(seed=0)
    seen = set(info["ground_truth"]["stream_seed"].tolist())
    for _ in range(12):
        _, _, _, _, info = envs.step(envs.action_space.sample())
        seen |= set(info["ground_truth"]["stream_seed"].tolist())
    assert seen <= set(pool) and len(seen) > 1
    assert sorted(built) == sorted(seen)  # one backbone pass per distinct stream, shared by sub-envs
    with pytest.raises(ValueError, match="stream_seeds must be None or a non-empty sequence"):
        make("AHMMemory-v0", stream_seeds=[])


def test_render_modes():
    env = make("AHMMemory-v0", render_mode="rgb_array")
    rollout(env, seed=0, steps=6)
    image = env.render()
    k = env.unwrapped.config.wm_slots
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[0] == 6 * (2 * k + 3) and image.any()
    env = make("AHMMemory-v0", render_mode="ansi")
    env.reset(seed=0)
    env.step(np.array([3, 0, 0, 0, 0]))
    text = env.render()
    assert "LTM 0/512" in text and "write 2" in text
    with pytest.raises(ValueError, match="render_mode"):
        AHMMemoryEnv(render_mode="human", **ENV_SPECS["AHMMemory-v0"].test_kwargs)


def test_constructor_errors_are_clear():
    with pytest.raises(ValueError, match="unknown task 'nope'"):
        make("AHMMemory-v0", task="nope")
    with pytest.raises(ValueError, match="wm_slots must be a positive int"):
        make("AHMMemory-v0", wm_slots=0)
    with pytest.raises(ValueError, match="unknown terms \\['outcome'\\]"):
        make("AHMMemory-v0", reward_weights={"outcome": 1.0})
    with pytest.raises(ValueError, match="backbone must be None"):
        make("AHMMemory-v0", backbone=3)
