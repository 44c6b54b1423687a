"""The ``Controller`` protocol: what every memory controller implements, and adapters to it.

A controller decides the memory operations of ``AHMMemory-v0`` episodes. It is
batched: it acts for b environments at once (one :class:`~ahm.envs.AHMMemoryEnv`
is b = 1; :class:`~ahm.envs.AHMMemoryVectorEnv` is b = ``num_envs``), so
evaluation, the benchmark and ``train_lm.py`` drive heuristics, Stable-Baselines3
models, plain torch modules and any callable the same way.

Conventions (b environments, K working-memory slots):

* ``observation``: the env's Dict observation with a leading b axis, ``{key: (b, ...) float32}``;
* ``action_mask``: ``(b, 2 K + 12)`` bool, the env's ``action_masks()`` (valid values per component);
* ``info``: the env's info as a nested dict of ``(b, ...)`` arrays (the vector env's info without
  Gymnasium's ``_key`` masks; :func:`batch_info` turns a single env's info into it). Only the
  ``oracle`` reads it (``info["ground_truth"]``); every other controller must ignore it;
* ``episode_start``: ``(b,)`` bool, True where a new episode starts at this observation (recurrent
  controllers reset their state there);
* return: ``(b, 5)`` int64 actions, one row per environment (``ACTION_COMPONENTS`` order).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol, runtime_checkable

import numpy as np

__all__ = ["Controller", "FunctionController", "as_controller", "batch_observation", "batch_info", "unbatch_action"]


@runtime_checkable
class Controller(Protocol):
    """Observations of b environments (and optionally their action masks and infos) -> (b, 5) actions."""

    name: str
    """A short label for tables and plots."""

    def reset(self, num_envs: int) -> None:
        """Forget all per-episode state; the next :meth:`act` sees ``num_envs`` environments."""

    def act(self, observation: Mapping[str, np.ndarray], action_mask: np.ndarray | None = None,
            info: Mapping[str, Any] | None = None, episode_start: np.ndarray | None = None) -> np.ndarray:
        """(b, 5) int64 actions for the b environments whose batched ``observation`` is given (module doc)."""


class FunctionController:
    """Any callable ``f(observation, action_mask) -> actions`` as a :class:`Controller` (stateless)."""

    def __init__(self, fn: Callable[[Mapping[str, np.ndarray], np.ndarray | None], Any], name: str | None = None):
        if not callable(fn):
            raise TypeError(f"FunctionController needs a callable, got {type(fn).__name__}")
        self.fn = fn
        self.name = name or getattr(fn, "__name__", type(fn).__name__)

    def reset(self, num_envs: int) -> None:
        pass

    def act(self, observation: Mapping[str, np.ndarray], action_mask: np.ndarray | None = None,
            info: Mapping[str, Any] | None = None, episode_start: np.ndarray | None = None) -> np.ndarray:
        b = len(next(iter(observation.values())))
        actions = np.asarray(self.fn(observation, action_mask), dtype=np.int64)
        if actions.shape != (b, 5):
            raise ValueError(f"controller {self.name!r} returned actions of shape {actions.shape}; expected ({b}, 5)")
        return actions


def as_controller(obj: Any, name: str | None = None) -> Controller:
    """``obj`` as a :class:`Controller`: a controller is returned as is, a callable is wrapped.

    Stable-Baselines3 models and torch modules have their own adapters in
    :mod:`ahm.agents.sb3_controllers` (they need the observation space to map tensors).
    """
    if isinstance(obj, Controller):
        return obj
    if callable(obj):
        return FunctionController(obj, name)
    raise TypeError(f"cannot use a {type(obj).__name__} as a controller: pass a Controller or a callable "
                    "f(observation, action_mask) -> (b, 5) actions")


def batch_observation(observation: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A single env's observation with a leading axis of 1."""
    return {k: np.asarray(v)[None] for k, v in observation.items()}


def batch_info(info: Mapping[str, Any]) -> dict[str, Any]:
    """A single env's info (scalars and arrays) as the batched form (every leaf with a leading axis of 1)."""
    out: dict[str, Any] = {}
    for key, value in info.items():
        out[key] = batch_info(value) if isinstance(value, Mapping) else np.asarray(value)[None]
    return out


def unbatch_action(actions: np.ndarray) -> np.ndarray:
    """(1, 5) -> (5,), the action a single env takes."""
    actions = np.asarray(actions)
    if actions.shape != (1, 5):
        raise ValueError(f"expected one environment's actions of shape (1, 5), got {actions.shape}")
    return actions[0]
