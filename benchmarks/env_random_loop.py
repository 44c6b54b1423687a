"""A random-action loop on an AHMMemory env beside CartPole-v1: steps/s with and without resets, 1 and 8 envs.

What a generic RL client pays (issue 17): actions are drawn uniformly from the
**declared** action space (a plain ``MultiDiscrete`` over its ``nvec``, every element,
no masks; CartPole: its ``Discrete(2)``), episodes restart when they end, and every
``reset`` / ``step`` call is timed on its own.

Rows: each env id as one ``gymnasium.make`` env and as 8 envs (AHM: the native vector env,
``make_vec(..., vectorization_mode="vector_entry_point")``; CartPole: ``SyncVectorEnv`` in
``SAME_STEP`` autoreset, the AHM vector env's mode, so both count the same steps). Columns:

* *steps/s without resets*: env steps (sub-env steps for 8 envs) per second of ``step`` calls
  that contained no reset;
* *s per reset*: the explicit ``reset`` calls, plus, for 8 envs, the autoresets inside ``step``
  (a call in which sub-envs ended, less the median reset-free call, divided among them);
* *steps/s counting resets*: env steps per second of everything, resets included: what a
  training loop sees.

``--pool N`` draws every episode's stream from ``stream_seeds=range(N)`` with
``feature_cache_size=N``: after each stream's first use its backbone features are
reused, so later resets skip the backbone. Without it every reset reads a fresh stream
(the env's default). Time is split over ``--steps`` step calls per AHM row (``--cartpole-steps``
for CartPole); an AHM episode at 100K tokens is ~390 steps of 256 tokens, so the default
budget crosses episode ends.

If the env predates issue 17 (a masked-invalid component raises ``ValueError``), the loop
replaces those components by 0 on the client side (``ActionLayout.noop_invalid``, what the
env does itself since then) and the table says so.

Run with one torch thread (the env's docstring advises it for steps; ``--threads`` to change)::

    python benchmarks/env_random_loop.py --seq-len 16384 --steps 3000             # ~3 min on 2 cores
    python benchmarks/env_random_loop.py --seq-len 100000 --steps 3000            # ~2.5 min
    python benchmarks/env_random_loop.py --seq-len 100000 --steps 3000 --pool 8   # features reused: ~40 s
    python benchmarks/env_random_loop.py --env-id AHMMemory-MQAR-v0 --seq-len 8192 --steps 1000
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, field

import gymnasium
import numpy as np
import torch
from _common import markdown_table

NUM_VECTOR_ENVS = 8
"""The vector rows' sub-envs (issue 17: "single and 8 envs")."""


@dataclass
class LoopTimes:
    """Wall-clock of one random-action loop, split into reset-free step calls and resets."""

    env_steps: int = 0
    """Env steps taken (sub-env steps for a vector env)."""
    step_s: float = 0.0
    """Seconds in step calls that contained no reset."""
    clean_steps: int = 0
    """Env steps of those calls."""
    reset_s: float = 0.0
    """Seconds of resets: explicit ``reset`` calls plus the reset share of autoresetting step calls."""
    resets: int = 0
    """Episodes started (explicit resets and autoresets)."""
    total_s: float = 0.0
    """Seconds of everything (resets, steps, action sampling)."""
    client_noop: bool = False
    """True if the env raised on a masked-invalid action and the loop no-op'ed those components itself."""
    done_calls: list[tuple[float, int, int]] = field(default_factory=list)
    """(seconds, sub-env steps, autoresets) of the step calls in which sub-envs ended (vector env)."""
    clean_call_s: list[float] = field(default_factory=list)
    """Seconds of each reset-free step call."""

    def settle(self) -> None:
        """Split the autoresetting calls: a reset-free call's median time is step, the rest is reset."""
        median = float(np.median(self.clean_call_s)) if self.clean_call_s else 0.0
        for seconds, _, autoresets in self.done_calls:
            self.reset_s += max(seconds - median, 0.0)
            self.resets += autoresets

    def row(self, env_id: str, envs: int) -> list[str]:
        clean = self.clean_steps / self.step_s if self.step_s else float("nan")
        per_reset = self.reset_s / self.resets if self.resets else float("nan")
        counted = self.env_steps / self.total_s
        name = env_id + (" (client no-op)" if self.client_noop else "")
        return [name, str(envs), f"{self.env_steps:,}", f"{clean:,.0f}", str(self.resets), _seconds(per_reset),
                f"{counted:,.1f}"]


def _seconds(s: float) -> str:
    if np.isnan(s):
        return "-"
    return f"{s:.2f} s" if s >= 0.1 else f"{1e3 * s:.2f} ms" if s >= 1e-4 else f"{1e6 * s:.1f} us"


def declared_sampler(space: gymnasium.Space, seed: int) -> gymnasium.Space:
    """A space that samples uniformly over every element of ``space`` as declared: for a ``MultiDiscrete``, a plain
    one with its ``nvec`` (``MemoryOpsSpace.sample`` leaves out operations invalid in some states)."""
    if isinstance(space, gymnasium.spaces.MultiDiscrete):
        space = gymnasium.spaces.MultiDiscrete(space.nvec, seed=seed)
    else:
        space.seed(seed)
    return space


