"""The native vector env (:class:`AHMMemoryVectorEnv`); its Stable-Baselines3 adapter is :mod:`ahm.agents.sb3_adapter`.

``AHMMemoryVectorEnv`` runs ``num_envs`` episodes on one
:class:`~ahm.envs.episode_batch.EpisodeBatch`: one batched memory of ``num_envs``
sequences (every memory operation is one batched tensor op over the sub-envs),
and the backbone batched over the sub-envs that reset together (readout
integration: their feature caches in one pass; state integration: every step).
It is the same code as :class:`~ahm.envs.memory_env.AHMMemoryEnv` at b = 1, and
sub-env i seeded ``seed + i`` equals ``AHMMemoryEnv`` reset with ``seed + i``
step for step, autoresets included (tested against ``gymnasium.vector.SyncVectorEnv``).

Autoreset (the ``autoreset_mode`` argument, declared in ``metadata``), exactly as
``SyncVectorEnv`` does in each mode:

* ``AutoresetMode.SAME_STEP`` (the default): when a sub-env terminates or truncates,
  the same ``step`` resets it: the returned observation and info are the new
  episode's, and ``info["final_obs"]`` / ``info["final_info"]`` (masked by
  ``info["_final_obs"]``) hold the last observation and info of the episode that
  ended. Stable-Baselines3 expects this convention, so the adapter only renames
  ``final_obs`` to ``terminal_observation``; ``ahm.agents.rollout`` relies on it too.
* ``AutoresetMode.NEXT_STEP``: the step that ends an episode returns its last
  observation; the next ``step`` resets that sub-env, ignores its action, and returns
  the reset observation and info with reward 0 and terminated / truncated False.
  Gymnasium's vector wrappers (``gymnasium.wrappers.vector.FlattenObservation``,
  ``NormalizeObservation``, ...) accept only this mode (or DISABLED):
  ``gymnasium.make_vec(id, n, vectorization_mode="vector_entry_point",
  autoreset_mode=AutoresetMode.NEXT_STEP)``.

Stable-Baselines3 does not accept Gymnasium vector envs;
:class:`~ahm.agents.sb3_adapter.SB3VecEnvAdapter` is its ``VecEnv`` over ours, with
``env_method("action_masks")`` for sb3-contrib's ``MaskablePPO`` (it lives with the
agents, so this package never imports Stable-Baselines3).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from gymnasium.utils import seeding
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from ahm.backbone import AHMConfigError, AHMModel
from ahm.envs.config import AHMMemoryConfig, check_stream_seed, reset_option
from ahm.envs.episode_batch import EpisodeBatch
from ahm.envs.render import render_ansi, render_rgb
from ahm.envs.spaces import ActionLayout, MemoryOpsSpace
from ahm.rewards import RewardTerm, RewardWeights

__all__ = ["AHMMemoryVectorEnv", "VectorStep", "noop_invalid_actions"]


def noop_invalid_actions(actions: Any, masks: np.ndarray, nvec: np.ndarray) -> np.ndarray:
    """(n, 5) int64 actions with every in-range component value that ``masks`` marks invalid replaced by 0
    (:meth:`ahm.envs.spaces.ActionLayout.noop_invalid` for the layout of ``nvec``)."""
    return ActionLayout.from_nvec(nvec).noop_invalid(actions, masks)


def _masked(tree: dict[str, Any], mask: np.ndarray) -> dict[str, Any]:
    """A nested dict of (b, ...) arrays with Gymnasium's ``_key`` presence masks added at every level."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        out[key] = _masked(value, mask) if isinstance(value, dict) else value
        out[f"_{key}"] = mask.copy()
    return out


def _only_rows(tree: dict[str, Any], rows: np.ndarray) -> dict[str, Any]:
    """``tree`` with every other row zeroed (how ``SyncVectorEnv`` fills ``final_info`` for sub-envs that go on)."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out[key] = _only_rows(value, rows)
        else:
            out[key] = np.zeros_like(value)
            out[key][rows] = value[rows]
    return out


def _replace_rows(tree: dict[str, Any], new: dict[str, Any], rows: np.ndarray) -> dict[str, Any]:
    """``tree`` with rows ``rows`` taken from ``new`` (same structure; keys missing from ``new`` are kept)."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if key not in new:
            out[key] = value
        elif isinstance(value, dict):
            out[key] = _replace_rows(value, new[key], rows)
        else:
            value = value.copy()
            value[rows] = new[key][rows]
            out[key] = value
    return out


