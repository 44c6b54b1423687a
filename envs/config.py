"""``AHMMemoryConfig``: every argument of the ``AHMMemory`` environments, checked once, in one frozen dataclass.

:class:`~ahm.envs.memory_env.AHMMemoryEnv` and
:class:`~ahm.envs.vector_env.AHMMemoryVectorEnv` build one from their keyword
arguments and hand it to :class:`~ahm.envs.episode_batch.EpisodeBatch`; the
arguments are documented in the env's docstring ("Arguments").
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ahm.backbone import AHMConfigError, AHMModel
from ahm.rewards import RewardTerm, RewardWeights

__all__ = ["AHMMemoryConfig", "INVALID_ACTION_MODES", "INVALID_ACTION_PENALTY", "check_stream_seed", "reset_option"]

INVALID_ACTION_MODES = ("noop", "penalty", "raise")
"""What a step does with an action component the current mask marks invalid (retrieving from an empty level,
forgetting an empty slot, an LTM forget on an empty LTM): ``"noop"`` runs that component's no-op 0 and counts it in
``info["memory"]["invalid_noops"]``; ``"penalty"`` does the same and adds :data:`INVALID_ACTION_PENALTY` per
invalid component to the reward (the ``invalid_action`` term of ``info["reward_terms"]``); ``"raise"`` raises a
``ValueError`` naming the component (the strict mode). Values outside the action space raise in every mode."""

INVALID_ACTION_PENALTY = -0.1
"""Reward per masked-invalid action component in ``invalid_actions="penalty"`` mode: a tenth of a whole
episode's task outcome (the ``task_outcome`` term sums to the episode's accuracy, at most 1), so a policy that keeps
sending invalid operations pays for it in a few steps."""


@dataclass(frozen=True)
class AHMMemoryConfig:
    """Every argument of :class:`AHMMemoryEnv` (and of the vector env); see the env's docstring."""

    task: str = "passkey"
    seq_len: int = 100_000
    chunk_size: int = 256
    wm_slots: int = 8
    ltm_capacity: int = 512
    ltm_codec: str | None = None
    integration: str | None = None
    backbone: AHMModel | str | Path | None = None
    reward_weights: RewardWeights | Mapping[str, float] | None = None
    extra_reward_terms: tuple[RewardTerm, ...] = ()
    task_kwargs: Mapping[str, Any] = field(default_factory=dict)
    max_steps: int | None = None
    feature_cache_size: int = 1
    stream_seeds: tuple[int, ...] | None = None
    invalid_actions: str = "noop"

    def __post_init__(self) -> None:
        for name in ("seq_len", "chunk_size", "wm_slots", "ltm_capacity"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if self.max_steps is not None and (not isinstance(self.max_steps, (int, np.integer)) or self.max_steps < 1):
            raise ValueError(f"max_steps must be None or a positive int, got {self.max_steps!r}")
        if not isinstance(self.feature_cache_size, int) or self.feature_cache_size < 0:
            raise ValueError(f"feature_cache_size must be an int >= 0, got {self.feature_cache_size!r}")
        if not isinstance(self.task_kwargs, Mapping):
            raise ValueError(f"task_kwargs must be a mapping, got {type(self.task_kwargs).__name__}")
        if self.invalid_actions not in INVALID_ACTION_MODES:
            raise ValueError(f"invalid_actions must be one of {INVALID_ACTION_MODES}, got {self.invalid_actions!r}")
        object.__setattr__(self, "extra_reward_terms", tuple(self.extra_reward_terms))
        if self.stream_seeds is not None:
            seeds = tuple(int(s) for s in self.stream_seeds)
            if not seeds or min(seeds) < 0:
                raise ValueError(f"stream_seeds must be None or a non-empty sequence of ints >= 0, got "
                                 f"{self.stream_seeds!r}")
            object.__setattr__(self, "stream_seeds", seeds)

    def draw_stream_seed(self, rng: np.random.Generator) -> int:
        """The stream seed of a new episode, from the env's ``np_random`` (so ``reset(seed=s)`` fixes it):
        uniform over ``stream_seeds`` if given, else any seed in [0, 2**63 - 1)."""
        if self.stream_seeds is not None:
            return self.stream_seeds[int(rng.integers(len(self.stream_seeds)))]
        return int(rng.integers(0, 2**63 - 1))


def reset_option(options: Mapping[str, Any] | None, key: str) -> Any:
    """The one option a reset takes (``key``: ``"stream_seed"`` for the single env, ``"stream_seeds"`` for the
    vector env), or None; any other key is an :class:`~ahm.backbone.errors.AHMConfigError`, raised before the reset
    changes anything."""
    options = options or {}
    unknown = sorted(set(options) - {key})
    if unknown:
        raise AHMConfigError(f"reset: unknown options {unknown}; the one option is {key!r}")
    return options.get(key)


def check_stream_seed(value: Any, where: str) -> int:
    """``value`` as a stream seed (an integer in [0, 2**63), what the env stores as int64); else an
    :class:`~ahm.backbone.errors.AHMConfigError` naming ``where`` (``"reset: options['stream_seed']"``) and the
    value. Resets call it before they change anything, so a refused reset leaves the env as it was."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise AHMConfigError(f"{where} must be an integer in [0, 2**63), got {type(value).__name__} {value!r}")
    if not 0 <= int(value) < 2**63:
        raise AHMConfigError(f"{where} must be an integer in [0, 2**63), got {int(value)}; the env is unchanged")
    return int(value)
