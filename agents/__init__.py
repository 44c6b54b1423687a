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


def make_controller(spec: str | Path, name: str | None = None, **kwargs: Any) -> Controller:
    """A controller from a spec: a heuristic's name, a saved controller's path, or a Python ``module:attr``.

    * a key of :data:`HEURISTICS` (``kwargs`` go to its constructor, e.g. ``seed`` for ``random``);
    * the path of a saved controller, dispatched on its JSON's ``format``: an SB3 controller directory
      (:func:`ahm.agents.controller_checkpoint.save_controller`; ``kwargs`` go to ``load_controller``) or a
      plain-torch MLP policy, a directory or an ``X.safetensors`` file with ``X.json`` beside it
      (:func:`~ahm.agents.controller_checkpoint.save_mlp_policy`, e.g. ``examples/reinforce.py --save``);
    * ``module:attr``, where ``module`` is an importable module (``my_pkg.controllers``) or a ``.py`` file and
      ``attr`` a Controller class or a function without required arguments (called: it returns the controller),
      a Controller object, or a function ``f(observation, action_mask) -> (b, 5)`` actions. This runs your code:
      it is what you asked for by naming it.

    ``name`` replaces the controller's own ``name`` (tables and plots label it so).
    """
    controller = _build_controller(spec, **kwargs)
    if name is not None:
        controller.name = name
    return controller


def _build_controller(spec: str | Path, **kwargs: Any) -> Controller:
    if isinstance(spec, str) and spec in HEURISTICS:
        module, cls = HEURISTICS[spec].split(":")
        return getattr(importlib.import_module(module), cls)(**kwargs)
    path = Path(spec)
    if path.exists() or path.with_suffix(".json").exists():
        from .controller_checkpoint import (
            MLP_POLICY_FORMAT,
            checkpoint_meta,
            load_controller,
            load_mlp_policy,
        )

        if checkpoint_meta(path)["format"] == MLP_POLICY_FORMAT:
            return load_mlp_policy(path, **kwargs)
        return load_controller(path, **kwargs)
    if isinstance(spec, str) and ":" in spec:
        return _from_python(spec, **kwargs)
    raise ValueError(f"unknown controller {str(spec)!r}: use one of {CONTROLLER_NAMES}, the path of a saved "
                     "controller (ahm.agents.controller_checkpoint.save_controller or save_mlp_policy), or "
                     "module:attr naming a Controller in your code")


def _from_python(spec: str, **kwargs: Any) -> Controller:
    """The controller a ``module:attr`` spec names (:func:`make_controller`)."""
    import importlib.util
    import inspect
    import sys

    module_name, _, attr = spec.rpartition(":")
    try:
        if module_name.endswith(".py"):
            file = Path(module_name).resolve()
            if not file.is_file():
                raise FileNotFoundError(f"no file {module_name!r}")
            unique = f"_ahm_controller_{abs(hash(str(file)))}"
            module_spec = importlib.util.spec_from_file_location(unique, file)
            module = importlib.util.module_from_spec(module_spec)  # type: ignore[arg-type]
            sys.modules[unique] = module  # dataclasses resolve annotations through sys.modules
            module_spec.loader.exec_module(module)  # type: ignore[union-attr]
        else:
            module = importlib.import_module(module_name)
        obj = getattr(module, attr)
    except (ImportError, FileNotFoundError, AttributeError) as err:
        raise ValueError(f"controller {spec!r}: cannot load {attr!r} from {module_name!r} ({err}); use "
                         "package.module:attr or path/to/file.py:attr") from err
    if isinstance(obj, type) or (callable(obj) and not isinstance(obj, Controller) and not any(
            p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
            for p in inspect.signature(obj).parameters.values())):
        obj = obj(**kwargs)  # a class or a factory
    return as_controller(obj, name=attr if not isinstance(obj, Controller) else None)
