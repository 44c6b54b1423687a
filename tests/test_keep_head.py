"""The keep head: hindsight labels on hand-built episodes, the head on the backbone, its observation in the env, and
its training in the supervised phase (ahm.backbone.AHMModel.keep_head, ahm.training.window_loss)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ahm.backbone import AHMConfig, AHMModel, DefaultController, MambaConfig
from ahm.envs import AHMMemoryEnv
from ahm.envs.episode_scoring import Annotations
from ahm.envs.streams import make_task
from ahm.training.data import Curriculum, TaskSource
from ahm.training.window_loss import WindowLoss, balanced_bce

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ---------------------------------------------------------------- hindsight labels
def test_keep_labels_mark_exactly_the_facts_a_later_query_asks_for():
    """Decoy with re-assignment (forget): targets are needed, decoys and stale assignments never are; the reuse
    distance is the gap to the first query, counted by hand from the stream's facts and queries."""
    stream = make_task("decoy", 4096, 64, seed=3, reassign_fraction=0.5)
    kinds = {f.kind for f in stream.facts}
    assert kinds == {"target", "decoy", "stale"}  # the episode has every kind, so each check below can fail
    ann = Annotations.of_stream(stream)
    labels, distance = ann.keep_labels(), ann.reuse_distance()
    first_query = {}
    for q in stream.queries:
        first_query[q.fact_id] = min(first_query.get(q.fact_id, q.chunk), q.chunk)
    want = np.zeros(stream.n_chunks, dtype=np.float32)
    want_distance = np.full(stream.n_chunks, -1)
    for f in stream.facts:
        if f.kind == "target":
            assert f.fact_id in first_query and first_query[f.fact_id] > f.chunk
            want[f.chunk] = 1.0
            want_distance[f.chunk] = first_query[f.fact_id] - f.chunk
        else:
            assert f.fact_id not in first_query  # decoys and stale assignments are never asked
    np.testing.assert_array_equal(labels, want)
    np.testing.assert_array_equal(distance, want_distance)
    assert labels.dtype == np.float32 and 0 < labels.sum() < len(labels)


def test_task_batches_carry_the_labels_of_their_streams():
    source = TaskSource(("decoy",), 64, Curriculum((2048,), "mixed"))
    batch = source.sample(3, 2048, np.random.default_rng(0))
    assert batch.keep_targets.shape == batch.answer_targets.shape
    for row, seed in enumerate(batch.stream_seeds):
        stream = make_task("decoy", 2048, 64, seed)
        np.testing.assert_array_equal(batch.keep_targets[row], Annotations.of_stream(stream).keep_labels())


def test_balanced_bce_weighs_each_class_half():
    logits = torch.tensor([[2.0, -1.0, 0.5, 0.0]])
    labels = torch.tensor([[1.0, 0.0, 0.0, 0.0]])
    bce = lambda x, y: float(torch.nn.functional.binary_cross_entropy_with_logits(torch.tensor(x), torch.tensor(y)))
    want = 0.5 * bce(2.0, 1.0) + 0.5 * np.mean([bce(-1.0, 0.0), bce(0.5, 0.0), bce(0.0, 0.0)])
    assert float(balanced_bce(logits, labels)) == pytest.approx(want, rel=1e-6)
    assert float(balanced_bce(logits[:, 1:], labels[:, 1:])) == pytest.approx(
        np.mean([bce(-1.0, 0.0), bce(0.5, 0.0), bce(0.0, 0.0)]), rel=1e-6)  # one class only: its mean


# ---------------------------------------------------------------- the head on the backbone
def tiny_model(vocab: int, keep_head: bool = False, seed: int = 0) -> AHMModel:
    torch.manual_seed(seed)
    return AHMModel(AHMConfig(MambaConfig(vocab_size=vocab, d_model=16, n_layer=1, d_state=4), chunk_size=64,
                              wm_slots=4, ltm_capacity=16, key_dim=8, keep_head=keep_head))


