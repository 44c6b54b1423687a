"""AHMMemory environment throughput: steps per second with cached features, cache building, peak memory.

Rows (the default ``AHMMemory-v0``: passkey, chunks of 256, 8 WM slots, 512 int8 LTM
entries, the random default backbone, ``readout`` integration):

* ``single``: one ``gymnasium.make("AHMMemory-v0")`` env at ``--seq-len`` tokens.
* ``vector``: ``AHMMemoryVectorEnv`` with ``--num-envs`` sub-envs (``gymnasium.make_vec``,
  ``vectorization_mode="vector_entry_point"``); steps/s counts sub-env steps.
* ``sb3 adapter``: the same behind ``SB3VecEnvAdapter`` (per-env info dicts, as SB3 wants).

Columns: *cache build* is the first reset: the streams of a pool of ``num_envs``
stream seeds (``stream_seeds``) and one batched backbone pass over them; *steps/s*
is measured after it, over ``--steps`` steps (x16 for the vector rows, counted per
sub-env) of a cheap fixed policy (write round robin, move displaced entries to LTM,
retrieve from every level the mask allows); episodes restart from the pool, so
resets and autoresets hit the feature cache and are included; *us/step* is per
call of ``step``. The memory table runs one whole episode at each ``--memory-lengths``
in a fresh subprocess and reports its peak RSS (features for the whole stream
are cached, so memory grows with n_chunks only: about 0.6 KB per chunk).

Run with one torch thread (as the env's docstring advises; tiny tensor ops are
10-50x slower with two on a loaded 2-core machine)::

    python benchmarks/env_throughput.py                       # 100K tokens, 64 sub-envs; memory at 4K, 64K, 1M
    python benchmarks/env_throughput.py --seq-len 16384 --steps 2000 --memory-lengths 65536
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from _common import markdown_table, peak_rss_mib


def policy(masks: np.ndarray, step: int, slots: int) -> np.ndarray:
    """A cheap valid policy for (n, 2K + 12) masks: write slot ``step % K``, evict to LTM, retrieve what is allowed."""
    n = masks.shape[0]
    r = slots + 1 + 2  # offset of the retrieve component
    retrieve = np.where(masks[:, r + 3], 3, np.where(masks[:, r + 1], 1, np.where(masks[:, r + 2], 2, 0)))
    out = np.zeros((n, 5), dtype=np.int64)
    out[:, 0] = step % slots + 1
    out[:, 1] = 1
    out[:, 2] = retrieve
    return out


def bench(seq_len: int, steps: int, num_envs: int, kind: str) -> dict[str, float]:
    """``kind``: ``single`` (gymnasium.make), ``vector`` (the native vector env) or ``sb3`` (its SB3 adapter).

    Episodes draw their streams from a pool of ``num_envs`` stream seeds, all built at the
    first reset (the cache build), so the timed steps, autoresets included, use cached features.
    """
    import gymnasium

    import ahm  # noqa: F401 - registers the ids
    from ahm.agents.sb3_adapter import SB3VecEnvAdapter

    pool = list(range(1000, 1000 + num_envs))
    options = {"stream_seeds": pool} if kind != "single" else {"stream_seed": pool[0]}
    if kind == "single":
        env = gymnasium.make("AHMMemory-v0", seq_len=seq_len, stream_seeds=pool)
        masks, base = (lambda: env.unwrapped.action_masks()[None]), env.unwrapped
    else:
        env = gymnasium.make_vec("AHMMemory-v0", num_envs=num_envs, vectorization_mode="vector_entry_point",
                                 seq_len=seq_len, stream_seeds=pool)
        masks, base = env.unwrapped.action_masks, env.unwrapped
    venv = SB3VecEnvAdapter(env.unwrapped) if kind == "sb3" else None
    start = time.perf_counter()
    env.reset(seed=0, options=options)
    build = time.perf_counter() - start
    if venv is not None:
        venv.reset()  # the same pool: cached
    slots, per_call = base.config.wm_slots, (1 if kind == "single" else num_envs)
    calls, resets, start = 0, 0, time.perf_counter()
    while calls * per_call < steps:
        actions = policy(masks(), calls, slots)
        if kind == "single":
            _, _, terminated, truncated, _ = env.step(actions[0])
            if terminated or truncated:
                env.reset()
                resets += 1
        elif kind == "vector":
            _, _, terminated, truncated, _ = env.step(actions)
            resets += int((terminated | truncated).sum())
        else:
            _, _, dones, _ = venv.step(actions)
            resets += int(dones.sum())
        calls += 1
    elapsed = time.perf_counter() - start
    assert len(base.episodes._cache if kind != "single" else base._episodes._cache) <= len(pool)
    return {"build_s": build, "steps_per_s": calls * per_call / elapsed, "us_per_step": 1e6 * elapsed / calls,
            "resets": resets}


def own_peak_rss_mib() -> float:
    """This process's peak RSS (MiB): VmHWM on Linux, which restarts at exec. ``ru_maxrss`` would not do here: a
    child started from a large parent keeps the parent's peak across fork and exec."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return peak_rss_mib()


