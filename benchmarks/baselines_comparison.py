"""Train every comparison model at each size on the same data and budget, then compare them with the AHM model.

For each model (``ahm`` and the registered models of :mod:`ahm.backbone.baselines`) and each size
(``0.1M``, ``1M`` parameters), two training runs with the SAME budget, a token budget
(``--train-tokens``, as ``--max-steps`` = tokens / (batch x window)) and a wall budget
(``--train-minutes``, each run), whichever ends first:

* on the task streams (``--tasks``, curriculum over ``--train-lengths``), then the answer accuracy of
  each task at each ``--lengths`` on held-out streams (the seeds ``train_lm.py --eval`` uses);
* on byte-level text (``--corpus``), then bits per byte at each ``--contexts`` (8K, 64K, whole document).

Baselines train with :func:`ahm.training.sequence_lm.train_sequence_model` and are scored with
:func:`~ahm.training.sequence_lm.sequence_task_accuracy`; the ``ahm`` row trains with
:func:`ahm.training.supervised.train` (memory operations from ``--ahm-controller``; its width
``d_model`` is fitted to the same parameter budget) and is scored with
:func:`ahm.training.evaluation.task_accuracy` / :func:`~ahm.training.evaluation.text_bits_per_byte`
(the AHM path of ``train_lm.py --eval``).

Cost, on the text-trained model: inference tokens/s and peak memory while streaming one sequence of
each ``--cost-lengths`` (16K, 64K, 1M) random bytes chunk by chunk (``--chunk-size`` tokens per call,
state carried, no gradient). Each cell runs in a fresh process that loads the model: in the training
process, memory freed by training stays resident and is reused, so its peak would not grow. Peak memory is
the growth of that process's peak resident set size (``VmHWM``, reset through ``/proc/self/clear_refs``;
Linux) over its RSS after one warm-up chunk: what the pass allocated on top of the weights and the
libraries (psutil's RSS where VmHWM cannot be reset). Training tokens/s is the text run's.

A cell (one accuracy or one cost measurement) that runs past ``--cell-seconds`` reads ``timeout``, and so
do that model's longer lengths (a run is also skipped when the time of the previous length, scaled by the
length, predicts it would). Writes to ``--out``: ``baselines.md`` (the tables printed), ``baselines.csv``
(one row per measurement), ``accuracy_<task>.png`` (accuracy vs length) and ``cost.png`` (inference time and
peak memory vs length), one line per model and size.

Examples::

    python benchmarks/baselines_comparison.py --smoke --models mamba          # the pipeline, in seconds
    python benchmarks/baselines_comparison.py --train-minutes 10 --sizes 0.1M
"""

from __future__ import annotations

import csv
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import torch
from _common import markdown_table
from torch import nn

from ahm.agents import make_controller
from ahm.backbone.baselines import build_model, count_parameters, fit_width, model_names, state_nbytes
from ahm.backbone.errors import AHMConfigError
from ahm.cli import parse_config
from ahm.envs.text_corpus import ByteCorpus, load_corpus
from ahm.training.config import TrainLMConfig
from ahm.training.config import build_model as build_ahm_model
from ahm.training.data import Curriculum, TaskSource
from ahm.training.evaluation import EVAL_SEED_OFFSET, task_accuracy, text_bits_per_byte
from ahm.training.sequence_lm import sequence_task_accuracy, train_sequence_model
from ahm.training.supervised import TrainResult, train

TIMEOUT = "timeout"
"""What a cell past ``--cell-seconds`` reads."""


