"""The controller benchmark: tasks x sequence lengths x controllers, accuracy with 95% confidence intervals over seeds.

:func:`run_benchmark` (the command line: ``python -m ahm.benchmark`` or ``ahm-benchmark``,
the top-level script ``benchmark.py``) evaluates every controller (heuristics by name,
learned ones by checkpoint path) on every task and length with
:func:`ahm.agents.evaluation.evaluate`, and writes to ``out_dir``:

* ``benchmark.csv`` and ``benchmark.md``: one row per (task, length, controller) with
  the mean accuracy over seeds and its 95% Student-t confidence interval, the task's
  chance accuracy, the success rate, memory operations per 1K tokens, bytes held at
  the end of an episode, and tokens per second (env steps only, and with the backbone
  pass over each stream at reset);
* ``accuracy_<task>.png``: accuracy against length (log axis), one line per controller;
* ``accesses_<task>.png``: one episode at the shortest length, per controller: the
  writes, reads, evictions and forgets of every working-memory slot per chunk
  (skipped, with a note, if matplotlib is not installed: ``pip install ahm-ssm[plots]``).

Statistics. A seed s fixes ``episodes`` task streams (every controller sees the
same ones); the seed's accuracy is the mean over them, and the table reports the
mean over seeds ``m`` and the half-width ``t_{0.975, S-1} * sd / sqrt(S)`` of S
seeds (sd with Bessel's correction), so the interval is ``m +- ci95``. With one
seed the interval is undefined and reported as NaN.

Throughput. ``tokens_per_s``: tokens stepped / time in the controller and the
env's step (memory operations). ``tokens_per_s_with_resets`` adds the backbone's
pass over every stream, measured once per (task, length) with
:func:`~ahm.agents.evaluation.prepare_features` and charged to every controller
(the features are then cached, so the controllers after the first do not pay it).

Examples::

    python -m ahm.benchmark --help
    python -m ahm.benchmark --tasks AHMMemory-v0 --lengths 4K,16K --controllers none,write_all,oracle
    python -m ahm.benchmark --lengths 10M --seeds 1      # 10M tokens: accepted, slow
"""

from __future__ import annotations

import csv
import dataclasses
import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ahm.agents import CONTROLLER_NAMES, HEURISTICS, Controller, make_controller
from ahm.agents.base import as_controller
from ahm.agents.evaluation import (
    EvalResult,
    MemoryAccesses,
    evaluate,
    evaluation_stream_seeds,
    make_eval_env,
    prepare_features,
)
from ahm.envs.registry import ENV_SPECS

__all__ = ["BenchmarkConfig", "BenchmarkRow", "run_benchmark", "benchmark_table", "mean_ci95", "student_t_quantile",
           "parse_length", "format_length", "write_csv", "DEFAULT_TASKS", "DEFAULT_LENGTHS", "MAX_LENGTH"]

DEFAULT_TASKS = ("AHMMemory-v0", "AHMMemory-MQAR-v0", "AHMMemory-Forget-v0", "AHMMemory-Decoy-v0",
                 "AHMMemory-Copy-v0")
"""Passkey, MQAR, forgetting, decoys and selective copying (``ahm.envs.ENV_SPECS``)."""
DEFAULT_LENGTHS = (4096, 16384, 102400, 1048576)
"""4K, 16K, 100K and 1M tokens (K = 1024, M = 1024**2)."""
MAX_LENGTH = 10 * 2**20
"""10M tokens: the longest length the benchmark accepts (ask for it explicitly; it is slow on a CPU)."""
_UNITS = {"K": 2**10, "M": 2**20}


