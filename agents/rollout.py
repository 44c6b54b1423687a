"""The controller rollout: THE loop that lets a :class:`~ahm.agents.base.Controller` act in ``AHMMemory-v0`` episodes.

Every place that steps environments with a controller runs :func:`rollout`:
evaluation and the benchmark (:func:`ahm.agents.evaluation.evaluate`), behaviour
cloning and DAgger (``collect_demonstrations``: a driver steps, a teacher labels)
and the supervised phase (:func:`controller_actions`: the operations a controller
takes on a training batch's task streams, replayed by :class:`ReplayController`).

One step of a rollout (n environments, K working-memory slots)::

    mask   = env.action_masks()                       # (n, 2 K + 12) bool
    action = controller.act(obs, mask, info, start)   # (n, 5) int64: recorded as the label
    played = driver.act(...) if driver else action    # (n, 5) int64: what steps the env
    obs, reward, terminated, truncated, info = step(played)

and it is yielded as a :class:`RolloutStep`. Two kinds of environment:

* :class:`~ahm.envs.AHMMemoryVectorEnv`: reset with ``seed`` (and ``stream_seeds``, the
  vector env's ``options={"stream_seeds": ...}``); sub-environments whose episode ends
  auto-reset (``SAME_STEP``, a new stream drawn by the env) and keep stepping; ``episode_start``
  is True where a new episode begins. The rollout runs ``steps`` steps (None: until the caller
  stops iterating).
* :class:`~ahm.envs.memory_env.EpisodeBatch` (no Gymnasium wrapper, the supervised phase's):
  each row plays ONE episode on its ``stream_seeds``. A row whose episode ended restarts on
  the same stream only to keep the batch steppable and then plays no-ops (action 0) until
  every row has ended; ``episode_start`` is True at the first step only. The rollout ends
  when every row has ended once, or after ``steps`` steps (None: the episodes' ``n_chunks``).

Also here: the bridges between the two controller types. An :class:`ahm.agents.Controller`
acts on numpy observations of the env's format; the backbone's
:data:`ahm.backbone.MemoryPolicy` maps a :class:`~ahm.backbone.MemoryObservation` to
:class:`~ahm.backbone.MemoryOps` tensors. :class:`ReplayController` is a ``MemoryPolicy``
that returns recorded actions; :class:`ObservationBridge` is a ``Controller`` seen as a
``MemoryPolicy``. Actions become operations with :meth:`ahm.envs.spaces.ActionLayout.to_ops`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, NamedTuple, Protocol

import numpy as np
import torch
from torch import Tensor

from ahm.agents.base import Controller
from ahm.backbone import AHMModel, MemoryObservation, MemoryOps
from ahm.envs.config import AHMMemoryConfig
from ahm.envs.episode_batch import EpisodeBatch
from ahm.envs.spaces import ActionLayout, observation_arrays
from ahm.envs.vector_env import AHMMemoryVectorEnv

__all__ = ["RolloutStep", "rollout", "plain_info", "TaskBatch", "controller_actions", "ReplayController",
           "ObservationBridge"]


class RolloutStep(NamedTuple):
    """One step of :func:`rollout` over n environments: what the controller saw, did, and what followed.

    The arrays are the rollout's own (later steps do not overwrite them); store them as they are.
    """

    t: int
    """Steps taken before this one since the rollout's reset (0, 1, ...)."""
    observation: dict[str, np.ndarray]
    """The observation the controller acted on, ``{key: (n, ...) float32}``."""
    action_mask: np.ndarray
    """(n, 2 K + 12) bool: the valid action values it was given (``env.action_masks()``)."""
    shown_info: dict[str, Any]
    """The info it was given: nested (n, ...) arrays without Gymnasium's ``_key`` masks (:func:`plain_info`)."""
    episode_start: np.ndarray
    """(n,) bool: True where an episode started at :attr:`observation`."""
    stream_seeds: np.ndarray
    """(n,) int64: the task stream of each environment's episode during this step."""
    action: np.ndarray
    """(n, 5) int64: the controller's actions (the labels, when a driver steps)."""
    played: np.ndarray
    """(n, 5) int64: the actions that stepped the environments (the driver's, or :attr:`action`; no-ops on
    ``EpisodeBatch`` rows whose episode already ended)."""
    reward: np.ndarray
    """(n,) float64."""
    terminated: np.ndarray
    """(n,) bool."""
    truncated: np.ndarray
    """(n,) bool."""
    info: dict[str, Any]
    """The step's info, nested (n, ...) arrays, for every environment; for one whose episode ended here it is that
    episode's last info (``info["targets"]`` holds its final score), not the next episode's reset info."""
    last_observation: dict[str, np.ndarray]
    """The observation after this step's operations, before any auto-reset (for an environment whose episode ended,
    that episode's last observation)."""
    seconds: float
    """Wall time of the controller's (and driver's) ``act`` plus the environment's step."""
    reset_seconds: float
    """Wall time of the environment reset the rollout began with, at ``t == 0``; 0.0 at every later step."""

    @property
    def done(self) -> np.ndarray:
        """(n,) bool: ``terminated | truncated``."""
        return self.terminated | self.truncated