@dataclass
class ComparisonConfig:
    """Train the comparison models (and ahm) with one budget; compare accuracy vs length, bits per byte, cost."""

    models: tuple[str, ...] = ()
    """Models, comma-separated: 'ahm' and/or names of ahm.backbone.baselines ('': ahm and every registered one)."""
    sizes: tuple[str, ...] = ("0.1M", "1M")
    """Parameter budgets, comma-separated: 0.1M, 1M or a count."""
    tasks: tuple[str, ...] = ("passkey", "mqar", "decoy", "copy")
    """Task families (ahm.envs.TASKS) trained on together and scored one by one."""
    train_minutes: float = 5.0
    """Wall budget of each training run (per model, size and source: tasks, text)."""
    train_tokens: int = 2_000_000
    """Token budget of each training run (the same for every model): max_steps = tokens / (batch x window)."""
    train_lengths: tuple[int, ...] = (1024, 2048, 4096)
    """Task sequence lengths of the training curriculum."""
    lengths: tuple[int, ...] = (4096, 16384, 100000, 1000000)
    """Task lengths at which the accuracy is measured."""
    contexts: tuple[int, ...] = (8192, 65536, 0)
    """Text: contexts (bytes) of the bits-per-byte evaluation (0: the whole document)."""
    cost_lengths: tuple[int, ...] = (16384, 65536, 1048576)
    """Sequence lengths at which inference tokens/s and peak memory are measured."""
    cell_seconds: float = 600.0
    """Time limit of one cell; a cell past it (and the model's longer lengths) reads 'timeout'."""
    episodes: int = 8
    """Held-out episodes per task and length."""
    eval_bytes: int = 100_000
    """Held-out bytes per bits-per-byte context."""
    chunk_size: int = 256
    """Tokens per chunk: where answers are scored, AHM's memory step, and the calls of the cost measurement."""
    window: int = 2048
    """Tokens per truncated-backpropagation window (one step)."""
    batch: int = 8
    """Sequences per step."""
    seq_len: int = 8192
    """Text: tokens per training sequence."""
    corpus: str = "stdlib"
    """Text corpus (ahm.envs.text_corpus)."""
    max_documents: int = 0
    """Use only the first N documents of the corpus (0: all)."""
    ahm_controller: str = "write_all"
    """The AHM model's memory controller in training and evaluation (a heuristic name)."""
    out: str = "benchmarks/results/baselines"
    """Where baselines.md, baselines.csv and the plots go (and the runs' checkpoints, under runs/)."""
    seed: int = 0
    """Seed of every run (initialisation and data)."""
    threads: int = 0
    """torch threads (0: torch's default)."""
    smoke: bool = False
    """Tiny budgets (seconds per model): checks the whole pipeline end to end; the numbers mean nothing."""
    merge: tuple[str, ...] = ()
    """Train nothing: join the baselines.csv of these --out folders (runs split across processes) into one
    report and plots in --out (the other options name the tasks, lengths and contexts to show)."""

    def __post_init__(self) -> None:
        from ahm.training.config import int_tuple, str_tuple

        self.models = str_tuple(self.models) or ("ahm", *model_names())
        unknown = [m for m in self.models if m != "ahm" and m not in model_names()]
        if unknown:
            raise AHMConfigError(f"--models: unknown {unknown}; choose from {['ahm', *model_names()]}")
        self.sizes, self.tasks = str_tuple(self.sizes), str_tuple(self.tasks)
        self.train_lengths = int_tuple(self.train_lengths, "train-lengths")
        self.lengths = int_tuple(self.lengths, "lengths")
        self.contexts = int_tuple(self.contexts, "contexts", minimum=0)
        self.cost_lengths = int_tuple(self.cost_lengths, "cost-lengths")
        self.merge = str_tuple(self.merge)
        for folder in self.merge:
            if not (Path(folder) / "baselines.csv").is_file():
                raise AHMConfigError(f"--merge: {folder} has no baselines.csv")
        if self.smoke:  # seconds per model: every stage runs, on toy sizes
            self.sizes, self.train_minutes, self.train_tokens = ("5K",), 0.05, 2 * 128 * 3
            self.train_lengths, self.lengths, self.contexts = (256,), (256, 512), (128, 0)
            self.cost_lengths, self.cell_seconds, self.episodes, self.eval_bytes = (512, 2048), 20.0, 2, 1024
            self.chunk_size, self.window, self.batch, self.seq_len = 64, 128, 2, 256
            self.max_documents = self.max_documents or 20


class Entry:
    """One model at one size: its trained models and its measurements."""

    def __init__(self, model: str, size: str) -> None:
        self.model, self.size = model, size
        self.label = f"{model}-{size}"
        self.rows: list[dict[str, Any]] = []

    def add(self, metric: str, value: Any, task: str = "", length: int | str = "") -> None:
        self.rows.append({"model": self.model, "size": self.size, "metric": metric, "task": task, "length": length,
                          "value": value})

    def get(self, metric: str, task: str = "", length: int | str = "") -> Any:
        for r in self.rows:
            if (r["metric"], r["task"], r["length"]) == (metric, task, length):
                return r["value"]
        return ""


