"""Training learned controllers with Stable-Baselines3 / sb3-contrib on ``AHMMemory-v0``.

* :func:`fit_controller` - train one of the four algorithms (:data:`ALGORITHMS`) on ``AHMMemory-v0``
  (:class:`ControllerTrainConfig`), or continue training a model, with TensorBoard logging of memory
  operations and reward terms; returns a :class:`ControllerFit` (the model and, with imitation, its
  statistics). :func:`train_controller` is the same, returning the model only.
* :func:`make_train_env`, :class:`MemoryLoggingCallback`, :func:`evaluate_episodes`, :func:`set_noop_prior`,
  :func:`env_spec_of` - the pieces of a training run.

The rest of the learned controllers lives beside this module, and is re-exported here:

* :mod:`ahm.agents.sb3_controllers` - :class:`SB3Controller` (a PPO, A2C, RecurrentPPO or MaskablePPO model,
  batched), :class:`TorchPolicyController` (any torch module mapping observations to per-component logits),
  and how invalid actions become no-ops;
* :mod:`ahm.agents.imitation` - :func:`collect_demonstrations` / :func:`imitate`: behaviour cloning, where a new
  policy first learns to copy a heuristic's actions (and its value head the returns they earn), then RL
  fine-tunes it (``ControllerTrainConfig.imitate``);
* :mod:`ahm.agents.controller_checkpoint` - :func:`save_controller` / :func:`load_controller`: checkpoints that
  never execute code when loaded.

Policy networks. Observations are a ``Dict`` of small float ``Box`` es, so the
policies are SB3's ``MultiInputPolicy`` (``MultiInputLstmPolicy`` for RecurrentPPO)
whose feature extractor is SB3's ``CombinedExtractor``: with no image keys it
**flattens every Box and concatenates them** in the observation space's key order
(F + 4 K + 1 + k + 1 features, no learned encoder), and the actor / critic MLPs
(``policy_kwargs["net_arch"]``, SB3's default 64-64) or the LSTM sit on top.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import gymnasium as gym
import numpy as np
from stable_baselines3.common.callbacks import BaseCallback, CallbackList
from stable_baselines3.common.on_policy_algorithm import OnPolicyAlgorithm
from stable_baselines3.common.vec_env import VecMonitor

from ahm.agents.controller_checkpoint import load_controller, save_controller
from ahm.agents.imitation import (
    Demonstrations,
    RecordImitation,
    collect_demonstrations,
    dagger,
    imitate,
    target_accuracy,
)
from ahm.agents.policies import FORGET_COMPONENTS, WRITE_COMPONENT, set_noop_bias, slot_policy_kwargs, wire_slot_scores
from ahm.agents.rollout import rollout
from ahm.agents.sb3_adapter import SB3VecEnvAdapter
from ahm.agents.sb3_controllers import (
    ALGORITHMS,
    AlgoSpec,  # noqa: F401  (re-export: it lived here)
    SB3Controller,
    TorchPolicyController,  # noqa: F401  (re-export: it lived here)
    algo_name,
    masked_argmax,  # noqa: F401  (re-export: it lived here)
)
from ahm.backbone.errors import NonFiniteError, first_non_finite
from ahm.envs.spaces import ActionLayout
from ahm.envs.vector_env import AHMMemoryVectorEnv

__all__ = [
    "ALGORITHMS", "SB3Controller", "TorchPolicyController", "ControllerTrainConfig", "MemoryLoggingCallback",
    "ControllerFit", "ProgressBarCallback", "fit_controller", "train_controller", "make_train_env",
    "evaluate_episodes", "env_spec_of",
    "save_controller", "load_controller", "algo_name", "Demonstrations", "collect_demonstrations", "imitate",
]

TRAIN_INFO_KEYS = ("is_success", "reward_terms", "memory", "targets")
"""Info keys the training adapter passes to SB3 (what :class:`MemoryLoggingCallback` reads); the rest is
dropped because building per-env Python dicts costs about a microsecond per key and env per step."""


def set_noop_prior(policy: Any, components: Sequence[int], prob: float) -> None:
    """Make value 0 ("nothing") of each of ``components`` start with probability ``prob`` (in place), through the
    bias of the SB3 policy's ``action_net`` (:func:`ahm.agents.policies.set_noop_bias`; SB3 builds one logit per
    value of each ``MultiDiscrete`` component, with weights initialised at gain 0.01). Training moves it like any
    other weight."""
    if not 0.0 < prob < 1.0:
        raise ValueError(f"set_noop_prior: prob must be in (0, 1), got {prob!r}")
    bias = getattr(policy.action_net, "bias", None)
    if bias is None or bias.shape[0] != ActionLayout.from_nvec(policy.action_space.nvec).mask_width:
        raise ValueError("set_noop_prior: the policy's action_net has no bias with one logit per action value")
    set_noop_bias(bias, policy.action_space.nvec, components, prob)


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
    write_prior: float = 0.0
    """Initial probability of "write nothing" in the write component, set the same way; 0 keeps SB3's start, which
    writes at K steps in K + 1 and so rarely tries skipping a chunk."""
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
    progress: bool = False
    """A progress bar (tqdm) over the RL phase's timesteps (shown on a terminal only)."""

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
        for name in ("forget_prior", "write_prior"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)!r}")
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


