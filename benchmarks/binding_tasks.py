"""Tasks where memory binds: the oracle and the heuristics on the ``*Bind`` ids, and what each heuristic writes.

Two tables (docs/behaviour.md shows both):

1. accuracy (95% CI over ``--seeds`` seeds, one episode each, the benchmark's evaluation streams) of every
   hand-written controller and the oracle on ``AHMMemory-DecoyBind-v0`` and ``AHMMemory-ForgetBind-v0`` at
   ``--length`` tokens (:func:`ahm.agents.benchmark.run_benchmark`; its CSV and markdown go to ``--out-dir``);
2. operations per 1K tokens by kind of chunk (target, decoy, query, noise, filler) of each of them on
   ``AHMMemory-DecoyBind-v0`` (:func:`ahm.agents.behaviour.ops_by_chunk_kind`, the same streams).

``--timeline PATH`` also draws one episode's memory over time, ``oracle`` above ``update``
(:func:`ahm.agents.behaviour.plot_memory_timeline`; needs matplotlib).

    python benchmarks/binding_tasks.py                         # 100K tokens, 3 seeds: about 2 minutes on 2 cores
    python benchmarks/binding_tasks.py --length 16K --seeds 2  # a quick look
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from ahm.agents import CONTROLLER_NAMES
from ahm.agents.behaviour import memory_timeline, ops_by_chunk_kind, ops_table, plot_memory_timeline
from ahm.agents.benchmark import BenchmarkConfig, benchmark_table, parse_length, run_benchmark
from ahm.envs.registry import BINDING_LTM_CAPACITY

TASKS = ("AHMMemory-DecoyBind-v0", "AHMMemory-ForgetBind-v0")
OPS_TASK = TASKS[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--length", default="100K", help="tokens per episode (K = 1024, M = 1024**2)")
    parser.add_argument("--seeds", type=int, default=3, help="evaluation seeds (one episode each)")
    parser.add_argument("--controllers", default=",".join(n for n in CONTROLLER_NAMES if n != "random"),
                        help="comma-separated controller names or checkpoint paths")
    parser.add_argument("--out-dir", default="benchmarks/results/binding_tasks", help="the benchmark's CSV / markdown")
    parser.add_argument("--timeline", default=None, help="write oracle-vs-update memory over time to this PNG")
    args = parser.parse_args()
    torch.set_num_threads(1)  # memory operations are tiny tensor ops: one thread is fastest on a CPU
    length = parse_length(args.length)
    controllers = tuple(args.controllers.split(","))
    seeds = list(range(args.seeds))

    start = time.perf_counter()
    config = BenchmarkConfig(tasks=TASKS, lengths=(length,), controllers=controllers, seeds=args.seeds,
                             out_dir=args.out_dir, plots=False, progress=False, resume=False)
    rows = run_benchmark(config, log=lambda line: print(line, file=sys.stderr, flush=True))
    print(f"Accuracy where memory binds: LTM of {BINDING_LTM_CAPACITY} entries, {args.length} tokens, "
          f"{args.seeds} seeds (one episode each, the benchmark's evaluation streams), mean and 95% CI")
    print(benchmark_table(rows))

    results = {}
    for name in controllers:
        results[name] = ops_by_chunk_kind(name, OPS_TASK, length, seeds)
        print(f"ops by kind: {name} done", file=sys.stderr, flush=True)
    print(f"\nOperations by kind of chunk on {OPS_TASK}, {args.length} tokens, the same {args.seeds} episodes summed "
          "(per 1K tokens of chunks of that kind; 'written': share of those chunks written)")
    print(ops_table(results))

    if args.timeline:
        timelines = [(name, memory_timeline(name, OPS_TASK, length, seed=0)) for name in ("oracle", "update")]
        print(f"\nwrote {plot_memory_timeline(timelines, args.timeline)}")
    print(f"\n{time.perf_counter() - start:.0f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
