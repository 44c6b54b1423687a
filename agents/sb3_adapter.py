"""Stable-Baselines3's ``VecEnv`` over the native :class:`~ahm.envs.vector_env.AHMMemoryVectorEnv`.

SB3 does not accept Gymnasium vector envs; this adapter is the one place that
speaks SB3's vector API, so ``ahm.envs`` (and ``gymnasium.make_vec``) never import
Stable-Baselines3.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from stable_baselines3.common.vec_env.base_vec_env import VecEnv, VecEnvIndices, VecEnvObs, VecEnvStepReturn

from ahm.envs.spaces import ActionLayout
from ahm.envs.vector_env import AHMMemoryVectorEnv, _rows_of

__all__ = ["SB3VecEnvAdapter", "INVALID_ACTION_MODES"]

INVALID_ACTION_MODES = ("raise", "noop")
"""What :class:`SB3VecEnvAdapter` does with an action value its mask marks invalid."""


class SB3VecEnvAdapter(VecEnv):
    """Stable-Baselines3's ``VecEnv`` over an :class:`AHMMemoryVectorEnv` (SB3 does not accept Gymnasium vector envs).

    Observations pass through (a dict of (n, ...) arrays); ``dones = terminated | truncated``;
    each ended sub-env's info is the final step's, with ``terminal_observation`` and
    ``TimeLimit.truncated`` added, as SB3 expects. ``env_method("action_masks")``
    returns each sub-env's mask, so sb3-contrib's ``MaskablePPO`` works.

    Args:
        env: the vector env.
        info_keys: keys of each step's info to pass on (None: all). Building n Python
            dicts per step costs about a microsecond per key and sub-env, so training
            loops that log few keys pass e.g. ``("is_success", "reward_terms")``.
        invalid_actions: ``"raise"``: an action value its mask marks invalid raises the env's ValueError
            (its ``invalid_actions="raise"`` check), whatever the env's own mode; or ``"noop"``: before
            each step, every invalid component value is replaced by that component's no-op 0
            (:meth:`ActionLayout.noop_invalid`), for algorithms that cannot mask (plain PPO / A2C).

    Example::

        >>> import gymnasium as gym
        >>> import ahm
        >>> from ahm.agents.sb3_adapter import SB3VecEnvAdapter
        >>> venv = SB3VecEnvAdapter(gym.make_vec("AHMMemory-v0", num_envs=2, vectorization_mode="vector_entry_point",
        ...                                      seq_len=2048, chunk_size=64))
        >>> obs = venv.reset()
        >>> obs["progress"].shape, len(venv.env_method("action_masks")), venv.env_method("action_masks")[0].shape
        ((2, 1), 2, (28,))
    """

    def __init__(self, env: AHMMemoryVectorEnv, info_keys: Iterable[str] | None = None,
                 invalid_actions: str = "raise") -> None:
        if not isinstance(env, AHMMemoryVectorEnv):
            raise ValueError(f"SB3VecEnvAdapter wraps an AHMMemoryVectorEnv, got {type(env).__name__} "
                             "(use gymnasium.make_vec(..., vectorization_mode='vector_entry_point'))")
        if invalid_actions not in INVALID_ACTION_MODES:
            raise ValueError(f"invalid_actions must be one of {INVALID_ACTION_MODES}, got {invalid_actions!r}")
        self.env = env
        self.invalid_actions = invalid_actions
        self.layout = ActionLayout.from_nvec(env.single_action_space.nvec)
        self.info_keys = None if info_keys is None else tuple(info_keys)
        self._actions: np.ndarray | None = None
        super().__init__(env.num_envs, env.single_observation_space, env.single_action_space)

    def _select(self, info: dict[str, Any]) -> dict[str, Any]:
        return info if self.info_keys is None else {k: v for k, v in info.items() if k in self.info_keys}

    def reset(self) -> VecEnvObs:
        seeds = None if all(s is None for s in self._seeds) else list(self._seeds)
        options = self._options[0] if self._options and self._options[0] else None
        obs, info = self.env.reset(seed=seeds, options=options)
        plain = {k: v for k, v in info.items() if not k.startswith("_")}
        self.reset_infos = _rows_of(self._select({k: _strip(v) for k, v in plain.items()}), self.num_envs)
        self._reset_seeds()
        self._reset_options()
        return obs

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = actions

    def step_wait(self) -> VecEnvStepReturn:
        actions = self._actions
        if self.invalid_actions == "noop":
            actions = self.layout.noop_invalid(actions, self.env.action_masks())
        else:  # refuse before anything steps, with the env's own messages
            self.env.episodes.check_actions(actions, invalid_actions="raise")
        s = self.env.step_arrays(actions)
        done = s.terminated | s.truncated
        infos = _rows_of(self._select({k: v for k, v in s.info.items() if k != "is_success"}), self.num_envs)
        if s.final_info is not None:
            ended = np.nonzero(done)[0]
            finals = _rows_of(self._select(s.final_info), self.num_envs)
            for r in ended.tolist():
                infos[r] = finals[r]
                infos[r]["terminal_observation"] = {k: v[r].copy() for k, v in s.final_observation.items()}
                infos[r]["TimeLimit.truncated"] = bool(s.truncated[r] and not s.terminated[r])
        if self.info_keys is None or "is_success" in self.info_keys:
            for r in np.nonzero(s.info_present)[0].tolist():
                infos[r]["is_success"] = bool(s.info["is_success"][r])
        return s.observation, s.reward.astype(np.float32), done, infos

    def close(self) -> None:
        self.env.close()

    def get_attr(self, attr_name: str, indices: VecEnvIndices = None) -> list[Any]:
        if attr_name == "render_mode":
            return [self.env.render_mode for _ in self._get_indices(indices)]
        value = getattr(self.env, attr_name)
        return [value for _ in self._get_indices(indices)]

    def set_attr(self, attr_name: str, value: Any, indices: VecEnvIndices = None) -> None:
        raise AttributeError(f"SB3VecEnvAdapter: sub-environments share one batched env; cannot set {attr_name!r} "
                             "per sub-environment")

    def env_method(self, method_name: str, *method_args: Any, indices: VecEnvIndices = None,
                   **method_kwargs: Any) -> list[Any]:
        idx = list(self._get_indices(indices))
        if method_name == "action_masks":
            masks = self.env.action_masks()
            return [masks[i] for i in idx]
        result = getattr(self.env, method_name)(*method_args, **method_kwargs)
        return [result for _ in idx]

    def env_is_wrapped(self, wrapper_class: type, indices: VecEnvIndices = None) -> list[bool]:
        return [False for _ in self._get_indices(indices)]

    def has_attr(self, attr_name: str) -> bool:
        return hasattr(self.env, attr_name)

    def get_images(self) -> Sequence[np.ndarray | None]:
        frames = self.env.render()
        return list(frames) if frames is not None else [None] * self.num_envs


def _strip(value: Any) -> Any:
    """A masked info tree without its ``_key`` masks."""
    if isinstance(value, dict):
        return {k: _strip(v) for k, v in value.items() if not k.startswith("_")}
    return value
