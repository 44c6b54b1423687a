"""Memory controllers and their benchmark.

Owns (ARCHITECTURE.md): the ``Controller`` protocol, heuristic controllers
(random, write_all / FIFO, LRU, surprise, dedupe, oracle), Stable-Baselines3
adapters and training, the bridge for custom RL algorithms, and the benchmark
that compares them. Depends on :mod:`ahm.envs` and :mod:`ahm.rewards`.

* :mod:`ahm.agents.base` - ``Controller`` (the protocol), ``as_controller``, batching helpers.
* :mod:`ahm.agents.rollout` - ``rollout``, THE loop in which a controller acts in episodes (evaluation,
  demonstrations and the supervised phase all run on it), and the bridges to the backbone's
  ``MemoryPolicy`` (``ReplayController``, ``ObservationBridge``, ``controller_actions``).
* :mod:`ahm.agents.heuristics` - the hand-written controllers and the oracle.
* :mod:`ahm.agents.learned` - Stable-Baselines3 / sb3-contrib training (:mod:`ahm.agents.sb3_controllers`,
  :mod:`ahm.agents.imitation`, :mod:`ahm.agents.controller_checkpoint` beside it).
* :mod:`ahm.agents.evaluation` - ``evaluate``: whole episodes of one controller, with per-episode metrics.
* :mod:`ahm.agents.benchmark` - ``run_benchmark``: tasks x lengths x controllers (command line:
  ``python -m ahm.benchmark`` or ``ahm-benchmark``).

:func:`make_controller` builds one by name (:data:`CONTROLLER_NAMES`) or loads a
learned one from a checkpoint path.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from .base import Controller, FunctionController, as_controller, batch_info, batch_observation, unbatch_action

HEURISTICS: dict[str, str] = {
    "none": "ahm.agents.heuristics:NoMemoryController",
    "random": "ahm.agents.heuristics:RandomController",
    "write_all": "ahm.agents.heuristics:WriteAllController",
    "lru": "ahm.agents.heuristics:LRUController",
    "surprise": "ahm.agents.heuristics:SurpriseController",
    "dedupe": "ahm.agents.heuristics:DedupeController",
    "update": "ahm.agents.heuristics:UpdateController",
    "oracle": "ahm.agents.heuristics:OracleController",
    "teacher": "ahm.agents.heuristics:TeacherController",
}
"""Controller name -> ``module:Class``. ``none`` never touches memory (the backbone alone); ``oracle``
reads ground truth from ``info`` (an upper bound, not a policy an agent could learn from observations);
``teacher`` is the oracle plus random distractor writes, for the supervised phase only."""

CONTROLLER_NAMES = tuple(n for n in HEURISTICS if n != "teacher")
"""The controllers a benchmark compares by default (every entry of :data:`HEURISTICS` but the training teacher)."""

__all__ = ["Controller", "FunctionController", "as_controller", "batch_info", "batch_observation", "unbatch_action",
           "HEURISTICS", "CONTROLLER_NAMES", "make_controller"]


def make_controller(spec: str | Path, **kwargs: Any) -> Controller:
    """A controller by name (a key of :data:`HEURISTICS`) or from a learned controller's checkpoint path.

    ``kwargs`` go to the heuristic's constructor (e.g. ``seed`` for ``random``) or to
    :func:`ahm.agents.controller_checkpoint.load_controller`.
    """
    if isinstance(spec, str) and spec in HEURISTICS:
        module, cls = HEURISTICS[spec].split(":")
        return getattr(importlib.import_module(module), cls)(**kwargs)
    path = Path(spec)
    if path.exists():
        from .controller_checkpoint import load_controller

        return load_controller(path, **kwargs)
    raise ValueError(f"unknown controller {str(spec)!r}: use one of {CONTROLLER_NAMES} or the path of a saved "
                     "learned controller (ahm.agents.controller_checkpoint.save_controller)")
