"""Task-stream generation: tokens per second and peak memory at 1M and 10M tokens, every task.

Each (task, length, chunk size) runs in a fresh subprocess (so one run's peak
resident set size does not hide in another's): build the stream with its
default arguments, then read every chunk in order with ``chunk(i)``, the way the
environment does. Peak memory must not grow with the length: annotations are
bounded by the task and tokens are generated on demand (``text`` and the corpus
passkey variants hold the corpus, about 30 MB, whatever the length).

    python benchmarks/task_streams.py
    python benchmarks/task_streams.py --tasks mqar,decoy --lengths 1000000 --chunks 256
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time

import numpy as np
from _common import markdown_table, peak_rss_mib

from ahm.envs.streams import TASKS


def run_one(task: str, length: int, chunk: int) -> dict:
    start = time.perf_counter()
    stream = TASKS[task](length, chunk, 0)
    build = time.perf_counter() - start
    start = time.perf_counter()
    total = checksum = 0
    for i in range(stream.n_chunks):
        tokens = stream.chunk(i)
        total += len(tokens)
        checksum += int(tokens[-1])  # touch the result so nothing is skipped
    seconds = time.perf_counter() - start
    assert total == length
    return {"build_s": build, "seconds": seconds, "tokens_per_s": length / seconds, "peak_rss_mib": peak_rss_mib(),
            "facts": len(stream.facts), "queries": len(stream.queries)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", default=",".join(TASKS), help="comma-separated task names")
    parser.add_argument("--lengths", default="1000000,10000000", help="comma-separated stream lengths (tokens)")
    parser.add_argument("--chunks", default="64,1024", help="comma-separated chunk sizes")
    parser.add_argument("--one", default="", help=argparse.SUPPRESS)  # child mode: task,length,chunk
    args = parser.parse_args()
    if args.one:
        task, length, chunk = args.one.split(",")
        print(json.dumps(run_one(task, int(length), int(chunk))))
        return
    rows = []
    for task in args.tasks.split(","):
        for chunk in (int(c) for c in args.chunks.split(",")):
            first_peak = None
            for length in (int(n) for n in args.lengths.split(",")):
                cmd = [sys.executable, __file__, "--one", f"{task},{length},{chunk}"]
                out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.splitlines()[-1]
                r = json.loads(out)
                first_peak = first_peak or r["peak_rss_mib"]
                rows.append([task, f"{length:,}", chunk, f"{r['facts']} / {r['queries']}", f"{r['build_s'] * 1e3:.0f}",
                             f"{r['tokens_per_s'] / 1e6:.0f}M", f"{r['seconds'] / length * 1e6:.3f}",
                             f"{r['peak_rss_mib']:.0f}", f"{r['peak_rss_mib'] / first_peak:.2f}"])
                print(f"{task:8s} {length:>11,} tokens, chunk {chunk:5d}: {r['tokens_per_s'] / 1e6:.0f}M tokens/s, "
                      f"peak RSS {r['peak_rss_mib']:.0f} MiB", file=sys.stderr, flush=True)
    print(f"Task streams with default arguments, read with chunk(i) in order; numpy {np.__version__}, "
          f"Python {platform.python_version()}, one process per row")
    print(markdown_table(["task", "tokens", "chunk", "facts / queries", "build (ms)", "chunk() tokens/s",
                          "s per 1M tokens", "peak RSS (MiB)", "peak / peak at first length"], rows))


if __name__ == "__main__":
    main()
