"""The controller benchmark: tasks x sequence lengths x controllers, accuracy with 95% confidence intervals over seeds.

:func:`run_benchmark` (the command line: ``python -m ahm.benchmark`` or ``ahm-benchmark``,
the top-level script ``benchmark.py``) evaluates every controller (heuristics by name,
learned ones by checkpoint path) on every task and length with
:func:`ahm.agents.evaluation.evaluate_seeds` (every seed's episodes stepped together in one vector env), and
writes to ``out_dir``:

* ``benchmark.csv`` and ``benchmark.md``: one row per (task, length, controller) with
  the mean accuracy over seeds and its 95% Student-t confidence interval, the task's
  chance accuracy, the success rate, memory operations per 1K tokens, bytes held at
  the end of an episode, tokens per second (env steps only, and with the backbone
  pass over each stream at reset) and the backbone the row ran on;
* ``accuracy_<task>.png``: accuracy against length (log axis), one line per controller (distinct markers and
  line styles, each controller's points shifted a little along the length axis, so that equal lines stay visible);
* ``accesses_<task>.png``: one episode at the shortest length, per controller: the
  writes, reads, evictions and forgets of every working-memory slot per chunk
  (skipped, with a note, if matplotlib is not installed: ``pip install ahm-ssm[plots]``).

Controllers. A heuristic by name, a saved controller by path (an SB3 checkpoint directory or a plain-torch
MLP policy such as ``examples/reinforce.py --save`` writes), or ``module:attr`` naming a Controller in your code
(:func:`ahm.agents.make_controller`); ``label=spec`` names an entry (two checkpoints both called ``controller``).

Backbone. A learned controller runs on the backbone its checkpoint records (``env_spec.env_kwargs.backbone``,
which ``train_rl.py`` writes), unless ``backbone`` is set: then every controller runs on that one. Heuristics and
controllers that record none run on ``backbone`` or the env's default (the task's shipped backbone). The
``backbone`` column says which.

Resuming. Each finished cell is appended to ``benchmark.csv`` at once, so an interrupted run keeps what it
finished. A re-run (``resume``) reuses the rows whose ``cell_id`` is unchanged: a hash of what fixes the result
(task, length, controller name, the heuristic or the checkpoint's JSON, the backbone's files, chunk size, seeds,
episodes, sub-envs). Controller objects and ``module:attr`` controllers have no such identity and are always
evaluated. Rows of other (task, length, controller) cells stay in the CSV; ``benchmark.md`` and the plots show
this run's cells.

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
    python -m ahm.benchmark --controllers a=runs/a/round_1/controller,b=runs/b/round_1/controller,oracle
    python -m ahm.benchmark --lengths 10M --seeds 1      # 10M tokens: accepted, slow
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import math
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ahm.agents import CONTROLLER_NAMES, HEURISTICS, Controller, make_controller
from ahm.agents.base import as_controller
from ahm.agents.benchmark_plots import (
    LENGTH_UNITS,
    access_image,  # noqa: F401  (re-exported: users and tests import it here)
    format_length,
)
from ahm.agents.benchmark_plots import write_plots as _plots
from ahm.agents.evaluation import (
    EvalResult,
    MemoryAccesses,
    evaluate_seeds,
    evaluation_stream_seeds,
    make_eval_env,
    prepare_features,
)
from ahm.backbone.checkpoint import atomic_write_bytes, load_ahm_checkpoint
from ahm.backbone.errors import AHMConfigError, AHMError
from ahm.envs.default_backbones import shipped_backbone_path
from ahm.envs.registry import ENV_SPECS

__all__ = ["BenchmarkConfig", "BenchmarkRow", "run_benchmark", "benchmark_table", "mean_ci95", "student_t_quantile",
           "parse_length", "format_length", "write_csv", "read_csv", "DEFAULT_TASKS", "DEFAULT_LENGTHS", "MAX_LENGTH"]

DEFAULT_TASKS = ("AHMMemory-v0", "AHMMemory-MQAR-v0", "AHMMemory-Forget-v0", "AHMMemory-Decoy-v0",
                 "AHMMemory-Copy-v0")
"""Passkey, MQAR, forgetting, decoys and selective copying (``ahm.envs.ENV_SPECS``)."""
DEFAULT_LENGTHS = (4096, 16384, 102400, 1048576)
"""4K, 16K, 100K and 1M tokens (K = 1024, M = 1024**2)."""
MAX_LENGTH = 10 * 2**20
"""10M tokens: the longest length the benchmark accepts (ask for it explicitly; it is slow on a CPU)."""


# ====================================================================== configuration
_UPPER_BOUNDS = {"seeds": 10_000, "episodes": 100_000, "num_envs": 4096, "chunk_size": 2**16, "threads": 4096}
"""Largest value of each count: far above any benchmark run here (3 seeds, chunks of 64-256 tokens), small
enough that a mistyped exponent is refused at once instead of running for days or allocating terabytes."""
_UPPER_WHY = {
    "seeds": "each seed is a full evaluation of every cell; a confidence interval needs a few, not millions",
    "episodes": "each episode is a full evaluation",
    "num_envs": "each sub-environment holds its own memory and features",
    "chunk_size": "a chunk's backbone pass holds (chunk, E D, N) states in memory: 2^16 tokens is ~1 GiB at "
                  "d_model 128",
    "threads": "more threads than any machine has cores",
}


class BenchmarkIncomplete(AHMError, ValueError):
    """Cells the benchmark was asked for could not run; the cells that ran are in the CSV, the message names the
    others and why."""


@dataclass
class BenchmarkConfig:
    """Benchmark memory controllers on AHMMemory tasks: accuracy (95% CI over seeds), memory ops, bytes, tokens/s."""

    tasks: tuple[str, ...] = DEFAULT_TASKS
    """Environment ids, comma-separated (ahm.envs.ENV_SPECS)."""
    lengths: tuple[int, ...] = DEFAULT_LENGTHS
    """Episode lengths in tokens, comma-separated; K = 1024, M = 1024**2 (4K, 100K, 1M, ...); at most 10M."""
    controllers: tuple[str, ...] = CONTROLLER_NAMES
    """Controllers, comma-separated: heuristic names (none, random, write_all, lru, surprise, dedupe, update,
    oracle), paths of saved controllers (SB3 checkpoint directories, MLP policies such as examples/reinforce.py
    saves) and/or module:attr naming a Controller in your code; label=spec names an entry (a=path1,b=path2).
    From Python, a sequence of these strings or Controller objects."""
    seeds: int = 3
    """Seeds per cell (the confidence interval is over them); seed i fixes the episodes' streams."""
    first_seed: int = 0
    """The seeds are first_seed, first_seed + 1, ..."""
    episodes: int = 1
    """Episodes per seed (the seed's accuracy is their mean)."""
    num_envs: int = 16
    """Sub-environments stepped together, over every seed's episodes (at most seeds x episodes are used): the
    heuristics, the oracle and learned controllers score as one at a time; `random` draws other actions."""
    chunk_size: int = 256
    """Tokens per env step (chunk)."""
    backbone: str | None = None
    """Checkpoint directory of a trained AHMModel (save_ahm_checkpoint) for every controller; None: each learned
    controller runs on the backbone its checkpoint records, the others on the env's default backbone."""
    out_dir: str = "benchmarks/results/controllers"
    """Where benchmark.csv, benchmark.md and the plots go."""
    plots: bool = True
    """Write the plots (needs matplotlib)."""
    threads: int = 1
    """torch threads (memory operations are tiny tensor ops: one thread is fastest on a CPU)."""
    resume: bool = True
    """Reuse the rows of out_dir/benchmark.csv whose cell is unchanged (an interrupted run continues where it
    stopped); --no-resume evaluates every cell again (rows of other cells stay in the CSV either way)."""
    progress: bool = True
    """A progress bar over the cells (shown on a terminal only)."""

    def __post_init__(self) -> None:
        for name in ("seeds", "episodes", "num_envs", "chunk_size", "threads"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise AHMConfigError(f"--{name.replace('_', '-')} must be an int >= 1, got {value!r}")
            if value > _UPPER_BOUNDS[name]:
                raise AHMConfigError(f"--{name.replace('_', '-')} must be at most {_UPPER_BOUNDS[name]:,}, got "
                                     f"{value:,} ({_UPPER_WHY[name]})")
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
                label, target = _split_label(str(spec))
                if label == "" or not (target in HEURISTICS or _is_saved(target) or ":" in target):
                    raise ValueError(f"unknown controller {str(spec)!r}: use one of {CONTROLLER_NAMES}, the path of "
                                     "a saved controller or module:attr, optionally named as label=spec")
            elif not (isinstance(spec, Controller) or callable(spec)):
                raise ValueError(f"a controller must be a name, a checkpoint path or a Controller; got "
                                 f"{type(spec).__name__}")
        return specs


def _split_label(spec: str) -> tuple[str | None, str]:
    """``"label=spec"`` -> (label, spec); a spec without a label (or an existing path with a '=') -> (None, spec)."""
    label, sep, target = spec.partition("=")
    if not sep or _is_saved(spec):
        return None, spec
    return label.strip(), target.strip()


def _is_saved(target: str) -> bool:
    return Path(target).exists() or Path(target).with_suffix(".json").exists()


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
    scale = LENGTH_UNITS.get(s[-1:], 1)
    digits = s[:-1] if scale > 1 else s
    try:
        value = int(digits) * scale
    except ValueError as err:
        raise ValueError(f"a length must be an int with an optional K or M suffix (4096, 4K, 1M); got {text!r}") \
            from err
    if not 1 <= value <= MAX_LENGTH:
        raise ValueError(f"a length must be between 1 and 10M ({MAX_LENGTH}) tokens, got {text!r} = {value}")
    return value


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
    backbone: str = "default"
    """The backbone's checkpoint directory, or ``default`` (the env's: the task's shipped backbone)."""
    first_seed: int = 0
    cell_id: str = ""
    """What fixes the result, hashed (module doc, "Resuming"); "" for a controller without an identity."""


CSV_COLUMNS = tuple(f.name for f in dataclasses.fields(BenchmarkRow))
TIMING_COLUMNS = ("tokens_per_s", "tokens_per_s_with_resets")
"""The columns that differ between two runs of the same cell."""
_PARSE = {"str": str, "int": int, "float": float}


def _row(task: str, results: Sequence[EvalResult], backbone_seconds: float, **identity: Any) -> BenchmarkRow:
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
        seeds=len(results), episodes=len(episodes), **identity)


