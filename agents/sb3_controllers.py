"""Stable-Baselines3 / sb3-contrib models and torch modules as batched :class:`~ahm.agents.base.Controller` s.

* :data:`ALGORITHMS` / :class:`AlgoSpec` - the four trainable algorithms (PPO, A2C, RecurrentPPO, MaskablePPO);
  :func:`algo_name` - which of them a model is.
* :class:`SB3Controller` - a PPO, A2C, RecurrentPPO or MaskablePPO model, batched.
* :class:`TorchPolicyController` - any torch module mapping observations to per-component logits;
  :func:`masked_argmax` - its choice of the best valid value per component.

The action layout (``nvec = [K + 1, 2, 4, K + 1, 4]``, flat masks of ``2 K + 12`` entries) is
:class:`ahm.envs.spaces.ActionLayout`'s; nothing here derives it again.

Invalid actions. Some operations are invalid in some states (retrieving from an
empty level, forgetting an empty slot); the env raises on them. ``MaskablePPO``
masks its distribution with the env's ``action_masks()``. Plain PPO, A2C and
RecurrentPPO cannot mask, so one rule applies to them everywhere: every component
value the mask marks invalid is replaced by that component's no-op 0
(:meth:`~ahm.envs.spaces.ActionLayout.noop_invalid`). During training the
:class:`~ahm.agents.sb3_adapter.SB3VecEnvAdapter` applies it (``invalid_actions="noop"``), and
:class:`SB3Controller` applies it after ``predict``, so a controller never sends an
invalid action. (The rollout buffer keeps the action the policy chose; the env ran
its no-op version. The policy learns that an invalid choice has the no-op's effect.)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
from gymnasium import spaces
from sb3_contrib import MaskablePPO, RecurrentPPO
from stable_baselines3 import A2C, PPO
from stable_baselines3.common.on_policy_algorithm import OnPolicyAlgorithm
from torch import Tensor, nn

from ahm.envs.spaces import ActionLayout

__all__ = ["AlgoSpec", "ALGORITHMS", "algo_name", "SB3Controller", "TorchPolicyController", "masked_argmax"]


class AlgoSpec(NamedTuple):
    """One trainable algorithm."""

    cls: type[OnPolicyAlgorithm]
    policy: str
    """The SB3 policy alias for Dict observations."""
    masks: bool
    """Whether it masks invalid actions itself (else the adapter runs in ``"noop"`` mode)."""
    recurrent: bool


ALGORITHMS: dict[str, AlgoSpec] = {
    "ppo": AlgoSpec(PPO, "MultiInputPolicy", masks=False, recurrent=False),
    "a2c": AlgoSpec(A2C, "MultiInputPolicy", masks=False, recurrent=False),
    "recurrent_ppo": AlgoSpec(RecurrentPPO, "MultiInputLstmPolicy", masks=False, recurrent=True),
    "maskable_ppo": AlgoSpec(MaskablePPO, "MultiInputPolicy", masks=True, recurrent=False),
}
"""Algorithm name -> class, policy and capabilities (the values of ``ControllerTrainConfig.algo``)."""

def algo_name(model: Any) -> str:
    """The :data:`ALGORITHMS` key of an SB3 / sb3-contrib model (its exact class, subclasses included)."""
    for name in ("maskable_ppo", "recurrent_ppo", "ppo", "a2c"):
        if isinstance(model, ALGORITHMS[name].cls):
            return name
    raise ValueError(f"unsupported model {type(model).__name__}: expected one of "
                     f"{[s.cls.__name__ for s in ALGORITHMS.values()]}")


def _batch_size_of(observation: Mapping[str, Any]) -> int:
    if not observation:
        raise ValueError("empty observation: expected the env's Dict observation with a leading batch axis")
    return len(next(iter(observation.values())))


class SB3Controller:
    """An SB3 / sb3-contrib model (PPO, A2C, RecurrentPPO, MaskablePPO) as a batched :class:`Controller`.

    * MaskablePPO: the action mask goes into ``predict(action_masks=...)``;
    * RecurrentPPO: the LSTM state of every environment is carried between calls and reset
      where ``episode_start`` is True (and on the first call after :meth:`reset`);
    * PPO / A2C (and every algorithm, as a safeguard): after ``predict``, invalid components
      (per ``action_mask``) are replaced by 0, the rule of the adapter's ``"noop"`` mode (module doc).
      Without ``action_mask`` the actions are returned as predicted.

    Args:
        model: the trained model (``train_controller``'s result, or ``load_controller(...).model``).
        deterministic: the mode of each component's distribution (True) or a sample.
        name: label for tables (default: the algorithm's name).
    """

    def __init__(self, model: OnPolicyAlgorithm, deterministic: bool = True, name: str | None = None) -> None:
        self.algo = algo_name(model)
        self.model = model
        self.deterministic = deterministic
        self.name = name or self.algo
        space = model.action_space
        wrong = ValueError(f"SB3Controller needs a model of AHMMemory-v0's MultiDiscrete action space of 5 "
                           f"components, got {space}")
        if not isinstance(space, spaces.MultiDiscrete) or space.nvec.ndim != 1 or len(space.nvec) != 5:
            raise wrong
        try:
            self.layout = ActionLayout.from_nvec(space.nvec)
        except ValueError as err:
            raise wrong from err
        self.nvec = self.layout.nvec
        self.keys = tuple(model.observation_space.spaces)
        self._state: tuple[np.ndarray, ...] | None = None

    def reset(self, num_envs: int) -> None:
        """Forget the recurrent state (the next call starts every environment afresh)."""
        self._state = None

    def act(self, observation: Mapping[str, np.ndarray], action_mask: np.ndarray | None = None,
            info: Mapping[str, Any] | None = None, episode_start: np.ndarray | None = None) -> np.ndarray:
        """(b, 5) int64 actions for observations ``{key: (b, ...)}``, masks (b, 2 K + 12) and starts (b,)."""
        missing = [k for k in self.keys if k not in observation]
        if missing:
            raise ValueError(f"observation lacks keys {missing} of the model's observation space {list(self.keys)}")
        obs = {k: np.asarray(observation[k], dtype=np.float32) for k in self.keys}
        b = _batch_size_of(obs)
        mask = None if action_mask is None else np.asarray(action_mask, dtype=bool).reshape(b, -1)
        if mask is not None and mask.shape[1] != self.layout.mask_width:
            raise ValueError(f"action_mask has {mask.shape[1]} entries per env; the model's action space needs "
                             f"{self.layout.mask_width} (2 K + 12)")
        if self.algo == "maskable_ppo":
            actions, _ = self.model.predict(obs, deterministic=self.deterministic, action_masks=mask)
        elif self.algo == "recurrent_ppo":
            if self._state is not None and self._state[0].shape[1] != b:
                raise ValueError(f"the recurrent state is for {self._state[0].shape[1]} envs, the observation for "
                                 f"{b}: call reset(num_envs) when the number of environments changes")
            starts = np.zeros(b, dtype=bool) if episode_start is None else np.asarray(episode_start, dtype=bool)
            if self._state is None:
                starts = np.ones(b, dtype=bool)
            actions, self._state = self.model.predict(obs, state=self._state, episode_start=starts,
                                                      deterministic=self.deterministic)
        else:
            actions, _ = self.model.predict(obs, deterministic=self.deterministic)
        actions = np.asarray(actions, dtype=np.int64).reshape(b, len(self.nvec))
        if mask is not None:
            actions = self.layout.noop_invalid(actions, mask)
        return actions


class TorchPolicyController:
    """A plain torch module as a :class:`Controller`: masked argmax over per-component logits.

    The module maps the batched observation, a dict of float32 tensors ``{key: (b, ...)}``,
    to logits: a list / tuple of 5 tensors ``(b, nvec[j])`` or one ``(b, sum(nvec))``
    tensor (the components concatenated, the layout of the action mask). Values the mask
    marks invalid get logit -inf, so the action is the best valid value of each component.

    Args:
        module: the policy network (called under ``torch.no_grad()``, in eval mode).
        nvec: the action space's ``nvec``; None derives it from the observation
            (K = ``wm_occupied``'s width: ``[K + 1, 2, 4, K + 1, 4]``).
        name: label for tables.
    """

    def __init__(self, module: nn.Module, nvec: Sequence[int] | None = None, name: str = "torch_policy") -> None:
        if not callable(module):
            raise TypeError(f"TorchPolicyController needs a torch module, got {type(module).__name__}")
        self.module = module
        self.layout = None if nvec is None else ActionLayout.from_nvec(nvec)
        self.nvec = None if self.layout is None else self.layout.nvec
        self.name = name

    def reset(self, num_envs: int) -> None:
        pass

    def _device(self) -> torch.device:
        params = list(self.module.parameters()) if isinstance(self.module, nn.Module) else []
        return params[0].device if params else torch.device("cpu")

    def act(self, observation: Mapping[str, np.ndarray], action_mask: np.ndarray | None = None,
            info: Mapping[str, Any] | None = None, episode_start: np.ndarray | None = None) -> np.ndarray:
        """(b, 5) int64 actions: per component, the argmax of the logits over valid values."""
        b = _batch_size_of(observation)
        layout = self.layout if self.layout is not None else ActionLayout.of_observation(observation)
        nvec = layout.nvec
        device = self._device()
        obs = {k: torch.as_tensor(np.asarray(v, dtype=np.float32), device=device) for k, v in observation.items()}
        was_training = getattr(self.module, "training", False)
        if isinstance(self.module, nn.Module):
            self.module.eval()
        try:
            with torch.no_grad():
                out = self.module(obs)
        finally:
            if was_training:
                self.module.train()
        if isinstance(out, Tensor):
            if out.shape != (b, int(nvec.sum())):
                raise ValueError(f"policy returned logits of shape {tuple(out.shape)}; expected ({b}, "
                                 f"{int(nvec.sum())}) = (b, sum(nvec)) or a list of 5 (b, nvec[j]) tensors")
            logits = list(torch.split(out, nvec.tolist(), dim=1))
        else:
            logits = list(out)
            shapes = [tuple(t.shape) for t in logits]
            if shapes != [(b, int(n)) for n in nvec]:
                raise ValueError(f"policy returned logits of shapes {shapes}; expected "
                                 f"{[(b, int(n)) for n in nvec]} for nvec {nvec.tolist()}")
        return masked_argmax(logits, action_mask, nvec)


def masked_argmax(logits: Sequence[Tensor], action_mask: np.ndarray | None,
                  nvec: Sequence[int] | np.ndarray) -> np.ndarray:
    """(b, 5) int64: per component j, the argmax of ``logits[j]`` (b, nvec[j]) over the values valid in
    ``action_mask`` (b, sum(nvec)); every component's value 0 is always valid, so a fully masked row cannot
    occur in the env (it would give 0)."""
    b = logits[0].shape[0]
    masks: list[Tensor | None] = [None] * len(logits)
    if action_mask is not None:
        m = torch.as_tensor(np.asarray(action_mask, dtype=bool).reshape(b, -1), device=logits[0].device)
        masks = ActionLayout.from_nvec(nvec).split_mask(m)
    actions = []
    for lj, mj in zip(logits, masks):
        lj = lj.float()
        if mj is not None:
            lj = lj.masked_fill(~mj, float("-inf"))
        actions.append(lj.argmax(dim=1))
    return torch.stack(actions, dim=1).cpu().numpy().astype(np.int64)
