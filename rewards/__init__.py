"""Reward terms for the memory controller and how they combine.

Owns (ARCHITECTURE.md): task outcome, retrieval gain, store-then-use, memory
cost and information gain, each a small weighted term logged separately; and
discard, store-then-use's counterpart for forgetting.
Depends on :mod:`ahm.backbone` only (in fact on numpy only: the environment
measures a step and passes a :class:`StepContext`).

* :class:`StepContext` - what a term sees of one step of b episodes, (b,) arrays.
* :class:`RewardTerm` - the base class: ``name``, ``weight``, ``_compute(ctx) -> (b,)``.
* :class:`TaskOutcome`, :class:`RetrievalGain`, :class:`StoreThenUse`,
  :class:`MemoryCost`, :class:`InformationGain`, :class:`Discard` - the built-in terms (table in
  :mod:`ahm.rewards.terms`).
* :class:`RewardWeights` - the built-in terms' weights with documented defaults.
* :class:`RewardFunction` - the weighted sum, with each term returned on its own.
"""

from .base import RewardTerm, StepContext
from .combine import RewardBreakdown, RewardFunction, RewardWeights
from .terms import DEFAULT_TERMS, Discard, InformationGain, MemoryCost, RetrievalGain, StoreThenUse, TaskOutcome

__all__ = [
    "StepContext", "RewardTerm", "RewardWeights", "RewardFunction", "RewardBreakdown",
    "TaskOutcome", "RetrievalGain", "StoreThenUse", "MemoryCost", "InformationGain", "Discard",
    "DEFAULT_TERMS",
]
