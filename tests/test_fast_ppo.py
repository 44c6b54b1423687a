"""FastPPO (ahm.agents.fast_ppo): the masked distribution, the hindsight write credit, determinism, checkpoints, and a
tiny-budget run that learns."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ahm.agents import make_controller
from ahm.agents.controller_checkpoint import load_mlp_policy
from ahm.agents.evaluation import evaluate
from ahm.agents.fast_ppo import FastPPO, FastPPOConfig, MaskedMultiCategorical, credit_rewards
from ahm.agents.rollout import rollout
from ahm.envs.spaces import ActionLayout
from ahm.envs.vector_env import AHMMemoryVectorEnv

SMALL = {"seq_len": 2048, "chunk_size": 64}


@pytest.fixture(autouse=True)
def one_torch_thread():
    """One torch thread, as train_rl.py runs the learner: the policy's tiny ops are many times slower with two on a
    loaded 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ---------------------------------------------------------------- the distribution
@settings(max_examples=40, deadline=None)
@given(st.integers(1, 6), st.integers(0, 2**31 - 1))
def test_masked_distribution_samples_only_valid_values_and_matches_torch(k: int, seed: int) -> None:
    layout = ActionLayout(k)
    rng = np.random.default_rng(seed)
    mask = rng.random((5, layout.mask_width)) < 0.5
    for part in layout.split_mask(mask):
        part[:, 0] = True  # value 0 of every component is always valid in the env
    mask_t = torch.from_numpy(mask)
    logits = torch.from_numpy(rng.normal(size=(5, layout.mask_width)).astype(np.float32))
    dist = MaskedMultiCategorical(layout.nvec)
    logp = dist.log_probs(logits, mask_t)
    actions = torch.stack([dist.sample(logp, torch.Generator().manual_seed(i)) for i in range(20)])  # (20, 5, J)
    assert layout.valid(actions.reshape(-1, 5).numpy(), np.tile(mask, (20, 1))).all()
    joint, entropy = dist.of(logp, actions[0])
    want_lp, want_h = torch.zeros(5), torch.zeros(5)
    for j, (lj, mj) in enumerate(zip(torch.split(logits, layout.nvec.tolist(), 1), layout.split_mask(mask_t))):
        ref = torch.distributions.Categorical(logits=lj.masked_fill(~mj, float("-inf")))
        want_lp += ref.log_prob(actions[0][:, j])
        want_h += ref.entropy()
    torch.testing.assert_close(joint, want_lp, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(entropy, want_h, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- the hindsight credit
def test_credit_rewards_pays_the_write_step_of_the_same_episode() -> None:
    # env 0: one episode; at step 5 (chunk 5) a correct answer read the entry written at chunk 2.
    # env 1: a new episode starts at step 3 (chunks 0, 1, 2 at steps 3, 4, 5); the answer at step 5 read chunk 0,
    #        written at step 3, not at step 0 of the episode before.
    # env 2: the write (chunk 1) happened before the rollout began (the rollout starts at chunk 7): not paid.
    s_len = 6
    chunk = np.stack([np.arange(6), np.array([7, 8, 9, 0, 1, 2]), np.arange(7, 13)], axis=1)
    credit_chunk = np.full((s_len, 3), -1)
    weight = np.zeros((s_len, 3))
    credit_chunk[5] = [2, 0, 1]
    weight[5] = [0.75, 0.5, 1.0]
    out = credit_rewards(credit_chunk, weight, chunk)
    want = np.zeros((s_len, 3))
    want[2, 0], want[3, 1] = 0.75, 0.5
    np.testing.assert_array_equal(out, want)


def _write_credit_steps(controller: str) -> list:
    env = AHMMemoryVectorEnv(num_envs=2, **SMALL, stream_seeds=[11, 12])
    steps = list(rollout(make_controller(controller), env, seed=0, stream_seeds=[11, 12],
                         steps=env.episodes.n_chunks))
    return steps


def test_write_credit_names_the_fact_chunk_when_the_oracle_answers_from_memory() -> None:
    """A hand-built case with a known answer: the oracle writes the needle's chunk and answers from it, so the one
    credited chunk of each episode is the needle's (from the stream's annotations), with weight in (0, 1]."""
    env = AHMMemoryVectorEnv(num_envs=2, **SMALL, stream_seeds=[11, 12])
    needle = {}
    credited: dict[int, list[tuple[int, float]]] = {0: [], 1: []}
    for step in rollout(make_controller("oracle"), env, seed=0, stream_seeds=[11, 12], steps=env.episodes.n_chunks):
        info = step.info
        for r in range(2):
            c = int(info["write_credit"]["chunk"][r])
            if c >= 0:
                credited[r].append((c, float(info["write_credit"]["weight"][r])))
                assert bool(info["correct"][r])
        if step.done.all():
            break
    for r, seed in enumerate([11, 12]):
        stream = env.episodes._cache[seed].stream
        needle[r] = stream.facts[stream.queries[0].fact_id].chunk
        assert [c for c, _ in credited[r]] == [needle[r]]
        assert 0.0 < credited[r][0][1] <= 1.0 + 1e-6


def test_no_credit_without_memory() -> None:
    env = AHMMemoryVectorEnv(num_envs=2, **SMALL, stream_seeds=[11, 12])
    for step in rollout(make_controller("none"), env, seed=0, stream_seeds=[11, 12], steps=env.episodes.n_chunks):
        assert (step.info["write_credit"]["chunk"] == -1).all()
        assert (step.info["write_credit"]["weight"] == 0).all()
        if step.done.all():
            break


# ---------------------------------------------------------------- learner
def _learner(seed: int = 0, backbone: object = None, **kw) -> FastPPO:
    env_kwargs = {**SMALL, "stream_seeds": list(range(8)), "ltm_capacity": 2}
    if backbone is not None:
        env_kwargs["backbone"] = backbone
    cfg = FastPPOConfig(num_envs=8, n_steps=16, minibatch_size=64, seed=seed, env_kwargs=env_kwargs, **kw)
    return FastPPO(cfg)


def test_same_seed_same_weights_and_save_load_round_trip(tmp_path) -> None:
    a, b = _learner(), _learner()
    a.learn(128)
    b.learn(128)
    for (name, pa), pb in zip(a.policy.state_dict().items(), b.policy.state_dict().values()):
        torch.testing.assert_close(pa, pb, rtol=0, atol=0, msg=name)
    a.save(tmp_path / "c", env_spec={"env_id": "AHMMemory-v0", "env_kwargs": SMALL})
    again = FastPPO.load_policy(tmp_path / "c")
    for (name, pa), pb in zip(a.policy.state_dict().items(), again.state_dict().values()):
        torch.testing.assert_close(pa, pb, rtol=0, atol=0, msg=name)
    # the benchmark's loader (no code of fast_ppo) acts exactly as the learner's own controller
    obs, _ = a.env.reset(seed=3)
    masks = a.env.action_masks()
    np.testing.assert_array_equal(load_mlp_policy(tmp_path / "c").act(obs, masks), a.controller().act(obs, masks))


def test_the_same_seed_gives_the_same_policy_whether_the_backbone_is_a_path_or_a_model() -> None:
    """A backbone passed as a checkpoint path is built (drawing from torch's generator) and loaded inside the env;
    passed as a model it is not. The starting policy must not depend on which (train_rl.py passes a model)."""
    from ahm.backbone.checkpoint import load_ahm_checkpoint
    from ahm.envs.default_backbones import shipped_backbone_path

    path = shipped_backbone_path("passkey")
    by_path = _learner(backbone=str(path)).policy.state_dict()
    torch.manual_seed(123)  # whatever the caller drew before
    by_model = _learner(backbone=load_ahm_checkpoint(path)[0]).policy.state_dict()
    for name, value in by_path.items():
        torch.testing.assert_close(value, by_model[name], rtol=0, atol=0, msg=name)


def test_bad_config_and_wrong_policy_are_refused(tmp_path) -> None:
    with pytest.raises(ValueError, match="minibatch_size"):
        FastPPOConfig(minibatch_size=0)
    with pytest.raises(ValueError, match="forget_prior"):
        FastPPOConfig(forget_prior=1.0)
    with pytest.raises(ValueError, match="write_prior"):
        FastPPOConfig(write_prior=-0.1)
    a = _learner()
    other = FastPPOConfig(num_envs=8, env_kwargs={**SMALL, "wm_slots": 4})
    with pytest.raises(ValueError, match="policy was made for"):
        FastPPO(other, policy=a.policy)


@pytest.mark.parametrize("write_prior", [0.0, 0.8])
def test_write_prior_sets_the_starting_probability_of_writing_nothing(write_prior: float) -> None:
    """Before any update, "write nothing" has the prior's probability (the uniform 1 / (K + 1) without one), the
    forget components keep theirs, and the other values of the write component share the rest equally."""
    learner = _learner(write_prior=write_prior, forget_prior=0.9)
    obs, _ = learner.env.reset(seed=0)
    everything = torch.ones(8, learner.layout.mask_width, dtype=torch.bool)  # the start's mask forbids forgetting
    with torch.no_grad():
        probs = learner.dist.log_probs(learner.policy(obs), everything).exp()  # (b, J, max n)
    k1 = int(learner.layout.nvec[0])
    expected = write_prior or 1.0 / k1
    assert probs[:, 0, 0].numpy() == pytest.approx(expected, abs=0.02)
    assert probs[:, 0, 1:k1].numpy() == pytest.approx((1.0 - expected) / (k1 - 1), abs=0.02)
    assert probs[:, 3, 0].numpy() == pytest.approx(0.9, abs=0.02)
    assert probs[:, 4, 0].numpy() == pytest.approx(0.9, abs=0.02)


def test_tiny_budget_learns_over_random() -> None:
    """On short episodes with a 2-entry LTM (writing every chunk loses the needle), a few seconds of FastPPO make
    a deterministic controller that beats the random one on streams training never saw."""
    cfg = FastPPOConfig(num_envs=32, n_steps=32, minibatch_size=256, seed=0, ent_coef=0.003,
                        env_kwargs={**SMALL, "stream_seeds": list(range(32)), "ltm_capacity": 2})
    learner = FastPPO(cfg)
    learner.learn(32 * 32 * 60)
    kwargs = {**SMALL, "ltm_capacity": 2}
    learned = evaluate(learner.controller(), "AHMMemory-v0", episodes=16, num_envs=16, seed=777, **kwargs)
    random = evaluate(make_controller("random"), "AHMMemory-v0", episodes=16, num_envs=16, seed=777, **kwargs)
    assert learned.accuracy >= random.accuracy + 0.4, (learned.accuracy, random.accuracy)


def test_a_diverged_policy_is_never_saved_nor_loaded(tmp_path) -> None:
    from ahm.backbone.errors import CheckpointError, NonFiniteError

    a = _learner()
    a.save(tmp_path / "ok")
    with torch.no_grad():
        a.policy.actor[0].weight[0, 0] = float("nan")
    with pytest.raises(NonFiniteError, match="actor.0.weight"):
        a.save(tmp_path / "bad")
    assert not (tmp_path / "bad").exists() or not any((tmp_path / "bad").iterdir())
    # a file that holds NaN anyway (written by other code) is refused on load, naming the tensor
    from safetensors.torch import save_file

    from ahm.agents.controller_checkpoint import checkpoint_files

    meta_path, weights_path = checkpoint_files(tmp_path / "ok")
    import hashlib
    import json

    state = {k: v.clone() for k, v in FastPPO.load_policy(tmp_path / "ok").state_dict().items()}
    state["critic.0.bias"][0] = float("inf")
    save_file(state, weights_path)
    meta = json.loads(meta_path.read_text())
    meta["weights_sha256"] = hashlib.sha256(weights_path.read_bytes()).hexdigest()
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="critic.0.bias"):
        load_mlp_policy(tmp_path / "ok")
    with pytest.raises(NonFiniteError, match="learning_rate"):
        _learner(learning_rate=1e30).learn(512)


def test_sb3_training_stops_on_divergence() -> None:
    from ahm.agents.learned import ControllerTrainConfig, train_controller
    from ahm.backbone.errors import NonFiniteError

    config = ControllerTrainConfig(algo="ppo", num_envs=2, n_steps=16, batch_size=32, total_timesteps=128,
                                   learning_rate=1e30, env_kwargs=SMALL, eval_freq=0)
    with pytest.raises(NonFiniteError, match="NaN or infinite"):
        train_controller(config)