def _fmt(x: float, spec: str) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def benchmark_table(rows: Sequence[BenchmarkRow | Mapping[str, Any]]) -> str:
    """The rows as a markdown table (accuracy as ``mean ± ci95``; ``n/a`` where undefined); a last column names
    each row's backbone when any row ran on another than the env's default."""
    dicts = [dataclasses.asdict(row) if isinstance(row, BenchmarkRow) else dict(row) for row in rows]
    extra = any(r.get("backbone", "default") != "default" for r in dicts)
    lines = ["| task | length | controller | accuracy (95% CI) | chance | success | ops / 1K tokens | bytes held | "
             "tokens/s (steps) | tokens/s (with resets) |" + (" backbone |" if extra else ""),
             "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |" + (" --- |" if extra else "")]
    for r in dicts:
        ci = float(r["accuracy_ci95"])
        accuracy = f"{float(r['accuracy_mean']):.3f}" + ("" if math.isnan(ci) else f" ± {ci:.3f}")
        lines.append(f"| {r['task']} | {format_length(int(r['length']))} | {r['controller']} | {accuracy} | "
                     f"{_fmt(float(r['chance_accuracy']), '.3g')} | {float(r['success_rate']):.2f} | "
                     f"{float(r['ops_per_1k_tokens']):.1f} | {float(r['bytes_held']):,.0f} | "
                     f"{float(r['tokens_per_s']):,.0f} | {float(r['tokens_per_s_with_resets']):,.0f} |"
                     + (f" {r.get('backbone', 'default')} |" if extra else ""))
    return "\n".join(lines)


