"""Task streams and the ``AHMMemory-v0`` Gymnasium environments.

Owns (ARCHITECTURE.md): task streams (passkey, associative recall / MQAR,
selective copying, forgetting, text), ``AHMMemoryEnv`` and its native vector
env, and the registration of ``AHMMemory-v0`` and its variants. Depends on
:mod:`ahm.backbone` and :mod:`ahm.rewards`; nothing below it knows about
Gymnasium.

* :mod:`ahm.envs.streams` - ``TaskStream``, ``Fact``, ``Query``, ``TASKS`` (the task families).
* :mod:`ahm.envs.memory_env` - ``AHMMemoryEnv`` (one step = one chunk), the Gymnasium env and its documentation.
* :mod:`ahm.envs.vector_env` - ``AHMMemoryVectorEnv`` (native, batched; Stable-Baselines3's adapter is
  :mod:`ahm.agents.sb3_adapter`).
* :mod:`ahm.envs.config` - ``AHMMemoryConfig``, every argument of the two envs.
* :mod:`ahm.envs.spaces` - the action layout (``ActionLayout``), the action and observation spaces.
* :mod:`ahm.envs.episode_batch` - ``EpisodeBatch``, b episodes stepped together (what both envs run), and
  ``EpisodeFeatures``, the boundary features it caches.
* :mod:`ahm.envs.episode_scoring` - what a step is scored by: the ground truth per chunk, the answer's
  readout, the chunk that wrote each memory entry.
* :mod:`ahm.envs.default_backbones` - the shipped task-trained backbones and the random default.
* :mod:`ahm.envs.render` - the ``ansi`` and ``rgb_array`` pictures.
* :mod:`ahm.envs.registry` - ``ENV_SPECS``, the one dict behind registration, tests and docs.

Importing this package registers the ids (:func:`register_envs`) but loads torch,
the streams and the environments only when one of their names is first used.
"""

from __future__ import annotations

import importlib
from typing import Any

from .registry import ENV_SPECS, env_list_markdown, register_envs

register_envs()

_LAZY = {
    "TASKS": "ahm.envs.streams", "TaskStream": "ahm.envs.streams", "Fact": "ahm.envs.streams",
    "Query": "ahm.envs.streams", "FACT_KINDS": "ahm.envs.streams", "make_task": "ahm.envs.streams",
    "AHMMemoryEnv": "ahm.envs.memory_env", "AHMMemoryConfig": "ahm.envs.config",
    "EpisodeBatch": "ahm.envs.episode_batch", "ACTION_COMPONENTS": "ahm.envs.spaces",
    "OBSERVATION_KEYS": "ahm.envs.spaces", "DEFAULT_BACKBONE": "ahm.envs.default_backbones",
    "action_nvec": "ahm.envs.spaces",
    "random_backbone": "ahm.envs.default_backbones", "save_ahm_checkpoint": "ahm.backbone.checkpoint",
    "load_ahm_checkpoint": "ahm.backbone.checkpoint",
    "AHMMemoryVectorEnv": "ahm.envs.vector_env",
}

_MOVED = {"SB3VecEnvAdapter": "ahm.agents.sb3_adapter"}
"""Names that moved up a layer (``ahm.envs`` never imports Stable-Baselines3); still reachable here, with a warning."""

__all__ = ["ENV_SPECS", "env_list_markdown", "register_envs", *_LAZY]


def __getattr__(name: str) -> Any:  # PEP 562: heavy modules load on first use
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    if name in _MOVED:
        import warnings

        warnings.warn(f"ahm.envs.{name} moved to {_MOVED[name]}.{name}; import it from there", DeprecationWarning,
                      stacklevel=2)
        return getattr(importlib.import_module(_MOVED[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