def evaluate_episodes(controller: Any, env: AHMMemoryVectorEnv, seed: int | None = None) -> dict[str, float]:
    """Run one episode in every sub-env of ``env`` with ``controller``; their means.

    Returns ``success`` (fraction of episodes with every target correct), ``accuracy``
    (targets correct / targets, per episode), ``return`` and ``length``. Sub-envs that
    finish early keep stepping (autoreset) until all have finished one episode; only
    the first episode of each counts. The episodes run in :func:`ahm.agents.rollout.rollout` (the
    controller gets the env's info, as everywhere; only the oracle reads it).
    """
    n = env.num_envs
    finished = np.zeros(n, dtype=bool)
    success, accuracy = np.zeros(n), np.zeros(n)
    returns, lengths = np.zeros(n), np.zeros(n)
    for step in rollout(controller, env, seed=seed):
        live = ~finished
        returns[live] += step.reward[live]
        lengths[live] += 1
        for r in np.nonzero(step.done & live)[0].tolist():
            success[r] = float(step.info["is_success"][r])  # the ended episode's last info
            accuracy[r] = target_accuracy(step.info["targets"], r)
        finished |= step.done
        if finished.all():
            break
    return {"success": float(success.mean()), "accuracy": float(accuracy.mean()), "return": float(returns.mean()),
            "length": float(lengths.mean())}


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

    def _on_rollout_start(self) -> None:
        """Stop a diverged run: after each update (before the next rollout) every policy weight must be finite."""
        bad = first_non_finite(self.model.policy.state_dict().items())
        if bad is not None:
            raise NonFiniteError(f"{algo_name(self.model)}: policy tensor {bad[0]!r} has {bad[1]} of {bad[2]} values "
                                 f"NaN or infinite after {self.model.num_timesteps} steps: lower the learning rate")

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
                    self._accuracy += target_accuracy(targets)
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


class ProgressBarCallback(BaseCallback):
    """A tqdm bar over the timesteps of ``learn`` (SB3's own ``progress_bar=True`` needs ``rich``).

    ``disable=None``: shown on a terminal only, so logs and tests stay clean.
    """

    def __init__(self, desc: str = "rl", disable: bool | None = None) -> None:
        super().__init__()
        self.desc, self.disable, self.bar = desc, disable, None

    def _on_training_start(self) -> None:
        from tqdm import tqdm

        total = self.locals["total_timesteps"] - self.model.num_timesteps  # learn() adds the continued count
        self.bar = tqdm(total=total, desc=self.desc, unit="step", disable=self.disable)

    def _on_step(self) -> bool:
        self.bar.update(self.training_env.num_envs)
        return True

    def _on_training_end(self) -> None:
        self.bar.close()


def _policy_kwargs(config: ControllerTrainConfig) -> dict[str, Any] | None:
    if config.features == "slots":
        return {**slot_policy_kwargs(), **config.policy_kwargs}
    return dict(config.policy_kwargs) or None