def write_csv(rows: Sequence[BenchmarkRow], path: str | Path) -> None:
    """The rows as CSV with the columns :data:`CSV_COLUMNS` (NaN written as ``nan``), atomically."""
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=CSV_COLUMNS)
    writer.writeheader()
    writer.writerows(dataclasses.asdict(row) for row in rows)
    atomic_write_bytes(Path(path), text.getvalue().encode())


def _append_csv(row: BenchmarkRow, path: Path) -> None:
    """One finished cell, appended and flushed to disk (an interrupted run keeps it)."""
    with open(path, "a", newline="") as f:
        csv.DictWriter(f, fieldnames=CSV_COLUMNS).writerow(dataclasses.asdict(row))
        f.flush()
        os.fsync(f.fileno())


def read_csv(path: str | Path) -> list[BenchmarkRow]:
    """The rows of a :func:`write_csv` file (floats round-trip exactly); a row cut short by a crash is skipped.

    Raises:
        ValueError: the header is not :data:`CSV_COLUMNS` (a file of another version or program).
    """
    types = {f.name: _PARSE[str(f.type)] for f in dataclasses.fields(BenchmarkRow)}
    rows = []
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        if tuple(reader.fieldnames or ()) != CSV_COLUMNS:
            raise ValueError(f"{path} has columns {reader.fieldnames}, expected {list(CSV_COLUMNS)}")
        for record in reader:
            try:
                rows.append(BenchmarkRow(**{k: types[k](record[k]) for k in CSV_COLUMNS}))
            except (TypeError, ValueError):
                continue
    return rows


