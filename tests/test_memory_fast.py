"""ahm.backbone.memory_fast: the compiled no-grad memory step against the torch reference, and the env on both."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ahm.backbone import HierarchicalMemory, LTMConfig, MemoryConfig, MemoryOps
from ahm.backbone.memory_fast import fast_path_unsupported
from ahm.envs import EpisodeBatch
from ahm.envs.memory_env import AHMMemoryConfig, observation_arrays
from ahm.kernels.retrieval import quantize_int8

B, K, DK, DV = 3, 3, 4, 5


def make_memory(codec: str, read_mode: str, eviction: str, capacity: int) -> HierarchicalMemory:
    ltm = LTMConfig(capacity=capacity, key_dim=DK, value_dim=DV, codec=codec, eviction=eviction)
    return HierarchicalMemory(B, MemoryConfig(K, DK, DV, read_mode, ltm))


def random_valid_ops(memory: HierarchicalMemory, rng: np.random.Generator) -> MemoryOps:
    """Ops drawn uniformly among the values op_masks() allows (so every code path is reached)."""
    masks = memory.op_masks()
    pick = lambda m: torch.from_numpy(np.array([rng.choice(np.nonzero(row)[0]) for row in m.numpy()]))
    write, evict, retrieve, forget, ltm_forget = (pick(m) for m in masks)
    return MemoryOps(write - 1, evict, retrieve, forget - 1, ltm_forget)


def assert_same_state(fast: HierarchicalMemory, ref: HierarchicalMemory) -> None:
    for name in ("occupied", "write_step", "uses", "last_read", "clock"):
        assert torch.equal(getattr(fast.wm, name), getattr(ref.wm, name)), name
    torch.testing.assert_close(fast.wm.keys, ref.wm.keys)
    torch.testing.assert_close(fast.wm.values, ref.wm.values)
    for name in ("occupied", "write_step", "uses", "last_read", "count", "clock"):
        assert torch.equal(getattr(fast.ltm, name), getattr(ref.ltm, name)), name
    for a, b in zip((*fast.ltm.key_codes, *fast.ltm.value_codes), (*ref.ltm.key_codes, *ref.ltm.value_codes)):
        assert torch.equal(a, b)  # encoding is exact (int8 rounds half to even like torch.round)
    assert fast.ltm._high_water == ref.ltm._high_water


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), codec=st.sampled_from(["int8", "none"]),
       read_mode=st.sampled_from(["soft", "top1"]), eviction=st.sampled_from(["oldest", "least_used"]),
       capacity=st.integers(2, 6), joint=st.booleans())
def test_fast_apply_and_observe_match_the_reference(seed, codec, read_mode, eviction, capacity, joint):
    """Random valid operation sequences: every readout, observation and the whole state agree at every step."""
    from ahm.backbone import AHMConfig, AHMModel, BoundaryFeatures, MambaConfig

    model = AHMModel(AHMConfig(MambaConfig(vocab_size=8, d_model=8, n_layer=1), wm_slots=K, key_dim=DK,
                               value_dim=DV, ltm_capacity=capacity, ltm_codec=codec, read_mode=read_mode,
                               ltm_eviction=eviction, ltm_read_k=2, obs_topk=3))
    config = dataclasses.replace(model.config.memory_config(), joint_read=joint)
    fast, ref = (HierarchicalMemory(B, config) for _ in range(2))
    rng, g = np.random.default_rng(seed), torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _ in range(24):
            unit = lambda: torch.nn.functional.normalize(torch.randn(B, DK, generator=g), dim=-1)
            boundary = BoundaryFeatures(torch.randn(B, 12, generator=g), unit(), torch.randn(B, DV, generator=g),
                                        unit())
            obs_f, hits_f = model.observe(boundary, fast, fast=True)
            obs_r, hits_r = model._observe_ref(boundary, ref)
            for a, b in zip(obs_f, obs_r):
                torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
            assert torch.equal(hits_f.indices, hits_r.indices)
            torch.testing.assert_close(hits_f.scores, hits_r.scores, rtol=1e-5, atol=1e-6)
            assert torch.equal(torch.cat(list(fast.op_masks()), 1), torch.cat(list(ref.op_masks()), 1))
            ops = random_valid_ops(ref, rng)
            inv_t = float(rng.uniform(0.5, 10.0))
            hits = hits_r.indices[:, 0, :2]
            out_f = fast.apply(ops, boundary.key, boundary.value, boundary.query, hits, 2, inv_t, fast=True)
            out_r = ref.apply(ops, boundary.key, boundary.value, boundary.query, hits, 2, inv_t, fast=False)
            for a, b in zip(out_f, out_r):
                torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
            assert_same_state(fast, ref)
            assert torch.equal(torch.from_numpy(fast.fast.nbytes()), ref.nbytes())


def test_int8_encoding_is_quantize_int8_exactly():
    """Halves, zeros, extremes and random vectors encode to the same codes and scales as the torch codec."""
    ltm = LTMConfig(capacity=4, key_dim=DK, value_dim=DV, codec="int8")
    mem = HierarchicalMemory(1, MemoryConfig(1, DK, DV, "soft", ltm))
    rows = [torch.tensor([[0.5, -1.5, 2.5, 127.0]]), torch.zeros(1, DK), torch.tensor([[1e-30, -3.0, 3.0, 0.0]]),
            torch.randn(1, DK) * 7]
    g = torch.tensor([0])
    for i, key in enumerate(rows):
        ops = MemoryOps(g, torch.tensor([1]), torch.tensor([0]), torch.tensor([-1]), torch.tensor([0]))
        with torch.no_grad():
            mem.apply(ops, key, torch.randn(1, DV), key, torch.full((1, 2), -1), 2)
            mem.apply(ops, key, torch.randn(1, DV), key, torch.full((1, 2), -1), 2)  # moves `key` to the LTM
        codes, scales = quantize_int8(key)
        slot = int(mem.ltm.write_step[0].argmax())
        assert torch.equal(mem.ltm.key_codes[0][0, slot], codes[0]), i
        assert torch.equal(mem.ltm.key_codes[1][0, slot], scales[0]), i


def test_invalid_ops_raise_the_reference_error_and_change_nothing():
    mem = make_memory("int8", "soft", "oldest", 4)
    keys = torch.randn(B, DK)
    ops = MemoryOps.noop(B)._replace(retrieve=torch.tensor([0, 1, 0]))  # retrieve from an empty WM
    with torch.no_grad(), pytest.raises(ValueError, match="retrieve from an empty working memory"):
        mem.apply(ops, keys, torch.randn(B, DV), keys, fast=True)
    ops = MemoryOps.noop(B)._replace(write_slot=torch.tensor([0, K, 0]))
    with torch.no_grad(), pytest.raises(IndexError, match="do not exist"):
        mem.apply(ops, keys, torch.randn(B, DV), keys, fast=True)
    assert not mem.wm.occupied.any() and int(mem.wm.clock.sum()) == 0 and int(mem.ltm.count.sum()) == 0


def test_fast_path_runs_without_grad_only_and_never_writes_tensors_a_caller_holds():
    mem = make_memory("int8", "soft", "oldest", 4)
    key = torch.randn(B, DK, requires_grad=True)
    write = MemoryOps.noop(B)._replace(write_slot=torch.zeros(B, dtype=torch.int64))
    mem.apply(write, key, torch.randn(B, DV), key.detach())  # grad on: the reference keeps the graph
    assert mem.wm.keys.requires_grad and mem._fast is None
    held = mem.wm.keys
    before = held.detach().clone()
    read = write._replace(write_slot=torch.ones(B, dtype=torch.int64), retrieve=torch.ones(B, dtype=torch.int64))
    with torch.no_grad():
        out = mem.apply(read, torch.randn(B, DK), torch.randn(B, DV), torch.randn(B, DK))
    assert mem._fast is not None and not out.wm.requires_grad  # the fast path ran
    assert torch.equal(held.detach(), before) and mem.wm.keys is not held
    held.sum().backward()  # the old graph is intact
    assert key.grad is not None


def test_unsupported_memories_say_why_and_use_the_reference():
    ltm = LTMConfig(capacity=8, key_dim=DK, value_dim=DV, codec="autoencoder")
    mem = HierarchicalMemory(B, MemoryConfig(K, DK, DV, "soft", ltm))
    assert "codec" in fast_path_unsupported(mem) and mem.fast is None
    keys = torch.randn(B, DK)
    with torch.no_grad():
        mem.apply(MemoryOps.noop(B), keys, torch.randn(B, DV), keys)  # falls back silently
        with pytest.raises(ValueError, match="fast=False"):
            mem.apply(MemoryOps.noop(B), keys, torch.randn(B, DV), keys, fast=True)


# ---------------------------------------------------------------- the environment on both paths
def _run_env_pair(config: AHMMemoryConfig, batch: int, steps: int, seed: int):
    fast, ref = EpisodeBatch(config, batch), EpisodeBatch(config, batch)
    ref.use_fast_path = False
    rng = np.random.default_rng(seed)
    seeds = [int(s) for s in rng.integers(0, 1000, batch)]
    for eb in (fast, ref):
        eb.reset_rows(np.arange(batch), seeds)
    yield fast.observe(), ref.observe(), fast, ref
    for _ in range(steps):
        actions = np.stack([[rng.choice(np.nonzero(m)[0]) for m in np.split(row, np.cumsum(fast.nvec)[:-1])]
                            for row in fast.masks])
        out_f, out_r = fast.step(actions), ref.step(actions)
        yield out_f, out_r, fast, ref
        done = out_f.terminated | out_f.truncated
        if done.any():
            rows = np.nonzero(done)[0]
            new = [int(s) for s in rng.integers(0, 1000, len(rows))]
            for eb in (fast, ref):
                eb.reset_rows(rows, new)
                eb.observe()


def _assert_tree_close(a, b, path=""):
    if isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for key in a:
            _assert_tree_close(a[key], b[key], f"{path}/{key}")
    elif np.asarray(a).dtype.kind == "f":
        # reads agree to float32 rounding (rtol 1e-5); in `state` integration they feed back into the SSM, so an
        # observation near zero can differ by a few 1e-6 after some steps
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5, err_msg=path)
    else:
        np.testing.assert_array_equal(a, b, err_msg=path)


@pytest.mark.parametrize("task,integration", [("passkey", "readout"), ("mqar", "readout"), ("passkey", "state")])
def test_env_steps_agree_on_the_fast_and_reference_paths(task, integration):
    """Observations, masks, rewards, terminations and the whole info tree, over random valid actions."""
    config = AHMMemoryConfig(task=task, seq_len=2048, chunk_size=64, wm_slots=3, ltm_capacity=5, backbone="random",
                             integration=integration, max_steps=20)
    for i, (f, r, fast, ref) in enumerate(_run_env_pair(config, batch=3, steps=70, seed=0)):
        assert fast.memory.fast is not None
        np.testing.assert_array_equal(fast.masks, ref.masks)
        if i == 0:
            _assert_tree_close(f, r)
            continue
        _assert_tree_close(f.observation, r.observation)
        np.testing.assert_allclose(f.reward, r.reward, rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(f.terminated, r.terminated)
        np.testing.assert_array_equal(f.truncated, r.truncated)
        _assert_tree_close(f.info, r.info)


def test_fast_observation_is_observation_arrays_of_the_reference_observation():
    config = AHMMemoryConfig(seq_len=2048, chunk_size=64, wm_slots=3, ltm_capacity=5, backbone="random")
    for _, _, fast, _ in _run_env_pair(config, batch=2, steps=20, seed=1):
        boundary, _ = fast._unpack(fast._packed_now)
        obs, _ = fast.model._observe_ref(boundary, fast.memory)
        _assert_tree_close(fast.observation, observation_arrays(obs, fast.t, fast.n_chunks))
