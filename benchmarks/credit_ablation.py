"""Does FastPPO's hindsight write credit speed learning? The make-run setting with and without it, 3 seeds each.

``AHMMemory-v0`` at 16K tokens with a 4-entry LTM (train_rl's controller phase), 409,600 steps per run; prints a
table: training accuracy (last 64 episodes) after about 100K, 200K and 400K steps, the first update whose last 64
episodes reach 0.9, and the deterministic controller on 16 held-out streams::

    python benchmarks/credit_ablation.py
"""

from __future__ import annotations

import torch
from _common import markdown_table

from ahm.agents.evaluation import evaluate
from ahm.agents.fast_ppo import FastPPO, FastPPOConfig

STEPS, PER_UPDATE = 409_600, 64 * 64
ENV = {"seq_len": 16384, "ltm_capacity": 4}


def run(credit: float, seed: int) -> list[object]:
    streams = [seed * 1_000_003 + i for i in range(64)]  # train_rl's training streams of this seed
    learner = FastPPO(FastPPOConfig(num_envs=64, n_steps=64, ent_coef=0.003, credit_coef=credit, seed=seed,
                                    env_kwargs={**ENV, "stream_seeds": streams}))
    curve: list[float] = []
    learner.learn(STEPS, lambda _, stats: curve.append(stats["accuracy"]))
    held_out = evaluate(learner.controller(), "AHMMemory-v0", episodes=16, num_envs=16, seed=4242, **ENV)
    first = next((i for i, a in enumerate(curve) if a >= 0.9), None)
    at = [curve[min(len(curve) - 1, n // PER_UPDATE - 1)] for n in (100_000, 200_000, STEPS)]
    return [credit, seed, *(f"{a:.3f}" for a in at), "never" if first is None else f"{(first + 1) * PER_UPDATE:,}",
            f"{held_out.accuracy:.3f}"]


def main() -> None:
    torch.set_num_threads(1)
    rows = [run(credit, seed) for credit in (1.0, 0.0) for seed in (0, 1, 2)]
    print(markdown_table(["credit_coef", "seed", "train acc 100K", "200K", "400K", "first >= 0.9 at",
                          "held-out accuracy"], rows))


if __name__ == "__main__":
    main()