# ====================================================================== running
@dataclass(frozen=True)
class _Entry:
    """One controller of the benchmark, resolved: its name, how to get it, its backbone and identity."""

    name: str
    make: Callable[[], Controller]
    """A heuristic afresh for every evaluation (results do not depend on the order); anything else as loaded."""
    backbone: str | None
    """The env's backbone argument (None: the env's default)."""
    identity: str | None
    """The heuristic or the checkpoint JSON's hash; None: no identity, never reused (module doc, "Resuming")."""


def _entries(config: BenchmarkConfig) -> list[_Entry]:
    """The controllers of ``config``, each loaded once, with their backbones; duplicate names are refused."""
    from ahm.agents.controller_checkpoint import checkpoint_files, recorded_backbone

    out = []
    for spec in config.controller_specs():
        if not isinstance(spec, (str, Path)):
            controller = as_controller(spec)
            out.append(_Entry(controller.name, lambda c=controller: c, config.backbone, None))
            continue
        label, target = _split_label(str(spec))
        if target in HEURISTICS:
            name = label or make_controller(target).name
            out.append(_Entry(name, lambda t=target, n=name: make_controller(t, name=n), config.backbone,
                              f"heuristic:{target}"))
        elif _is_saved(target):
            path = Path(target)
            name = label or (path.resolve().name if path.is_dir() else path.stem)
            controller = make_controller(path, name=name)
            identity = hashlib.sha256(checkpoint_files(path)[0].read_bytes()).hexdigest()
            backbone = config.backbone or _locate_backbone(recorded_backbone(path), path, name)
            out.append(_Entry(name, lambda c=controller: c, backbone, f"checkpoint:{identity}"))
        else:  # module:attr
            controller = make_controller(target, name=label)
            out.append(_Entry(controller.name, lambda c=controller: c, config.backbone, None))
    names = [e.name for e in out]
    for name in names:
        if names.count(name) > 1:
            raise ValueError(f"two controllers are named {name!r}; give each a distinct name attribute, or label "
                             "them on the command line: --controllers a=path/one,b=path/two")
    return out