# ====================================================================== training
def _train_config(cfg: ComparisonConfig, model: str, size: str, source: str) -> TrainLMConfig:
    out = Path(cfg.out) / "runs" / f"{model}-{size}-{source}"
    return TrainLMConfig(source=source, model=model, model_size=size, corpus=cfg.corpus,
                         max_documents=cfg.max_documents, tasks=cfg.tasks, lengths=cfg.train_lengths,
                         curriculum="mixed", controller=cfg.ahm_controller, seq_len=cfg.seq_len, window=cfg.window,
                         chunk_size=cfg.chunk_size, batch=cfg.batch,
                         max_steps=max(1, math.ceil(cfg.train_tokens / (cfg.batch * cfg.window))),
                         minutes=cfg.train_minutes, seed=cfg.seed, threads=cfg.threads, out_dir=str(out),
                         checkpoint_every=10**9, eval_bytes=cfg.eval_bytes, eval_contexts=cfg.contexts,
                         eval_lengths=cfg.lengths, eval_episodes=cfg.episodes, tensorboard=False, progress=False)


def _ahm_width(tcfg: TrainLMConfig, vocab_size: int, size: str) -> int:
    """The AHM model's d_model nearest the parameter budget ``size`` (memory projections and readout included)."""
    from ahm.backbone.baselines import SIZES
    from ahm.backbone.config import parse_int

    budget = SIZES[size] if size in SIZES else parse_int(size)
    model = fit_width(lambda d: build_ahm_model(replace(tcfg, d_model=d), vocab_size), budget)
    return model.config.backbone.d_model


def train_entry(cfg: ComparisonConfig, entry: Entry, task_vocab: int, log: Callable[[str], None]) -> dict[str, Any]:
    """Train ``entry`` on tasks and on text; returns the trained models by source."""
    trained: dict[str, Any] = {}
    for source in ("tasks", "text"):
        tcfg = _train_config(cfg, entry.model, entry.size, source)
        if entry.model == "ahm":
            tcfg = replace(tcfg, d_model=_ahm_width(tcfg, task_vocab if source == "tasks" else 256, entry.size))
            result: TrainResult = train(tcfg, log=lambda s: None)
        else:
            result = train_sequence_model(tcfg, log=lambda s: None)
        params = count_parameters(result.model)
        tokens = round(result.tokens_per_s * result.seconds)
        log(f"  {entry.label} {source}: {result.steps} steps, {tokens:,} tokens in {result.seconds:.0f}s "
            f"({params:,} parameters, final loss {np.mean(result.losses[-5:]):.3f})")
        entry.add(f"parameters_{source}", params)
        entry.add(f"train_tokens_{source}", tokens)
        entry.add(f"train_tokens_per_s_{source}", round(result.tokens_per_s))
        trained[source] = (result.model.eval(), tcfg)
    return trained


# ====================================================================== measurements
def _lengths_with_timeouts(lengths: tuple[int, ...], limit: float, measure: Callable[[int, float], Any],
                           record: Callable[[int, Any], None]) -> None:
    """``measure(length, deadline)`` at each length, ascending; ``timeout`` from the first length past ``limit``
    (measured, or predicted from the previous length's time scaled by the length)."""
    previous: tuple[int, float] | None = None
    timed_out = False
    for length in sorted(lengths):
        if not timed_out and previous is not None and previous[1] * length / previous[0] > limit:
            timed_out = True
        if timed_out:
            record(length, TIMEOUT)
            continue
        start = time.perf_counter()
        try:
            value = measure(length, start + limit)
        except TimeoutError:
            timed_out = True
            record(length, TIMEOUT)
            continue
        seconds = time.perf_counter() - start
        if seconds > limit:
            timed_out = True
            record(length, TIMEOUT)
            continue
        previous = (length, seconds)
        record(length, value)


