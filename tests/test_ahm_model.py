"""ahm.backbone.ahm_model and memory_io: the AHM model, its integration modes, causality, the
cached readout path, invalid operations, save / load round trips, accounting, gradients."""

from __future__ import annotations

import doctest
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import ahm.backbone.ahm_model
from ahm.backbone import (
    AHMConfig,
    AHMModel,
    CodecOptions,
    DefaultController,
    MambaConfig,
    MemoryObservation,
    MemoryOps,
    NullController,
    load_memory,
    save_memory,
)
from ahm.backbone.ahm_model import RETRIEVE_LTM, RETRIEVE_NONE, RETRIEVE_WM
from ahm.backbone.memory_io import MEMORY_TENSORS, memory_tensors

V = 16


def small_config(**kw) -> AHMConfig:
    base = dict(backbone=MambaConfig(vocab_size=V, d_model=16, n_layer=2, d_state=4), chunk_size=8, wm_slots=3,
                ltm_capacity=6, key_dim=8, codec_options=CodecOptions(pq_bits=4, pq_backend="builtin", pq_iters=5))
    base.update(kw)
    return AHMConfig(**base)


def make_model(seed: int = 0, randomize: bool = True, **kw) -> AHMModel:
    """A small model; ``randomize`` gives the zero-initialised integration weights random values so memory matters."""
    torch.manual_seed(seed)
    model = AHMModel(small_config(**kw)).eval()
    if randomize:
        with torch.no_grad():
            model.integration.proj.weight.normal_(0, 0.5)
    return model


def tokens(b: int = 2, length: int = 80, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, V, (b, length), generator=torch.Generator().manual_seed(seed))


class RandomController:
    """Random operations that are valid in the observed state (a stand-in for any controller)."""

    def __init__(self, seed: int) -> None:
        self.g = torch.Generator().manual_seed(seed)

    def __call__(self, obs: MemoryObservation) -> MemoryOps:
        b, k = obs.wm_occupied.shape
        r = lambda n: torch.randint(0, n, (b,), generator=self.g)
        occupied, ltm_any = obs.wm_occupied > 0, obs.ltm_fill > 0
        retrieve = r(4)
        retrieve = torch.where(occupied.any(1), retrieve, retrieve & 2)  # drop the WM bit on an empty WM
        retrieve = torch.where(ltm_any, retrieve, retrieve & 1)
        forget = r(k)
        forget = torch.where(occupied.gather(1, forget[:, None])[:, 0] & (r(3) == 0), forget, -1)
        ltm_forget = torch.where(ltm_any & (r(4) == 0), 1 + r(3), 0)
        return MemoryOps(r(k + 1) - 1, r(2), retrieve, forget, ltm_forget)


# ---------------------------------------------------------------- the backbone hook
def test_input_offset_is_added_to_the_embeddings():
    torch.manual_seed(0)
    model = AHMModel(small_config())
    bb, x = model.backbone, tokens(2, 12)
    with torch.no_grad():
        plain, _ = bb(x)
        zero, _ = bb(x, None, torch.zeros(2, 16))
        offset = torch.randn(2, 16)
        per_step, _ = bb(x, None, offset[:, None, :].expand(2, 12, 16))
        broadcast, _ = bb(x, None, offset)
    assert torch.equal(plain, zero)
    assert torch.equal(per_step, broadcast) and not torch.allclose(plain, broadcast)
    with pytest.raises(ValueError, match="input_offset must have shape"):
        bb(x, None, torch.zeros(2, 15))


# ---------------------------------------------------------------- integration and streaming
@pytest.mark.parametrize("integration", ["readout", "state"])
def test_untrained_integration_leaves_the_backbone_lm_unchanged(integration):
    model = make_model(randomize=False, integration=integration)
    x = tokens(2, 75)  # the last chunk is shorter
    with torch.no_grad():
        hidden, _ = model.backbone(x)
        want = model.lm_head(hidden)
        got = torch.cat([out.logits for out in model.stream(x, DefaultController())], 1)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def run(model: AHMModel, x: torch.Tensor, controller) -> list:
    with torch.no_grad():
        return list(model.stream(x, controller))


