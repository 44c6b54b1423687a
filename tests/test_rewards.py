"""ahm.rewards: each term's value on hand-made steps, normalisation of episode sums, the weighted sum and its
logging, the documented defaults, custom terms and their errors."""

from __future__ import annotations

import doctest

import numpy as np
import pytest

import ahm.rewards.base
import ahm.rewards.combine
import ahm.rewards.terms
from ahm.rewards import (
    DEFAULT_TERMS,
    Discard,
    InformationGain,
    MemoryCost,
    RetrievalGain,
    RewardFunction,
    RewardTerm,
    RewardWeights,
    StepContext,
    StoreThenUse,
    TaskOutcome,
)


def context(**fields) -> StepContext:
    """Three episodes' step: scored+correct, scored+wrong, not scored (overridable per field)."""
    base = dict(
        scored=np.array([True, True, False]), correct=np.array([True, False, False]),
        loss=np.array([0.5, 3.0, 0.0]), loss_without_retrieval=np.array([2.0, 2.5, 0.0]),
        entropy=np.array([0.4, 1.0, 0.0]), entropy_without_retrieval=np.array([1.4, 0.5, 0.0]),
        fact_read_weight=np.array([0.75, 0.9, 0.3]), n_targets=np.array([2, 4, 1]), n_ops=np.array([3, 0, 1]),
        memory_bytes=np.array([2048, 0, 1024]), episode_steps=np.array([10, 10, 4]),
        written_useless=np.array([1, 0, 0]), discarded_useless=np.array([0, 2, 1]),
        discarded_needed=np.array([0, 1, 0]))
    base.update({k: np.asarray(v) for k, v in fields.items()})
    return StepContext(**base)


def test_task_outcome_pays_one_over_n_targets_per_correct_answer():
    np.testing.assert_allclose(TaskOutcome()(context()), [0.5, 0.0, 0.0])
    # Correct flags where nothing was scored do not pay.
    np.testing.assert_allclose(TaskOutcome()(context(correct=[True, True, True], scored=[False] * 3)), 0.0)


def test_retrieval_gain_is_the_loss_saved_per_target_and_can_be_negative():
    np.testing.assert_allclose(RetrievalGain()(context()), [(2.0 - 0.5) / 2, (2.5 - 3.0) / 4, 0.0])


def test_store_then_use_needs_a_correct_answer():
    np.testing.assert_allclose(StoreThenUse()(context()), [0.75 / 2, 0.0, 0.0])


def test_memory_cost_prices_operations_and_kib_per_step():
    np.testing.assert_allclose(MemoryCost()(context()), [-(3 + 0.1 * 2) / 10, 0.0, -(1 + 0.1) / 4])
    np.testing.assert_allclose(MemoryCost(op_cost=0.0, kib_cost=1.0)(context()), [-0.2, 0.0, -0.25])
    with pytest.raises(ValueError, match="op_cost and kib_cost must be >= 0"):
        MemoryCost(op_cost=-1.0)


def test_information_gain_is_the_entropy_removed_per_target():
    np.testing.assert_allclose(InformationGain()(context()), [1.0 / 2, -0.5 / 4, 0.0])


def test_discard_pays_for_removing_never_asked_entries_and_charges_for_writing_them_or_losing_needed_ones():
    np.testing.assert_allclose(Discard()(context()), [-1 / 2, (2 - 1) / 4, 1.0])


def test_discard_cannot_be_farmed_by_writing_and_discarding():
    """Potential-based: a never-asked entry written then discarded nets zero; one kept to the end costs its write;
    destroying a needed fact is a plain penalty."""
    one = lambda w, d, x: {k: v[:1] for k, v in context(
        written_useless=[w, 0, 0], discarded_useless=[d, 0, 0], discarded_needed=[x, 0, 0],
        n_targets=[4, 1, 1])._asdict().items()}
    steps = lambda seq: sum(float(Discard()(StepContext(**one(*op)))[0]) for op in seq)
    assert steps([(1, 0, 0), (0, 1, 0)]) == 0.0
    assert steps([(1, 0, 0)]) == -0.25 and steps([(0, 0, 1)]) == -0.25