def episode_memory(seq_len: int) -> dict[str, float]:
    """One whole episode at seq_len tokens (run in a fresh process by the caller)."""
    import gymnasium

    import ahm  # noqa: F401

    start = time.perf_counter()
    env = gymnasium.make("AHMMemory-v0", seq_len=seq_len)
    env.reset(seed=0)
    build = time.perf_counter() - start
    slots = env.unwrapped.config.wm_slots
    n, start = 0, time.perf_counter()
    while True:
        _, _, terminated, truncated, _ = env.step(policy(env.unwrapped.action_masks()[None], n, slots)[0])
        n += 1
        if terminated or truncated:
            break
    return {"seq_len": seq_len, "steps": n, "build_s": build, "episode_s": time.perf_counter() - start,
            "peak_rss_mib": own_peak_rss_mib()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seq-len", type=int, default=100_000, help="tokens per episode for the steps/s rows")
    parser.add_argument("--steps", type=int, default=2000, help="single-env steps (x16 sub-env steps for vector)")
    parser.add_argument("--num-envs", type=int, default=64, help="sub-envs of the vector rows")
    parser.add_argument("--memory-lengths", default="4096,65536,1000000", help="comma-separated episode lengths")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is what the env advises on CPU)")
    parser.add_argument("--episode-memory", type=int, default=0, help=argparse.SUPPRESS)  # the subprocess
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.episode_memory:
        print(json.dumps(episode_memory(args.episode_memory)))
        return

    rows = []
    n = args.num_envs
    for name, kind, envs, steps in (("single", "single", 1, args.steps),
                                    (f"vector ({n} sub-envs)", "vector", n, args.steps * 16),
                                    (f"sb3 adapter ({n} sub-envs)", "sb3", n, args.steps * 16)):
        r = bench(args.seq_len, steps, envs, kind)
        rows.append([name, f"{args.seq_len:,}", f"{r['build_s']:.1f}", f"{r['steps_per_s']:,.0f}",
                     f"{r['us_per_step']:,.0f}", r["resets"]])
        print(f"{name}: {r}", file=sys.stderr)
    print(f"torch threads: {args.threads}\n")
    print(markdown_table(["env", "tokens", "cache build (s)", "steps/s (cached)", "us per step() call",
                          "autoresets"], rows))

    mem_rows = []
    for length in (int(x) for x in args.memory_lengths.split(",") if x):
        out = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--episode-memory", str(length),
                              "--threads", str(args.threads)], capture_output=True, text=True, check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        mem_rows.append([f"{r['seq_len']:,}", r["steps"], f"{r['build_s']:.1f}", f"{r['episode_s']:.1f}",
                         f"{r['peak_rss_mib']:.0f}"])
    print()
    print(markdown_table(["tokens", "steps", "cache build (s)", "episode (s)", "peak RSS (MiB)"], mem_rows))


if __name__ == "__main__":
    main()