def plain_info(tree: Mapping[str, Any]) -> dict[str, Any]:
    """A Gymnasium vector info without its ``_key`` presence masks (the nested (n, ...) form controllers take)."""
    return {k: plain_info(v) if isinstance(v, Mapping) else v for k, v in tree.items() if not k.startswith("_")}


def _act(controller: Controller, observation: Mapping[str, np.ndarray], mask: np.ndarray, info: Mapping[str, Any],
         start: np.ndarray) -> np.ndarray:
    return np.asarray(controller.act(observation, mask, info, start), dtype=np.int64)


def rollout(controller: Controller, env: AHMMemoryVectorEnv | EpisodeBatch, *, seed: int | None = None,
            stream_seeds: Sequence[int] | None = None, steps: int | None = None,
            driver: Controller | None = None) -> Iterator[RolloutStep]:
    """Reset ``env``, then let ``controller`` act step after step; yields one :class:`RolloutStep` per step.

    Lazy: a step is taken only when the caller asks for it, so a caller that has seen enough
    simply stops iterating (nothing is stepped past its last request).

    Args:
        controller: acts on every step (it is reset for ``n`` environments first); its actions
            are :attr:`RolloutStep.action`.
        env: an :class:`~ahm.envs.AHMMemoryVectorEnv` (auto-reset) or an
            :class:`~ahm.envs.memory_env.EpisodeBatch` (one episode per row); module doc.
        seed: the vector env's reset seed (sub-env i is seeded ``seed + i``); not for an ``EpisodeBatch``.
        stream_seeds: (n,) the episodes' task streams (the vector env: optional, its reset option;
            an ``EpisodeBatch``: required).
        steps: at most this many steps (None: a vector env runs until the caller stops, an
            ``EpisodeBatch`` for its episodes' ``n_chunks``).
        driver: if given, its actions step the environments and ``controller`` only labels the
            states the driver reaches (DAgger, Ross et al., 2011); it is reset with the controller.
    """
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 0):
        raise ValueError(f"rollout: steps must be None or an int >= 0, got {steps!r}")
    if isinstance(env, AHMMemoryVectorEnv):
        return _vector_rollout(controller, env, seed, stream_seeds, steps, driver)
    if isinstance(env, EpisodeBatch):
        if seed is not None:
            raise ValueError("rollout: an EpisodeBatch draws nothing at random; leave seed out and pass stream_seeds")
        if stream_seeds is None or len(stream_seeds) != env.batch:
            raise ValueError(f"rollout: an EpisodeBatch of {env.batch} rows needs stream_seeds, one per row; got "
                             f"{stream_seeds!r}")
        return _batch_rollout(controller, env, stream_seeds, env.n_chunks if steps is None else int(steps), driver)
    raise TypeError(f"rollout: env must be an AHMMemoryVectorEnv or an EpisodeBatch, got {type(env).__name__}; "
                    "build one with ahm.agents.evaluation.make_eval_env or gymnasium.make_vec")


