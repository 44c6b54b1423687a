"""The controller benchmark: tasks x sequence lengths x controllers, accuracy with 95% confidence intervals over seeds.

Thin: parses the typed config (:class:`ahm.agents.benchmark.BenchmarkConfig`; every
field's documentation is its ``--help``), calls
:func:`ahm.agents.benchmark.run_benchmark`, and prints the table it wrote to
``out_dir`` (``benchmark.csv``, ``benchmark.md`` and the plots)::

    python -m ahm.benchmark --help            # or: ahm-benchmark --help, python benchmark.py --help
    python -m ahm.benchmark --tasks AHMMemory-v0 --lengths 4K,16K --controllers none,write_all,oracle
    python -m ahm.benchmark --lengths 10M --seeds 1      # 10M tokens: accepted, slow
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from pathlib import Path

from ahm.agents.benchmark import BenchmarkConfig, BenchmarkRow, benchmark_table, run_benchmark
from ahm.cli import parse_config


def main(argv: Sequence[str] | None = None) -> list[BenchmarkRow]:
    """Parse :class:`BenchmarkConfig` from ``argv``, run the benchmark, print the table; returns the rows."""
    config = parse_config(BenchmarkConfig, argv, description=__doc__.split("\n\n")[0])
    start = time.perf_counter()
    try:
        rows = run_benchmark(config)
    except (FileNotFoundError, ValueError) as err:  # a missing checkpoint, an env argument out of range
        sys.exit(f"benchmark.py: {err}")
    print(benchmark_table(rows))
    print(f"wrote {Path(config.out_dir) / 'benchmark.csv'} and benchmark.md in {time.perf_counter() - start:.1f} s")
    return rows


if __name__ == "__main__":
    main()