def _rows_of(tree: dict[str, Any], n: int) -> list[dict[str, Any]]:
    """Per-row dicts of a nested dict of (n, ...) arrays (Python scalars, (...) arrays), converting each leaf once."""
    rows: list[dict[str, Any]] = [{} for _ in range(n)]
    for key, value in tree.items():
        if isinstance(value, dict):
            parts = _rows_of(value, n)
        elif value.ndim == 1:
            parts = value.tolist()
        else:
            parts = list(value.copy())
        for row, part in zip(rows, parts):
            row[key] = part
    return rows


def _rows_mask(rows: np.ndarray, n: int) -> np.ndarray:
    """(n,) bool, True at ``rows``."""
    mask = np.zeros(n, dtype=bool)
    mask[rows] = True
    return mask


def _autoreset_mode(mode: AutoresetMode | str) -> AutoresetMode:
    """``mode`` as an :class:`AutoresetMode` this env runs (SAME_STEP or NEXT_STEP), or a ValueError saying which."""
    try:
        mode = AutoresetMode(mode) if not isinstance(mode, AutoresetMode) else mode
    except ValueError:
        mode = AutoresetMode.__members__.get(str(mode).upper(), mode)
    if mode not in (AutoresetMode.SAME_STEP, AutoresetMode.NEXT_STEP):
        raise ValueError(f"autoreset_mode must be AutoresetMode.SAME_STEP or AutoresetMode.NEXT_STEP, got {mode!r} "
                         "(DISABLED is not supported: use NEXT_STEP for Gymnasium's vector wrappers)")
    return mode


class VectorStep(NamedTuple):
    """One step of the vector env, before Gymnasium's info masks are added."""

    observation: dict[str, np.ndarray]
    reward: np.ndarray
    terminated: np.ndarray
    truncated: np.ndarray
    info: dict[str, Any]
    """Nested (n, ...) arrays: the step's info, or the new episode's reset info for sub-envs that ended;
    ``is_success`` is absent for the latter (``info_present`` says where it is)."""
    info_present: np.ndarray
    """(n,) bool: sub-envs whose ``info`` is a step info (not a reset info)."""
    final_observation: dict[str, np.ndarray] | None
    """The last observation of every sub-env (meaningful where terminated | truncated), or None if none ended."""
    final_info: dict[str, Any] | None
    """The step info of every sub-env (meaningful where terminated | truncated), or None if none ended."""