def _vector_rollout(controller: Controller, env: AHMMemoryVectorEnv, seed: int | None,
                    stream_seeds: Sequence[int] | None, steps: int | None,
                    driver: Controller | None) -> Iterator[RolloutStep]:
    n = env.num_envs
    options = None if stream_seeds is None else {"stream_seeds": stream_seeds}
    start_time = time.perf_counter()
    obs, info = env.reset(seed=seed, options=options)
    reset_seconds = time.perf_counter() - start_time
    info = plain_info(info)
    controller.reset(n)
    if driver is not None:
        driver.reset(n)
    start = np.ones(n, dtype=bool)
    t = 0
    while steps is None or t < steps:
        mask = env.action_masks()
        streams = env.episodes.stream_seeds.copy()
        start_time = time.perf_counter()
        action = _act(controller, obs, mask, info, start)
        played = action if driver is None else _act(driver, obs, mask, info, start)
        out = env.step_arrays(played)
        seconds = time.perf_counter() - start_time
        done = out.terminated | out.truncated
        step_info = out.final_info if out.final_info is not None else out.info
        last = out.final_observation if out.final_observation is not None else out.observation
        yield RolloutStep(t, obs, mask, info, start, streams, action, played, out.reward, out.terminated,
                          out.truncated, step_info, last, seconds, reset_seconds if t == 0 else 0.0)
        obs, info, start = out.observation, out.info, done
        t += 1


def _batch_rollout(controller: Controller, episodes: EpisodeBatch, stream_seeds: Sequence[int], steps: int,
                   driver: Controller | None) -> Iterator[RolloutStep]:
    b = episodes.batch
    start_time = time.perf_counter()
    episodes.reset_rows(np.arange(b), [int(s) for s in stream_seeds])
    obs, info = episodes.observe(), episodes.info()
    reset_seconds = time.perf_counter() - start_time
    controller.reset(b)
    if driver is not None:
        driver.reset(b)
    start = np.ones(b, dtype=bool)
    ended = np.zeros(b, dtype=bool)  # rows whose one episode is over: they restarted and play no-ops
    for t in range(steps):
        mask = episodes.masks.copy()
        streams = episodes.stream_seeds.copy()
        start_time = time.perf_counter()
        action = _act(controller, obs, mask, info, start)
        played = (action if driver is None else _act(driver, obs, mask, info, start)).copy()
        played[ended] = 0
        out = episodes.step(played)
        seconds = time.perf_counter() - start_time
        yield RolloutStep(t, obs, mask, info, start, streams, action, played, out.reward, out.terminated,
                          out.truncated, out.info, out.observation, seconds, reset_seconds if t == 0 else 0.0)
        start = np.zeros(b, dtype=bool)
        new = (out.terminated | out.truncated) & ~ended
        ended |= new
        if ended.all():
            return
        if new.any():  # keep the batch steppable: restart ended rows on their stream; they play no-ops from now
            rows = np.nonzero(new)[0]
            episodes.reset_rows(rows, [int(s) for s in streams[rows]])
            episodes.observe()
        obs, info = episodes.observation, out.info


# ====================================================================== the supervised phase's controllers
class TaskBatch(Protocol):
    """What :func:`controller_actions` reads of a training batch (``ahm.training.data.SequenceBatch`` is one)."""

    tokens: np.ndarray
    """(b, L) int64 tokens."""
    task: str | None
    """The task family (None for text, which has no episodes)."""
    stream_seeds: tuple[int, ...]
    """(b,) the seed of each row's task stream."""


