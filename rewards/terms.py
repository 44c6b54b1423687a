"""The five reward terms of the proposal (Sec. 2.2, "Reward"), each a small :class:`RewardTerm`.

* :class:`TaskOutcome` (sparse: final task performance): ``correct / n_targets`` at scored
  steps; the episode sum is the accuracy.
* :class:`RetrievalGain` (retrieving what improves the immediate prediction):
  ``(loss(r=0) - loss(r_t)) / n_targets`` at scored steps; the mean nats saved per target.
* :class:`StoreThenUse` (storing what is later successfully retrieved and used):
  ``fact_read_weight / n_targets`` at correctly answered steps; in [0, 1] per episode.
* :class:`MemoryCost` (memory usage and expensive operations):
  ``-(op_cost ops + kib_cost KiB held) / episode_steps``; minus the mean cost per step.
* :class:`InformationGain` (information-theoretic): ``(H(r=0) - H(r_t)) / n_targets`` at
  scored steps; the mean nats of answer entropy removed.
* :class:`Discard` (the counterpart of store-then-use, for forgetting):
  ``(discarded_useless - written_useless - discarded_needed) / n_targets``.

Store-then-use credits the write: it pays at the step where an entry written at
the fact's chunk is read for a correct answer, and the return carries that credit
back to the step that wrote it (and to every step that kept it). Retrieval gain
and information gain are per-step counterfactuals (the same readout with the
retrieved vector zeroed), so they are exact and cost one extra readout.

Every term is normalised so that its episode sum is a mean (per target, or per
step for the cost): returns are comparable across tasks and sequence lengths.
"""

from __future__ import annotations

import numpy as np

from .base import RewardTerm, StepContext

__all__ = ["TaskOutcome", "RetrievalGain", "StoreThenUse", "MemoryCost", "InformationGain", "Discard",
           "DEFAULT_TERMS"]


class TaskOutcome(RewardTerm):
    """Sparse: ``1 / n_targets`` for each correctly answered target, so the episode sum is the accuracy."""

    name = "task_outcome"

    def _compute(self, ctx: StepContext) -> np.ndarray:
        return (ctx.scored & ctx.correct) / ctx.n_targets


class RetrievalGain(RewardTerm):
    """Readout loss without retrieval minus with it (nats) per target, at scored steps; negative if retrieval hurts."""

    name = "retrieval_gain"

    def _compute(self, ctx: StepContext) -> np.ndarray:
        return np.where(ctx.scored, ctx.loss_without_retrieval - ctx.loss, 0.0) / ctx.n_targets


class StoreThenUse(RewardTerm):
    """Credit for a stored fact that is read for a correct answer: ``fact_read_weight / n_targets``."""

    name = "store_then_use"

    def _compute(self, ctx: StepContext) -> np.ndarray:
        return np.where(ctx.scored & ctx.correct, ctx.fact_read_weight, 0.0) / ctx.n_targets


class MemoryCost(RewardTerm):
    """Minus the cost of this step's operations and of the bytes held, per step of the episode.

    ``-(op_cost * n_ops + kib_cost * memory_bytes / 1024) / episode_steps``: the
    episode sum is minus the mean cost per step, comparable across sequence lengths.
    The defaults price one operation like 10 KiB held for a step (the default
    memory, 8 WM slots and 512 int8 LTM entries, holds up to about 50 KiB).
    """

    name = "memory_cost"

    def __init__(self, weight: float = 1.0, op_cost: float = 1.0, kib_cost: float = 0.1) -> None:
        super().__init__(weight)
        if not (op_cost >= 0 and kib_cost >= 0):
            raise ValueError(f"MemoryCost: op_cost and kib_cost must be >= 0, got {op_cost}, {kib_cost}")
        self.op_cost, self.kib_cost = float(op_cost), float(kib_cost)

    def _compute(self, ctx: StepContext) -> np.ndarray:
        cost = self.op_cost * ctx.n_ops + self.kib_cost * ctx.memory_bytes / 1024.0
        return -cost / ctx.episode_steps


class InformationGain(RewardTerm):
    """Entropy of the readout's answer distribution without retrieval minus with it (nats) per target."""

    name = "information_gain"

    def _compute(self, ctx: StepContext) -> np.ndarray:
        return np.where(ctx.scored, ctx.entropy_without_retrieval - ctx.entropy, 0.0) / ctx.n_targets


class Discard(RewardTerm):
    """Credit for discarding what is never asked, a penalty for discarding what will be, per target.

    ``(discarded_useless - written_useless - discarded_needed) / n_targets``. The first two
    are a potential-based shaping (Ng et al., 1999) with potential minus the useless entries
    held (stale or decoy facts, which no query asks): writing one costs what discarding it
    pays back, so writing and discarding cannot be farmed, and the credit for removing a
    stale value arrives at the step that removes it, not at the query long after. The last
    is a plain penalty for destroying a fact a later query asks. Entries of chunks that hold
    no fact (filler, noise) and facts already asked count in neither.
    """

    name = "discard"

    def _compute(self, ctx: StepContext) -> np.ndarray:
        return (ctx.discarded_useless - ctx.written_useless - ctx.discarded_needed) / ctx.n_targets


DEFAULT_TERMS: tuple[type[RewardTerm], ...] = (TaskOutcome, RetrievalGain, StoreThenUse, MemoryCost, InformationGain,
                                               Discard)
"""The built-in terms, in the order they are logged (``RewardWeights`` has one field per term)."""