def test_readout_features_are_identical_whatever_the_controller_does():
    model, x = make_model(integration="readout"), tokens(2, 96)
    a, b = run(model, x, DefaultController()), run(model, x, RandomController(1))
    assert any(not torch.equal(oa.ops.write_slot, ob.ops.write_slot) for oa, ob in zip(a, b))
    for oa, ob in zip(a, b):
        assert torch.equal(oa.features.hidden, ob.features.hidden)
        for fa, fb in zip(oa.features.boundary, ob.features.boundary):
            assert (fa is None and fb is None) or torch.equal(fa, fb)  # keep_logit: None without a keep head
    # The controllers did change what the model predicts (so the equality above could have failed).
    assert not all(torch.allclose(oa.logits, ob.logits) for oa, ob in zip(a, b))


def test_state_features_do_depend_on_the_controller():
    model, x = make_model(integration="state"), tokens(2, 96)
    a, b = run(model, x, DefaultController()), run(model, x, NullController())
    assert not torch.allclose(a[-1].features.hidden, b[-1].features.hidden)


def test_cached_readout_features_reproduce_the_streamed_run():
    """The env's path: features once per sequence, then memory steps on the cached boundary features."""
    model, x = make_model(integration="readout"), tokens(2, 64)
    streamed = run(model, x, RandomController(3))
    with torch.no_grad():
        cached, backbone_state = [], None
        for s in range(0, x.shape[1], model.config.chunk_size):
            features, backbone_state = model.chunk_features(x[:, s : s + model.config.chunk_size], backbone_state)
            cached.append(features)
        state = model.init_state(2)
        memory, retrieved, controller = state.memory, state.retrieved, RandomController(3)
        for features, out in zip(cached, streamed):
            logits = model.readout(features.hidden, retrieved)
            step = model.memory_step(features.boundary, memory, controller)
            retrieved = step.retrieved
            assert torch.equal(logits, out.logits)
            assert all(torch.equal(p, q) for p, q in zip(step.ops, out.ops))
            assert all((p is None and q is None) or torch.equal(p, q)
                       for p, q in zip(step.observation, out.observation))


@pytest.mark.parametrize("integration", ["readout", "state"])
def test_logits_never_see_future_tokens(integration):
    """Changing token p changes no logit before p, in particular none of p's own chunk (memory acts a chunk later)."""
    model = make_model(integration=integration)
    x = tokens(2, 48)
    y = x.clone()
    p = 13  # inside the second chunk
    y[:, p] = (y[:, p] + 1) % V
    la = torch.cat([o.logits for o in run(model, x, DefaultController())], 1)
    lb = torch.cat([o.logits for o in run(model, y, DefaultController())], 1)
    torch.testing.assert_close(la[:, :p], lb[:, :p], rtol=0, atol=1e-6)
    assert not torch.allclose(la[:, 16:], lb[:, 16:])  # later chunks do see it, via state and memory


def test_observation_shapes_and_accounting():
    model = make_model()
    c = model.config
    outs = run(model, tokens(2, 80), DefaultController())
    obs, memory = outs[-1].observation, outs[-1].state.memory
    b, k = 2, c.wm_slots
    shapes = {"ssm_features": (b, c.feature_dim), "wm_occupied": (b, k), "wm_age": (b, k), "wm_uses": (b, k),
              "wm_similarity": (b, k), "wm_key_similarity": (b, k), "ltm_fill": (b,),
              "ltm_topk_similarity": (b, c.obs_topk), "ltm_key_similarity": (b,)}
    for name, shape in shapes.items():
        t = getattr(obs, name)
        assert t.shape == shape and t.dtype == torch.float32 and not t.requires_grad, name
    assert c.feature_dim == 16 + 2 * 4
    # 10 chunks, 3 WM slots: 7 entries moved to an LTM of 6 (one evicted by the 'oldest' rule).
    assert memory.wm.count.tolist() == [3, 3] and memory.ltm.count.tolist() == [6, 6]
    wm_bytes = 3 * (c.key_dim + c.resolved_value_dim) * 4
    ltm_bytes = 6 * ((c.key_dim + 4) + (c.resolved_value_dim + 4))  # int8 codes + a float32 scale each
    assert memory.nbytes().tolist() == [wm_bytes + ltm_bytes] * 2
    ssm_bytes = 2 * (32 * 4 + 32 * 3) * 4  # per layer: (d_inner, d_state) SSM state + (d_inner, d_conv - 1) conv
    assert outs[-1].state.nbytes().tolist() == [wm_bytes + ltm_bytes + ssm_bytes] * 2


