"""Learned controllers: Stable-Baselines3 / sb3-contrib models and torch modules as :class:`Controller` s.

* :class:`SB3Controller` - a PPO, A2C, RecurrentPPO or MaskablePPO model, batched.
* :class:`TorchPolicyController` - any torch module mapping observations to per-component logits.
* :func:`train_controller` - train one of the four algorithms on ``AHMMemory-v0`` (:class:`ControllerTrainConfig`),
  or continue training a model, with TensorBoard logging of memory operations and reward terms.
* :func:`collect_demonstrations` / :func:`imitate` - behaviour cloning: a new policy first learns to copy a
  heuristic's actions (and its value head the returns they earn), then RL fine-tunes it
  (``ControllerTrainConfig.imitate``).
* :func:`save_controller` / :func:`load_controller` - checkpoints that never execute code when loaded.

Invalid actions. Some operations are invalid in some states (retrieving from an
empty level, forgetting an empty slot); the env raises on them. ``MaskablePPO``
masks its distribution with the env's ``action_masks()``. Plain PPO, A2C and
RecurrentPPO cannot mask, so one rule applies to them everywhere: every component
value the mask marks invalid is replaced by that component's no-op 0
(:func:`~ahm.envs.vector_env.noop_invalid_actions`). During training the
:class:`~ahm.envs.SB3VecEnvAdapter` applies it (``invalid_actions="noop"``), and
:class:`SB3Controller` applies it after ``predict``, so a controller never sends an
invalid action. (The rollout buffer keeps the action the policy chose; the env ran
its no-op version. The policy learns that an invalid choice has the no-op's effect.)

Policy networks. Observations are a ``Dict`` of small float ``Box`` es, so the
policies are SB3's ``MultiInputPolicy`` (``MultiInputLstmPolicy`` for RecurrentPPO)
whose feature extractor is SB3's ``CombinedExtractor``: with no image keys it
**flattens every Box and concatenates them** in the observation space's key order
(F + 4 K + 1 + k + 1 features, no learned encoder), and the actor / critic MLPs
(``policy_kwargs["net_arch"]``, SB3's default 64-64) or the LSTM sit on top.
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
import math
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import save as save_safetensors_bytes
from sb3_contrib import MaskablePPO, RecurrentPPO
from stable_baselines3 import A2C, PPO
from stable_baselines3.common import torch_layers
from stable_baselines3.common.callbacks import BaseCallback, CallbackList
from stable_baselines3.common.on_policy_algorithm import OnPolicyAlgorithm
from stable_baselines3.common.vec_env import VecMonitor
from torch import Tensor, nn

from ahm.agents.policies import FEATURE_EXTRACTORS, slot_policy_kwargs, wire_slot_scores
from ahm.agents.sb3_adapter import SB3VecEnvAdapter
from ahm.backbone.checkpoint import atomic_write_bytes
from ahm.envs.memory_env import action_nvec
from ahm.envs.vector_env import AHMMemoryVectorEnv, noop_invalid_actions

__all__ = [
    "ALGORITHMS", "SB3Controller", "TorchPolicyController", "ControllerTrainConfig", "MemoryLoggingCallback",
    "train_controller", "make_train_env", "evaluate_episodes", "env_spec_of", "save_controller", "load_controller",
    "algo_name", "Demonstrations", "collect_demonstrations", "imitate",
]


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

TRAIN_INFO_KEYS = ("is_success", "reward_terms", "memory", "targets")
"""Info keys the training adapter passes to SB3 (what :class:`MemoryLoggingCallback` reads); the rest is
dropped because building per-env Python dicts costs about a microsecond per key and env per step."""


def algo_name(model: Any) -> str:
    """The :data:`ALGORITHMS` key of an SB3 / sb3-contrib model (its exact class, subclasses included)."""
    for name in ("maskable_ppo", "recurrent_ppo", "ppo", "a2c"):
        if isinstance(model, ALGORITHMS[name].cls):
            return name
    raise ValueError(f"unsupported model {type(model).__name__}: expected one of "
                     f"{[s.cls.__name__ for s in ALGORITHMS.values()]}")


def _nvec_for(wm_slots: int) -> np.ndarray:
    """The env's action ``nvec`` for K working-memory slots (``AHMMemoryEnv``, "Action Space")."""
    return action_nvec(wm_slots)


FORGET_COMPONENTS = (3, 4)
"""The action components that destroy memory (WM slot to forget, LTM entries to forget); value 0 is "none"."""


def set_noop_prior(policy: Any, components: Sequence[int], prob: float) -> None:
    """Make value 0 ("nothing") of each of ``components`` start with probability ``prob`` (in place).

    Sets the bias of the policy's ``action_net`` (SB3 builds one logit per value of each ``MultiDiscrete``
    component, with weights initialised at gain 0.01, so the bias alone sets the starting distribution): the
    component's other values share ``1 - prob`` equally. Training moves it like any other weight.
    """
    if not 0.0 < prob < 1.0:
        raise ValueError(f"set_noop_prior: prob must be in (0, 1), got {prob!r}")
    nvec = np.asarray(policy.action_space.nvec, dtype=np.int64)
    bias = getattr(policy.action_net, "bias", None)
    if bias is None or bias.shape[0] != int(nvec.sum()):
        raise ValueError("set_noop_prior: the policy's action_net has no bias with one logit per action value")
    offsets = np.concatenate([[0], np.cumsum(nvec)[:-1]])
    with torch.no_grad():
        for j in components:
            n, start = int(nvec[j]), int(offsets[j])
            bias[start : start + n] = 0.0
            bias[start] = math.log(prob * (n - 1) / (1.0 - prob))


def _batch_size_of(observation: Mapping[str, Any]) -> int:
    if not observation:
        raise ValueError("empty observation: expected the env's Dict observation with a leading batch axis")
    return len(next(iter(observation.values())))


# ====================================================================== controllers
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
        if not isinstance(space, spaces.MultiDiscrete) or space.nvec.ndim != 1 or len(space.nvec) != 5:
            raise ValueError(f"SB3Controller needs a model of AHMMemory-v0's MultiDiscrete action space of 5 "
                             f"components, got {space}")
        self.nvec = np.asarray(space.nvec, dtype=np.int64)
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
        if mask is not None and mask.shape[1] != int(self.nvec.sum()):
            raise ValueError(f"action_mask has {mask.shape[1]} entries per env; the model's action space needs "
                             f"{int(self.nvec.sum())} (2 K + 12)")
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
            actions = noop_invalid_actions(actions, mask, self.nvec)
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
        self.nvec = None if nvec is None else np.asarray(nvec, dtype=np.int64)
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
        nvec = self.nvec if self.nvec is not None else _nvec_for(int(np.shape(observation["wm_occupied"])[1]))
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


