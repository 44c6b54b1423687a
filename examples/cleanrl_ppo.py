"""PPO on an AHMMemory env, written the way CleanRL writes ``ppo.py``: one file, no action masks.

A third-party algorithm that knows nothing of this package: it sees a flat ``Box``
observation (the env's Dict flattened by ``gymnasium.wrappers.FlattenObservation``)
and a ``MultiDiscrete`` action space, and samples every component from its own
categorical head. It never asks for ``action_masks()``: a component that is invalid
in the current state (retrieving from an empty memory level, forgetting an empty
slot, an LTM forget on an empty LTM) is a no-op, counted per episode in
``info["memory"]["invalid_noops"]`` and logged here as ``memory/invalid_noops``.

Algorithm: PPO-Clip (Schulman et al. 2017) with GAE(lambda) (Schulman et al. 2016).
For a rollout of T steps in N envs, d_t = 1 when the episode ended at step t - 1:

    delta_t = r_t + gamma (1 - d_{t+1}) V(s_{t+1}) - V(s_t)
    A_t     = delta_t + gamma lambda (1 - d_{t+1}) A_{t+1}              (advantage)
    R_t     = A_t + V(s_t)                                              (return target)
    rho     = pi(a_t | s_t) / pi_old(a_t | s_t)
    loss    = - mean[min(rho A, clip(rho, 1 - eps, 1 + eps) A)]          (clipped surrogate)
              + vf_coef * 0.5 * mean[max((V - R)^2, (V_clip - R)^2)]    (clipped value loss)
              - ent_coef * mean[H(pi(. | s))]

with log pi(a | s) and H summed over the 5 independent action components. Autoreset
is ``SAME_STEP`` (the observation after a done is the next episode's first), the
convention the bootstrapping above assumes.

Run::

    python examples/cleanrl_ppo.py --total-timesteps 20000 --seq-len 4096
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import gymnasium as gym
import numpy as np
import torch
from torch import Tensor, nn
from torch.distributions import Categorical

import ahm  # noqa: F401  (registers the AHMMemory ids with Gymnasium)
from ahm.cli import parse_config


@dataclass
class Args:
    """CleanRL-style PPO without action masks on an AHMMemory env (examples/cleanrl_ppo.py)."""

    env_id: str = "AHMMemory-v0"
    """A registered AHMMemory id."""
    seq_len: int = 4096
    """Tokens per episode."""
    chunk_size: int = 64
    """Tokens per step (an episode has about seq_len / chunk_size steps)."""
    backbone: str = ""
    """The env's backbone: '' for the task's default, 'random', or a checkpoint directory."""
    seed: int = 1
    """Seeds the policy's initialisation, the minibatch shuffles, the action sampling and the envs."""
    total_timesteps: int = 20_000
    """Env steps in all (over every env)."""
    learning_rate: float = 2.5e-4
    """Adam's learning rate."""
    num_envs: int = 4
    """Parallel envs (gymnasium.vector.SyncVectorEnv)."""
    num_steps: int = 64
    """Steps per env per rollout."""
    anneal_lr: bool = True
    """Decay the learning rate linearly to 0 over the run."""
    gamma: float = 0.99
    """Discount factor per chunk."""
    gae_lambda: float = 0.95
    """GAE's lambda."""
    num_minibatches: int = 4
    """Minibatches per epoch."""
    update_epochs: int = 4
    """Epochs over each rollout."""
    norm_adv: bool = True
    """Normalise the advantages per minibatch."""
    clip_coef: float = 0.2
    """PPO's clipping epsilon (also clips the value update)."""
    clip_vloss: bool = True
    """Use the clipped value loss."""
    ent_coef: float = 0.01
    """Weight of the entropy bonus."""
    vf_coef: float = 0.5
    """Weight of the value loss."""
    max_grad_norm: float = 0.5
    """Gradient clipping (global norm)."""
    target_kl: float | None = None
    """Stop an update's epochs early once the approximate KL exceeds this; None: never."""
    tensorboard_dir: str | None = None
    """Write the logged scalars here for TensorBoard; None: print only."""

    def __post_init__(self) -> None:
        for name in ("seq_len", "chunk_size", "total_timesteps", "num_envs", "num_steps", "num_minibatches",
                     "update_epochs"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.num_envs * self.num_steps < self.num_minibatches:
            raise ValueError(f"a rollout of num_envs * num_steps = {self.num_envs * self.num_steps} steps cannot be "
                             f"split into {self.num_minibatches} minibatches; lower --num-minibatches")

    @property
    def batch_size(self) -> int:
        """Steps per rollout (over every env)."""
        return self.num_envs * self.num_steps

    @property
    def num_iterations(self) -> int:
        """Rollouts (and updates); at least one."""
        return max(1, self.total_timesteps // self.batch_size)


def make_env(args: Args, wrap: Callable[[gym.Env], gym.Env] | None = None) -> Callable[[], gym.Env]:
    """A thunk making one sub-env: the AHMMemory env, ``wrap`` (a hook for monitoring wrappers; the tests count
    invalid actions with one), episode statistics, and the Dict observation flattened into one Box."""

    def thunk() -> gym.Env:
        kwargs: dict[str, Any] = {"seq_len": args.seq_len, "chunk_size": args.chunk_size}
        if args.backbone:
            kwargs["backbone"] = args.backbone
        env = gym.make(args.env_id, **kwargs)
        if wrap is not None:
            env = wrap(env)
        env = gym.wrappers.RecordEpisodeStatistics(env)
        return gym.wrappers.FlattenObservation(env)

    return thunk


def layer_init(layer: nn.Linear, std: float = math.sqrt(2), bias_const: float = 0.0) -> nn.Linear:
    """Orthogonal weights with gain ``std`` and constant biases (the PPO implementation details, Huang et al. 2022)."""
    nn.init.orthogonal_(layer.weight, std)
    nn.init.constant_(layer.bias, bias_const)
    return layer


class Agent(nn.Module):
    """Separate actor and critic MLPs over the flat observation; the actor has one categorical head per action
    component (``sum(nvec)`` logits, split by ``nvec``)."""

    def __init__(self, obs_dim: int, nvec: Sequence[int], hidden: int = 64) -> None:
        super().__init__()
        self.nvec = [int(n) for n in nvec]
        self.critic = nn.Sequential(layer_init(nn.Linear(obs_dim, hidden)), nn.Tanh(),
                                    layer_init(nn.Linear(hidden, hidden)), nn.Tanh(),
                                    layer_init(nn.Linear(hidden, 1), std=1.0))
        self.actor = nn.Sequential(layer_init(nn.Linear(obs_dim, hidden)), nn.Tanh(),
                                   layer_init(nn.Linear(hidden, hidden)), nn.Tanh(),
                                   layer_init(nn.Linear(hidden, sum(self.nvec)), std=0.01))

    def get_value(self, x: Tensor) -> Tensor:
        """(B, obs_dim) -> V(s) (B, 1)."""
        return self.critic(x)

    def get_action_and_value(self, x: Tensor, action: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(B, obs_dim) -> action (B, 5) (sampled unless given), log pi(a|s) (B,), entropy (B,), V(s) (B, 1)."""
        heads = [Categorical(logits=lj) for lj in self.actor(x).split(self.nvec, dim=1)]
        if action is None:
            action = torch.stack([h.sample() for h in heads], dim=1)
        logprob = torch.stack([h.log_prob(a) for h, a in zip(heads, action.T)], dim=1).sum(1)
        entropy = torch.stack([h.entropy() for h in heads], dim=1).sum(1)
        return action, logprob, entropy, self.critic(x)


class PPOResult(NamedTuple):
    """What a run did: the trained agent, the env steps taken, and the finished episodes' numbers."""

    agent: Agent
    global_step: int
    episodic_returns: list[float]
    episodic_lengths: list[int]
    invalid_noops: int
    """Masked-invalid action components the env turned into no-ops, summed over the finished episodes."""
    metrics: list[dict[str, float]]
    """One dict of namespaced scalars (``losses/``, ``charts/``) per update."""


def train(args: Args, wrap: Callable[[gym.Env], gym.Env] | None = None, log: Callable[[str], None] = print
          ) -> PPOResult:
    """Run PPO (module doc) for ``args.num_iterations`` rollouts; ``wrap`` is applied to each sub-env."""
    writer = None
    if args.tensorboard_dir:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(args.tensorboard_dir)

    # seeding, in one place: the policy's init and sampling (torch), the minibatch shuffles (numpy), the envs
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)

    envs = gym.vector.SyncVectorEnv([make_env(args, wrap) for _ in range(args.num_envs)],
                                    autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)
    if not isinstance(envs.single_action_space, gym.spaces.MultiDiscrete):
        raise ValueError(f"this PPO has a MultiDiscrete action head; {args.env_id} has {envs.single_action_space}")
    obs_dim = int(np.prod(envs.single_observation_space.shape))
    agent = Agent(obs_dim, envs.single_action_space.nvec)
    optimizer = torch.optim.Adam(agent.parameters(), lr=args.learning_rate, eps=1e-5)

    # rollout storage: T = num_steps, N = num_envs
    t_steps, n = args.num_steps, args.num_envs
    obs = torch.zeros((t_steps, n, obs_dim))
    actions = torch.zeros((t_steps, n, 5), dtype=torch.int64)
    logprobs, rewards, dones, values = (torch.zeros((t_steps, n)) for _ in range(4))

    global_step, start = 0, time.time()
    returns_log: list[float] = []
    lengths_log: list[int] = []
    invalid_noops = 0
    metrics: list[dict[str, float]] = []
    next_obs_np, _ = envs.reset(seed=args.seed)
    next_obs, next_done = torch.as_tensor(next_obs_np, dtype=torch.float32), torch.zeros(n)

    for iteration in range(1, args.num_iterations + 1):
        if args.anneal_lr:
            optimizer.param_groups[0]["lr"] = (1.0 - (iteration - 1.0) / args.num_iterations) * args.learning_rate

        for step in range(t_steps):
            global_step += n
            obs[step], dones[step] = next_obs, next_done
            with torch.no_grad():
                action, logprob, _, value = agent.get_action_and_value(next_obs)
            actions[step], logprobs[step], values[step] = action, logprob, value.flatten()

            next_obs_np, reward, terminations, truncations, infos = envs.step(action.numpy())
            rewards[step] = torch.as_tensor(reward, dtype=torch.float32)
            next_obs = torch.as_tensor(next_obs_np, dtype=torch.float32)
            next_done = torch.as_tensor(np.logical_or(terminations, truncations), dtype=torch.float32)

            if "final_info" in infos:  # SAME_STEP: the ended episodes' last infos
                final = infos["final_info"]
                for i in np.nonzero(infos["_final_info"])[0]:
                    episode_return, length = float(final["episode"]["r"][i]), int(final["episode"]["l"][i])
                    noops = int(final["memory"].get("invalid_noops", np.zeros(n, dtype=np.int64))[i])
                    returns_log.append(episode_return)
                    lengths_log.append(length)
                    invalid_noops += noops
                    if writer is not None:
                        writer.add_scalar("charts/episodic_return", episode_return, global_step)
                        writer.add_scalar("charts/episodic_length", length, global_step)
                        writer.add_scalar("memory/invalid_noops", noops, global_step)

        # GAE(lambda), bootstrapped from V(s_T) where the episode goes on
        with torch.no_grad():
            next_value = agent.get_value(next_obs).reshape(1, -1)
            advantages = torch.zeros_like(rewards)
            last_gae = torch.zeros(n)
            for t in reversed(range(t_steps)):
                next_nonterminal = 1.0 - (next_done if t == t_steps - 1 else dones[t + 1])
                next_values = next_value if t == t_steps - 1 else values[t + 1]
                delta = rewards[t] + args.gamma * next_values * next_nonterminal - values[t]
                advantages[t] = last_gae = delta + args.gamma * args.gae_lambda * next_nonterminal * last_gae
            returns = advantages + values

        b_obs, b_actions = obs.reshape(-1, obs_dim), actions.reshape(-1, 5)
        b_logprobs, b_advantages = logprobs.reshape(-1), advantages.reshape(-1)
        b_returns, b_values = returns.reshape(-1), values.reshape(-1)

        minibatch_size = args.batch_size // args.num_minibatches
        clipfracs: list[float] = []
        for _epoch in range(args.update_epochs):
            order = rng.permutation(args.batch_size)
            for begin in range(0, args.batch_size - minibatch_size + 1, minibatch_size):
                mb = torch.as_tensor(order[begin:begin + minibatch_size])
                _, newlogprob, entropy, newvalue = agent.get_action_and_value(b_obs[mb], b_actions[mb])
                logratio = newlogprob - b_logprobs[mb]
                ratio = logratio.exp()
                with torch.no_grad():  # http://joschu.net/blog/kl-approx.html
                    approx_kl = ((ratio - 1) - logratio).mean()
                    clipfracs.append(((ratio - 1.0).abs() > args.clip_coef).float().mean().item())

                mb_adv = b_advantages[mb]
                if args.norm_adv and len(mb_adv) > 1:
                    mb_adv = (mb_adv - mb_adv.mean()) / (mb_adv.std() + 1e-8)
                pg_loss = torch.max(-mb_adv * ratio,
                                    -mb_adv * ratio.clamp(1 - args.clip_coef, 1 + args.clip_coef)).mean()

                newvalue = newvalue.view(-1)
                v_loss = (newvalue - b_returns[mb]) ** 2
                if args.clip_vloss:
                    v_clipped = b_values[mb] + (newvalue - b_values[mb]).clamp(-args.clip_coef, args.clip_coef)
                    v_loss = torch.max(v_loss, (v_clipped - b_returns[mb]) ** 2)
                v_loss = 0.5 * v_loss.mean()

                entropy_loss = entropy.mean()
                loss = pg_loss - args.ent_coef * entropy_loss + args.vf_coef * v_loss
                optimizer.zero_grad()
                loss.backward()
                nn.utils.clip_grad_norm_(agent.parameters(), args.max_grad_norm)
                optimizer.step()
            if args.target_kl is not None and approx_kl > args.target_kl:
                break

        var_y = float(np.var(b_returns.numpy()))
        explained = math.nan if var_y == 0 else 1.0 - float(np.var((b_returns - b_values).numpy())) / var_y
        row = {"charts/learning_rate": optimizer.param_groups[0]["lr"], "losses/value_loss": v_loss.item(),
               "losses/policy_loss": pg_loss.item(), "losses/entropy": entropy_loss.item(),
               "losses/approx_kl": approx_kl.item(), "losses/clipfrac": float(np.mean(clipfracs)),
               "losses/explained_variance": explained, "charts/SPS": global_step / (time.time() - start)}
        metrics.append(row)
        if writer is not None:
            for key, value in row.items():
                writer.add_scalar(key, value, global_step)
        recent = returns_log[-10:]
        log(f"iteration {iteration}/{args.num_iterations}  global_step {global_step}  "
            f"return {np.mean(recent) if recent else math.nan:+.3f}  invalid no-ops {invalid_noops}  "
            f"SPS {row['charts/SPS']:.0f}")

    envs.close()
    if writer is not None:
        writer.close()
    return PPOResult(agent, global_step, returns_log, lengths_log, invalid_noops, metrics)


def main(argv: Sequence[str] | None = None) -> PPOResult:
    """Parse ``argv`` into :class:`Args` (``--help`` lists the fields) and train."""
    args = parse_config(Args, argv)
    torch.set_num_threads(1)  # tiny ops: a second thread only adds overhead (AHMMemoryEnv, "Performance")
    return train(args)


if __name__ == "__main__":
    main(sys.argv[1:])