def measure_accuracy(cfg: ComparisonConfig, entry: Entry, model: nn.Module, tcfg: TrainLMConfig) -> None:
    seed = cfg.seed + EVAL_SEED_OFFSET  # the held-out streams of train_lm.py --eval
    for task in cfg.tasks:
        def measure(length: int, deadline: float, task: str = task) -> float:
            if entry.model == "ahm":
                controller = make_controller(cfg.ahm_controller)
                return task_accuracy(model, task, length, cfg.episodes, controller, tcfg.wm_slots, tcfg.ltm_capacity,
                                     seed, tcfg.task_kwargs_dict, batch=cfg.batch)
            return sequence_task_accuracy(model, task, length, cfg.episodes, cfg.chunk_size, seed,
                                          tcfg.task_kwargs_dict, batch=cfg.batch, deadline=deadline)

        def record(length: int, value: Any, task: str = task) -> None:
            entry.add("accuracy", value if value == TIMEOUT else round(value, 4), task, length)

        _lengths_with_timeouts(cfg.lengths, cfg.cell_seconds, measure, record)


def measure_bits_per_byte(cfg: ComparisonConfig, entry: Entry, model: nn.Module, corpus: ByteCorpus) -> None:
    from ahm.backbone.language_modeling import bits_per_byte

    for context in cfg.contexts:
        if entry.model == "ahm":
            bpb, _ = text_bits_per_byte(model, corpus.heldout, context, make_controller(cfg.ahm_controller),
                                        cfg.eval_bytes)
        else:
            bpb, _ = bits_per_byte(model, corpus.heldout, chunk=cfg.window, context=context,  # type: ignore[arg-type]
                                   max_bytes=cfg.eval_bytes)
        entry.add("bits_per_byte", round(bpb, 4), "text", context or "document")


