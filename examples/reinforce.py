"""REINFORCE with a learned baseline on ``AHMMemory-v0``, in plain torch: how to plug in your own RL algorithm.

Nothing here uses Stable-Baselines3. The policy is an MLP over the concatenated
observation with one categorical head per action component (write_slot,
evict_to_ltm, retrieve, forget_slot, ltm_forget); values the env's
``action_masks()`` marks invalid get probability 0, so every sampled action is
valid. A value head is the baseline.

Algorithm (Williams 1992, with a state-value baseline; Sutton & Barto, Sec. 13.4).
Per update, run E episodes; for every step t of an episode:

    G_t  = sum_{u >= t} gamma^(u - t) r_u                      (return to go)
    A_t  = G_t - V(s_t)                                        (advantage; V is the baseline)
    loss = - mean_t[ log pi(a_t | s_t) * stopgrad(A_t) ]       (policy gradient)
           + value_coef * mean_t[ (G_t - V(s_t))^2 ]           (fit the baseline)
           - entropy_coef * mean_t[ H(pi(. | s_t)) ]           (keep exploring)

where log pi(a | s) and H are sums over the 5 independent components.

The trained policy is a batched ``ahm.agents.Controller`` (:class:`ReinforceController`), so the
controller benchmark and ``train_lm.py`` can run it like any other; ``--save`` writes it as an MLP policy
checkpoint (:func:`ahm.agents.controller_checkpoint.save_mlp_policy`) that the benchmark loads by its path.

Run::

    python examples/reinforce.py --seq-len 4096 --updates 50 --save runs/reinforce.safetensors
    python -m ahm.benchmark --tasks AHMMemory-v0 --lengths 4K --controllers reinforce=runs/reinforce.safetensors,lru
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NamedTuple

import gymnasium as gym
import numpy as np
import torch
from safetensors.torch import load_file
from torch import Tensor, nn

from ahm.cli import parse_config


@dataclass
class ReinforceConfig:
    """REINFORCE with a baseline on an AHMMemory env (examples/reinforce.py)."""

    env_id: str = "AHMMemory-v0"
    """A registered AHMMemory id."""
    seq_len: int = 4096
    """Tokens per episode."""
    chunk_size: int = 64
    """Tokens per step (an episode has about seq_len / chunk_size steps)."""
    updates: int = 50
    """Policy updates."""
    episodes_per_update: int = 4
    """Episodes collected for each update."""
    learning_rate: float = 3e-3
    """Adam's learning rate."""
    gamma: float = 0.99
    """Discount factor per chunk."""
    hidden: int = 64
    """Width of the two hidden layers."""
    entropy_coef: float = 0.01
    """Weight of the entropy bonus."""
    value_coef: float = 0.5
    """Weight of the baseline's squared error."""
    max_grad_norm: float = 1.0
    """Gradient clipping (global norm)."""
    seed: int = 0
    """Seeds the policy's initialisation, the action sampling and the env."""
    save: str | None = None
    """Write the trained policy here (X.safetensors, with X.json beside it; the benchmark loads it by this path);
    None: do not save."""

    def __post_init__(self) -> None:
        for name in ("seq_len", "chunk_size", "updates", "episodes_per_update", "hidden"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 <= self.gamma <= 1.0:
            raise ValueError(f"gamma must be in [0, 1], got {self.gamma}")


class ReinforcePolicy(nn.Module):
    """MLP over the observation -> per-component logits (b, sum(nvec)) and the baseline V(s) (b,).

    Args:
        obs_sizes: observation key -> flattened size, in the order they are concatenated.
        nvec: the action space's ``nvec`` (5 components).
        hidden: width of the two hidden layers.
    """

    def __init__(self, obs_sizes: Mapping[str, int], nvec: Sequence[int], hidden: int = 64) -> None:
        super().__init__()
        self.obs_sizes = dict(obs_sizes)
        self.nvec = [int(n) for n in nvec]
        self.body = nn.Sequential(nn.Linear(sum(self.obs_sizes.values()), hidden), nn.Tanh(),
                                  nn.Linear(hidden, hidden), nn.Tanh())
        self.logits = nn.Linear(hidden, sum(self.nvec))
        self.value = nn.Linear(hidden, 1)

    def forward(self, observation: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
        """``{key: (b, ...)}`` -> logits (b, sum(nvec)), value (b,)."""
        x = torch.cat([observation[k].reshape(len(observation[k]), -1).float() for k in self.obs_sizes], dim=1)
        h = self.body(x)  # (b, hidden)
        return self.logits(h), self.value(h).squeeze(1)

    def masked_logits(self, logits: Tensor, mask: Tensor) -> list[Tensor]:
        """Per component (b, nvec[j]) logits with invalid values (``mask`` (b, sum(nvec)) False) at the dtype's
        minimum: probability 0, and unlike -inf no NaN in the entropy."""
        low = torch.finfo(logits.dtype).min
        return [lj.masked_fill(~mj, low) for lj, mj in zip(logits.split(self.nvec, 1), mask.split(self.nvec, 1))]


def _obs_tensors(observation: Mapping[str, Any]) -> dict[str, Tensor]:
    return {k: torch.as_tensor(np.asarray(v, dtype=np.float32)) for k, v in observation.items()}


class ReinforceController:
    """A :class:`ReinforcePolicy` as an ``ahm.agents.Controller``: batched, masked, greedy or sampled.

    Args:
        policy: the trained policy.
        deterministic: the most likely valid value of each component (True) or a sample.
        seed: seed of the sampling generator (``deterministic=False``).
    """

    def __init__(self, policy: ReinforcePolicy, deterministic: bool = True, seed: int = 0,
                 name: str = "reinforce") -> None:
        self.policy, self.deterministic, self.name = policy, deterministic, name
        self.generator = torch.Generator().manual_seed(seed)

    def reset(self, num_envs: int) -> None:
        pass

    def act(self, observation: Mapping[str, np.ndarray], action_mask: np.ndarray | None = None,
            info: Mapping[str, Any] | None = None, episode_start: np.ndarray | None = None) -> np.ndarray:
        """(b, 5) int64 actions for observations ``{key: (b, ...)}`` and masks (b, sum(nvec))."""
        with torch.no_grad():
            logits, _ = self.policy(_obs_tensors(observation))
            b = logits.shape[0]
            mask = (torch.ones(b, sum(self.policy.nvec), dtype=torch.bool) if action_mask is None
                    else torch.as_tensor(np.asarray(action_mask, dtype=bool).reshape(b, -1)))
            heads = self.policy.masked_logits(logits, mask)
            if self.deterministic:
                actions = [lj.argmax(1) for lj in heads]
            else:
                actions = [torch.multinomial(lj.softmax(1), 1, generator=self.generator).squeeze(1) for lj in heads]
        return torch.stack(actions, 1).numpy().astype(np.int64)


class UpdateStats(NamedTuple):
    """One update's numbers."""

    loss: float
    mean_return: float
    mean_length: float
    success: float


class ReinforceResult(NamedTuple):
    policy: ReinforcePolicy
    controller: ReinforceController
    history: list[UpdateStats]


def returns_to_go(rewards: Sequence[float], gamma: float) -> Tensor:
    """(T,) G_t = r_t + gamma G_{t+1}, G_T = 0."""
    out, g = [0.0] * len(rewards), 0.0
    for t in range(len(rewards) - 1, -1, -1):
        g = rewards[t] + gamma * g
        out[t] = g
    return torch.tensor(out, dtype=torch.float32)


def make_policy(env: gym.Env, hidden: int, seed: int) -> ReinforcePolicy:
    """A fresh policy for ``env``'s spaces, initialised from ``seed`` (global torch RNG untouched)."""
    space = env.observation_space
    sizes = {k: int(np.prod(s.shape)) for k, s in space.spaces.items()}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return ReinforcePolicy(sizes, env.action_space.nvec, hidden)


def run_episode(env: gym.Env, policy: ReinforcePolicy, generator: torch.Generator,
                seed: int | None = None) -> tuple[Tensor, Tensor, Tensor, list[float], bool]:
    """One episode sampled from ``policy``: per-step log pi(a|s) (T,), entropy (T,), V(s) (T,), rewards, success."""
    obs, _ = env.reset(seed=seed)
    log_probs, entropies, values, rewards = [], [], [], []
    done, success = False, False
    while not done:
        logits, value = policy({k: v[None] for k, v in _obs_tensors(obs).items()})
        mask = torch.as_tensor(env.unwrapped.action_masks())[None]
        heads = policy.masked_logits(logits, mask)
        logp, ent, action = torch.zeros(()), torch.zeros(()), []
        for lj in heads:
            lp = lj.log_softmax(1)[0]  # (nvec_j,)
            a = torch.multinomial(lp.exp(), 1, generator=generator).squeeze()
            logp = logp + lp[a]
            ent = ent - (lp.exp() * lp).sum()
            action.append(int(a))
        obs, reward, terminated, truncated, info = env.step(np.array(action, dtype=np.int64))
        log_probs.append(logp)
        entropies.append(ent)
        values.append(value[0])
        rewards.append(float(reward))
        done = terminated or truncated
        success = bool(info.get("is_success", False))
    return torch.stack(log_probs), torch.stack(entropies), torch.stack(values), rewards, success


def train(config: ReinforceConfig, log: Any = print) -> ReinforceResult:
    """Train a policy with REINFORCE and a baseline (module doc); ``log`` gets one line per update."""
    env = gym.make(f"ahm:{config.env_id}", seq_len=config.seq_len, chunk_size=config.chunk_size)
    # seeding, in one place: the policy's init, the sampling generator, the env's episode stream
    policy = make_policy(env, config.hidden, config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    first_seed: int | None = config.seed
    optimizer = torch.optim.Adam(policy.parameters(), lr=config.learning_rate)
    history: list[UpdateStats] = []
    for update in range(config.updates):
        logp, ent, value, advantage_target, stats = [], [], [], [], []
        for _ in range(config.episodes_per_update):
            lp, h, v, rewards, success = run_episode(env, policy, generator, first_seed)
            first_seed = None  # later resets continue the env's seeded generator
            logp.append(lp)
            ent.append(h)
            value.append(v)
            advantage_target.append(returns_to_go(rewards, config.gamma))
            stats.append((sum(rewards), len(rewards), success))
        logp, ent, value, g = (torch.cat(x) for x in (logp, ent, value, advantage_target))
        advantage = (g - value).detach()
        if len(advantage) > 1:  # normalised: the step size does not depend on the reward scale
            advantage = (advantage - advantage.mean()) / (advantage.std() + 1e-8)
        loss = (-(logp * advantage).mean() + config.value_coef * (g - value).pow(2).mean()
                - config.entropy_coef * ent.mean())
        optimizer.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(policy.parameters(), config.max_grad_norm)
        optimizer.step()
        returns, lengths, successes = zip(*stats)
        history.append(UpdateStats(loss.item(), float(np.mean(returns)), float(np.mean(lengths)),
                                   float(np.mean(successes))))
        log(f"update {update + 1:4d}  loss {history[-1].loss:+.4f}  return {history[-1].mean_return:+.4f}  "
            f"length {history[-1].mean_length:.0f}  success {history[-1].success:.2f}")
    env.close()
    policy.eval()
    if config.save:
        save_policy(config.save, policy, config)
    return ReinforceResult(policy, ReinforceController(policy), history)


def save_policy(path: str | Path, policy: ReinforcePolicy, config: ReinforceConfig) -> Path:
    """The policy as a checkpoint the benchmark loads (``python -m ahm.benchmark --controllers reinforce=PATH``).

    ``path`` (``X.safetensors``) gets every weight, the value head included; ``X.json`` beside it lists the
    acting layers (body, then the logits head) for :func:`ahm.agents.controller_checkpoint.load_mlp_policy`, and
    keeps what :func:`load_policy` needs to rebuild the whole :class:`ReinforcePolicy`.
    """
    from ahm.agents.controller_checkpoint import save_mlp_policy

    env_spec = {"env_id": config.env_id, "env_kwargs": {"seq_len": config.seq_len, "chunk_size": config.chunk_size}}
    extra = {"obs_sizes": policy.obs_sizes, "hidden": config.hidden, "config": asdict(config)}
    return save_mlp_policy(path, policy, ["body", "logits"], list(policy.obs_sizes), policy.nvec, name="reinforce",
                           env_spec=env_spec, extra=extra)


def load_policy(path: str | Path) -> ReinforcePolicy:
    """The whole policy saved by :func:`save_policy` (data only; no code runs)."""
    path = Path(path)
    meta = json.loads(path.with_suffix(".json").read_text())
    policy = ReinforcePolicy(meta["extra"]["obs_sizes"], meta["nvec"], int(meta["extra"]["hidden"]))
    policy.load_state_dict(load_file(str(path)))
    return policy.eval()


def main(argv: Sequence[str] | None = None) -> ReinforceResult:
    """Parse ``argv`` into a :class:`ReinforceConfig` (``--help`` lists the fields) and train."""
    config = parse_config(ReinforceConfig, argv)
    torch.set_num_threads(1)  # tiny ops: a second thread only adds overhead (AHMMemoryEnv, "Performance")
    result = train(config)
    if not all(math.isfinite(s.loss) for s in result.history):
        raise RuntimeError("the loss became non-finite; lower --learning-rate")
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