def test_episode_sums_are_means():
    """Over an episode of T steps with N targets, the outcome sums to the accuracy and the cost to the mean cost."""
    t, n = 8, 4
    scored = np.zeros(t, bool)
    scored[[1, 3, 5, 7]] = True
    correct = scored & (np.arange(t) != 3)  # 3 of 4 correct
    outcome = cost = 0.0
    for i in range(t):
        ctx = context(scored=[scored[i]], correct=[correct[i]], loss=[0.0], loss_without_retrieval=[0.0],
                      entropy=[0.0], entropy_without_retrieval=[0.0], fact_read_weight=[0.0], n_targets=[n],
                      n_ops=[2], memory_bytes=[0], episode_steps=[t])
        outcome += float(TaskOutcome()(ctx)[0])
        cost += float(MemoryCost()(ctx)[0])
    assert outcome == pytest.approx(0.75) and cost == pytest.approx(-2.0)


def test_reward_function_weights_sums_and_logs_every_term():
    weights = RewardWeights(task_outcome=2.0, retrieval_gain=0.5, store_then_use=0.0, memory_cost=1.0,
                            information_gain=0.25, discard=0.75)
    out = RewardFunction.from_weights(weights)(context())
    assert list(out.weighted) == list(out.raw) == [cls.name for cls in DEFAULT_TERMS]
    for name, w in weights.to_dict().items():
        np.testing.assert_allclose(out.weighted[name], w * out.raw[name])
    np.testing.assert_allclose(out.total, sum(out.weighted.values()))
    np.testing.assert_allclose(out.weighted["store_then_use"], 0.0)  # weight 0: logged, not paid


def test_default_weights_are_the_documented_ones():
    assert RewardWeights().to_dict() == {"task_outcome": 1.0, "retrieval_gain": 0.1, "store_then_use": 0.5,
                                         "memory_cost": 0.01, "information_gain": 0.05, "discard": 0.0}
    assert [t.weight for t in RewardFunction.from_weights(None).terms] == [1.0, 0.1, 0.5, 0.01, 0.05, 0.0]
    by_mapping = RewardFunction.from_weights({"memory_cost": 0.0})
    assert [t.weight for t in by_mapping.terms] == [1.0, 0.1, 0.5, 0.0, 0.05, 0.0]


def test_weights_are_validated():
    with pytest.raises(ValueError, match="unknown terms \\['cost'\\]"):
        RewardWeights.from_mapping({"cost": 1.0})
    with pytest.raises(ValueError, match="finite number"):
        RewardWeights(task_outcome=float("nan"))
    with pytest.raises(ValueError, match="must be a RewardWeights"):
        RewardFunction.from_weights([1.0, 2.0])


class Bonus(RewardTerm):
    name = "bonus"

    def _compute(self, ctx):
        return (ctx.n_ops > 0).astype(float)


def test_a_custom_term_is_a_small_class_added_to_the_sum():
    reward = RewardFunction.from_weights(RewardWeights(0, 0, 0, 0, 0, 0), extra_terms=[Bonus(weight=0.5)])
    out = reward(context())
    np.testing.assert_allclose(out.total, [0.5, 0.0, 0.5])
    assert reward.names[-1] == "bonus" and out.raw["bonus"].tolist() == [1.0, 0.0, 1.0]


def test_custom_term_errors_say_what_is_wrong():
    class Nameless(RewardTerm):
        def _compute(self, ctx):
            return np.zeros(ctx.batch)

    class WrongShape(RewardTerm):
        name = "wrong_shape"

        def _compute(self, ctx):
            return np.zeros(ctx.batch + 1)

    class NotFinite(RewardTerm):
        name = "not_finite"

        def _compute(self, ctx):
            return np.full(ctx.batch, np.inf)

    with pytest.raises(TypeError, match="must set the class attribute `name`"):
        Nameless()
    with pytest.raises(ValueError, match="returned shape \\(4,\\); it must return \\(3,\\)"):
        WrongShape()(context())
    with pytest.raises(ValueError, match="non-finite"):
        NotFinite()(context())
    with pytest.raises(ValueError, match="weight must be finite"):
        Bonus(weight=float("inf"))
    with pytest.raises(ValueError, match="distinct names"):
        RewardFunction([Bonus(), Bonus()])


def test_docstring_examples_run():
    for module in (ahm.rewards.base, ahm.rewards.combine, ahm.rewards.terms):
        assert doctest.testmod(module).failed == 0