class ReplayController:
    """A backbone-level controller that returns given operations: ``actions`` (b, 5) env actions of one chunk.

    A :data:`ahm.backbone.MemoryPolicy`: the training pass replays with it what a controller did in the
    environment (:func:`controller_actions`); the actions become operations by
    :meth:`ahm.envs.spaces.ActionLayout.to_ops`.
    """

    def __init__(self, actions: np.ndarray, device: torch.device) -> None:
        self.ops = ActionLayout.to_ops(actions, device)

    def __call__(self, obs: MemoryObservation) -> MemoryOps:
        return self.ops


class ObservationBridge:
    """An :class:`ahm.agents.Controller` as a backbone-level controller (``MemoryObservation -> MemoryOps``).

    The bridge from the numpy ``Controller`` protocol to the backbone's tensor-level
    :data:`ahm.backbone.MemoryPolicy`: it shows the controller the env's observation format
    (:func:`ahm.envs.spaces.observation_arrays`) and action masks, without ground truth
    (``info=None``), and turns its (b, 5) actions into :class:`~ahm.backbone.MemoryOps`
    (:meth:`ahm.envs.spaces.ActionLayout.to_ops`); used on text streams, where there is no
    environment to run. ``memory_masks()`` returns the memory's flat (b, 2 K + 12) action mask now
    (e.g. ``ActionLayout(K).join_masks(memory.op_masks())``). Call it once per chunk, in order.
    """

    def __init__(self, controller: Controller, n_chunks: int, memory_masks: Callable[[], Tensor]) -> None:
        self.controller, self.n_chunks, self.memory_masks = controller, n_chunks, memory_masks
        self.chunk = 0

    def __call__(self, obs: MemoryObservation) -> MemoryOps:
        b = obs.ltm_fill.shape[0]
        arrays = observation_arrays(obs, np.full(b, self.chunk), self.n_chunks)
        mask = self.memory_masks().cpu().numpy()
        width = ActionLayout.of_observation(arrays).mask_width
        if mask.shape != (b, width):
            raise ValueError(f"ObservationBridge: memory_masks() returned shape {mask.shape}; expected ({b}, {width}) "
                             "(the flat mask, ActionLayout(K).join_masks(memory.op_masks()))")
        start = np.full(b, self.chunk == 0)
        actions = self.controller.act(arrays, mask, None, start)
        self.chunk += 1
        return ActionLayout.to_ops(actions, obs.ltm_fill.device)


def controller_actions(model: AHMModel, batch: TaskBatch, controller: Controller, wm_slots: int,
                       ltm_capacity: int, task_kwargs: dict[str, Any] | None = None
                       ) -> tuple[np.ndarray, np.ndarray]:
    """Run ``controller`` in the environment on the batch's task streams with the model's current weights.

    A :func:`rollout` over an :class:`~ahm.envs.memory_env.EpisodeBatch` of the batch's streams
    (one episode per row; the model in eval mode, without gradient). Returns the actions (b, n, 5)
    int64 (no-ops after a row's episode ended) and the per-row answer accuracy (b,) the environment
    scored.
    """
    if batch.task is None:
        raise ValueError("controller_actions needs a task batch")
    b, length = batch.tokens.shape
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            config = AHMMemoryConfig(task=batch.task, seq_len=length, chunk_size=model.config.chunk_size,
                                     wm_slots=wm_slots, ltm_capacity=ltm_capacity, backbone=model,
                                     task_kwargs=dict(task_kwargs or {}), feature_cache_size=0)
            episodes = EpisodeBatch(config, batch=b)
            actions = np.zeros((b, episodes.n_chunks, 5), dtype=np.int64)
            correct, total = np.zeros(b), np.ones(b)
            done = np.zeros(b, dtype=bool)
            for step in rollout(controller, episodes, stream_seeds=list(batch.stream_seeds)):
                actions[:, step.t] = step.played
                ended = step.done & ~done
                correct[ended] = step.info["targets"]["correct"][ended]
                total[ended] = step.info["targets"]["total"][ended]
                done |= ended
    finally:
        model.train(was_training)
    return actions, correct / total
