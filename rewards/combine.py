"""Weights of the built-in terms (:class:`RewardWeights`) and the weighted sum (:class:`RewardFunction`).

The reward of a step is ``sum_i w_i * term_i(ctx)``; each weighted term is also
returned on its own (:class:`RewardBreakdown`), and the environment puts them in
``info["reward_terms"]`` (weighted, they sum to the reward) and
``info["reward_terms_raw"]`` (unweighted, in the terms' own units).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import NamedTuple

import numpy as np

from .base import RewardTerm, StepContext
from .terms import Discard, InformationGain, MemoryCost, RetrievalGain, StoreThenUse, TaskOutcome

__all__ = ["RewardWeights", "RewardBreakdown", "RewardFunction"]


@dataclass(frozen=True)
class RewardWeights:
    """Weights of the built-in terms; 0 disables a term (it is still logged, as 0).

    The defaults make task success dominate (an episode's outcome sums to its
    accuracy, at most 1) and keep the shaping terms an order of magnitude smaller,
    so a policy cannot earn more from shaping than from answering.
    """

    task_outcome: float = 1.0
    """Sparse reward at targets; episode sum = accuracy."""
    retrieval_gain: float = 0.1
    """Nats of answer loss saved by this step's retrieval (mean per target); dense where targets are."""
    store_then_use: float = 0.5
    """Credit for reading, for a correct answer, an entry written at the fact's chunk."""
    memory_cost: float = 0.01
    """Mean per-step cost of operations and bytes held (one op ~ 10 KiB held)."""
    information_gain: float = 0.05
    """Nats of answer entropy removed by retrieval (mean per target)."""
    discard: float = 0.0
    """Discarding a never-asked entry (stale, decoy) minus writing one, minus discarding a fact still to be asked.
    Off by default: at 0.5 it did not raise PPO's accuracy on Forget and collapsed it on Decoy (README)."""

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"RewardWeights.{f.name} must be a finite number, got {value!r}")

    @classmethod
    def from_mapping(cls, weights: Mapping[str, float]) -> RewardWeights:
        """Defaults overridden by ``weights``; unknown names are an error that lists the known ones."""
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(weights) - set(known))
        if unknown:
            raise ValueError(f"reward_weights: unknown terms {unknown}; the built-in terms are {known} "
                             "(add custom terms with extra_reward_terms)")
        return cls(**dict(weights))

    def to_dict(self) -> dict[str, float]:
        return asdict(self)

    def terms(self) -> list[RewardTerm]:
        """The six built-in terms with these weights, in logging order."""
        return [TaskOutcome(self.task_outcome), RetrievalGain(self.retrieval_gain),
                StoreThenUse(self.store_then_use), MemoryCost(self.memory_cost),
                InformationGain(self.information_gain), Discard(self.discard)]


class RewardBreakdown(NamedTuple):
    """The reward of one step of b episodes and its parts."""

    total: np.ndarray
    """(b,) float64: the reward, ``sum(weighted.values())``."""
    weighted: dict[str, np.ndarray]
    """term name -> (b,) weight * raw value."""
    raw: dict[str, np.ndarray]
    """term name -> (b,) raw value (the term's own units)."""


class RewardFunction:
    """A weighted sum of reward terms.

    Example::

        >>> import numpy as np
        >>> from ahm.rewards import RewardFunction, RewardWeights, StepContext
        >>> reward = RewardFunction.from_weights(RewardWeights(memory_cost=0.0))
        >>> one = lambda v, dtype=float: np.array([v], dtype=dtype)
        >>> ctx = StepContext(scored=one(True, bool), correct=one(True, bool), loss=one(0.1),
        ...                   loss_without_retrieval=one(2.1), entropy=one(0.5), entropy_without_retrieval=one(2.0),
        ...                   fact_read_weight=one(0.8), n_targets=one(1, int), n_ops=one(2, int),
        ...                   memory_bytes=one(4096, int), episode_steps=one(100, int), written_useless=one(0, int),
        ...                   discarded_useless=one(1, int), discarded_needed=one(0, int))
        >>> out = reward(ctx)
        >>> [(k, round(float(v[0]), 3)) for k, v in out.weighted.items()]  # doctest: +NORMALIZE_WHITESPACE
        [('task_outcome', 1.0), ('retrieval_gain', 0.2), ('store_then_use', 0.4), ('memory_cost', -0.0),
         ('information_gain', 0.075), ('discard', 0.0)]
        >>> round(float(out.total[0]), 3)
        1.675
    """

    def __init__(self, terms: Sequence[RewardTerm]) -> None:
        names = [t.name for t in terms]
        if len(set(names)) != len(names):
            raise ValueError(f"reward terms must have distinct names, got {names}")
        for t in terms:
            if not isinstance(t, RewardTerm):
                raise ValueError(f"reward terms must be RewardTerm instances, got {type(t).__name__}")
        self.terms = list(terms)

    @classmethod
    def from_weights(cls, weights: RewardWeights | Mapping[str, float] | None = None,
                     extra_terms: Sequence[RewardTerm] = ()) -> RewardFunction:
        """The built-in terms with ``weights`` (defaults where None or not given), then ``extra_terms``."""
        if weights is None:
            weights = RewardWeights()
        elif isinstance(weights, Mapping):
            weights = RewardWeights.from_mapping(weights)
        elif not isinstance(weights, RewardWeights):
            raise ValueError(f"reward_weights must be a RewardWeights, a mapping of term name to weight, or None; "
                             f"got {type(weights).__name__}")
        return cls([*weights.terms(), *extra_terms])

    @property
    def names(self) -> list[str]:
        return [t.name for t in self.terms]

    def __call__(self, ctx: StepContext) -> RewardBreakdown:
        raw = {t.name: t(ctx) for t in self.terms}
        weighted = {t.name: t.weight * raw[t.name] for t in self.terms}
        total = np.zeros(ctx.batch, dtype=np.float64)
        for value in weighted.values():
            total += value
        return RewardBreakdown(total, weighted, raw)

    def __repr__(self) -> str:
        return f"RewardFunction({self.terms})"