def test_invalid_operations_raise_and_change_nothing():
    model = make_model()
    state = model.init_state(2)
    x = tokens(2, 8)

    def ops_with(**kw):
        return lambda obs: MemoryOps.noop(2)._replace(**kw)

    with torch.no_grad():
        before = {k: v.clone() for k, v in memory_tensors(state.memory).items()}
        with pytest.raises(IndexError, match="do not exist; use 0..2"):
            model.process_chunk(x, state, ops_with(write_slot=torch.tensor([0, 3])))
        with pytest.raises(ValueError, match="retrieve from an empty long-term memory"):
            model.process_chunk(x, state, ops_with(write_slot=torch.tensor([0, 0]), retrieve=torch.tensor([0, 2])))
        with pytest.raises(ValueError, match="forget an empty working-memory slot"):
            model.process_chunk(x, state, ops_with(forget_slot=torch.tensor([1, -1])))
        with pytest.raises(ValueError, match="int64 tensor of shape"):
            model.process_chunk(x, state, ops_with(retrieve=torch.tensor([0.0, 0.0])))
        with pytest.raises(ValueError, match="must return MemoryOps"):
            model.process_chunk(x, state, lambda obs: {"write_slot": 0})
        after = memory_tensors(state.memory)
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_op_masks_agree_with_validation():
    model = make_model()
    outs = run(model, tokens(2, 24), RandomController(0))
    memory = outs[-1].state.memory
    masks = memory.op_masks()
    assert torch.equal(masks.forget_slot[:, 1:], memory.wm.occupied)
    assert torch.equal(masks.retrieve[:, 2], memory.ltm.count > 0)


@pytest.mark.parametrize("fast", [False, True])
def test_forgetting_the_ltm_entry_nearest_to_the_key_updates_a_re_assigned_key(fast):
    """ltm_forget=3 removes the LTM entry whose key the chunk's key matches (not the query's match, not the
    oldest), and the observation shows that match: wm/ltm_key_similarity are to the key, not to the query."""
    from ahm.backbone import BoundaryFeatures, HierarchicalMemory

    model = make_model(ltm_codec="none")
    c = model.config
    memory = HierarchicalMemory(1, c.memory_config())
    eye = torch.eye(c.key_dim)
    value = torch.zeros(1, c.resolved_value_dim)
    write = lambda slot, key: memory.apply(MemoryOps.noop(1)._replace(write_slot=torch.tensor([slot]),
                                                                      evict_to_ltm=torch.tensor([1])),
                                           key, value, key, fast=fast)
    with torch.no_grad():
        for i in range(c.wm_slots + 3):  # keys e_0 .. e_5 written round-robin: e_0, e_1, e_2 moved to the LTM
            write(i % c.wm_slots, eye[i : i + 1])
        assert memory.ltm.count.tolist() == [3]
        boundary = BoundaryFeatures(torch.zeros(1, c.feature_dim), eye[1:2], value, eye[4:5])  # key e_1, query e_4
        obs, _ = model.observe(boundary, memory, fast=fast)
        assert obs.ltm_key_similarity.tolist() == [1.0] and obs.ltm_topk_similarity[0, 0].item() == 0.0
        assert obs.wm_key_similarity.tolist() == [[0.0, 0.0, 0.0]]  # e_3, e_4, e_5 in the WM
        assert obs.wm_similarity.tolist() == [[0.0, 1.0, 0.0]]
        slot_of_e1 = int(memory.ltm.write_step[0].argsort()[1])  # written second
        memory.apply(MemoryOps.noop(1)._replace(ltm_forget=torch.tensor([3])), eye[1:2], value, eye[4:5], fast=fast)
    assert memory.ltm.count.tolist() == [2] and not bool(memory.ltm.occupied[0, slot_of_e1])


