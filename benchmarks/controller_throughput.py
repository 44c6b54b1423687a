"""Controller training throughput: FastPPO beside Stable-Baselines3's PPO on the same env, in one run.

Both train the default policy network (two hidden layers of 64, separate actor and
critic) on ``AHMMemory-v0`` with ``--num-envs`` (64) sub-environments of one native
vector env over a fixed pool of training streams whose backbone features are read
first (the warm-up, reported on its own and excluded from steps/s, as it is the
backbone's cost, not the learner's). *steps/s* is end to end: rollouts plus updates,
env steps summed over the sub-envs.

* ``fast_ppo``: :class:`ahm.agents.fast_ppo.FastPPO` with its defaults (rollouts of
  64 steps per env, 4 epochs of minibatches of 1,024).
* ``sb3 ppo``: ``stable_baselines3.PPO("MultiInputPolicy")`` with its defaults
  (n_steps 2,048 per env, batch 64, 10 epochs) through
  :class:`ahm.agents.sb3_adapter.SB3VecEnvAdapter` as ``fit_controller`` runs it (invalid components
  become no-ops, the info keys its logging reads); it needs at least one whole rollout
  of n_steps x num_envs steps, so ``--sb3-n-steps`` can shorten it (reported in the table).

Run with one torch thread (the env's tiny ops are slower with two on a 2-core machine)::

    python benchmarks/controller_throughput.py                     # SB3 at its defaults: about 10 minutes
    python benchmarks/controller_throughput.py --sb3-n-steps 64    # SB3 rollouts as long as FastPPO's
"""

from __future__ import annotations

import argparse
import time

import torch
from _common import markdown_table

from ahm.agents.evaluation import prepare_features
from ahm.agents.fast_ppo import FastPPO, FastPPOConfig


def _env_kwargs(args: argparse.Namespace) -> dict:
    return {"seq_len": args.seq_len, "stream_seeds": list(range(args.num_envs)),
            "ltm_capacity": args.ltm_capacity}


def fast_ppo(args: argparse.Namespace) -> dict:
    learner = FastPPO(FastPPOConfig(num_envs=args.num_envs, env_kwargs=_env_kwargs(args), seed=0))
    learner.learn(learner.config.n_steps * args.num_envs)  # warm-up: stream features, first rollout
    out = learner.learn(args.steps)
    return {"steps": out["timesteps"], "seconds": out["seconds"], "warmup": learner.warmup_seconds,
            "note": "n_steps 64, 4 epochs, minibatch 1024"}


def sb3_ppo(args: argparse.Namespace) -> dict:
    from stable_baselines3 import PPO

    from ahm.agents.learned import TRAIN_INFO_KEYS
    from ahm.agents.sb3_adapter import SB3VecEnvAdapter
    from ahm.envs.vector_env import AHMMemoryVectorEnv

    env = AHMMemoryVectorEnv(num_envs=args.num_envs, **_env_kwargs(args))
    warm = prepare_features(env, list(range(args.num_envs)))
    adapter = SB3VecEnvAdapter(env, info_keys=TRAIN_INFO_KEYS, invalid_actions="noop")  # as fit_controller runs it
    model = PPO("MultiInputPolicy", adapter, n_steps=args.sb3_n_steps, seed=0, device="cpu")
    per = args.sb3_n_steps * args.num_envs
    steps = max(per, (args.sb3_steps or args.steps) // per * per)
    start = time.perf_counter()
    model.learn(steps)
    return {"steps": steps, "seconds": time.perf_counter() - start, "warmup": warm,
            "note": f"n_steps {args.sb3_n_steps}, batch 64, 10 epochs"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-envs", type=int, default=64)
    parser.add_argument("--seq-len", type=int, default=16384)
    parser.add_argument("--ltm-capacity", type=int, default=4, help="the training env's LTM (train_rl's default)")
    parser.add_argument("--steps", type=int, default=409_600, help="env steps timed for fast_ppo")
    parser.add_argument("--sb3-steps", type=int, default=0, help="env steps timed for SB3 (0: --steps, rounded to "
                                                                 "whole rollouts)")
    parser.add_argument("--sb3-n-steps", type=int, default=2048, help="SB3's n_steps (its default: 2048)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = []
    results = {"fast_ppo": fast_ppo(args), "sb3 ppo": sb3_ppo(args)}
    peer = results["sb3 ppo"]["steps"] / results["sb3 ppo"]["seconds"]
    for name, r in results.items():
        rate = r["steps"] / r["seconds"]
        rows.append([name, r["note"], r["steps"], f"{r['seconds']:.1f}", f"{rate:,.0f}", f"{rate / peer:.1f}x",
                     f"{r['warmup']:.1f}"])
    print(f"AHMMemory-v0, {args.seq_len} tokens, {args.num_envs} envs, LTM {args.ltm_capacity}, one torch thread\n")
    print(markdown_table(["learner", "settings", "env steps", "seconds", "steps/s", "vs SB3", "warm-up s"], rows))


if __name__ == "__main__":
    main()