class ControllerFit(NamedTuple):
    """What :func:`fit_controller` returns."""

    model: OnPolicyAlgorithm
    """The trained SB3 / sb3-contrib model (the given one, trained on, or a new one)."""
    imitation_stats: dict[str, float] | None
    """With ``config.imitate``: the statistics of behaviour cloning (:func:`ahm.agents.imitation.dagger`:
    ``demonstrations``, ``teacher_accuracy``, ``train_agreement``, ``holdout_agreement``, the losses,
    ``dagger_<r>_policy_accuracy``, ...); None without imitation."""


def fit_controller(config: ControllerTrainConfig, model: OnPolicyAlgorithm | None = None,
                   env: AHMMemoryVectorEnv | SB3VecEnvAdapter | None = None,
                   callbacks: Sequence[BaseCallback] = ()) -> ControllerFit:
    """Train a controller on ``AHMMemory-v0`` with Stable-Baselines3 / sb3-contrib; returns the model and, with
    ``config.imitate``, the imitation's statistics (:class:`ControllerFit`).

    A new model is ``ALGORITHMS[config.algo]`` with ``MultiInputPolicy`` (``MultiInputLstmPolicy``
    for RecurrentPPO; features: SB3's ``CombinedExtractor``, every Box flattened and concatenated,
    see the module doc) over :func:`make_train_env`'s env, seeded with ``config.seed``. Given
    ``model`` (e.g. the previous round of ``train_rl.py``), training continues on the new env
    (``model.set_env``, ``learn(reset_num_timesteps=False)``), with the model's own
    hyperparameters; the config's env, ``total_timesteps``, seed (for the env) and logging apply.

    With ``config.imitate`` a new model first copies that heuristic (:func:`collect_demonstrations` on
    the training env, then :func:`imitate`, then ``config.dagger_rounds`` rounds of DAgger; statistics in
    ``ControllerFit.imitation_stats`` and TensorBoard's ``imitation/``), then RL trains it for
    ``total_timesteps`` (0: imitation only).

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
    stats: dict[str, float] | None = None
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
        if config.write_prior:
            set_noop_prior(model.policy, (WRITE_COMPONENT,), config.write_prior)
        if config.imitate:
            from ahm.agents import make_controller

            stats = dagger(model, make_controller(config.imitate), vector_env, steps=config.imitation_steps,
                           gamma=config.gamma, epochs=config.imitation_epochs, batch_size=config.batch_size,
                           learning_rate=config.imitation_lr, rounds=config.dagger_rounds, seed=config.seed)
            callbacks = [RecordImitation(stats), *callbacks]
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
    if config.progress and config.total_timesteps:
        callbacks = [*callbacks, ProgressBarCallback(f"{config.algo} ({config.total_timesteps} steps)")]
    try:
        model.learn(total_timesteps=config.total_timesteps, callback=CallbackList([logging_cb, *callbacks]),
                    log_interval=config.log_interval, tb_log_name=config.algo, reset_num_timesteps=reset)
    except ValueError as err:  # torch's distributions refuse NaN logits: say that the run diverged, and where
        bad = first_non_finite(model.policy.state_dict().items())
        if bad is None:
            raise
        raise NonFiniteError(f"{config.algo}: policy tensor {bad[0]!r} has {bad[1]} of {bad[2]} values NaN or "
                             f"infinite after {model.num_timesteps} steps: lower the learning rate "
                             f"({config.learning_rate})") from err
    if eval_env is not None:
        eval_env.close()
    return ControllerFit(model, stats)


def train_controller(config: ControllerTrainConfig, model: OnPolicyAlgorithm | None = None,
                     env: AHMMemoryVectorEnv | SB3VecEnvAdapter | None = None,
                     callbacks: Sequence[BaseCallback] = ()) -> OnPolicyAlgorithm:
    """Train a controller on ``AHMMemory-v0``; returns the model (:func:`fit_controller`'s ``model``; use
    :func:`fit_controller` for the imitation's statistics too). Arguments as :func:`fit_controller`'s."""
    return fit_controller(config, model, env, callbacks).model