def _locate_backbone(recorded: str | None, checkpoint: Path, name: str) -> str | None:
    """The recorded backbone directory as given, or found under one of the checkpoint's parent directories (a
    path relative to where training ran); None when the checkpoint records none."""
    if recorded is None:
        return None
    candidates = [Path(recorded)] + ([] if Path(recorded).is_absolute() else
                                     [parent / recorded for parent in checkpoint.resolve().parents])
    for candidate in candidates:
        if candidate.is_dir():
            return str(candidate)
    raise ValueError(f"controller {name!r} was trained on the backbone {recorded!r}, which does not exist here; "
                     "pass --backbone DIR to evaluate every controller on that backbone")


def _file_hash(directory: Path) -> str:
    digest = hashlib.sha256()
    for file in sorted(p for p in directory.rglob("*") if p.is_file()):
        digest.update(str(file.relative_to(directory)).encode() + b"\0" + file.read_bytes())
    return digest.hexdigest()


def _cell_id(task: str, length: int, entry: _Entry, config: BenchmarkConfig, hashes: dict[str, str]) -> str:
    """The row's ``cell_id`` (module doc, "Resuming"); "" for a controller without an identity."""
    if entry.identity is None:
        return ""
    directory = Path(entry.backbone) if entry.backbone else shipped_backbone_path(ENV_SPECS[task].task)
    key = str(directory)
    if key not in hashes:
        hashes[key] = _file_hash(directory) if directory is not None and directory.is_dir() else key
    fields = [task, length, entry.name, entry.identity, hashes[key], config.chunk_size, config.first_seed,
              config.seeds, config.episodes, min(config.num_envs, config.episodes * config.seeds)]
    return hashlib.sha256(json.dumps(fields).encode()).hexdigest()[:16]