# ====================================================================== configuration
@dataclass
class BenchmarkConfig:
    """Benchmark memory controllers on AHMMemory tasks: accuracy (95% CI over seeds), memory ops, bytes, tokens/s."""

    tasks: tuple[str, ...] = DEFAULT_TASKS
    """Environment ids, comma-separated (ahm.envs.ENV_SPECS)."""
    lengths: tuple[int, ...] = DEFAULT_LENGTHS
    """Episode lengths in tokens, comma-separated; K = 1024, M = 1024**2 (4K, 100K, 1M, ...); at most 10M."""
    controllers: tuple[str, ...] = CONTROLLER_NAMES
    """Controllers, comma-separated: heuristic names (none, random, write_all, lru, surprise, dedupe, update,
    oracle) and/or
    paths of learned controllers' checkpoints. From Python, a sequence of names, paths or Controller objects."""
    seeds: int = 3
    """Seeds per cell (the confidence interval is over them); seed i fixes the episodes' streams."""
    first_seed: int = 0
    """The seeds are first_seed, first_seed + 1, ..."""
    episodes: int = 1
    """Episodes per seed (the seed's accuracy is their mean)."""
    num_envs: int = 1
    """Sub-environments stepped together (at most `episodes` are used)."""
    chunk_size: int = 256
    """Tokens per env step (chunk)."""
    backbone: str | None = None
    """Checkpoint directory of a trained AHMModel (save_ahm_checkpoint); None: the env's default backbone."""
    out_dir: str = "benchmarks/results/controllers"
    """Where benchmark.csv, benchmark.md and the plots go."""
    plots: bool = True
    """Write the plots (needs matplotlib)."""
    threads: int = 1
    """torch threads (memory operations are tiny tensor ops: one thread is fastest on a CPU)."""

    def __post_init__(self) -> None:
        for name in ("seeds", "episodes", "num_envs", "chunk_size", "threads"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be an int >= 1, got {value!r}")
        if not isinstance(self.first_seed, int) or self.first_seed < 0:
            raise ValueError(f"--first-seed must be an int >= 0, got {self.first_seed!r}")
        # A comma-separated str is still accepted for each sequence (the form these fields had before they were
        # typed); they are stored as tuples, validated.
        self.tasks = self.task_list()
        self.lengths = self.length_list()
        self.controllers = self.controller_specs()  # type: ignore[assignment]  # may hold Controller objects

    def task_list(self) -> tuple[str, ...]:
        """The environment ids, validated."""
        tasks = _items(self.tasks, "tasks")
        if not tasks or not all(isinstance(t, str) and t in ENV_SPECS for t in tasks):
            raise ValueError(f"--tasks must be comma-separated environment ids from {list(ENV_SPECS)}; "
                             f"got {self.tasks!r}")
        return tasks

    def length_list(self) -> tuple[int, ...]:
        """The episode lengths in tokens, validated."""
        lengths = tuple(parse_length(x) for x in _items(self.lengths, "lengths"))
        if not lengths:
            raise ValueError(f"--lengths must list at least one length, got {self.lengths!r}")
        return lengths

    def controller_specs(self) -> tuple[str | Path | Controller, ...]:
        """The controllers: names, checkpoint paths (as given) or Controller objects."""
        specs: tuple[Any, ...] = _items(self.controllers, "controllers")
        if not specs:
            raise ValueError("--controllers must name at least one controller")
        for spec in specs:
            if isinstance(spec, (str, Path)):
                if not (str(spec) in HEURISTICS or Path(spec).exists()):
                    raise ValueError(f"unknown controller {str(spec)!r}: use one of {CONTROLLER_NAMES} or the path of "
                                     "a saved learned controller")
            elif not (isinstance(spec, Controller) or callable(spec)):
                raise ValueError(f"a controller must be a name, a checkpoint path or a Controller; got "
                                 f"{type(spec).__name__}")
        return specs


def _items(value: str | Sequence[Any], name: str) -> tuple[Any, ...]:
    """A config sequence as a tuple: a comma-separated str is split (and stripped), any other sequence kept."""
    if isinstance(value, str):
        return tuple(x.strip() for x in value.split(",") if x.strip())
    if isinstance(value, Sequence):
        return tuple(value)
    raise ValueError(f"--{name} must be a comma-separated string or a sequence, got {type(value).__name__}")


def parse_length(text: str | int) -> int:
    """``"4K"`` -> 4096, ``"100K"`` -> 102400, ``"1M"`` -> 1048576, ``"2048"`` -> 2048; at most :data:`MAX_LENGTH`."""
    s = str(text).strip().upper()
    scale = _UNITS.get(s[-1:], 1)
    digits = s[:-1] if scale > 1 else s
    try:
        value = int(digits) * scale
    except ValueError as err:
        raise ValueError(f"a length must be an int with an optional K or M suffix (4096, 4K, 1M); got {text!r}") \
            from err
    if not 1 <= value <= MAX_LENGTH:
        raise ValueError(f"a length must be between 1 and 10M ({MAX_LENGTH}) tokens, got {text!r} = {value}")
    return value


def format_length(tokens: int) -> str:
    """4096 -> ``"4K"``, 1048576 -> ``"1M"``, 1000 -> ``"1000"``."""
    for unit in ("M", "K"):
        if tokens % _UNITS[unit] == 0:
            return f"{tokens // _UNITS[unit]}{unit}"
    return str(tokens)


# ====================================================================== statistics
def _t_two_sided_mass(t: float, df: int) -> float:
    """P(|T| <= t) for Student's t with integer ``df`` (Abramowitz & Stegun 26.7.3-4, a finite series)."""
    theta = math.atan(t / math.sqrt(df))
    c2, s = math.cos(theta) ** 2, math.sin(theta)
    if df % 2:  # odd: (2 / pi) (theta + sin cos (1 + 2/3 cos^2 + 2*4/(3*5) cos^4 + ...)), df - 3 terms of the series
        term, total = 1.0, 1.0 if df > 1 else 0.0
        for k in range(1, (df - 1) // 2):
            term *= c2 * (2 * k) / (2 * k + 1)
            total += term
        return 2.0 / math.pi * (theta + (s * math.cos(theta) * total if df > 1 else 0.0))
    term, total = 1.0, 1.0  # even: sin (1 + 1/2 cos^2 + 1*3/(2*4) cos^4 + ...)
    for k in range(1, df // 2):
        term *= c2 * (2 * k - 1) / (2 * k)
        total += term
    return s * total


def student_t_quantile(p: float, df: int) -> float:
    """The ``p`` quantile (0.5 < p < 1) of Student's t with ``df`` >= 1 degrees of freedom (bisection; |error| < 1e-9).

    >>> round(student_t_quantile(0.975, 1), 3), round(student_t_quantile(0.975, 2), 3), \
round(student_t_quantile(0.975, 9), 3)
    (12.706, 4.303, 2.262)
    """
    if not 0.5 < p < 1:
        raise ValueError(f"p must be in (0.5, 1), got {p}")
    if isinstance(df, bool) or not isinstance(df, (int, np.integer)) or df < 1:
        raise ValueError(f"df must be an int >= 1, got {df!r}")
    mass = 2 * p - 1
    lo, hi = 0.0, 1.0
    while _t_two_sided_mass(hi, int(df)) < mass:
        hi *= 2
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if _t_two_sided_mass(mid, int(df)) < mass else (lo, mid)
        if hi - lo < 1e-10:
            break
    return 0.5 * (lo + hi)


def mean_ci95(values: Sequence[float]) -> tuple[float, float]:
    """Mean and the half-width of its 95% Student-t interval, ``t_{0.975, n-1} * sd / sqrt(n)``; n = 1: (x, nan)."""
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        raise ValueError("mean_ci95 needs at least one value")
    if x.size == 1:
        return float(x[0]), math.nan
    return float(x.mean()), student_t_quantile(0.975, x.size - 1) * float(x.std(ddof=1)) / math.sqrt(x.size)


# ====================================================================== rows
@dataclass(frozen=True)
class BenchmarkRow:
    """One (task, length, controller) cell of the benchmark; the field names are the CSV's columns."""

    task: str
    length: int
    controller: str
    accuracy_mean: float
    """Mean over seeds of the seed's mean episode accuracy (correct / total targets)."""
    accuracy_ci95: float
    """Half-width of the 95% Student-t interval over seeds (NaN for one seed)."""
    chance_accuracy: float
    """Accuracy of a uniform guess (the task stream's ``chance_accuracy``; NaN if it has none)."""
    success_rate: float
    """Fraction of episodes with every target correct."""
    ops_per_1k_tokens: float
    bytes_held: float
    """Mean bytes of memory held at the end of an episode."""
    tokens_per_s: float
    """Env-step throughput (controller + memory operations)."""
    tokens_per_s_with_resets: float
    """Throughput including the backbone's pass over each stream."""
    seeds: int
    episodes: int
    """Episodes in all (seeds x episodes per seed)."""


CSV_COLUMNS = tuple(f.name for f in dataclasses.fields(BenchmarkRow))


def _row(task: str, results: Sequence[EvalResult], backbone_seconds: float) -> BenchmarkRow:
    first = results[0]
    mean, ci = mean_ci95([r.accuracy for r in results])
    episodes = [e for r in results for e in r.episodes]
    tokens = sum(r.step_tokens for r in results)
    step_s = sum(r.step_seconds for r in results)
    return BenchmarkRow(
        task=task, length=first.seq_len, controller=first.controller, accuracy_mean=mean, accuracy_ci95=ci,
        chance_accuracy=math.nan if first.chance_accuracy is None else first.chance_accuracy,
        success_rate=float(np.mean([e.is_success for e in episodes])),
        ops_per_1k_tokens=float(np.mean([e.ops_per_1k_tokens for e in episodes])),
        bytes_held=float(np.mean([e.bytes_held for e in episodes])),
        tokens_per_s=tokens / step_s if step_s > 0 else math.inf,
        tokens_per_s_with_resets=tokens / (step_s + backbone_seconds) if step_s + backbone_seconds > 0 else math.inf,
        seeds=len(results), episodes=len(episodes))


def _fmt(x: float, spec: str) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def benchmark_table(rows: Sequence[BenchmarkRow | Mapping[str, Any]]) -> str:
    """The rows as a markdown table (accuracy as ``mean ± ci95``; ``n/a`` where undefined)."""
    lines = ["| task | length | controller | accuracy (95% CI) | chance | success | ops / 1K tokens | bytes held | "
             "tokens/s (steps) | tokens/s (with resets) |",
             "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for row in rows:
        r = dataclasses.asdict(row) if isinstance(row, BenchmarkRow) else dict(row)
        ci = float(r["accuracy_ci95"])
        accuracy = f"{float(r['accuracy_mean']):.3f}" + ("" if math.isnan(ci) else f" ± {ci:.3f}")
        lines.append(f"| {r['task']} | {format_length(int(r['length']))} | {r['controller']} | {accuracy} | "
                     f"{_fmt(float(r['chance_accuracy']), '.3g')} | {float(r['success_rate']):.2f} | "
                     f"{float(r['ops_per_1k_tokens']):.1f} | {float(r['bytes_held']):,.0f} | "
                     f"{float(r['tokens_per_s']):,.0f} | {float(r['tokens_per_s_with_resets']):,.0f} |")
    return "\n".join(lines)


def write_csv(rows: Sequence[BenchmarkRow], path: str | Path) -> None:
    """The rows as CSV with the columns :data:`CSV_COLUMNS` (NaN written as ``nan``)."""
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow(dataclasses.asdict(row))


# ====================================================================== running
def _instantiate(spec: str | Path | Controller, cache: dict[str, Controller]) -> Controller:
    """A heuristic fresh for every evaluation (so results do not depend on the order of evaluations); a checkpoint
    loaded once and named after its directory (two checkpoints of one algorithm would share its name); a given
    object as is."""
    if isinstance(spec, str) and spec in HEURISTICS:
        return make_controller(spec)
    if isinstance(spec, (str, Path)):
        key = str(spec)
        if key not in cache:
            cache[key] = make_controller(spec, name=Path(spec).resolve().name)
        return cache[key]
    return as_controller(spec)


def _warm_up(task: str, chunk_size: int, backbone: str | None) -> None:
    """One tiny backbone pass, so the first measured cell does not pay one-off compilation (numba) and allocation."""
    # Four chunks of stream 0: any small episode does (the costs are one-off, not per stream); its env is thrown away,
    # so the measured cells' caches never see it.
    try:
        env = make_eval_env(task, num_envs=1, stream_seeds=(0,), seq_len=4 * chunk_size, chunk_size=chunk_size,
                            backbone=backbone)
    except ValueError:  # the task needs more chunks: the first cell pays the one-off costs instead
        return
    prepare_features(env, (0,))


def run_benchmark(config: BenchmarkConfig, log: Any = print) -> list[BenchmarkRow]:
    """Evaluate every controller on every task and length (module doc); write the CSV, markdown and plots.

    Controllers in ``config.controllers`` may be Controller objects (e.g. a freshly trained one) besides names
    and checkpoint paths. ``log`` receives one progress line per cell (None: silent). Returns the rows, ordered
    task, length, controller.
    """
    import torch

    say = log if log is not None else (lambda *_: None)
    torch.set_num_threads(config.threads)
    tasks, lengths, specs = config.task_list(), config.length_list(), config.controller_specs()
    seeds = [config.first_seed + i for i in range(config.seeds)]
    streams = {s: evaluation_stream_seeds(s, config.episodes) for s in seeds}
    all_streams = tuple(dict.fromkeys(x for s in seeds for x in streams[s]))
    num_envs = min(config.num_envs, config.episodes)
    out = Path(config.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    loaded: dict[str, Controller] = {}

    rows: list[BenchmarkRow] = []
    accesses: dict[str, dict[str, MemoryAccesses]] = {}
    _warm_up(tasks[0], config.chunk_size, config.backbone)
    for task in tasks:
        for length in lengths:
            try:
                env = make_eval_env(task, num_envs=num_envs, stream_seeds=all_streams, seq_len=length,
                                    chunk_size=config.chunk_size, backbone=config.backbone)
            except ValueError as err:  # e.g. a task that does not fit in so few chunks
                say(f"skipped {task} at {format_length(length)} tokens: {err}")
                continue
            backbone_seconds = {s: prepare_features(env, streams[s]) for s in seeds}
            names: set[str] = set()
            for spec in specs:
                results = []
                for s in seeds:
                    controller = _instantiate(spec, loaded)
                    record = config.plots and length == min(lengths) and s == seeds[0]
                    results.append(evaluate(controller, env, episodes=config.episodes, seed=s,
                                            record_accesses=record))
                name = results[0].controller
                if name in names:
                    raise ValueError(f"two controllers are named {name!r}; give each a distinct name attribute")
                names.add(name)
                row = _row(task, results, sum(backbone_seconds.values()))
                rows.append(row)
                if results[0].accesses is not None:
                    accesses.setdefault(task, {})[name] = results[0].accesses
                say(f"{task} {format_length(length)} {name}: accuracy {row.accuracy_mean:.3f} "
                    f"(ci95 {row.accuracy_ci95:.3f}), {row.ops_per_1k_tokens:.1f} ops/1K, "
                    f"{row.tokens_per_s:,.0f} tokens/s")
            env.close()

    write_csv(rows, out / "benchmark.csv")
    (out / "benchmark.md").write_text(benchmark_table(rows) + "\n")
    if config.plots:
        _plots(rows, accesses, out, say)
    return rows


# ====================================================================== plots
_ACCESS_COLORS = ("white", "tab:blue", "tab:gray", "tab:green", "tab:orange", "tab:red")
_ACCESS_LABELS = ("none", "read (top-1)", "forget", "write", "write, old entry moved to LTM",
                  "write, old entry dropped")


def access_image(acc: MemoryAccesses) -> np.ndarray:
    """(K + 1, T) int codes of :data:`_ACCESS_LABELS` per slot and chunk; the last row is the long-term memory.

    Within a step, later operations win (read, then forget, then write: the env's order).
    """
    k = acc.writes.shape[1]
    image = np.zeros((k + 1, len(acc.writes)), dtype=np.int64)
    for code, events in ((1, acc.wm_reads), (2, acc.forgets), (3, acc.writes), (4, acc.moved_to_ltm),
                         (5, acc.dropped)):
        image[:k][events.T] = code
    image[k][acc.ltm_reads] = 1
    image[k][acc.ltm_forgets] = 2
    image[k][acc.moved_to_ltm.any(1)] = 4
    return image


def _plots(rows: Sequence[BenchmarkRow], accesses: Mapping[str, Mapping[str, MemoryAccesses]], out: Path,
           say: Any) -> list[Path]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.colors import ListedColormap
        from matplotlib.patches import Patch
    except ImportError:
        say("matplotlib is not installed: no plots (pip install 'ahm-ssm[plots]')")
        return []
    written = []
    for task in dict.fromkeys(r.task for r in rows):
        cell = [r for r in rows if r.task == task]
        fig, ax = plt.subplots(figsize=(6, 4))
        for name in dict.fromkeys(r.controller for r in cell):
            mine = sorted((r for r in cell if r.controller == name), key=lambda r: r.length)
            ci = [0.0 if math.isnan(r.accuracy_ci95) else r.accuracy_ci95 for r in mine]
            ax.errorbar([r.length for r in mine], [r.accuracy_mean for r in mine], yerr=ci, marker="o", capsize=3,
                        label=name)
        chance = cell[0].chance_accuracy
        if not math.isnan(chance):
            ax.axhline(chance, color="black", linestyle=":", linewidth=1, label="chance")
        ax.set_xscale("log")
        ax.minorticks_off()  # the log axis' minor labels (2 x 10^3, ...) collide with the K / M labels
        lengths = sorted({r.length for r in cell})
        ax.set_xticks(lengths, [format_length(x) for x in lengths])
        ax.set_ylim(-0.02, 1.02)
        ax.set(xlabel="sequence length (tokens)", ylabel="accuracy (mean, 95% CI over seeds)", title=task)
        ax.legend(fontsize=7)
        fig.tight_layout()
        path = out / f"accuracy_{task}.png"
        fig.savefig(path, dpi=120)
        plt.close(fig)
        written.append(path)
    cmap = ListedColormap(_ACCESS_COLORS)
    for task, per_controller in accesses.items():
        fig, axes = plt.subplots(len(per_controller), 1, figsize=(8, 1.6 + 1.1 * len(per_controller)), squeeze=False)
        for ax, (name, acc) in zip(axes[:, 0], per_controller.items()):
            image = access_image(acc)
            ax.imshow(image, cmap=cmap, vmin=0, vmax=len(_ACCESS_COLORS) - 1, aspect="auto", interpolation="nearest")
            k = image.shape[0] - 1
            ax.set_yticks([0, k - 1, k], ["slot 0", f"slot {k - 1}", "LTM"], fontsize=6)
            ax.set_ylabel(name, fontsize=7)
        axes[-1, 0].set_xlabel("chunk")
        fig.legend(handles=[Patch(color=c, label=label) for c, label in zip(_ACCESS_COLORS[1:], _ACCESS_LABELS[1:])],
                   loc="lower center", ncol=3, fontsize=6)
        steps = max(len(a.writes) for a in per_controller.values())
        fig.suptitle(f"{task}: memory accesses in one episode ({steps} chunks)", fontsize=9)
        fig.tight_layout(rect=(0, 0.5 / fig.get_figheight(), 1, 1))  # room for the legend: half an inch
        path = out / f"accesses_{task}.png"
        fig.savefig(path, dpi=120)
        plt.close(fig)
        written.append(path)
    return written


# ====================================================================== entry point
MOVED = "moved: run `python -m ahm.benchmark` (or `ahm-benchmark`)"
"""What ``python -m ahm.agents.benchmark`` says: the command line is the top-level script ``benchmark.py`` (it parses
the typed config with ``ahm.cli``, a layer above this library)."""


if __name__ == "__main__":
    print(MOVED, file=sys.stderr)
    sys.exit(2)
