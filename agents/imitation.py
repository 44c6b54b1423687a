"""Behaviour cloning: a new policy first learns to copy a heuristic's actions, then RL fine-tunes it.

* :class:`Demonstrations` / :func:`collect_demonstrations` - what a teacher (a heuristic, or the oracle)
  did on N steps of a vector env, with the discounted returns its actions earned; with a ``driver``, the
  states another controller reaches, labelled by the teacher (DAgger's data).
* :func:`imitate` - fit an SB3 policy (and its value head) to demonstrations.
* :func:`dagger` - the whole schedule :func:`ahm.agents.learned.fit_controller` runs for
  ``ControllerTrainConfig.imitate``: clone the teacher, then rounds of DAgger (Ross et al., 2011).
  It *returns* the statistics; nothing is stored on the model.
* :class:`RecordImitation` - an SB3 callback that writes those statistics to the logger as ``imitation/``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.on_policy_algorithm import OnPolicyAlgorithm
from torch import Tensor, nn

from ahm.agents.rollout import rollout
from ahm.agents.sb3_controllers import ALGORITHMS, SB3Controller, algo_name
from ahm.backbone.errors import NonFiniteError
from ahm.envs.vector_env import AHMMemoryVectorEnv

__all__ = ["Demonstrations", "collect_demonstrations", "imitate", "dagger", "RecordImitation", "target_accuracy"]


def target_accuracy(targets: Mapping[str, Any], row: int | None = None) -> float:
    """Targets answered correctly / targets of one finished episode (``row`` of a batched info)."""
    correct, total = (targets[k] if row is None else targets[k][row] for k in ("correct", "total"))
    return float(correct) / max(1.0, float(total))




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
    to. Rewards, returns and ``accuracy`` are then the driver's. The env is stepped by
    :func:`ahm.agents.rollout.rollout`, the one controller loop (the teacher is its controller).
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    n = env.num_envs
    rounds = -(-steps // n)
    observations: dict[str, list[np.ndarray]] = {}
    actions, masks = np.zeros((rounds, n, 5), dtype=np.int64), []
    streams = np.zeros((rounds, n), dtype=np.int64)
    rewards, dones = np.zeros((rounds, n)), np.zeros((rounds, n), dtype=bool)
    accuracies: list[float] = []
    for step in rollout(teacher, env, seed=seed, steps=rounds, driver=driver):
        t = step.t
        for key, value in step.observation.items():
            observations.setdefault(key, []).append(np.array(value, copy=True))
        masks.append(step.action_mask)
        actions[t] = step.action
        streams[t] = step.stream_seeds
        rewards[t] = step.reward
        dones[t] = step.done
        for r in np.nonzero(dones[t])[0].tolist():
            accuracies.append(target_accuracy(step.info["targets"], r))  # the ended episode's last info
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
            loss = policy_loss + vf_coef * value_loss
            loss.backward()
            norm = nn.utils.clip_grad_norm_(policy.parameters(), 0.5)
            if not (torch.isfinite(loss) and torch.isfinite(norm)):
                raise NonFiniteError(f"imitation: non-finite loss or gradient in epoch {epoch}: lower the imitation "
                                     f"learning rate ({learning_rate})")
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


def dagger(model: OnPolicyAlgorithm, teacher: Any, env: AHMMemoryVectorEnv, *, steps: int, gamma: float,
           epochs: int, batch_size: int, learning_rate: float, rounds: int, seed: int) -> dict[str, float]:
    """Clone ``teacher`` into ``model.policy`` (in place), then ``rounds`` rounds of DAgger; the fit's statistics.

    The teacher plays ``steps`` steps of ``env`` (reset seed ``seed + 20_000``) and :func:`imitate` fits the
    policy to them. In DAgger round r the clone (deterministic) plays ``steps`` more steps (seed
    ``seed + 20_000 + r``), the teacher labels the states it reaches, and imitation goes on over all
    demonstrations so far. The statistics are :func:`imitate`'s of the last fit, plus ``teacher_accuracy``
    (the teacher's own episodes) and ``dagger_<r>_policy_accuracy`` (the clone's own, before round r's fit).
    """
    demos = collect_demonstrations(teacher, env, steps, gamma, seed=seed + 20_000)
    # the teacher's own accuracy (the aggregate's below also counts the clone's episodes)
    extra = {"teacher_accuracy": demos.accuracy}
    stats = imitate(model, demos, epochs, batch_size, learning_rate, seed=seed)
    for r in range(1, rounds + 1):
        own = collect_demonstrations(teacher, env, steps, gamma, seed=seed + 20_000 + r, driver=SB3Controller(model))
        extra[f"dagger_{r}_policy_accuracy"] = own.accuracy  # the clone's own, before this round's fit
        demos = Demonstrations.concatenate([demos, own])
        # the same seed: the same streams held out
        stats = imitate(model, demos, epochs, batch_size, learning_rate, seed=seed)
    stats.update(extra)
    return stats


class RecordImitation(BaseCallback):
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