def _previous_rows(path: Path, say: Any) -> list[BenchmarkRow]:
    """The rows of an earlier run's CSV; a CSV of another layout is moved aside to ``benchmark.csv.old``."""
    if not path.exists():
        return []
    try:
        return read_csv(path)
    except (ValueError, UnicodeDecodeError) as err:
        os.replace(path, path.with_suffix(".csv.old"))
        say(f"{path} is not this benchmark's CSV ({err}); moved it to {path.with_suffix('.csv.old')}")
        return []


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
    and checkpoint paths. ``log`` receives one progress line per cell (None: silent). Every finished cell is
    appended to ``benchmark.csv`` at once; with ``config.resume`` the cells already there are reused (module doc).
    Returns the rows, ordered task, length, controller.
    """
    import torch
    from tqdm import tqdm

    torch.set_num_threads(config.threads)
    tasks, lengths = config.task_list(), config.length_list()
    if config.backbone:  # before anything is written: a truncated or foreign --backbone fails every cell
        try:
            load_ahm_checkpoint(config.backbone)
        except (OSError, ValueError) as err:
            raise AHMConfigError(f"--backbone {config.backbone!r} cannot be loaded: {err}") from err
    entries = _entries(config)
    seeds = [config.first_seed + i for i in range(config.seeds)]
    streams = {s: evaluation_stream_seeds(s, config.episodes) for s in seeds}
    all_streams = tuple(dict.fromkeys(x for s in seeds for x in streams[s]))
    num_envs = min(config.num_envs, config.episodes * len(seeds))
    out = Path(config.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    csv_path = out / "benchmark.csv"
    bar = tqdm(total=len(tasks) * len(lengths) * len(entries), desc="benchmark", unit="cell",
               disable=None if config.progress else True)
    say = (lambda *_: None) if log is None else (bar.write if log is print and not bar.disable else log)

    hashes: dict[str, str] = {}
    ids = {(t, n, e.name): _cell_id(t, n, e, config, hashes) for t in tasks for n in lengths for e in entries}
    previous = _previous_rows(csv_path, say)
    others = [r for r in previous if (r.task, r.length, r.controller) not in ids]
    done = {key: r for r in previous if (key := (r.task, r.length, r.controller)) in ids and r.cell_id
            and r.cell_id == ids[key] and config.resume}
    if done:
        say(f"resuming: {len(done)} of {len(ids)} cells are in {csv_path} already")
    write_csv(others + list(done.values()), csv_path)
    bar.update(len(done))

    accesses: dict[str, dict[str, MemoryAccesses]] = {}
    failed: list[str] = []
    warm = False
    for task in tasks:
        for length in lengths:
            groups: dict[str | None, list[_Entry]] = {}  # controllers by backbone: one env (and its features) each
            for e in entries:
                if (task, length, e.name) not in done:
                    groups.setdefault(e.backbone, []).append(e)
            for backbone, group in groups.items():
                try:
                    if not warm:
                        _warm_up(task, config.chunk_size, backbone)
                        warm = True
                    env = make_eval_env(task, num_envs=num_envs, stream_seeds=all_streams, seq_len=length,
                                        chunk_size=config.chunk_size, backbone=backbone)
                except ValueError as err:  # e.g. a task that does not fit in so few chunks, an unreadable backbone
                    say(f"could not run {task} at {format_length(length)} tokens: {err}")
                    failed.extend(f"{task} {format_length(length)} {e.name}: {err}" for e in group)
                    bar.update(len(group))
                    continue
                backbone_seconds = prepare_features(env, [x for s in seeds for x in streams[s]])  # one batched pass
                for e in group:
                    record = config.plots and length == min(lengths)
                    results = evaluate_seeds(e.make(), env, seeds=seeds, episodes=config.episodes,
                                             record_accesses=record)  # every seed's episodes stepped together
                    row = _row(task, results, backbone_seconds, backbone=backbone or "default",
                               first_seed=config.first_seed, cell_id=ids[task, length, e.name])
                    row = dataclasses.replace(row, controller=e.name)
                    done[task, length, e.name] = row
                    _append_csv(row, csv_path)
                    if results[0].accesses is not None:
                        accesses.setdefault(task, {})[e.name] = results[0].accesses
                    say(f"{task} {format_length(length)} {e.name}: accuracy {row.accuracy_mean:.3f} "
                        f"(ci95 {row.accuracy_ci95:.3f}), {row.ops_per_1k_tokens:.1f} ops/1K, "
                        f"{row.tokens_per_s:,.0f} tokens/s")
                    bar.update(1)
                env.close()
    bar.close()

    rows = [done[key] for key in ids if key in done]
    write_csv(others + rows, csv_path)
    (out / "benchmark.md").write_text(benchmark_table(rows) + "\n")
    if config.plots:
        _plots(rows, accesses, out, say)
    if failed:  # the cells that ran are in the CSV; a run that lost any is not a success
        raise BenchmarkIncomplete(f"{len(failed)} of {len(ids)} cells could not run (the {len(rows)} that ran are "
                                  f"in {csv_path}): " + "; ".join(failed[:5]) + (" ..." if len(failed) > 5 else ""))
    return rows


# ====================================================================== entry point
MOVED = "moved: run `python -m ahm.benchmark` (or `ahm-benchmark`)"
"""What ``python -m ahm.agents.benchmark`` says: the command line is the top-level script ``benchmark.py`` (it parses
the typed config with ``ahm.cli``, a layer above this library)."""


if __name__ == "__main__":
    print(MOVED, file=sys.stderr)
    sys.exit(2)