def _step_or_noop(env: gymnasium.Env | gymnasium.vector.VectorEnv, action: np.ndarray, times: LoopTimes) -> tuple:
    """``env.step(action)``; if the env refuses masked-invalid values (before issue 17), no-op them and step again."""
    if not times.client_noop:
        try:
            return env.step(action)
        except ValueError as err:
            if "is invalid now" not in str(err):
                raise
            times.client_noop = True
            print(f"note: {err.args[0][:90]}...; no-op'ing invalid components on the client side", file=sys.stderr)
    from ahm.envs.spaces import ActionLayout

    base = env.unwrapped
    masks = base.action_masks()
    layout = ActionLayout(base.config.wm_slots)
    fixed = layout.noop_invalid(np.reshape(action, (-1, 5)), np.reshape(masks, (-1, layout.mask_width)))
    return env.step(fixed.reshape(np.shape(action)))


def single_loop(env: gymnasium.Env, steps: int, seed: int) -> LoopTimes:
    """``steps`` random steps of one env, resetting when an episode ends; resets timed apart from steps."""
    times, sampler = LoopTimes(), declared_sampler(env.action_space, seed)
    start = time.perf_counter()
    t0 = time.perf_counter()
    env.reset(seed=seed)
    times.reset_s += time.perf_counter() - t0
    times.resets += 1
    for _ in range(steps):
        action = sampler.sample()
        t0 = time.perf_counter()
        _, _, terminated, truncated, _ = _step_or_noop(env, action, times)
        dt = time.perf_counter() - t0
        times.step_s, times.clean_steps, times.env_steps = times.step_s + dt, times.clean_steps + 1, times.env_steps + 1
        times.clean_call_s.append(dt)
        if terminated or truncated:
            t0 = time.perf_counter()
            env.reset()
            times.reset_s += time.perf_counter() - t0
            times.resets += 1
    times.total_s = time.perf_counter() - start
    return times


def vector_loop(envs: gymnasium.vector.VectorEnv, steps: int, seed: int) -> LoopTimes:
    """``steps`` random step calls of a SAME_STEP-autoreset vector env; calls in which sub-envs ended are split
    into step and reset time by :meth:`LoopTimes.settle`."""
    times, sampler = LoopTimes(), declared_sampler(envs.action_space, seed)
    n = envs.num_envs
    start = time.perf_counter()
    t0 = time.perf_counter()
    envs.reset(seed=seed)
    times.reset_s += time.perf_counter() - t0
    times.resets += n
    for _ in range(steps):
        action = sampler.sample()
        t0 = time.perf_counter()
        _, _, terminated, truncated, _ = _step_or_noop(envs, action, times)
        dt = time.perf_counter() - t0
        times.env_steps += n
        ended = int(np.sum(terminated | truncated))
        if ended:
            times.done_calls.append((dt, n, ended))
        else:
            times.step_s, times.clean_steps = times.step_s + dt, times.clean_steps + n
            times.clean_call_s.append(dt)
    times.total_s = time.perf_counter() - start
    times.settle()
    return times


def ahm_kwargs(args: argparse.Namespace) -> dict:
    kwargs: dict = {"seq_len": args.seq_len}
    if args.pool:
        kwargs.update(stream_seeds=list(range(args.pool)), feature_cache_size=args.pool)
    return kwargs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env-id", default="AHMMemory-v0", help="the AHM env id measured beside CartPole-v1")
    parser.add_argument("--seq-len", type=int, default=100_000, help="tokens per episode (the env's default: 100K)")
    parser.add_argument("--steps", type=int, default=500, help="step calls per AHM row (x8 sub-env steps for 8 envs)")
    parser.add_argument("--cartpole-steps", type=int, default=20_000, help="step calls per CartPole row")
    parser.add_argument("--seed", type=int, default=0, help="reset seed and action sampler seed")
    parser.add_argument("--pool", type=int, default=0,
                        help="N > 0: stream_seeds=range(N), feature_cache_size=N (features reused across episodes)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is what the env advises on CPU)")
    parser.add_argument("--skip-vector", action="store_true", help="single-env rows only")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    import ahm  # noqa: F401 - registers the ids

    rows: list[list[str]] = []
    runs = [(args.env_id, 1), ("CartPole-v1", 1)]
    if not args.skip_vector:
        runs += [(args.env_id, NUM_VECTOR_ENVS), ("CartPole-v1", NUM_VECTOR_ENVS)]
    for env_id, n in runs:
        cartpole = env_id == "CartPole-v1"
        steps = args.cartpole_steps if cartpole else args.steps
        kwargs = {} if cartpole else ahm_kwargs(args)
        if n == 1:
            env = gymnasium.make(env_id, **kwargs)
            times = single_loop(env, steps, args.seed)
        elif cartpole:
            env = gymnasium.vector.SyncVectorEnv([lambda: gymnasium.make("CartPole-v1")] * n,
                                                 autoreset_mode=gymnasium.vector.AutoresetMode.SAME_STEP)
            times = vector_loop(env, steps, args.seed)
        else:
            env = gymnasium.make_vec(env_id, num_envs=n, vectorization_mode="vector_entry_point", **kwargs)
            times = vector_loop(env, steps, args.seed)
        env.close()
        rows.append(times.row(env_id, n))
        print(f"{env_id} x{n}: {rows[-1]}", file=sys.stderr, flush=True)

    pool = f"stream_seeds=range({args.pool}), feature_cache_size={args.pool}" if args.pool else \
        "a fresh stream per reset"
    print(f"seq_len {args.seq_len:,} ({pool}); torch threads {args.threads}; actions uniform over the declared space\n")
    print(markdown_table(["env", "envs", "env steps", "steps/s without resets", "resets", "s per reset",
                          "steps/s counting resets"], rows))


if __name__ == "__main__":
    main()