@pytest.mark.parametrize("fast", [False, True])
@pytest.mark.parametrize("read_mode", ["soft", "top1"])
def test_a_joint_read_of_both_levels_is_one_attention_over_their_entries(fast, read_mode):
    """joint_read (what the shared level readout uses): m_wm + m_ltm of retrieve=3 is one softmax over the WM's
    slots and the LTM's hits (top1: the best entry of either level); without it each level reads in full."""
    from dataclasses import replace

    from ahm.backbone import HierarchicalMemory

    model = make_model(ltm_codec="none", read_mode=read_mode)
    c = model.config
    g = torch.Generator().manual_seed(0)
    unit = lambda n: torch.nn.functional.normalize(torch.randn(n, c.key_dim, generator=g), dim=-1)
    keys, values = unit(c.wm_slots + 2), torch.randn(c.wm_slots + 2, c.resolved_value_dim, generator=g)
    query, inv_t = unit(1), 3.0
    reads = {}
    for joint in (True, False):
        memory = HierarchicalMemory(1, replace(c.memory_config(), joint_read=joint))
        with torch.no_grad():
            for i in range(c.wm_slots + 2):  # the first two entries end in the LTM
                memory.apply(MemoryOps.noop(1)._replace(write_slot=torch.tensor([i % c.wm_slots]),
                                                        evict_to_ltm=torch.tensor([1])),
                             keys[i : i + 1], values[i : i + 1], query, fast=fast)
            read = memory.apply(MemoryOps.noop(1)._replace(retrieve=torch.tensor([3])), keys[:1], values[:1], query,
                                read_k=2, inv_temperature=inv_t, fast=fast)
        reads[joint] = read
    logits = (keys @ query[0]) * inv_t  # every entry is in exactly one level
    want = (torch.softmax(logits, 0) @ values if read_mode == "soft" else values[int(logits.argmax())])
    torch.testing.assert_close((reads[True].wm + reads[True].ltm)[0], want, rtol=1e-5, atol=1e-6)
    assert float(reads[True].wm_weights.sum() + reads[True].ltm_weights.sum()) == pytest.approx(1.0)
    assert float(reads[False].wm_weights.sum() + reads[False].ltm_weights.sum()) == pytest.approx(2.0)


# ---------------------------------------------------------------- save / load
@pytest.mark.parametrize("codec", ["none", "int8", "pq", "autoencoder", "hash"])
def test_memory_round_trips_exactly_and_a_run_resumes_identically(codec, tmp_path: Path):
    model, x = make_model(ltm_codec=codec), tokens(2, 160)
    if codec == "pq":
        model.calibrate_codecs(tokens(4, 256, seed=9))
    with torch.no_grad():
        state = model.init_state(2)
        for out in model.stream(x[:, :96], RandomController(5), state):
            state = out.state
        save_memory(tmp_path, state.memory, extra={"chunk": 12})
        saved = {k: v.clone() for k, v in memory_tensors(state.memory).items()}
        first = [o.logits for o in model.stream(x[:, 96:], DefaultController(), state)]
        memory, extra = load_memory(tmp_path, model.key_codec, model.value_codec)
        assert extra == {"chunk": 12}
        loaded = memory_tensors(memory)
        assert set(loaded) == set(saved) and all(torch.equal(loaded[k], saved[k]) for k in saved)
        assert all(loaded[k].dtype == saved[k].dtype for k in saved)
        # The backbone state and r_t are not part of the memory file: rebuild them by replaying the first
        # part into a fresh state, then swap in the loaded memory.
        replay = model.init_state(2)
        for out in model.stream(x[:, :96], RandomController(5), replay):
            replay = out.state
        resumed = replay._replace(memory=memory)
        second = [o.logits for o in model.stream(x[:, 96:], DefaultController(), resumed)]
    assert all(torch.equal(a, b) for a, b in zip(first, second))