def _reset_peak_rss() -> bool:
    """Reset the process's peak RSS (VmHWM); False where the kernel does not allow it."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _peak_rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return psutil.Process().memory_info().rss


def _cost_cell(model_path: str, is_ahm: bool, controller: str, length: int, chunk: int, seed: int, limit: float,
               threads: int, conn: Any) -> None:
    """One cost cell in a fresh process (spawned by :func:`measure_cost`); sends its result through ``conn``.

    A fresh process: memory that the parent freed (training, earlier cells) stays resident there and would be
    reused, so the parent's peak RSS would not grow. Sends ``(tokens/s, peak growth bytes, state bytes)``,
    ``TIMEOUT`` or ``("error", traceback)``.
    """
    import traceback

    try:
        torch.set_num_threads(threads or torch.get_num_threads())
        model = torch.load(model_path, weights_only=False)
        doc = np.random.default_rng(seed).integers(0, 256, size=length + 1, dtype=np.uint8)
        tokens = torch.as_tensor(doc[None, :length].astype(np.int64))
        with torch.no_grad():
            # one chunk first: the first call's one-off costs (kernels compiled, libraries loaded) are not the
            # model's, in time or in memory
            if is_ahm:
                text_bits_per_byte(model, [doc[: chunk + 1]], 0, make_controller(controller), chunk)
            else:
                model(tokens[:, :chunk], model.init_state(1))
            rss_before = psutil.Process().memory_info().rss
            exact = _reset_peak_rss()
            start = time.perf_counter()
            if is_ahm:
                text_bits_per_byte(model, [doc], 0, make_controller(controller), length)
                state_bytes: int | str = ""
            else:
                state = model.init_state(1)
                for s in range(0, length, chunk):
                    _, state = model(tokens[:, s : s + chunk], state)
                    if time.perf_counter() - start > limit:
                        conn.send(TIMEOUT)
                        return
                state_bytes = state_nbytes(state)
            seconds = time.perf_counter() - start
        peak = _peak_rss_bytes() if exact else psutil.Process().memory_info().rss
        conn.send((length / seconds, max(0, peak - rss_before), state_bytes))
    except BaseException:  # noqa: BLE001 - reported to the parent, which raises it
        conn.send(("error", traceback.format_exc()))


def measure_cost(cfg: ComparisonConfig, entry: Entry, model: nn.Module) -> None:
    """Inference tokens/s, peak memory and state size while streaming random bytes (module doc).

    Each cell runs in a fresh process (:func:`_cost_cell`) that loads the trained model from a file.
    """
    import multiprocessing as mp
    import tempfile

    ctx = mp.get_context("spawn")
    with tempfile.TemporaryDirectory() as tmp:
        model_path = str(Path(tmp) / "model.pt")
        torch.save(model, model_path)

        def measure(length: int, deadline: float) -> tuple[float, int, int | str]:
            receive, send = ctx.Pipe(duplex=False)
            child = ctx.Process(target=_cost_cell, args=(model_path, entry.model == "ahm", cfg.ahm_controller,
                                                         length, cfg.chunk_size, cfg.seed, cfg.cell_seconds,
                                                         cfg.threads, send))
            child.start()
            send.close()
            try:
                # the child's own clock stops a baseline at the limit; the AHM pass is stopped from here
                if not receive.poll(max(1.0, deadline - time.perf_counter()) + 60.0):
                    raise TimeoutError
                value = receive.recv()
            except EOFError:
                raise RuntimeError(f"{entry.label}: the cost cell at {length} tokens died "
                                   f"(exit code {child.exitcode})") from None
            finally:
                if child.is_alive():
                    child.kill()
                child.join()
            if value == TIMEOUT:
                raise TimeoutError
            if value[0] == "error":
                raise RuntimeError(f"{entry.label}: the cost cell at {length} tokens failed:\n{value[1]}")
            return value

        def record(length: int, value: Any) -> None:
            if value == TIMEOUT:
                for metric in ("inference_seconds", "inference_tokens_per_s", "peak_memory_mib", "state_kib"):
                    entry.add(metric, TIMEOUT, "", length)
                return
            speed, peak, state_bytes = value
            entry.add("inference_seconds", round(length / speed, 3), "", length)
            entry.add("inference_tokens_per_s", round(speed), "", length)
            entry.add("peak_memory_mib", round(peak / 2**20, 2), "", length)
            entry.add("state_kib", round(state_bytes / 1024, 2) if state_bytes != "" else "", "", length)

        _lengths_with_timeouts(cfg.cost_lengths, cfg.cell_seconds, measure, record)


# ====================================================================== report
def report(cfg: ComparisonConfig, entries: list[Entry]) -> str:
    def n(length: int) -> str:
        return f"{length // 2**20}M" if length % 2**20 == 0 else f"{length // 1024}K" if length % 1024 == 0 \
            else f"{length:,}"

    acc = markdown_table(
        ["model", "size", "parameters", "train tokens", "task", *(n(x) for x in cfg.lengths)],
        [[e.model, e.size, e.get("parameters_tasks"), e.get("train_tokens_tasks"), t,
          *(e.get("accuracy", t, x) for x in cfg.lengths)] for e in entries for t in cfg.tasks])
    lm = markdown_table(
        ["model", "size", "parameters", *(f"bits/byte @{n(c) if c else 'document'}" for c in cfg.contexts),
         "train tokens", "train tokens/s"],
        [[e.model, e.size, e.get("parameters_text"), *(e.get("bits_per_byte", "text", c or "document")
                                                       for c in cfg.contexts),
          e.get("train_tokens_text"), e.get("train_tokens_per_s_text")] for e in entries])
    cost = markdown_table(["model", "size", *(f"{what} @{n(x)}" for x in cfg.cost_lengths
                                              for what in ("tokens/s", "peak MiB", "state KiB"))],
                          [[e.model, e.size, *(e.get(m, "", x) for x in cfg.cost_lengths
                                               for m in ("inference_tokens_per_s", "peak_memory_mib", "state_kib"))]
                           for e in entries])
    return (f"## Answer accuracy on held-out task streams ({cfg.episodes} episodes per cell)\n\n{acc}\n\n"
            f"## Text: bits per byte on held-out documents ({cfg.eval_bytes:,} bytes per context)\n\n{lm}\n\n"
            "## Inference cost, one sequence streamed in chunks of "
            f"{cfg.chunk_size} tokens (peak MiB: growth of the peak RSS, VmHWM)\n\n{cost}\n")


def write_csv(entries: list[Entry], path: Path) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, ["model", "size", "metric", "task", "length", "value"])
        writer.writeheader()
        for e in entries:
            writer.writerows(e.rows)


def read_csv(path: Path) -> list[Entry]:
    """The entries :func:`write_csv` wrote, numbers parsed back."""
    def parse(value: str) -> Any:
        for kind in (int, float):
            try:
                return kind(value)
            except ValueError:
                pass
        return value

    entries: dict[tuple[str, str], Entry] = {}
    with path.open(newline="") as f:
        for row in csv.DictReader(f):
            entry = entries.setdefault((row["model"], row["size"]), Entry(row["model"], row["size"]))
            entry.add(row["metric"], parse(row["value"]), row["task"], parse(row["length"]))
    return list(entries.values())


def write_plots(cfg: ComparisonConfig, entries: list[Entry], out: Path) -> list[Path]:
    """accuracy_<task>.png and cost.png, one line per model and size (timeouts left out)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def line(ax: Any, e: Entry, metric: str, task: str, lengths: tuple[int, ...]) -> None:
        points = [(x, e.get(metric, task, x)) for x in lengths]
        points = [(x, float(v)) for x, v in points if v not in (TIMEOUT, "")]
        if points:
            ax.plot(*zip(*points), marker="o", label=e.label)

    written = []
    for task in cfg.tasks:
        fig, ax = plt.subplots(figsize=(6, 4))
        for e in entries:
            line(ax, e, "accuracy", task, cfg.lengths)
        ax.set(xscale="log", xlabel="sequence length (tokens)", ylabel="answer accuracy", title=task,
               ylim=(-0.02, 1.02))
        ax.legend(fontsize=7)
        fig.tight_layout()
        written.append(out / f"accuracy_{task}.png")
        fig.savefig(written[-1], dpi=120)
        plt.close(fig)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for e in entries:
        line(axes[0], e, "inference_seconds", "", cfg.cost_lengths)
        line(axes[1], e, "peak_memory_mib", "", cfg.cost_lengths)
    axes[0].set(xscale="log", yscale="log", xlabel="sequence length (tokens)", ylabel="inference time (s)")
    axes[1].set(xscale="log", xlabel="sequence length (tokens)", ylabel="peak RSS growth (MiB)")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    written.append(out / "cost.png")
    fig.savefig(written[-1], dpi=120)
    plt.close(fig)
    return written