class AHMMemoryVectorEnv(VectorEnv):
    """``num_envs`` ``AHMMemoryEnv`` episodes stepped together on one batched memory (module doc).

    Arguments are those of :class:`~ahm.envs.memory_env.AHMMemoryEnv` plus ``num_envs`` and
    ``autoreset_mode`` (an :class:`~gymnasium.vector.AutoresetMode` or its value, ``"SameStep"`` or
    ``"NextStep"``; module doc);
    ``gymnasium.make_vec(id, num_envs, vectorization_mode="vector_entry_point", **kwargs)``
    creates it. Observations are the single env's Dict with a leading ``num_envs``
    axis; actions are ``(num_envs, 5)``; :meth:`action_masks` is ``(num_envs, 2 K + 12)``.

    Example::

        >>> import gymnasium as gym
        >>> import ahm
        >>> envs = gym.make_vec("AHMMemory-v0", num_envs=4, vectorization_mode="vector_entry_point",
        ...                     seq_len=2048, chunk_size=64)
        >>> obs, info = envs.reset(seed=0)
        >>> obs["wm_occupied"].shape, envs.action_space.shape, envs.metadata["autoreset_mode"].name
        ((4, 8), (4, 5), 'SAME_STEP')
        >>> obs, reward, terminated, truncated, info = envs.step(envs.action_space.sample())
        >>> reward.shape, info["memory"]["writes"].shape
        ((4,), (4,))
    """

    metadata = {"render_modes": ["ansi", "rgb_array"], "render_fps": 30, "autoreset_mode": AutoresetMode.SAME_STEP}

    def __init__(self, num_envs: int = 1, task: str = "passkey", seq_len: int = 100_000, chunk_size: int = 256,
                 wm_slots: int = 8, ltm_capacity: int = 512, ltm_codec: str | None = None,
                 integration: str | None = None, backbone: AHMModel | str | Path | None = None,
                 reward_weights: RewardWeights | Mapping[str, float] | None = None,
                 extra_reward_terms: Sequence[RewardTerm] = (), task_kwargs: Mapping[str, Any] | None = None,
                 max_steps: int | None = None, feature_cache_size: int = 1, stream_seeds: Sequence[int] | None = None,
                 render_mode: str | None = None, invalid_actions: str = "noop",
                 autoreset_mode: AutoresetMode | str = AutoresetMode.SAME_STEP) -> None:
        if not isinstance(num_envs, int) or num_envs < 1:
            raise ValueError(f"num_envs must be a positive int, got {num_envs!r}")
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode must be None or one of {self.metadata['render_modes']}, got {render_mode!r}")
        self.config = AHMMemoryConfig(task, seq_len, chunk_size, wm_slots, ltm_capacity, ltm_codec, integration,
                                      backbone, reward_weights, tuple(extra_reward_terms), dict(task_kwargs or {}),
                                      max_steps, feature_cache_size, stream_seeds, invalid_actions)
        self.autoreset_mode = _autoreset_mode(autoreset_mode)
        self.metadata = {**type(self).metadata, "autoreset_mode": self.autoreset_mode}
        self.num_envs = num_envs
        self.render_mode = render_mode
        self._episodes = EpisodeBatch(self.config, batch=num_envs, record=render_mode == "rgb_array")
        nvec = self._episodes.nvec
        self.single_observation_space = self._episodes.observation_space
        self.single_action_space = MemoryOpsSpace(nvec)
        self.observation_space = batch_space(self.single_observation_space, num_envs)
        self.action_space = MemoryOpsSpace(np.tile(nvec, (num_envs, 1)))
        self._rngs: list[np.random.Generator | None] = [None] * num_envs
        self._autoreset = np.zeros(num_envs, dtype=bool)  # NEXT_STEP: sub-envs that the next step resets
        self._started = False

    @property
    def episodes(self) -> EpisodeBatch:
        """The batched episode machinery (streams, memory, model)."""
        return self._episodes

    def reset(self, *, seed: int | Sequence[int | None] | None = None,
              options: dict[str, Any] | None = None) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Reset every sub-env: sub-env i is seeded ``seed + i`` (or ``seed[i]``); None keeps its generator.

        ``options={"stream_seeds": [s_0, ...]}`` picks the streams directly.
        """
        n = self.num_envs
        given = reset_option(options, "stream_seeds")  # checked before anything changes
        if given is not None:
            if len(given) != n:
                raise AHMConfigError(f"reset: options['stream_seeds'] has {len(given)} seeds for {n} sub-environments")
            given = [check_stream_seed(s, f"reset: options['stream_seeds'][{i}]") for i, s in enumerate(given)]
        if seed is None or isinstance(seed, int):
            super().reset(seed=seed)
            seeds: list[int | None] = [None if seed is None else seed + i for i in range(n)]
        else:
            seeds = list(seed)
            if len(seeds) != n:
                raise ValueError(f"reset: {len(seeds)} seeds for {n} sub-environments")
        for i, s in enumerate(seeds):
            if s is not None or self._rngs[i] is None:
                self._rngs[i], _ = seeding.np_random(s)
        stream_seeds = given if given is not None else [self.config.draw_stream_seed(rng) for rng in self._rngs]
        episodes = self._episodes
        episodes.reset_rows(np.arange(n), stream_seeds)
        obs = episodes.observe()
        self._started = True
        self._autoreset[:] = False
        return {k: v.copy() for k, v in obs.items()}, _masked(episodes.info(), np.ones(n, dtype=bool))

    def step_arrays(self, actions: Any) -> VectorStep:
        """One step with SAME_STEP autoreset, infos as plain nested arrays (what :meth:`step` and the adapter use)."""
        if not self._started:
            raise RuntimeError("AHMMemoryVectorEnv: call reset() before step()")
        if self.autoreset_mode != AutoresetMode.SAME_STEP:
            raise RuntimeError(f"step_arrays runs SAME_STEP autoreset; this env was made with {self.autoreset_mode}")
        episodes = self._episodes
        out = episodes.step(actions)
        done = out.terminated | out.truncated
        obs, info, final_obs, final_info = out.observation, out.info, None, None
        if done.any():
            rows = np.nonzero(done)[0]
            final_obs, final_info = {k: v.copy() for k, v in obs.items()}, info
            episodes.reset_rows(rows, [self.config.draw_stream_seed(self._rngs[r]) for r in rows.tolist()])
            obs = episodes.observe()
            info = _replace_rows(info, episodes.info(), rows)
        return VectorStep({k: v.copy() for k, v in obs.items()}, out.reward.copy(), out.terminated, out.truncated,
                          info, ~done, final_obs, final_info)

    def _step_next_step(self, actions: Any) -> VectorStep:
        """One step with NEXT_STEP autoreset (module doc): sub-envs that ended at the previous step are reset now.

        The batch steps every row together, so the rows being reset take a no-op step in their finished
        episode first (their actions are ignored, their results discarded) and are then reset: their state is
        exactly a fresh reset's.
        """
        if not self._started:
            raise RuntimeError("AHMMemoryVectorEnv: call reset() before step()")
        episodes, rows = self._episodes, np.nonzero(self._autoreset)[0]
        if len(rows):
            actions = np.array(actions, dtype=np.int64, copy=True).reshape(self.num_envs, -1)
            actions[rows] = 0  # ignored, as Gymnasium's NEXT_STEP ignores the action of a sub-env it resets
        out = episodes.step(actions, finished=self._autoreset)
        obs, info = out.observation, out.info
        reward, terminated, truncated = out.reward.copy(), out.terminated.copy(), out.truncated.copy()
        if len(rows):
            episodes.reset_rows(rows, [self.config.draw_stream_seed(self._rngs[r]) for r in rows.tolist()])
            obs = episodes.observe()
            info = _replace_rows(info, episodes.info(), rows)
            reward[rows], terminated[rows], truncated[rows] = 0.0, False, False
        self._autoreset = terminated | truncated
        return VectorStep({k: v.copy() for k, v in obs.items()}, reward, terminated, truncated, info,
                          ~_rows_mask(rows, self.num_envs), None, None)

    def step(self, actions: Any) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        if self.autoreset_mode == AutoresetMode.NEXT_STEP:
            s = self._step_next_step(actions)
        else:
            s = self.step_arrays(actions)
        everywhere = np.ones(self.num_envs, dtype=bool)
        info = _masked({k: v for k, v in s.info.items() if k != "is_success"}, everywhere)
        if s.info_present.any():  # sub-envs that reset this step carry their reset info, which has no is_success
            info["is_success"], info["_is_success"] = s.info["is_success"], s.info_present.copy()
        if s.final_observation is not None:
            done = ~s.info_present
            final_obs = np.full(self.num_envs, None, dtype=object)
            for r in np.nonzero(done)[0].tolist():
                final_obs[r] = {k: v[r].copy() for k, v in s.final_observation.items()}
            info["final_obs"], info["_final_obs"] = final_obs, done.copy()
            info["final_info"] = _masked(_only_rows(s.final_info, done), done)
            info["_final_info"] = done.copy()
        return s.observation, s.reward, s.terminated, s.truncated, info

    def action_masks(self) -> np.ndarray:
        """(num_envs, 2 K + 12) bool: each sub-env's valid action values, per component concatenated."""
        return self._episodes.masks.copy()

    def render(self) -> tuple[Any, ...] | None:
        """Each sub-env's frame (``ansi`` text or ``rgb_array`` image), as ``SyncVectorEnv`` returns them."""
        if self.render_mode == "ansi":
            return tuple(render_ansi(self._episodes.snapshot(i)) for i in range(self.num_envs))
        if self.render_mode == "rgb_array":
            return tuple(render_rgb(h, self.config.wm_slots) for h in self._episodes.history)
        return None