def test_with_heads_keeps_every_weight_and_only_adds_the_head():
    model = tiny_model(64)
    headed = model.with_heads(keep=True)
    assert headed.config.keep_head and not model.config.keep_head and headed.with_heads(keep=True) is headed
    for name, weight in model.state_dict().items():
        assert torch.equal(weight, headed.state_dict()[name])
    x = torch.randint(0, 64, (2, 128))
    with torch.no_grad():
        a = [o.logits for o in model.stream(x, DefaultController())]
        b = list(headed.stream(x, DefaultController()))
    for la, ob in zip(a, b):
        assert torch.equal(la, ob.logits)  # the head changes nothing the model predicts
        want = headed.keep_head(ob.features.hidden[:, -1]).squeeze(-1)
        torch.testing.assert_close(ob.features.boundary.keep_logit, want)
        torch.testing.assert_close(ob.observation.keep_score, torch.sigmoid(want))
    assert all(o.observation.keep_score is None for o in model.stream(x, DefaultController()))


def test_keep_loss_reaches_the_backbone_and_falls():
    """The head's loss trains the backbone too (the gradient reaches the embedding), and a few steps on
    hindsight labels lower it."""
    source = TaskSource(("decoy",), 64, Curriculum((1024,), "mixed"))
    model = tiny_model(source.vocab_size, keep_head=True)
    loss_fn = WindowLoss(model, lm_weight=0.0, answer_weight=0.0, keep_weight=1.0)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    batch = source.sample(4, 1024, np.random.default_rng(0))
    tokens, keep = torch.from_numpy(batch.tokens), torch.from_numpy(batch.keep_targets)
    losses = []
    for step in range(25):
        state = model.init_state(4)
        out, _ = loss_fn(tokens, torch.full((4,), -1), state, [DefaultController()] * keep.shape[1], None, keep)
        opt.zero_grad()
        out.loss.backward()
        if step == 0:
            assert model.backbone.embedding.weight.grad.abs().sum() > 0
        opt.step()
        losses.append(float(out.keep_loss))
    assert losses[0] > 0.6 and losses[-1] < 0.8 * losses[0], losses


def test_window_loss_refuses_keep_weight_without_a_head():
    with pytest.raises(ValueError, match="keep head"):
        WindowLoss(tiny_model(64), 1.0, 1.0, keep_weight=1.0)


# ---------------------------------------------------------------- the observation
@pytest.mark.parametrize("fast", [True, False])
def test_env_observes_keep_score_only_with_a_head(fast):
    probe = make_task("decoy", 2048, 64, 0)
    headed = tiny_model(probe.vocab_size, keep_head=True)
    env = AHMMemoryEnv(task="decoy", seq_len=2048, chunk_size=64, wm_slots=4, ltm_capacity=16, backbone=headed)
    env.unwrapped._episodes.use_fast_path = fast
    assert "keep_score" in env.observation_space.spaces
    obs, _ = env.reset(seed=5)
    stream = make_task("decoy", 2048, 64, int(env.unwrapped._episodes.stream_seeds[0]))
    tokens = torch.from_numpy(stream.tokens(0, 2048))[None]
    with torch.no_grad():
        want = [torch.sigmoid(o.features.boundary.keep_logit) for o in headed.stream(tokens, DefaultController())]
    for t in range(5):
        assert env.observation_space.contains(obs)
        assert obs["keep_score"][0] == pytest.approx(float(want[t][0]), abs=1e-6)
        obs, *_ = env.step(np.zeros(5, dtype=np.int64))
    plain = AHMMemoryEnv(task="decoy", seq_len=2048, chunk_size=64, wm_slots=4, ltm_capacity=16,
                         backbone=tiny_model(probe.vocab_size))
    assert "keep_score" not in plain.observation_space.spaces and "keep_score" not in plain.reset(seed=0)[0]


def test_the_keep_head_learns_at_ten_times_the_rest_s_rate():
    from ahm.training.supervised import KEEP_HEAD_LR_SCALE, _param_groups

    headed = tiny_model(64, keep_head=True)
    groups = _param_groups(headed, 1e-3, 0.1)
    # the body's matrices and its vectors, then the head's (two weights, two biases) the same way
    assert [len(g["params"]) for g in groups[2:]] == [2, 2]
    assert sum(len(g["params"]) for g in groups) == len(list(headed.parameters()))
    assert all(g["lr"] == 1e-3 * KEEP_HEAD_LR_SCALE for g in groups[2:]) and not any("lr" in g for g in groups[:2])
    assert [g["weight_decay"] for g in groups] == [0.1, 0.0, 0.1, 0.0]
    assert len(_param_groups(tiny_model(64), 1e-3, 0.1)) == 2  # no head: the body's two groups
