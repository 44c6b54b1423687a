"""A batched PPO over the native vector env, tensors end to end: the fast learner of memory controllers.

Stable-Baselines3's PPO reaches a few hundred to a thousand env steps per second on
``AHMMemory-v0`` while :class:`~ahm.envs.vector_env.AHMMemoryVectorEnv` steps at
over a hundred thousand: per step SB3 converts the Dict observation key by key,
builds per-env info dicts, and runs its distribution classes component by
component. :class:`FastPPO` keeps one flat float32 tensor per observation, samples
all five action components in one masked, padded categorical, and updates on large
minibatches, so the learner costs about what the env does (``benchmarks/
controller_throughput.py`` measures both beside SB3's PPO in one run).

The algorithm is PPO (Schulman et al., 2017) with the usual details: GAE(lambda),
advantages normalised per minibatch, a clipped surrogate, an entropy bonus, a
value loss, gradient clipping, and orthogonal initialisation (actor head gain 0.01).
Two things are specific to memory control:

* **Masks.** The policy samples only values the env's ``action_masks()`` allows
  (like sb3-contrib's MaskablePPO), so no step is wasted on a no-op'd invalid choice.
* **Hindsight write credit.** ``credit_coef`` adds, to the reward of the step that
  wrote an entry, the read weight with which a later correct answer read it
  (``info["write_credit"]``, :func:`ahm.envs.episode_batch.write_credit`;
  :func:`credit_rewards` moves it back along the rollout). The write is the decision
  that earned the answer, hundreds of chunks before it; a discounted return carries
  only ``(gamma lambda)^d`` of it back over d chunks. (MemAgent gives the final
  answer's reward to every write step; here only the write that was read is paid.)

The trained policy is a plain MLP over the observation keys (the actor of
:class:`ActorCritic`), saved with :func:`~ahm.agents.controller_checkpoint.save_mlp_policy`,
so ``load_mlp_policy`` and the benchmark run it with no code of this module.

Glossary: S rollout steps per env (``n_steps``), B envs (``num_envs``), O the
flattened observation width, A = sum(nvec) action values, J = 5 action components.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from torch import Tensor, nn

from ahm.agents.controller_checkpoint import read_mlp_policy, save_mlp_policy
from ahm.agents.evaluation import prepare_features
from ahm.agents.policies import FORGET_COMPONENTS, WRITE_COMPONENT, set_noop_bias
from ahm.agents.sb3_controllers import TorchPolicyController
from ahm.backbone.errors import NonFiniteError
from ahm.envs.spaces import ActionLayout, observation_keys
from ahm.envs.vector_env import AHMMemoryVectorEnv

__all__ = ["FastPPOConfig", "ActorCritic", "FastPPO", "credit_rewards", "MaskedMultiCategorical"]

_NEG = -1e8
"""Logit of a masked value: exp underflows to 0 (no -inf, so 0 * logit stays finite in the entropy)."""


@dataclass
class FastPPOConfig:
    """How :class:`FastPPO` trains (defaults: 64 envs, rollouts of 64 x 64 = 4,096 steps, 4 epochs of 4 minibatches)."""

    env_id: str = "AHMMemory-v0"
    """A registered AHMMemory id."""
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments of the env on top of the id's (seq_len, backbone, stream_seeds, ltm_capacity, ...)."""
    num_envs: int = 64
    """Sub-environments of the native vector env (one batched memory)."""
    n_steps: int = 64
    """Steps per env per rollout (one update per n_steps * num_envs steps)."""
    n_epochs: int = 4
    """Passes over each rollout."""
    minibatch_size: int = 1024
    """Samples per gradient step."""
    learning_rate: float = 1e-3
    gamma: float = 0.99
    gae_lambda: float = 0.95
    clip_range: float = 0.2
    ent_coef: float = 0.01
    vf_coef: float = 0.5
    max_grad_norm: float = 0.5
    net_arch: tuple[int, ...] = (64, 64)
    """Hidden widths of the actor and of the critic (separate MLPs, tanh)."""
    credit_coef: float = 1.0
    """Weight of the hindsight write credit (module doc); 0 turns it off."""
    forget_prior: float = 0.9
    """Initial probability of "forget nothing" in the two forget components (WM slot, LTM entries), set through the
    actor head's bias; a uniform start forgets a WM slot at 8 steps in 9 and LTM entries at 3 in 4, so almost no
    early episode keeps a fact long enough to be rewarded for it. 0: the uniform start. Training moves it freely."""
    write_prior: float = 0.0
    """Initial probability of "write nothing" in the write component, set the same way. The uniform start writes at
    K steps in K + 1, so skipping a chunk, the choice that keeps a memory that binds for the facts, is rarely tried
    (on ForgetBind a policy started uniform learned to write every chunk). 0: the uniform start."""
    seed: int = 0
    """Seeds torch, the sampling and sub-env i (seed + i)."""

    def __post_init__(self) -> None:
        for name in ("num_envs", "n_steps", "n_epochs", "minibatch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"FastPPOConfig.{name} must be a positive int, got {value!r}")
        for name in ("learning_rate", "clip_range", "max_grad_norm"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"FastPPOConfig.{name} must be a positive finite number, got {value!r}")
        for name in ("ent_coef", "vf_coef", "credit_coef"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"FastPPOConfig.{name} must be a finite number >= 0, got {value!r}")
        for name in ("gamma", "gae_lambda"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"FastPPOConfig.{name} must be in [0, 1], got {getattr(self, name)!r}")
        self.net_arch = tuple(int(w) for w in self.net_arch)
        if not self.net_arch or min(self.net_arch) < 1:
            raise ValueError(f"FastPPOConfig.net_arch must be positive widths, got {self.net_arch!r}")
        for name in ("forget_prior", "write_prior"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"FastPPOConfig.{name} must be in [0, 1), got {getattr(self, name)!r}")
        if "num_envs" in self.env_kwargs:
            raise ValueError("set num_envs on the config, not in env_kwargs")


def _mlp(widths: Sequence[int], gains: Sequence[float]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
        linear = nn.Linear(a, b)
        nn.init.orthogonal_(linear.weight, gains[i])
        nn.init.zeros_(linear.bias)
        layers.append(linear)
        if i < len(widths) - 2:
            layers.append(nn.Tanh())
    return nn.Sequential(*layers)


class ActorCritic(nn.Module):
    """Actor and critic MLPs over the flattened observation (keys in ``keys`` order, each flattened).

    ``forward(observation)`` is the actor's logits ``(b, A)`` from a dict of tensors, what
    :class:`~ahm.agents.sb3_controllers.TorchPolicyController` calls; :meth:`flat` is the same input as one
    ``(b, O)`` tensor, what the learner stores.
    """

    def __init__(self, widths: Mapping[str, int], nvec: Sequence[int], net_arch: Sequence[int] = (64, 64)) -> None:
        super().__init__()
        self.keys = list(widths)
        self.widths = dict(widths)
        self.nvec = [int(n) for n in nvec]
        o, hidden = sum(self.widths.values()), list(net_arch)
        root2 = math.sqrt(2.0)
        self.actor = _mlp([o, *hidden, sum(self.nvec)], [root2] * len(hidden) + [0.01])
        self.critic = _mlp([o, *hidden, 1], [root2] * len(hidden) + [1.0])

    def set_noop_prior(self, components: Sequence[int], prob: float) -> None:
        """Start value 0 of each of ``components`` at probability ``prob`` through the bias of the actor's last layer
        (:func:`ahm.agents.policies.set_noop_bias`; its weights start at gain 0.01)."""
        set_noop_bias(self.actor[-1].bias, self.nvec, components, prob)

    def flat(self, observation: Mapping[str, Any]) -> Tensor:
        """(b, O) float32: the observation's keys flattened and concatenated (numpy arrays or tensors)."""
        parts = [torch.as_tensor(np.asarray(observation[k], dtype=np.float32) if not isinstance(observation[k], Tensor)
                                 else observation[k]).reshape(len(observation[k]), -1) for k in self.keys]
        return torch.cat(parts, dim=1)

    def forward(self, observation: Mapping[str, Any]) -> Tensor:
        return self.actor(self.flat(observation))


class MaskedMultiCategorical:
    """The five components' categoricals as one padded ``(b, J, max n)`` tensor: sample, log-prob and entropy in
    one op each, masked values at probability 0."""

    def __init__(self, nvec: Sequence[int]) -> None:
        nvec = [int(n) for n in nvec]
        width, self.total = max(nvec), sum(nvec)
        offsets = np.concatenate([[0], np.cumsum(nvec)[:-1]])
        index = np.full((len(nvec), width), self.total, dtype=np.int64)  # the pad column, past the last value
        for j, (n, o) in enumerate(zip(nvec, offsets)):
            index[j, :n] = o + np.arange(n)
        self.index = torch.from_numpy(index)

    def log_probs(self, logits: Tensor, mask: Tensor) -> Tensor:
        """(b, J, max n) log-probabilities; padded and masked values get about -1e8."""
        b = logits.shape[0]
        padded = torch.cat([logits, logits.new_full((b, 1), _NEG)], 1)[:, self.index]
        valid = torch.cat([mask, mask.new_zeros((b, 1))], 1)[:, self.index]
        return torch.log_softmax(padded.masked_fill(~valid, _NEG), dim=-1)

    @staticmethod
    def sample(logp: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """(b, J) int64 values drawn from ``logp`` (Gumbel-max)."""
        u = torch.rand(logp.shape, generator=generator).clamp_(1e-12, 1.0 - 1e-7)
        return (logp - torch.log(-torch.log(u))).argmax(-1)

    @staticmethod
    def of(logp: Tensor, actions: Tensor) -> tuple[Tensor, Tensor]:
        """The joint log-probability (b,) of ``actions`` (b, J) and the summed entropy (b,)."""
        chosen = logp.gather(2, actions[:, :, None])[:, :, 0].sum(1)
        entropy = -(logp.exp() * logp).sum((1, 2))
        return chosen, entropy


def credit_rewards(credit_chunk: np.ndarray, credit_weight: np.ndarray, episode_step: np.ndarray) -> np.ndarray:
    """(S, B) float64 rewards to add to a rollout: each credit moved back to the step that wrote its entry.

    Args:
        credit_chunk: (S, B) int64, ``info["write_credit"]["chunk"]`` of each step (-1 none).
        credit_weight: (S, B) float, ``info["write_credit"]["weight"]``.
        episode_step: (S, B) int64, the chunk each step was at (its index in its episode; one step per chunk).

    The credit of step s in env b is paid at step ``s - (episode_step[s, b] - chunk)`` of the same env, the step
    of the same episode at that chunk, if the rollout holds it (a write before the rollout began is not paid:
    its update is over).
    """
    s_len, b = credit_chunk.shape
    out = np.zeros((s_len, b))
    s, r = np.nonzero(credit_chunk >= 0)
    if len(s):
        at = s - (episode_step[s, r] - credit_chunk[s, r])
        ok = (at >= 0) & (at <= s)
        np.add.at(out, (at[ok], r[ok]), credit_weight[s[ok], r[ok]])
    return out


class FastPPO:
    """PPO over :class:`~ahm.envs.vector_env.AHMMemoryVectorEnv` (module doc).

    Example::

        >>> from ahm.agents.fast_ppo import FastPPO, FastPPOConfig
        >>> ppo = FastPPO(FastPPOConfig(num_envs=4, n_steps=8, env_kwargs={"seq_len": 2048, "chunk_size": 64}))
        >>> stats = ppo.learn(64)
        >>> stats["timesteps"], ppo.controller().name
        (64, 'fast_ppo')
    """

    def __init__(self, config: FastPPOConfig, env: AHMMemoryVectorEnv | None = None,
                 policy: ActorCritic | None = None) -> None:
        self.config = c = config
        torch.manual_seed(c.seed)
        self.env = env if env is not None else gym.make_vec(c.env_id, num_envs=c.num_envs,
                                                            vectorization_mode="vector_entry_point",
                                                            **c.env_kwargs).unwrapped
        if not isinstance(self.env, AHMMemoryVectorEnv):
            raise TypeError(f"FastPPO needs an AHMMemoryVectorEnv, got {type(self.env).__name__}")
        if self.env.num_envs != c.num_envs:
            raise ValueError(f"the env has {self.env.num_envs} sub-envs, the config {c.num_envs}")
        space = self.env.single_observation_space
        widths = {k: int(np.prod(space[k].shape)) for k in observation_keys(space)}
        self.layout = ActionLayout.from_nvec(self.env.single_action_space.nvec)
        if policy is None:
            # Seeded here, not only above: building the env may draw from torch's generator (a backbone given as a
            # checkpoint path is built, randomly initialised, then loaded; a model object is not), and the same seed
            # must give the same policy however the backbone was passed.
            torch.manual_seed(c.seed)
            policy = ActorCritic(widths, self.layout.nvec.tolist(), c.net_arch)
            if c.forget_prior:
                policy.set_noop_prior(FORGET_COMPONENTS, c.forget_prior)
            if c.write_prior:
                policy.set_noop_prior((WRITE_COMPONENT,), c.write_prior)
        self.policy = policy
        if self.policy.widths != widths or self.policy.nvec != self.layout.nvec.tolist():
            raise ValueError(f"the policy was made for observations {self.policy.widths} and nvec {self.policy.nvec}; "
                             f"this env has {widths} and {self.layout.nvec.tolist()}")
        self.dist = MaskedMultiCategorical(self.layout.nvec)
        self.optimizer = torch.optim.Adam(self.policy.parameters(), lr=c.learning_rate, eps=1e-5)
        self.generator = torch.Generator().manual_seed(c.seed)
        self.timesteps = 0
        self.warmup_seconds = 0.0
        """Seconds the first reset spent reading the training streams through the backbone."""
        self._obs: dict[str, np.ndarray] | None = None
        self._episode_step = np.zeros(c.num_envs, dtype=np.int64)
        self.episodes: list[dict[str, float]] = []
        """Finished training episodes, in order: accuracy (correct / targets) and length (steps)."""

    # ------------------------------------------------------------------ rollout
    def _reset(self) -> None:
        """The first reset; a fixed set of training streams (``stream_seeds``) is read through the backbone first, in
        batches of ``num_envs`` (``warmup_seconds``), so that no rollout waits for a stream's features."""
        seeds = self.env.config.stream_seeds
        if seeds is not None:
            self.warmup_seconds += prepare_features(self.env, seeds)
        self._obs, _ = self.env.reset(seed=self.config.seed)
        self._episode_step[:] = 0

    @torch.inference_mode()
    def collect(self) -> dict[str, Tensor]:
        """One rollout of S steps in every env: the tensors an update needs (returns and advantages included)."""
        c, env = self.config, self.env
        if self._obs is None:
            self._reset()
        s_len, b = c.n_steps, c.num_envs
        obs = torch.zeros(s_len, b, sum(self.policy.widths.values()))
        masks = torch.zeros(s_len, b, self.layout.mask_width, dtype=torch.bool)
        actions = torch.zeros(s_len, b, len(self.layout.nvec), dtype=torch.int64)
        logps, values = torch.zeros(s_len, b), torch.zeros(s_len, b)
        rewards, dones = np.zeros((s_len, b)), np.zeros((s_len, b), dtype=bool)
        credit_chunk, credit_weight = np.full((s_len, b), -1, dtype=np.int64), np.zeros((s_len, b))
        chunk = np.zeros((s_len, b), dtype=np.int64)
        for s in range(s_len):
            x = self.policy.flat(self._obs)
            mask = torch.from_numpy(env.action_masks())
            logp = self.dist.log_probs(self.policy.actor(x), mask)
            a = self.dist.sample(logp, self.generator)
            obs[s], masks[s], actions[s] = x, mask, a
            logps[s] = logp.gather(2, a[:, :, None])[:, :, 0].sum(1)
            values[s] = self.policy.critic(x)[:, 0]
            out = env.step_arrays(a.numpy())
            done = out.terminated | out.truncated
            reward = out.reward.astype(np.float64)
            step_info = out.info
            chunk[s] = self._episode_step
            credit_chunk[s] = step_info["write_credit"]["chunk"]
            credit_weight[s] = step_info["write_credit"]["weight"]
            if done.any():
                final = out.final_info  # rows that ended: their last step's info (``info`` is the new episode's)
                credit_chunk[s, done] = final["write_credit"]["chunk"][done]
                credit_weight[s, done] = final["write_credit"]["weight"][done]
                rows = np.nonzero(done)[0]
                if out.truncated.any() and out.final_observation is not None:  # bootstrap a cut episode
                    cut = np.nonzero(out.truncated)[0]
                    fx = self.policy.flat({k: v[cut] for k, v in out.final_observation.items()})
                    reward[cut] += c.gamma * self.policy.critic(fx)[:, 0].double().numpy()
                for r in rows.tolist():
                    t = final["targets"]
                    self.episodes.append({"accuracy": float(t["correct"][r]) / max(1, int(t["total"][r])),
                                          "length": int(self._episode_step[r]) + 1})
            rewards[s], dones[s] = reward, done
            self._episode_step += 1
            self._episode_step[done] = 0
            self._obs = out.observation
        if c.credit_coef:
            rewards += c.credit_coef * credit_rewards(credit_chunk, credit_weight, chunk)
        last_value = self.policy.critic(self.policy.flat(self._obs))[:, 0]
        advantages = self._gae(torch.from_numpy(rewards).float(), values, torch.from_numpy(dones), last_value)
        self.timesteps += s_len * b
        return {"obs": obs, "masks": masks, "actions": actions, "logp": logps, "values": values,
                "advantages": advantages, "returns": advantages + values}

    def _gae(self, rewards: Tensor, values: Tensor, dones: Tensor, last_value: Tensor) -> Tensor:
        c = self.config
        adv = torch.zeros_like(rewards)
        running = torch.zeros_like(last_value)
        next_value = last_value
        for s in range(rewards.shape[0] - 1, -1, -1):
            live = (~dones[s]).float()
            delta = rewards[s] + c.gamma * next_value * live - values[s]
            running = delta + c.gamma * c.gae_lambda * live * running
            adv[s] = running
            next_value = values[s]
        return adv

    # ------------------------------------------------------------------ update
    def update(self, batch: Mapping[str, Tensor]) -> dict[str, float]:
        """PPO's epochs over one rollout; returns the last epoch's mean losses."""
        c = self.config
        flat = {k: v.reshape(-1, *v.shape[2:]) for k, v in batch.items()}
        n = flat["obs"].shape[0]
        size = min(c.minibatch_size, n)
        stats: dict[str, list[float]] = {"policy_loss": [], "value_loss": [], "entropy": [], "clip_fraction": []}
        for _ in range(c.n_epochs):
            order = torch.randperm(n, generator=self.generator)
            for start in range(0, n - size + 1, size):
                i = order[start : start + size]
                logp_all = self.dist.log_probs(self.policy.actor(flat["obs"][i]), flat["masks"][i])
                logp, entropy = self.dist.of(logp_all, flat["actions"][i])
                adv = flat["advantages"][i]
                adv = (adv - adv.mean()) / (adv.std() + 1e-8)
                ratio = torch.exp(logp - flat["logp"][i])
                policy_loss = -torch.min(ratio * adv, ratio.clamp(1 - c.clip_range, 1 + c.clip_range) * adv).mean()
                value_loss = (self.policy.critic(flat["obs"][i])[:, 0] - flat["returns"][i]).pow(2).mean()
                loss = policy_loss + c.vf_coef * value_loss - c.ent_coef * entropy.mean()
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                norm = nn.utils.clip_grad_norm_(self.policy.parameters(), c.max_grad_norm)
                if not torch.isfinite(loss) or not torch.isfinite(norm):
                    raise NonFiniteError(f"FastPPO: non-finite loss or gradient at timestep {self.timesteps}: "
                                         f"lower learning_rate ({c.learning_rate}) or max_grad_norm")
                self.optimizer.step()
                stats["policy_loss"].append(float(policy_loss.detach()))
                stats["value_loss"].append(float(value_loss.detach()))
                stats["entropy"].append(float(entropy.mean().detach()))
                stats["clip_fraction"].append(float(((ratio.detach() - 1).abs() > c.clip_range).float().mean()))
        return {k: float(np.mean(v)) if v else float("nan") for k, v in stats.items()}

    def learn(self, total_timesteps: int, callback: Callable[[FastPPO, dict[str, float]], Any] | None = None,
              progress: bool = False) -> dict[str, Any]:
        """Train for at least ``total_timesteps`` env steps (whole rollouts); ``callback(self, stats)`` after each
        update; ``progress``: a tqdm bar (on a terminal only). Returns the timing and the mean accuracy of the last
        64 finished episodes."""
        if isinstance(total_timesteps, bool) or not isinstance(total_timesteps, int) or total_timesteps < 1:
            raise ValueError(f"total_timesteps must be a positive int, got {total_timesteps!r}")
        per = self.config.n_steps * self.config.num_envs
        start, target, warm = time.perf_counter(), self.timesteps + total_timesteps, self.warmup_seconds
        rollout_s = update_s = 0.0
        stats: dict[str, float] = {}
        from tqdm import tqdm

        bar = tqdm(total=target - self.timesteps, desc="fast_ppo", unit="step", disable=None if progress else True)
        while self.timesteps < target:
            t0 = time.perf_counter()
            self.policy.eval()
            batch = self.collect()
            t1 = time.perf_counter()
            self.policy.train()
            stats = self.update(batch)
            t2 = time.perf_counter()
            rollout_s, update_s = rollout_s + t1 - t0, update_s + t2 - t1
            recent = self.episodes[-64:]
            stats["accuracy"] = float(np.mean([e["accuracy"] for e in recent])) if recent else float("nan")
            bar.update(per)
            bar.set_postfix(accuracy=f"{stats['accuracy']:.3f}")
            if callback is not None:
                callback(self, stats)
        bar.close()
        seconds = time.perf_counter() - start
        done = (total_timesteps + per - 1) // per * per
        seconds -= self.warmup_seconds - warm  # this call's warm-up, reported on its own
        return {"timesteps": done, "seconds": seconds, "steps_per_second": done / max(seconds, 1e-9),
                "warmup_seconds": self.warmup_seconds - warm,
                "rollout_seconds": rollout_s, "update_seconds": update_s, **stats}

    # ------------------------------------------------------------------ use and save
    def controller(self, name: str = "fast_ppo") -> TorchPolicyController:
        """The deterministic policy (masked argmax per component) as a batched controller."""
        return TorchPolicyController(self.policy, self.layout.nvec, name=name)

    def save(self, path: str | Path, env_spec: Mapping[str, Any] | None = None, name: str | None = None) -> Path:
        """Save the policy with :func:`save_mlp_policy` (the critic's weights ride along; ``load`` rebuilds both)."""
        return save_mlp_policy(path, self.policy, ["actor"], self.policy.keys, self.layout.nvec, name=name,
                               env_spec=env_spec, extra={"learner": "fast_ppo", "timesteps": self.timesteps,
                                      "net_arch": list(self.config.net_arch),
                                      "widths": [self.policy.widths[k] for k in self.policy.keys]})

    @staticmethod
    def load_policy(path: str | Path) -> ActorCritic:
        """The :class:`ActorCritic` (actor and critic) of a checkpoint :meth:`save` wrote, to continue training."""
        meta, weights = read_mlp_policy(path)
        extra = meta.get("extra", {})
        if extra.get("learner") != "fast_ppo":
            raise ValueError(f"{str(path)!r} was not saved by FastPPO: it holds no critic to continue training")
        try:
            policy = ActorCritic(dict(zip(meta["observation_keys"], extra["widths"])), meta["nvec"],
                                 extra["net_arch"])
            policy.load_state_dict(weights)
        except (KeyError, TypeError, RuntimeError) as err:
            raise ValueError(f"{str(path)!r}: the weights do not fit the recorded network ({err!r})") from err
        return policy