# ====================================================================== main
def run(cfg: ComparisonConfig, log: Callable[[str], None] = print) -> list[Entry]:
    """Train, measure and report every (model, size) of ``cfg``; returns the entries."""
    if cfg.merge:
        return publish(cfg, [e for folder in cfg.merge for e in read_csv(Path(folder) / "baselines.csv")], log)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    for model in cfg.models:  # every configuration is checked before the first (long) run
        for size in cfg.sizes:
            if model != "ahm":  # an unknown size or option raises here, not after an hour of training
                build_model(model, 256, train_sequence_size(size))
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    probe = _train_config(cfg, "ahm", cfg.sizes[0], "tasks")
    task_vocab = TaskSource(probe.tasks, probe.chunk_size, Curriculum(probe.lengths), probe.task_kwargs_dict).vocab_size
    corpus = load_corpus(cfg.corpus, max_documents=cfg.max_documents)
    entries = []
    for model in cfg.models:
        for size in cfg.sizes:
            entry = Entry(model, size)
            log(f"{entry.label}: training ({cfg.train_tokens:,} tokens or {cfg.train_minutes} min per source)")
            trained = train_entry(cfg, entry, task_vocab, log)
            measure_accuracy(cfg, entry, *trained["tasks"])
            measure_bits_per_byte(cfg, entry, trained["text"][0], corpus)
            measure_cost(cfg, entry, trained["text"][0])
            entries.append(entry)
    return publish(cfg, entries, log)


def publish(cfg: ComparisonConfig, entries: list[Entry], log: Callable[[str], None]) -> list[Entry]:
    """Print the tables; write them, the CSV and the plots to ``--out``."""
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    table = report(cfg, entries)
    log(table)
    (out / "baselines.md").write_text(table)
    write_csv(entries, out / "baselines.csv")
    for path in write_plots(cfg, entries, out):
        log(f"wrote {path}")
    return entries


def train_sequence_size(size: str) -> str | int:
    """A --sizes entry as build_model takes it (a SIZES name, or a count such as 5K)."""
    from ahm.backbone.baselines import SIZES
    from ahm.backbone.config import parse_int

    return size if size in SIZES else parse_int(size)


def main(argv: list[str] | None = None) -> list[Entry]:
    return run(parse_config(ComparisonConfig, argv))


if __name__ == "__main__":
    main()