def test_load_refuses_other_codecs_and_corrupted_files(tmp_path: Path):
    model = make_model(ltm_codec="autoencoder")
    outs = run(model, tokens(2, 40), DefaultController())
    save_memory(tmp_path, outs[-1].state.memory)
    other = make_model(seed=1, ltm_codec="autoencoder")
    with torch.no_grad():
        other.key_codec.decoder.bias.add_(0.1)  # codecs are seeded by their options: make this one differ
    with pytest.raises(ValueError, match="other key-codec parameters"):
        load_memory(tmp_path, other.key_codec, other.value_codec)
    standalone, _ = load_memory(tmp_path)  # without codecs: rebuilt from the saved parameters
    assert torch.equal(standalone.ltm.decode_keys(torch.zeros(2, 1, dtype=torch.long)),
                       outs[-1].state.memory.ltm.decode_keys(torch.zeros(2, 1, dtype=torch.long)))
    (tmp_path / MEMORY_TENSORS).write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="corrupted"):
        load_memory(tmp_path)
    with pytest.raises(FileNotFoundError, match="memory.json"):
        load_memory(tmp_path / "nowhere")


# ---------------------------------------------------------------- training signals, config, boundaries
@pytest.mark.parametrize("integration", ["readout", "state"])
def test_gradients_reach_the_memory_projections(integration):
    model = make_model(integration=integration).train()
    state = model.init_state(2)
    loss = 0.0
    for out in model.stream(tokens(2, 48), DefaultController(), state):
        loss = loss + out.logits.logsumexp(-1).mean()
    loss.backward()
    for name in ("key_proj", "query_proj", "value_proj"):
        grad = getattr(model, name).weight.grad
        assert grad is not None and grad.abs().sum() > 0, name
    assert model.log_inv_temperature.grad is not None
    bad = [n for n, p in model.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
    assert not bad, f"non-finite gradients (reads of both levels with empty LTM hits): {bad}"


def test_split_pooling_can_send_the_key_and_the_value_token_apart():
    """With large position biases at distance 1 (key) and 0 (value), the key is read from the chunk's
    second-to-last position and the value from its last: a fact (key, value) ending the chunk is split; the shared
    pooling cannot (its key and value read the same mixture)."""
    model = make_model()
    hidden, state = model.backbone(tokens(2, 8))
    with torch.no_grad():
        model.write_position.zero_()
        model.write_position[0, 0] = model.write_position[1, 1] = 50.0
    b = model.boundary_features(hidden, state)
    torch.testing.assert_close(b.value, model.value_proj(hidden[:, -1]))
    torch.testing.assert_close(b.key, torch.nn.functional.normalize(model.key_proj(hidden[:, -2]), dim=-1))
    shared = make_model(write_pooling="shared")
    assert not hasattr(shared, "key_attention") and not hasattr(shared, "write_position")
    sb = shared.boundary_features(hidden, state)
    pooled = torch.linalg.lstsq(shared.value_proj.weight, sb.value.T).solution.T  # the one pooled vector
    torch.testing.assert_close(sb.key, torch.nn.functional.normalize(shared.key_proj(pooled), dim=-1), atol=1e-4,
                               rtol=1e-4)


def test_gradients_reach_both_poolings():
    model = make_model().train()
    out = next(model.stream(tokens(2, 8), DefaultController()))
    (out.features.boundary.key.sum() + out.features.boundary.value.sum()).backward()
    for name in ("write_recency", "key_recency", "write_position", "write_attention.weight", "key_attention.weight"):
        assert model.get_parameter(name).grad is not None, name
    assert model.write_position.grad[1].abs().sum() > 0 and model.write_position.grad[0].abs().sum() > 0


@pytest.mark.parametrize("name, before, default", [("write_pooling", "shared", "split"),
                                                    ("level_readout", "separate", "shared")])
def test_checkpoints_saved_before_a_field_existed_load_as_the_model_they_were(name, before, default):
    saved = small_config().to_dict()
    del saved[name]
    assert getattr(AHMConfig.from_dict(saved), name) == before
    assert getattr(AHMConfig.from_dict(small_config().to_dict()), name) == default
    with pytest.raises(ValueError, match=name):
        small_config(**{name: "mean"})


@pytest.mark.parametrize("level_readout", ["shared", "separate"])
def test_an_entry_moved_to_the_ltm_reads_as_it_did_in_the_wm_only_when_shared(level_readout):
    model = make_model(ltm_codec="none", read_mode="top1", level_readout=level_readout)
    memory = model.init_state(1).memory
    g = torch.Generator().manual_seed(3)
    key, other_key = torch.nn.functional.normalize(torch.randn(2, 1, 8, generator=g), dim=-1)
    value, other_value = torch.randn(2, 1, 16, generator=g)
    ops = lambda write, evict, retrieve: MemoryOps(*(torch.tensor([v]) for v in (write, evict, retrieve, -1, 0)))
    with torch.no_grad():
        memory.apply(ops(0, 0, RETRIEVE_NONE), key, value, key)  # the entry into WM slot 0
        from_wm = memory.apply(ops(0, 1, RETRIEVE_WM), other_key, other_value, key)  # read it, then it moves to LTM
        from_ltm = memory.apply(ops(-1, 0, RETRIEVE_LTM), other_key, other_value, key)
        assert torch.equal(from_wm.wm, value) and torch.equal(from_ltm.ltm, value)  # the same entry, each level
        hidden = torch.randn(1, 3, 16, generator=g)
        same = torch.allclose(model.readout(hidden, from_wm.vector()), model.readout(hidden, from_ltm.vector()))
    assert same == (level_readout == "shared")


@pytest.mark.parametrize("integration", ["readout", "state"])
def test_changing_the_level_readout_keeps_what_the_model_computes(integration):
    separate = make_model(level_readout="separate", integration=integration)
    shared = separate.with_level_readout("shared")
    assert (separate.config.level_readout, shared.config.level_readout) == ("separate", "shared")
    assert shared.integration.proj.weight.shape == (16, 16) and separate.integration.proj.weight.shape == (16, 32)
    g = torch.Generator().manual_seed(0)
    hidden, read = torch.randn(2, 3, 16, generator=g), torch.randn(2, 16, generator=g)
    wm_only, any_read = torch.cat([read, torch.zeros_like(read)], 1), torch.randn(2, 32, generator=g)
    apply = (lambda m, r: m.readout(hidden, r)) if integration == "readout" else (lambda m, r: m.input_offset(r))
    with torch.no_grad():
        assert torch.allclose(apply(shared, wm_only), apply(separate, wm_only), atol=1e-6)  # the WM's columns kept
        back = shared.with_level_readout("separate")
        assert torch.allclose(apply(back, any_read), apply(shared, any_read), atol=1e-6)  # the same function
        assert not torch.allclose(apply(shared, any_read), apply(separate, any_read), atol=1e-3)
    assert shared.with_level_readout("shared") is shared
    with pytest.raises(ValueError, match="level_readout"):
        shared.with_level_readout("both")


def test_codec_loss_trains_the_autoencoder():
    model = make_model(ltm_codec="autoencoder")
    features, _ = model.chunk_features(tokens(2, 8))
    loss = model.codec_loss(features.boundary)
    loss.backward()
    assert model.key_codec.decoder.weight.grad is not None
    assert model.key_proj.weight.grad is None  # targets are detached: the codec loss trains the codec only


def test_config_round_trip_and_errors():
    config = small_config(ltm_codec="pq", integration="state", ltm_eviction="least_used")
    assert AHMConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="unknown fields"):
        AHMConfig.from_dict({"wm_size": 3})
    with pytest.raises(ValueError, match="integration"):
        small_config(integration="concat")
    with pytest.raises(ValueError, match="unknown codec"):
        AHMModel(small_config(ltm_codec="zstd"))


def test_docstring_examples_run():
    result = doctest.testmod(ahm.backbone.ahm_model)
    assert result.attempted > 0 and result.failed == 0


def test_backbone_imports_no_rl_or_gymnasium():
    code = ("import sys, ahm.backbone; bad = [m for m in ('gymnasium', 'stable_baselines3', 'sb3_contrib', 'faiss') "
            "if m in sys.modules]; print(bad); assert not bad")
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