def masked_argmax(logits: Sequence[Tensor], action_mask: np.ndarray | None, nvec: np.ndarray) -> np.ndarray:
    """(b, 5) int64: per component j, the argmax of ``logits[j]`` (b, nvec[j]) over the values valid in
    ``action_mask`` (b, sum(nvec)); every component's value 0 is always valid, so a fully masked row cannot
    occur in the env (it would give 0)."""
    b = logits[0].shape[0]
    masks: list[Tensor | None] = [None] * len(logits)
    if action_mask is not None:
        m = torch.as_tensor(np.asarray(action_mask, dtype=bool).reshape(b, -1), device=logits[0].device)
        if m.shape[1] != int(nvec.sum()):
            raise ValueError(f"action_mask has {m.shape[1]} entries per env; nvec {nvec.tolist()} needs "
                             f"{int(nvec.sum())}")
        masks = list(torch.split(m, nvec.tolist(), dim=1))
    actions = []
    for lj, mj in zip(logits, masks):
        lj = lj.float()
        if mj is not None:
            lj = lj.masked_fill(~mj, float("-inf"))
        actions.append(lj.argmax(dim=1))
    return torch.stack(actions, dim=1).cpu().numpy().astype(np.int64)


# ====================================================================== training
@dataclass
class ControllerTrainConfig:
    """How :func:`train_controller` trains a controller with Stable-Baselines3 / sb3-contrib."""

    algo: str = "ppo"
    """Algorithm: ppo, a2c, recurrent_ppo or maskable_ppo (ALGORITHMS). Only maskable_ppo masks invalid
    operations itself; for the others invalid components become no-ops (module doc)."""
    env_id: str = "AHMMemory-v0"
    """A registered AHMMemory id (ahm.envs.ENV_SPECS)."""
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments of the env on top of the id's (seq_len, chunk_size, backbone: an AHMModel or a
    checkpoint directory, stream_seeds, ...)."""
    num_envs: int = 8
    """Sub-environments of the native vector env (one batched memory)."""
    total_timesteps: int = 100_000
    """Environment steps (chunks, summed over sub-envs) of this call; added to a continued model's count."""
    n_steps: int = 128
    """Steps per sub-env per rollout (one update per n_steps * num_envs steps)."""
    batch_size: int = 256
    """Minibatch size of the PPO variants (A2C has none and ignores it)."""
    learning_rate: float = 3e-4
    """Adam's learning rate (SB3's default for PPO)."""
    gamma: float = 0.99
    """Discount factor per chunk."""
    gae_lambda: float = 0.95
    """GAE's lambda (SB3's default 0.95). The answer rewards come at query chunks, tens to hundreds of chunks
    after the writes they depend on, and the value function cannot see what a slot holds, so bootstrapping loses
    that credit: lambda near 1 carries the observed return back to the write."""
    seed: int = 0
    """Seeds torch, numpy and sub-env i (seed + i)."""
    tensorboard_log: str | None = None
    """TensorBoard directory (runs are <dir>/<algo>_<n>); None: no TensorBoard."""
    device: str = "cpu"
    """Torch device of the policy."""
    policy_kwargs: dict[str, Any] = field(default_factory=dict)
    """SB3 policy arguments (e.g. net_arch=[64, 64], lstm_hidden_size=64); keep them JSON-able plus torch.nn
    activation / torch.optim classes so save_controller can store them."""
    features: str = "flat"
    """The policy's features: 'flat' (SB3's CombinedExtractor, every key flattened, then policy_kwargs' net_arch)
    or 'slots' (ahm.agents.policies.SlotFeaturesExtractor: a network shared by the WM slots scores each slot for
    write and forget, with a linear head; policy_kwargs' entries override slot_policy_kwargs()). Not for
    recurrent_ppo."""
    forget_prior: float = 0.0
    """Initial probability of "forget nothing" in the action's two forget components (WM slot, LTM entries), set
    through the action head's bias (:func:`set_noop_prior`); 0 keeps SB3's start, near uniform, where a random
    policy forgets a WM slot at 8 steps in 9 and LTM entries at 2 in 3 and so destroys what it wrote."""
    imitate: str = ""
    """Behaviour cloning before RL: a new model first learns to copy this heuristic's actions (a name of
    ahm.agents.HEURISTICS, e.g. 'update'; the oracle too: the policy then learns what of its ground-truth decisions
    the observation predicts) on imitation_steps of its steps, and its value head the discounted returns they
    earned (collect_demonstrations, imitate). '' : no imitation. Not for recurrent_ppo."""
    imitation_steps: int = 65_536
    """Env steps (summed over sub-envs) the teacher plays for imitation, rounded up to whole rounds of num_envs."""
    imitation_epochs: int = 10
    """Passes of imitation over the demonstrations (minibatches of batch_size)."""
    imitation_lr: float = 3e-4
    """Adam's learning rate of imitation (RL's, learning_rate, is often far smaller for fine-tuning)."""
    dagger_rounds: int = 0
    """DAgger after the first imitation (Ross et al., 2011): in each round the cloned policy (deterministic)
    plays imitation_steps more steps, the heuristic labels the states it reaches, and imitation goes on over
    all demonstrations so far. 0: plain behaviour cloning. Needs imitate."""
    eval_freq: int = 10
    """Evaluate the deterministic controller every this many rollouts (eval/success, eval/accuracy,
    eval/return), and after the last one; 0: never."""
    eval_episodes: int = 4
    """Episodes per evaluation (one per sub-env of a separate vector env seeded seed + 10_000)."""
    log_interval: int = 1
    """Write SB3's logs (rollout/, train/, memory/, reward/, eval/) every this many rollouts."""
    verbose: int = 0
    """SB3's verbosity (0 quiet, 1 tables on stdout)."""

    def __post_init__(self) -> None:
        if self.algo not in ALGORITHMS:
            raise ValueError(f"algo must be one of {list(ALGORITHMS)}, got {self.algo!r}")
        for name in ("num_envs", "n_steps", "batch_size", "log_interval", "imitation_steps", "imitation_epochs"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        value = self.total_timesteps
        if isinstance(value, bool) or not isinstance(value, int) or value < (0 if self.imitate else 1):
            raise ValueError(f"total_timesteps must be a positive int (0 is allowed with imitate: imitation only), "
                             f"got {value!r}")
        if self.imitate:
            from ahm.agents import HEURISTICS  # the package's registry (it imports this module lazily)

            if self.imitate not in HEURISTICS:
                raise ValueError(f"imitate must be '' or one of {tuple(HEURISTICS)}, got {self.imitate!r}")
            if ALGORITHMS[self.algo].recurrent:
                raise ValueError("imitate is not available for recurrent_ppo (its policy needs LSTM states per "
                                 "sequence); use ppo, a2c or maskable_ppo")
        if isinstance(self.dagger_rounds, bool) or not isinstance(self.dagger_rounds, int) or self.dagger_rounds < 0:
            raise ValueError(f"dagger_rounds must be an int >= 0, got {self.dagger_rounds!r}")
        if self.dagger_rounds and not self.imitate:
            raise ValueError("dagger_rounds needs imitate (the heuristic that labels the states)")
        for name in ("eval_freq", "eval_episodes", "verbose"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be an int >= 0, got {value!r}")
        for name in ("learning_rate", "imitation_lr"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and value > 0 and math.isfinite(value)):
                raise ValueError(f"{name} must be a positive float, got {value!r}")
        if not 0.0 <= self.gamma <= 1.0:
            raise ValueError(f"gamma must be in [0, 1], got {self.gamma!r}")
        if not 0.0 <= self.gae_lambda <= 1.0:
            raise ValueError(f"gae_lambda must be in [0, 1], got {self.gae_lambda!r}")
        if not 0.0 <= self.forget_prior < 1.0:
            raise ValueError(f"forget_prior must be in [0, 1), got {self.forget_prior!r}")
        if self.features not in ("flat", "slots"):
            raise ValueError(f"features must be 'flat' or 'slots', got {self.features!r}")
        if self.features == "slots" and ALGORITHMS[self.algo].recurrent:
            raise ValueError("features='slots' is not available for recurrent_ppo (its head reads the LSTM's output)")
        if self.n_steps * self.num_envs < 2:
            raise ValueError("n_steps * num_envs must be at least 2 (SB3 normalises advantages over a rollout)")
        if "num_envs" in self.env_kwargs:
            raise ValueError("set num_envs on the config, not in env_kwargs")


def env_spec_of(config: ControllerTrainConfig) -> dict[str, Any]:
    """A JSON-able description of the training env for :func:`save_controller`: the id and its kwargs
    (a backbone given as a model object is recorded by its class name only; a directory by its path)."""
    kwargs: dict[str, Any] = {}
    for key, value in config.env_kwargs.items():
        if key == "backbone" and value is not None:
            value = str(value) if isinstance(value, (str, Path)) else f"<{type(value).__name__} object>"
        kwargs[key] = _jsonable(value)
    return {"env_id": config.env_id, "env_kwargs": kwargs}


def _jsonable(value: Any) -> Any:
    """``value`` if JSON can hold it (tuples become lists), else its repr."""
    if isinstance(value, (tuple, list)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _jsonable(dataclasses.asdict(value))
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, np.generic):
        return value.item()
    return repr(value)


def make_train_env(config: ControllerTrainConfig,
                   env: AHMMemoryVectorEnv | SB3VecEnvAdapter | None = None) -> tuple[AHMMemoryVectorEnv, VecMonitor]:
    """The native vector env and the SB3 ``VecEnv`` stack over it that :func:`train_controller` trains on.

    ``VecMonitor(SB3VecEnvAdapter(vector_env, invalid_actions="noop" unless the algorithm masks))``:
    the monitor gives SB3 its episode returns and lengths (``rollout/ep_rew_mean``). ``env``
    reuses an already-built vector env (or the vector env under an adapter); else one is made
    with ``gymnasium.make_vec(config.env_id, config.num_envs, vectorization_mode="vector_entry_point",
    **config.env_kwargs)``.
    """
    if env is None:
        vector_env = gym.make_vec(config.env_id, num_envs=config.num_envs, vectorization_mode="vector_entry_point",
                                  **config.env_kwargs)
        vector_env = getattr(vector_env, "unwrapped", vector_env)
    elif isinstance(env, SB3VecEnvAdapter):
        vector_env = env.env
    else:
        vector_env = env
    if not isinstance(vector_env, AHMMemoryVectorEnv):
        raise ValueError(f"train_controller needs an AHMMemoryVectorEnv (or an SB3VecEnvAdapter over one), got "
                         f"{type(vector_env).__name__}")
    if vector_env.num_envs != config.num_envs:
        raise ValueError(f"the env has {vector_env.num_envs} sub-environments but config.num_envs is "
                         f"{config.num_envs}; make them equal")
    mode = "raise" if ALGORITHMS[config.algo].masks else "noop"
    adapter = SB3VecEnvAdapter(vector_env, info_keys=TRAIN_INFO_KEYS, invalid_actions=mode)
    return vector_env, VecMonitor(adapter)


def _target_accuracy(targets: Mapping[str, Any], row: int | None = None) -> float:
    """Targets answered correctly / targets of one finished episode (``row`` of a batched info)."""
    correct, total = (targets[k] if row is None else targets[k][row] for k in ("correct", "total"))
    return float(correct) / max(1.0, float(total))


def evaluate_episodes(controller: Any, env: AHMMemoryVectorEnv, seed: int | None = None) -> dict[str, float]:
    """Run one episode in every sub-env of ``env`` with ``controller``; their means.

    Returns ``success`` (fraction of episodes with every target correct), ``accuracy``
    (targets correct / targets, per episode), ``return`` and ``length``. Sub-envs that
    finish early keep stepping (autoreset) until all have finished one episode; only
    the first episode of each counts.
    """
    n = env.num_envs
    obs, _ = env.reset(seed=seed)
    controller.reset(n)
    start = np.ones(n, dtype=bool)
    finished = np.zeros(n, dtype=bool)
    success, accuracy = np.zeros(n), np.zeros(n)
    returns, lengths = np.zeros(n), np.zeros(n)
    while not finished.all():
        actions = controller.act(obs, env.action_masks(), None, start)
        s = env.step_arrays(actions)
        live = ~finished
        returns[live] += s.reward[live]
        lengths[live] += 1
        done = s.terminated | s.truncated
        for r in np.nonzero(done & live)[0].tolist():
            final = s.final_info
            success[r] = float(final["is_success"][r])
            accuracy[r] = _target_accuracy(final["targets"], r)
        finished |= done
        obs, start = s.observation, done
    return {"success": float(success.mean()), "accuracy": float(accuracy.mean()), "return": float(returns.mean()),
            "length": float(lengths.mean())}


@dataclass(frozen=True)
class Demonstrations:
    """What a teacher did on N env steps (:func:`collect_demonstrations`): row ``t * num_envs + i`` is
    sub-env i at step t."""

    teacher: str
    observations: dict[str, np.ndarray]
    """The observations it acted on, ``{key: (N, ...)}``."""
    actions: np.ndarray
    """(N, 5) int64: its actions."""
    masks: np.ndarray
    """(N, 2 K + 12) bool: the action masks it saw."""
    rewards: np.ndarray
    """(N,) float: the reward of each step."""
    dones: np.ndarray
    """(N,) bool: the step ended its episode."""
    streams: np.ndarray
    """(N,) int64: the stream seed of the step's episode (held-out fits leave whole streams out)."""
    returns: np.ndarray
    """(N,) float: discounted reward from the step to its episode's end; NaN where the episode was cut off by
    the end of the collection (no return is known there)."""
    episodes: int
    """Episodes that ended during the collection."""
    accuracy: float
    """The mean accuracy (targets correct / targets) over those episodes of whoever acted: the teacher, or the
    driver when there was one."""
    driver: str = ""
    """Who acted when it was not the teacher (DAgger: the policy being trained); '' : the teacher acted."""

    def __len__(self) -> int:
        return len(self.actions)

    @staticmethod
    def concatenate(parts: Sequence[Demonstrations]) -> Demonstrations:
        """One set of demonstrations from several (DAgger's aggregation); rows keep their order, the accuracy is
        the mean over all their episodes. The parts must have one teacher."""
        if not parts:
            raise ValueError("concatenate: no demonstrations given")
        if len({p.teacher for p in parts}) != 1:
            raise ValueError(f"concatenate: the parts have different teachers {sorted({p.teacher for p in parts})}")
        episodes = sum(p.episodes for p in parts)
        accuracy = (sum(p.accuracy * p.episodes for p in parts if p.episodes) / episodes if episodes
                    else float("nan"))
        return Demonstrations(
            teacher=parts[0].teacher,
            observations={k: np.concatenate([p.observations[k] for p in parts]) for k in parts[0].observations},
            **{name: np.concatenate([getattr(p, name) for p in parts])
               for name in ("actions", "masks", "rewards", "dones", "streams", "returns")},
            episodes=episodes, accuracy=accuracy, driver=",".join(sorted({p.driver for p in parts if p.driver})))


def collect_demonstrations(teacher: Any, env: AHMMemoryVectorEnv, steps: int, gamma: float,
                           seed: int | None = None, driver: Any = None) -> Demonstrations:
    """Let ``teacher`` (a :class:`Controller`, e.g. a heuristic) play ``steps`` steps of ``env``; record them.

    ``steps`` is rounded up to whole rounds of ``env.num_envs``. The teacher gets the env's info
    (the oracle reads ground truth from it); what is recorded is only what a policy sees. Returns
    are discounted by ``gamma`` within each episode.

    With ``driver`` (another controller, e.g. an :class:`SB3Controller` of the policy being trained),
    the driver's actions step the env and the teacher only labels the states the driver reaches: the
    data of DAgger (Ross et al., 2011), which shows a cloned policy the states its own mistakes lead
    to. Rewards, returns and ``accuracy`` are then the driver's.
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    n = env.num_envs
    rounds = -(-steps // n)
    obs, info = env.reset(seed=seed)
    info = {k: v for k, v in info.items() if not k.startswith("_")}
    teacher.reset(n)
    if driver is not None:
        driver.reset(n)
    start = np.ones(n, dtype=bool)
    observations: dict[str, list[np.ndarray]] = {k: [] for k in obs}
    actions, masks = np.zeros((rounds, n, 5), dtype=np.int64), []
    streams = np.zeros((rounds, n), dtype=np.int64)
    rewards, dones = np.zeros((rounds, n)), np.zeros((rounds, n), dtype=bool)
    accuracies: list[float] = []
    for t in range(rounds):
        mask = env.action_masks()
        act = np.asarray(teacher.act(obs, mask, info, start), dtype=np.int64)
        played = act if driver is None else np.asarray(driver.act(obs, mask, info, start), dtype=np.int64)
        for key, value in obs.items():
            observations[key].append(np.array(value, copy=True))
        masks.append(mask)
        actions[t] = act
        streams[t] = env.episodes.stream_seeds
        step = env.step_arrays(played)
        rewards[t] = step.reward
        dones[t] = step.terminated | step.truncated
        for r in np.nonzero(dones[t])[0].tolist():
            accuracies.append(_target_accuracy(step.final_info["targets"], r))
        obs, info, start = step.observation, step.info, dones[t]
    returns = np.full((rounds, n), np.nan)
    running = np.full(n, np.nan)  # unknown until an episode's end is seen
    for t in range(rounds - 1, -1, -1):
        running = np.where(dones[t], rewards[t], rewards[t] + gamma * running)
        returns[t] = running
    return Demonstrations(
        teacher=str(getattr(teacher, "name", type(teacher).__name__)),
        observations={k: np.concatenate(v) for k, v in observations.items()},
        actions=actions.reshape(-1, 5), masks=np.concatenate(masks), rewards=rewards.reshape(-1),
        dones=dones.reshape(-1), streams=streams.reshape(-1), returns=returns.reshape(-1),
        episodes=len(accuracies), accuracy=float(np.mean(accuracies)) if accuracies else float("nan"),
        driver="" if driver is None else str(getattr(driver, "name", type(driver).__name__)))


def imitate(model: OnPolicyAlgorithm, demos: Demonstrations, epochs: int, batch_size: int, learning_rate: float,
            vf_coef: float = 0.5, holdout: float = 0.1, seed: int = 0) -> dict[str, float]:
    """Behaviour cloning: fit ``model.policy`` to ``demos`` (in place); returns the fit's statistics.

    Minimises ``-log pi(teacher's action | observation) + vf_coef * (V(observation) - return)^2`` with
    Adam over ``epochs`` passes of shuffled minibatches; the value term only where the return is known.
    A ``holdout`` fraction of the demonstrations' distinct streams (at least one, never all; none when
    there is one stream) is left out of training and measures how the fit generalises to streams it
    has not seen: ``agreement`` (all five components equal to the teacher's under the deterministic
    policy), ``agreement_<j>`` per component, and the losses, for ``train_`` and ``holdout_`` rows.
    (A split by time within the same streams would not: the SSM features identify a stream's
    positions, and a large policy fits them.) With held-out rows, every epoch runs and the policy then
    keeps the weights of the epoch with the lowest held-out policy loss (``epochs`` in the statistics).
    MaskablePPO's distribution is masked with the recorded masks, as in its own training.
    """
    spec = ALGORITHMS[algo_name(model)]
    if spec.recurrent:
        raise ValueError("imitate: recurrent policies are not supported (they need LSTM states per sequence)")
    if not 0.0 <= holdout < 1.0:
        raise ValueError(f"holdout must be in [0, 1), got {holdout!r}")
    policy = model.policy
    n = len(demos)
    unique = np.unique(demos.streams)
    held_out = np.zeros(n, dtype=bool)
    if holdout > 0 and len(unique) > 1:
        n_held = min(max(1, int(round(holdout * len(unique)))), len(unique) - 1)
        chosen = np.random.default_rng(seed).permutation(unique)[:n_held]
        held_out = np.isin(demos.streams, chosen)
    train_rows = torch.as_tensor(np.nonzero(~held_out)[0])
    holdout_rows = torch.as_tensor(np.nonzero(held_out)[0])
    device = policy.device
    obs = {k: torch.as_tensor(v, dtype=torch.float32, device=device) for k, v in demos.observations.items()}
    actions = torch.as_tensor(demos.actions, device=device)
    masks = torch.as_tensor(demos.masks, device=device)
    returns = torch.as_tensor(demos.returns, dtype=torch.float32, device=device)
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(policy.parameters(), lr=learning_rate)

    def losses(idx: Tensor) -> tuple[Tensor, Tensor]:
        batch = {k: v[idx] for k, v in obs.items()}
        if spec.masks:
            values, log_prob, _ = policy.evaluate_actions(batch, actions[idx], action_masks=masks[idx])
        else:
            values, log_prob, _ = policy.evaluate_actions(batch, actions[idx])
        target, known = returns[idx], torch.isfinite(returns[idx])
        value_loss = ((values.flatten() - torch.nan_to_num(target)) ** 2 * known).sum() / known.sum().clamp(min=1)
        return -log_prob.mean(), value_loss

    def holdout_loss() -> float:
        policy.set_training_mode(False)
        with torch.no_grad():
            total = sum(float(losses(idx.to(device))[0]) * len(idx) for idx in holdout_rows.split(4096))
        policy.set_training_mode(True)
        return total / len(holdout_rows)

    best_loss, best_epoch, best_state = math.inf, epochs, None
    policy.set_training_mode(True)
    for epoch in range(1, epochs + 1):
        for idx in train_rows[torch.randperm(len(train_rows), generator=generator)].split(batch_size):
            policy_loss, value_loss = losses(idx.to(device))
            optimizer.zero_grad()
            (policy_loss + vf_coef * value_loss).backward()
            nn.utils.clip_grad_norm_(policy.parameters(), 0.5)
            optimizer.step()
        if len(holdout_rows):
            loss = holdout_loss()
            if loss < best_loss:
                best_loss, best_epoch = loss, epoch
                best_state = {k: v.detach().clone() for k, v in policy.state_dict().items()}
    if best_state is not None:
        policy.load_state_dict(best_state)
    policy.set_training_mode(False)
    stats: dict[str, float] = {"demonstrations": float(n), "teacher_accuracy": demos.accuracy,
                               "streams": float(len(unique)), "holdout_rows": float(held_out.sum()),
                               "epochs": float(best_epoch)}
    for split, idx in (("train", train_rows), ("holdout", holdout_rows)):
        if len(idx) == 0:
            continue
        with torch.no_grad():
            policy_loss, value_loss = losses(idx.to(device))
            dist = policy.get_distribution({k: v[idx] for k, v in obs.items()})
            if spec.masks:
                dist.apply_masking(masks[idx])
            same = (dist.get_actions(deterministic=True) == actions[idx]).cpu().numpy()
        stats[f"{split}_policy_loss"], stats[f"{split}_value_loss"] = float(policy_loss), float(value_loss)
        stats[f"{split}_agreement"] = float(same.all(1).mean())
        for j in range(same.shape[1]):
            stats[f"{split}_agreement_{j}"] = float(same[:, j].mean())
    return stats


class _RecordImitation(BaseCallback):
    """Writes :func:`imitate`'s statistics as ``imitation/<name>`` at the start of training (step 0)."""

    def __init__(self, stats: Mapping[str, float]) -> None:
        super().__init__()
        self.stats = dict(stats)

    def _on_training_start(self) -> None:
        for key, value in self.stats.items():
            self.logger.record(f"imitation/{key}", value)
        self.logger.dump(self.num_timesteps)

    def _on_step(self) -> bool:
        return True


class MemoryLoggingCallback(BaseCallback):
    """Logs what SB3 does not: memory operations, reward terms and evaluations (SB3 logs ``rollout/`` and ``train/``).

    Per rollout (recorded at its end, written with SB3's next log dump):

    * ``reward/<term>``: mean per step of each weighted reward term (``info["reward_terms"]``);
    * ``memory/<op>``: mean per finished episode of each operation count (writes, moves_to_ltm,
      drops, retrievals_wm, retrievals_ltm, forgets_wm, forgets_ltm);
    * ``task/accuracy``: mean per finished episode of targets answered correctly / targets;
    * ``memory/bytes``, ``memory/wm_entries``, ``memory/ltm_entries``: means over steps;
    * every ``eval_freq`` rollouts and at the end of training: ``eval/success``, ``eval/accuracy``,
      ``eval/return`` of :func:`evaluate_episodes` with the deterministic :class:`SB3Controller`.

    Args:
        eval_env: the vector env of evaluations (None: no evaluation).
        eval_freq: rollouts between evaluations (0: never).
        eval_seed: reset seed of every evaluation (the same episodes each time).
    """

    def __init__(self, eval_env: AHMMemoryVectorEnv | None = None, eval_freq: int = 0, eval_seed: int = 10_000,
                 verbose: int = 0) -> None:
        super().__init__(verbose)
        self.eval_env, self.eval_freq, self.eval_seed = eval_env, eval_freq, eval_seed
        self.last_eval: dict[str, float] | None = None
        self._rollouts = 0
        self._clear()

    def _clear(self) -> None:
        self._terms: dict[str, float] = {}
        self._level: dict[str, float] = {}
        self._ops: dict[str, float] = {}
        self._steps = 0
        self._episodes = 0
        self._accuracy = 0.0

    def _on_step(self) -> bool:
        infos = self.locals.get("infos", ())
        dones = self.locals.get("dones", np.zeros(len(infos), dtype=bool))
        for info, done in zip(infos, dones):
            for term, value in info.get("reward_terms", {}).items():
                self._terms[term] = self._terms.get(term, 0.0) + float(value)
            memory = info.get("memory", {})
            for key in ("bytes", "wm_entries", "ltm_entries"):
                if key in memory:
                    self._level[key] = self._level.get(key, 0.0) + float(memory[key])
            self._steps += 1
            if done:  # the final step's info: per-episode counts
                self._episodes += 1
                for key, value in memory.items():
                    if key not in ("bytes", "wm_entries", "ltm_entries"):
                        self._ops[key] = self._ops.get(key, 0.0) + float(value)
                targets = info.get("targets")
                if targets is not None:
                    self._accuracy += _target_accuracy(targets)
        return True

    def _on_rollout_end(self) -> None:
        self._rollouts += 1
        if self._steps:
            for term, total in self._terms.items():
                self.logger.record(f"reward/{term}", total / self._steps)
            for key, total in self._level.items():
                self.logger.record(f"memory/{key}", total / self._steps)
        if self._episodes:
            for key, total in self._ops.items():
                self.logger.record(f"memory/{key}", total / self._episodes)
            self.logger.record("task/accuracy", self._accuracy / self._episodes)
        self._clear()
        if self.eval_freq and self._rollouts % self.eval_freq == 0:
            self.evaluate()

    def _on_training_end(self) -> None:
        if self.eval_freq and self._rollouts % self.eval_freq != 0:
            self.evaluate()
            self.logger.dump(self.num_timesteps)

    def evaluate(self) -> dict[str, float] | None:
        """Evaluate the model now; record ``eval/*`` and return the numbers (None without an eval env)."""
        if self.eval_env is None:
            return None
        result = evaluate_episodes(SB3Controller(self.model, deterministic=True), self.eval_env, self.eval_seed)
        for key in ("success", "accuracy", "return"):
            self.logger.record(f"eval/{key}", result[key])
        self.last_eval = result
        return result


def _policy_kwargs(config: ControllerTrainConfig) -> dict[str, Any] | None:
    if config.features == "slots":
        return {**slot_policy_kwargs(), **config.policy_kwargs}
    return dict(config.policy_kwargs) or None


def train_controller(config: ControllerTrainConfig, model: OnPolicyAlgorithm | None = None,
                     env: AHMMemoryVectorEnv | SB3VecEnvAdapter | None = None,
                     callbacks: Sequence[BaseCallback] = ()) -> OnPolicyAlgorithm:
    """Train a controller on ``AHMMemory-v0`` with Stable-Baselines3 / sb3-contrib; returns the model.

    A new model is ``ALGORITHMS[config.algo]`` with ``MultiInputPolicy`` (``MultiInputLstmPolicy``
    for RecurrentPPO; features: SB3's ``CombinedExtractor``, every Box flattened and concatenated,
    see the module doc) over :func:`make_train_env`'s env, seeded with ``config.seed``. Given
    ``model`` (e.g. the previous round of ``train_rl.py``), training continues on the new env
    (``model.set_env``, ``learn(reset_num_timesteps=False)``), with the model's own
    hyperparameters; the config's env, ``total_timesteps``, seed (for the env) and logging apply.

    With ``config.imitate`` a new model first copies that heuristic (:func:`collect_demonstrations` on
    the training env, then :func:`imitate`, then ``config.dagger_rounds`` rounds of DAgger; statistics in
    ``model.imitation_stats`` and TensorBoard's ``imitation/``), then RL trains it for ``total_timesteps``
    (0: imitation only).

    Logging (SB3's logger; TensorBoard if ``config.tensorboard_log``): ``rollout/`` and ``train/``
    from SB3, ``memory/``, ``reward/``, ``task/`` and ``eval/`` from :class:`MemoryLoggingCallback`;
    ``callbacks`` run after it. Wrap the call in ``torch.set_num_threads(1)`` on a CPU (the env's
    memory operations are tiny tensor ops; see ``AHMMemoryEnv``, "Performance").

    Args:
        config: what to train (:class:`ControllerTrainConfig`).
        model: a model of ``config.algo`` to continue training, or None for a new one.
        env: an already-built :class:`AHMMemoryVectorEnv` (or an adapter over one) instead of
            ``config.env_id`` / ``env_kwargs``; it must have ``config.num_envs`` sub-envs.
        callbacks: extra SB3 callbacks.
    """
    spec = ALGORITHMS[config.algo]
    vector_env, venv = make_train_env(config, env)
    if model is None:
        kwargs: dict[str, Any] = dict(learning_rate=config.learning_rate, n_steps=config.n_steps, gamma=config.gamma,
                                      gae_lambda=config.gae_lambda,
                                      seed=config.seed, device=config.device, tensorboard_log=config.tensorboard_log,
                                      policy_kwargs=_policy_kwargs(config), verbose=config.verbose)
        if "batch_size" in inspect.signature(spec.cls.__init__).parameters:
            kwargs["batch_size"] = config.batch_size
        model = spec.cls(spec.policy, venv, **kwargs)
        if config.features == "slots":
            wire_slot_scores(model.policy)
        if config.forget_prior:
            set_noop_prior(model.policy, FORGET_COMPONENTS, config.forget_prior)
        if config.imitate:
            from ahm.agents import make_controller

            teacher = make_controller(config.imitate)
            demos = collect_demonstrations(teacher, vector_env, config.imitation_steps, config.gamma,
                                           seed=config.seed + 20_000)
            # the teacher's own accuracy (the aggregate's below also counts the clone's episodes)
            extra = {"teacher_accuracy": demos.accuracy}
            stats = imitate(model, demos, config.imitation_epochs, config.batch_size, config.imitation_lr,
                            seed=config.seed)
            for r in range(1, config.dagger_rounds + 1):
                own = collect_demonstrations(teacher, vector_env, config.imitation_steps, config.gamma,
                                             seed=config.seed + 20_000 + r, driver=SB3Controller(model))
                extra[f"dagger_{r}_policy_accuracy"] = own.accuracy  # the clone's own, before this round's fit
                demos = Demonstrations.concatenate([demos, own])
                stats = imitate(model, demos, config.imitation_epochs, config.batch_size, config.imitation_lr,
                                seed=config.seed)  # the same seed: the same streams held out
            stats.update(extra)
            model.imitation_stats = stats
            callbacks = [_RecordImitation(model.imitation_stats), *callbacks]
        reset = True  # learn() resets the env the demonstrations were collected on
    else:
        if config.imitate:
            raise ValueError("config.imitate applies to a new model only; this call continues a given model")
        if algo_name(model) != config.algo:
            raise ValueError(f"model is a {algo_name(model)} model but config.algo is {config.algo!r}")
        if model.n_envs != config.num_envs:
            raise ValueError(f"the model was built for {model.n_envs} environments, config.num_envs is "
                             f"{config.num_envs}: SB3 keeps the number of environments of a model (load a saved one "
                             f"with load_controller(path, num_envs={config.num_envs}))")
        model.set_env(venv)
        venv.seed(config.seed)
        if config.tensorboard_log is not None:
            model.tensorboard_log = config.tensorboard_log
        reset = False
    eval_env = None
    if config.eval_freq and config.eval_episodes:
        fields = {f.name: getattr(vector_env.config, f.name) for f in dataclasses.fields(vector_env.config)}
        fields["backbone"] = vector_env.episodes.model  # share the frozen backbone: no second copy
        eval_env = AHMMemoryVectorEnv(num_envs=config.eval_episodes, **fields)
    logging_cb = MemoryLoggingCallback(eval_env, config.eval_freq, eval_seed=config.seed + 10_000)
    model.learn(total_timesteps=config.total_timesteps, callback=CallbackList([logging_cb, *callbacks]),
                log_interval=config.log_interval, tb_log_name=config.algo, reset_num_timesteps=reset)
    if eval_env is not None:
        eval_env.close()
    return model


# ====================================================================== checkpoints
_FORMAT, _VERSION = "ahm-controller", 1
_WEIGHTS, _META = "controller.safetensors", "controller.json"

_CLASS_KWARGS: dict[str, tuple[Any, type]] = {
    "activation_fn": (nn, nn.Module),
    "optimizer_class": (torch.optim, torch.optim.Optimizer),
    "features_extractor_class": (FEATURE_EXTRACTORS, torch_layers.BaseFeaturesExtractor),
}
"""Policy arguments that are classes, saved by name and looked up only in these modules on load."""

_HYPERPARAMETERS = ("learning_rate", "n_steps", "batch_size", "n_epochs", "gamma", "gae_lambda", "clip_range",
                    "ent_coef", "vf_coef", "max_grad_norm", "normalize_advantage", "use_rms_prop", "rms_prop_eps",
                    "target_kl")
"""Algorithm arguments stored with a controller so a loaded model trains on as it did (schedules: their start)."""


def _encode_policy_kwargs(policy_kwargs: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in policy_kwargs.items():
        if key in _CLASS_KWARGS:
            module, base = _CLASS_KWARGS[key]
            if not (isinstance(value, type) and getattr(module, value.__name__, None) is value):
                raise ValueError(f"policy_kwargs[{key!r}] = {value!r} cannot be saved: use a class of "
                                 f"{module.__name__} (it is stored by name and looked up there on load)")
            out[key] = {"class": value.__name__}
            continue
        try:
            json.dumps(value, allow_nan=False)
        except (TypeError, ValueError) as err:
            raise ValueError(f"policy_kwargs[{key!r}] = {value!r} is not JSON-able and cannot be saved "
                             f"({err})") from err
        out[key] = value
    return out


def _decode_policy_kwargs(encoded: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in encoded.items():
        if key in _CLASS_KWARGS:
            module, base = _CLASS_KWARGS[key]
            name = value.get("class") if isinstance(value, Mapping) else None
            cls = getattr(module, name, None) if isinstance(name, str) else None
            if not (isinstance(cls, type) and issubclass(cls, base)):
                raise ValueError(f"policy_kwargs[{key!r}] names {value!r}, not a {base.__name__} of {module.__name__}")
            out[key] = cls
        else:
            out[key] = value
    return out


def _describe_space(space: spaces.Space, what: str) -> dict[str, Any]:
    if isinstance(space, spaces.Dict):
        return {"type": "Dict", "keys": list(space.spaces),
                "spaces": {k: _describe_space(s, f"{what}[{k!r}]") for k, s in space.spaces.items()}}
    if isinstance(space, spaces.Box):
        return {"type": "Box", "shape": list(space.shape), "dtype": str(space.dtype),
                "low": space.low.astype(np.float64).tolist(), "high": space.high.astype(np.float64).tolist()}
    if isinstance(space, spaces.MultiDiscrete):
        return {"type": "MultiDiscrete", "nvec": np.asarray(space.nvec).astype(int).tolist()}
    raise ValueError(f"cannot save a controller whose {what} space is a {type(space).__name__}")


def _build_space(desc: Mapping[str, Any]) -> spaces.Space:
    kind = desc["type"]
    if kind == "Dict":
        if list(desc["spaces"]) != list(desc["keys"]):
            raise ValueError("Dict keys and spaces disagree")
        # Key order is the order CombinedExtractor concatenates features in: keep it exactly.
        return spaces.Dict(OrderedDict((k, _build_space(desc["spaces"][k])) for k in desc["keys"]))
    if kind == "Box":
        shape = tuple(int(s) for s in desc["shape"])
        low = np.asarray(desc["low"], dtype=desc["dtype"]).reshape(shape)
        high = np.asarray(desc["high"], dtype=desc["dtype"]).reshape(shape)
        return spaces.Box(low, high, shape=shape, dtype=np.dtype(desc["dtype"]))
    if kind == "MultiDiscrete":
        return spaces.MultiDiscrete(np.asarray(desc["nvec"], dtype=np.int64))
    raise ValueError(f"unknown space type {kind!r}")


def _hyperparameters(model: OnPolicyAlgorithm, spec: AlgoSpec) -> dict[str, Any]:
    accepted = inspect.signature(spec.cls.__init__).parameters
    out: dict[str, Any] = {}
    for name in _HYPERPARAMETERS:
        if name not in accepted or not hasattr(model, name):
            continue
        value = getattr(model, name)
        if callable(value):
            value = value(1.0)  # a schedule: its value at the start of training
        if isinstance(value, np.generic):
            value = value.item()
        if value is None or isinstance(value, (bool, int, float)):
            out[name] = value
    return out


def save_controller(path: str | Path, model: OnPolicyAlgorithm | SB3Controller,
                    env_spec: Mapping[str, Any] | None = None) -> Path:
    """Save a trained SB3 model as a controller checkpoint directory; returns the directory.

    Files (each written atomically: a temporary file, then ``os.replace``):

    * ``controller.safetensors``: the policy's ``state_dict``;
    * ``controller.json``: format and version, ``algo``, the policy's arguments
      (``policy_kwargs``; classes by name), the observation space (keys in order, shapes,
      dtypes, bounds) and action space (``nvec``), the algorithm's hyperparameters,
      ``env_spec`` (a JSON-able description of the training env, e.g. :func:`env_spec_of`),
      and the SHA-256 of the weights file.

    SB3's own ``save`` writes a zip whose loading unpickles with cloudpickle, which can
    run code from the file; this format holds data only.
    """
    if isinstance(model, SB3Controller):
        model = model.model
    algo = algo_name(model)
    spec = ALGORITHMS[algo]
    try:
        env_json = json.loads(json.dumps(dict(env_spec or {}), allow_nan=False))
    except (TypeError, ValueError) as err:
        raise ValueError(f"env_spec must be JSON-able (see env_spec_of): {err}") from err
    # clone: tensors that share storage (a shared extractor) cannot be saved by safetensors
    weights = {k: v.detach().cpu().contiguous().clone() for k, v in model.policy.state_dict().items()}
    blob = save_safetensors_bytes(weights)
    meta = {
        "format": _FORMAT, "version": _VERSION, "algo": algo, "policy": spec.policy,
        "policy_kwargs": _encode_policy_kwargs(model.policy_kwargs or {}),
        "observation_space": _describe_space(model.observation_space, "observation"),
        "action_space": _describe_space(model.action_space, "action"),
        "hyperparameters": _hyperparameters(model, spec),
        "num_timesteps": int(model.num_timesteps),
        "env_spec": env_json,
        "weights_sha256": hashlib.sha256(blob).hexdigest(),
    }
    directory = Path(path)
    directory.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(directory / _WEIGHTS, blob)
    atomic_write_bytes(directory / _META, json.dumps(meta, indent=1).encode())
    return directory


def load_controller(path: str | Path, deterministic: bool = True, device: str = "cpu", num_envs: int = 1,
                    name: str | None = None) -> SB3Controller:
    """Load a controller saved by :func:`save_controller` (never executes code from the files).

    The model is rebuilt from the JSON (algorithm, policy arguments, spaces) without an
    env, and the policy's weights are loaded strictly. ``controller.model`` is a complete
    SB3 model: pass it to :func:`train_controller` (with ``num_envs`` equal to the config's)
    to train on; its optimizer state starts afresh.

    Raises:
        FileNotFoundError: the directory or one of its two files is missing.
        ValueError: a file is corrupted, of another format, or does not match the policy it describes.
    """
    directory = Path(path)
    where = repr(str(directory))
    for file in (_META, _WEIGHTS):
        if not (directory / file).is_file():
            raise FileNotFoundError(f"controller checkpoint {where} has no {file} (write one with save_controller)")
    try:
        meta = json.loads((directory / _META).read_text())
        if not isinstance(meta, dict) or meta.get("format") != _FORMAT or meta.get("version") != _VERSION:
            got = (meta.get("format"), meta.get("version")) if isinstance(meta, dict) else type(meta).__name__
            raise ValueError(f"expected format {_FORMAT!r} version {_VERSION}, got {got}")
        algo = meta["algo"]
        if algo not in ALGORITHMS:
            raise ValueError(f"unknown algo {algo!r}")
        policy_kwargs = _decode_policy_kwargs(meta["policy_kwargs"])
        observation_space = _build_space(meta["observation_space"])
        action_space = _build_space(meta["action_space"])
        hyper = dict(meta.get("hyperparameters", {}))
        expected_sha = str(meta["weights_sha256"])
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, AttributeError, ValueError) as err:
        raise ValueError(f"controller checkpoint {where}: {_META} is not a saved controller ({err})") from err
    blob = (directory / _WEIGHTS).read_bytes()
    if hashlib.sha256(blob).hexdigest() != expected_sha:
        raise ValueError(f"controller checkpoint {where}: {_WEIGHTS} is corrupted (its SHA-256 differs from the one "
                         f"recorded in {_META}); save the controller again")
    try:
        weights = load_safetensors_bytes(blob)
    except (SafetensorError, OSError, RuntimeError) as err:
        raise ValueError(f"controller checkpoint {where}: {_WEIGHTS} is corrupted ({err})") from err
    spec = ALGORITHMS[algo]
    accepted = inspect.signature(spec.cls.__init__).parameters
    hyper = {k: v for k, v in hyper.items() if k in accepted}
    # SB3 models need spaces, not an env: build without one, then set them up as SB3's own load does.
    model = spec.cls(spec.policy, env=None, device=device, policy_kwargs=policy_kwargs or None,
                     _init_setup_model=False, **hyper)
    model.observation_space, model.action_space, model.n_envs = observation_space, action_space, num_envs
    model._setup_model()
    try:
        model.policy.load_state_dict({k: v.to(model.device) for k, v in weights.items()}, strict=True)
    except RuntimeError as err:
        raise ValueError(f"controller checkpoint {where}: weights do not match the policy described in {_META} "
                         f"({err})") from err
    model.num_timesteps = int(meta.get("num_timesteps", 0))
    model.policy.set_training_mode(False)
    return SB3Controller(model, deterministic=deterministic, name=name)
