"""What a reward term sees (:class:`StepContext`) and the base class of every term (:class:`RewardTerm`).

The environment measures one step of b episodes (b = 1 for ``AHMMemoryEnv``,
``num_envs`` for the vector env) and fills a :class:`StepContext`; each term maps
it to a (b,) array of raw values, and :class:`~ahm.rewards.combine.RewardFunction`
weights and sums them. Every field is a numpy array with leading dimension b, so
a term is a few vectorised numpy operations and never a loop over episodes.

Glossary: b episodes; a *target* is what the readout is scored on at a step: the
first answer token of a query whose cue ends at this chunk (query tasks), or the
first token of the next chunk (the ``text`` task, which has no queries).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import ClassVar, NamedTuple

import numpy as np

__all__ = ["StepContext", "RewardTerm"]


class StepContext(NamedTuple):
    """One environment step of b episodes, as the reward terms see it (every field is (b,)).

    The readout quantities are the env's answer prediction at the chunk boundary:
    ``logits = model.readout(h_last, r_t)``, with ``r_t`` the memory retrieved at this
    boundary, and the counterfactual with ``r_t = 0`` (no retrieval). Ground truth
    (the target token, which entry holds the fact) enters only here, never the
    observation.
    """

    scored: np.ndarray
    """bool: this step has a target."""
    correct: np.ndarray
    """bool: the readout's argmax equals the target (False where not scored)."""
    loss: np.ndarray
    """float: cross-entropy (nats) of the target under the readout with retrieval (0 where not scored)."""
    loss_without_retrieval: np.ndarray
    """float: the same with the retrieved vector set to zero."""
    entropy: np.ndarray
    """float: entropy (nats) of the readout's distribution with retrieval (0 where not scored)."""
    entropy_without_retrieval: np.ndarray
    """float: the same without retrieval."""
    fact_read_weight: np.ndarray
    """float in [0, 1]: attention weight this step's reads put on memory entries written at the chunk of the
    target's fact (WM weight plus LTM weight; 0 where not scored or the target has no fact)."""
    n_targets: np.ndarray
    """int >= 1: targets in the whole episode (normalises per-target terms so their episode sum is a mean)."""
    n_ops: np.ndarray
    """int: memory operations performed this step (write, move to LTM, WM read, LTM read, WM forget, LTM forget)."""
    memory_bytes: np.ndarray
    """int: bytes held by the memory after this step (WM entries plus LTM codes)."""
    episode_steps: np.ndarray
    """int >= 1: the episode's length in steps (normalises per-step terms so their episode sum is a mean)."""
    written_useless: np.ndarray
    """int: entries this step wrote that hold a fact no query ever asks (a stale or a decoy fact)."""
    discarded_useless: np.ndarray
    """int: entries that left the memory this step (a forget, a displaced entry dropped, an LTM entry replaced when
    full) holding a fact no query ever asks."""
    discarded_needed: np.ndarray
    """int: entries that left the memory this step holding a fact a later query asks."""

    @property
    def batch(self) -> int:
        return int(self.scored.shape[0])


class RewardTerm(ABC):
    """One reward term: a name, a weight, and a map from :class:`StepContext` to raw values (b,).

    Subclasses set ``name`` and implement ``_compute``; :meth:`__call__` checks the
    result (shape (b,), finite). The weight is applied by
    :class:`~ahm.rewards.combine.RewardFunction`, so raw values keep their units
    (nats, accuracy, operations) in logs.

    A custom term is a small class::

        >>> import numpy as np
        >>> class WriteBonus(RewardTerm):
        ...     '''+1 for every step that touched memory.'''
        ...     name = "write_bonus"
        ...     def _compute(self, ctx):
        ...         return (ctx.n_ops > 0).astype(np.float64)
        >>> WriteBonus(weight=0.01).weight
        0.01
    """

    name: ClassVar[str] = ""

    def __init__(self, weight: float = 1.0) -> None:
        if not self.name:
            raise TypeError(f"{type(self).__name__} must set the class attribute `name` (its key in info)")
        try:
            weight = float(weight)
        except (TypeError, ValueError):
            raise ValueError(f"{type(self).__name__}: weight must be a number, got {weight!r}") from None
        if not math.isfinite(weight):
            raise ValueError(f"{type(self).__name__}: weight must be finite, got {weight!r}")
        self.weight = weight

    def __call__(self, ctx: StepContext) -> np.ndarray:
        """Raw values (b,) float64 of this term for one step (unweighted)."""
        value = np.asarray(self._compute(ctx), dtype=np.float64)
        if value.shape != (ctx.batch,):
            raise ValueError(f"reward term {self.name!r} returned shape {value.shape}; it must return ({ctx.batch},)")
        if not np.isfinite(value).all():
            raise ValueError(f"reward term {self.name!r} returned non-finite values {value}")
        return value

    @abstractmethod
    def _compute(self, ctx: StepContext) -> np.ndarray:
        """Raw values (b,) for ``ctx``."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(weight={self.weight})"
