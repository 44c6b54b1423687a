"""The ask head: an auxiliary objective of the supervised phase that names, at every boundary, the first token of the
fact the next query asks for (ahm.envs.episode_scoring.next_asked_tokens, ahm.training.window_loss)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ahm.backbone import AHMConfig, AHMModel, DefaultController, MambaConfig
from ahm.envs.episode_scoring import next_asked_tokens
from ahm.envs.streams import make_task
from ahm.training.config import TrainLMConfig
from ahm.training.data import Curriculum, TaskSource
from ahm.training.window_loss import WindowLoss

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_model(vocab: int, ask_head: bool = False, keep_head: bool = False) -> AHMModel:
    torch.manual_seed(0)
    return AHMModel(AHMConfig(MambaConfig(vocab_size=vocab, d_model=16, n_layer=1, d_state=4), chunk_size=64,
                              wm_slots=4, ltm_capacity=16, key_dim=8, keep_head=keep_head, ask_head=ask_head))


# ---------------------------------------------------------------- labels
@pytest.mark.parametrize("seed", [0, 7])
def test_next_asked_tokens_name_the_next_query_s_fact_counted_by_hand(seed):
    """Decoy with re-assignment: at each boundary, the first token of the fact the first strictly later query asks
    for; on Decoy that is the asked kind's marker everywhere a query follows, never the decoys' marker."""
    stream = make_task("decoy", 4096, 64, seed=seed, reassign_fraction=0.5)
    labels = next_asked_tokens(stream)
    want = np.full(stream.n_chunks, -1)
    for t in range(stream.n_chunks):
        later = [q for q in stream.queries if q.chunk > t]
        if later:
            want[t] = stream.facts[min(later, key=lambda q: q.chunk).fact_id].tokens[0]
    np.testing.assert_array_equal(labels, want)
    last = max(q.chunk for q in stream.queries)
    assert set(labels[:last].tolist()) == {stream.asked_marker} and (labels[last:] == -1).all()
    assert stream.decoy_marker not in labels


def test_text_has_no_ask_labels_and_batches_carry_their_streams_labels():
    assert (next_asked_tokens(make_task("text", 2048, 64, 0)) == -1).all()
    source = TaskSource(("decoy",), 64, Curriculum((2048,), "mixed"))
    batch = source.sample(3, 2048, np.random.default_rng(1))
    assert batch.ask_targets.shape == batch.answer_targets.shape and batch.ask_targets.dtype == np.int64
    for row, seed in enumerate(batch.stream_seeds):
        np.testing.assert_array_equal(batch.ask_targets[row], next_asked_tokens(make_task("decoy", 2048, 64, seed)))


# ---------------------------------------------------------------- the head and its loss
def test_with_heads_adds_only_the_ask_head_and_changes_no_prediction():
    model = tiny_model(64, keep_head=True)
    headed = model.with_heads(keep=True, ask=True)
    assert headed.config.ask_head and headed.config.keep_head and not model.config.ask_head
    assert headed.with_heads(ask=True) is headed
    for name, weight in model.state_dict().items():
        assert torch.equal(weight, headed.state_dict()[name])
    x = torch.randint(0, 64, (2, 128))
    with torch.no_grad():
        a = list(model.stream(x, DefaultController()))
        b = list(headed.stream(x, DefaultController()))
    for oa, ob in zip(a, b):
        assert torch.equal(oa.logits, ob.logits) and torch.equal(oa.features.boundary.keep_logit,
                                                                  ob.features.boundary.keep_logit)
        assert ob.features.boundary.ask_logits.shape == (2, 64) and oa.features.boundary.ask_logits is None


def test_ask_loss_is_the_cross_entropy_over_labelled_boundaries_and_reaches_the_backbone():
    source = TaskSource(("decoy",), 64, Curriculum((1024,), "mixed"))
    model = tiny_model(source.vocab_size, ask_head=True)
    loss_fn = WindowLoss(model, lm_weight=0.0, answer_weight=0.0, ask_weight=1.0)
    batch = source.sample(4, 1024, np.random.default_rng(0))
    tokens, ask = torch.from_numpy(batch.tokens), torch.from_numpy(batch.ask_targets)
    assert (ask < 0).any() and (ask >= 0).any()  # boundaries after the last query carry no label
    out, _ = loss_fn(tokens, torch.full((4,), -1), model.init_state(4), [DefaultController()] * ask.shape[1], None,
                     None, ask)
    with torch.no_grad():
        logits = torch.stack([o.features.boundary.ask_logits for o in model.stream(tokens, DefaultController())], 1)
    want = torch.nn.functional.cross_entropy(logits[ask >= 0], ask[ask >= 0])
    assert float(out.ask_loss) == pytest.approx(float(want), rel=1e-5)
    out.loss.backward()
    assert model.backbone.embedding.weight.grad.abs().sum() > 0


def test_ask_weight_needs_a_head_and_task_streams():
    with pytest.raises(ValueError, match="ask head"):
        WindowLoss(tiny_model(64), 1.0, 1.0, ask_weight=1.0)
    with pytest.raises(ValueError, match="--ask-weight trains the ask head"):
        TrainLMConfig(source="text", ask_weight=1.0)
    with pytest.raises(ValueError, match="--ask-weight"):
        TrainLMConfig(source="tasks", ask_weight=-1.0)


def test_the_heads_share_the_ten_times_learning_rate_group():
    from ahm.training.supervised import KEEP_HEAD_LR_SCALE, _param_groups

    model = tiny_model(64, ask_head=True, keep_head=True)
    groups = _param_groups(model, 1e-3, 0.1)
    head_ids = {id(p) for p in [*model.keep_head.parameters(), *model.ask_head.parameters()]}
    fast = [g for g in groups if g.get("lr") == 1e-3 * KEEP_HEAD_LR_SCALE]
    assert {id(p) for g in fast for p in g["params"]} == head_ids
    assert not head_ids & {id(p) for g in groups if "lr" not in g for p in g["params"]}
