"""What a controller does, measured: its memory operations by kind of chunk, and one episode's memory over time.

Accuracy says *whether* a controller manages memory well; these say *how* (issue #18, part 6).
Every chunk of a task stream has one kind (:data:`CHUNK_KINDS`), read from the stream's
annotations (ground truth the controller never sees):

========  =====================================================================================
kind      the chunk ...
========  =====================================================================================
target    ends with a fact that a query asks (``FACT_KINDS`` ``"target"``)
decoy     ends with a decoy fact, in the targets' format but never asked (``decoy``)
stale     ends with an assignment that a later one re-assigns (``forget``)
query     ends with a query (no fact): where a read answers
noise     holds a burst of noise tokens (``decoy``'s :attr:`~ahm.envs.streams.TaskStream.noise_chunks`)
filler    anything else: filler, the cue, the answers' chunks
========  =====================================================================================

* :func:`ops_by_chunk_kind` runs a controller on whole episodes (:func:`ahm.agents.rollout.rollout`, the one
  controller loop, over the evaluation's streams :func:`~ahm.agents.evaluation.evaluation_stream_seeds`) and
  counts the operations the environment executed at each step (the step's change of ``info["memory"]``'s
  counters: masked-invalid no-ops do not count), by the kind of the chunk the step is at. A
  controller that stores selectively writes at ``target`` chunks and not at ``decoy``, ``noise`` or ``filler``.
* :func:`memory_timeline` records one episode's memory: after each step, the kind of the chunk that wrote
  the entry in each working-memory slot and long-term entry. :func:`plot_memory_timeline` draws two or more
  controllers one above the other (matplotlib, the optional ``plots`` extra, imported when called).

Glossary: n chunks of an episode (steps), K working-memory slots, M long-term entries (``ltm_capacity``),
C tokens per chunk.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from ahm.agents.base import Controller, as_controller
from ahm.agents.evaluation import evaluation_stream_seeds, make_eval_env
from ahm.agents.rollout import rollout
from ahm.envs.streams import FACT_KINDS, TaskStream, make_task

__all__ = ["CHUNK_KINDS", "KindOps", "MemoryTimeline", "chunk_kinds", "ops_by_chunk_kind", "ops_table",
           "memory_timeline", "plot_memory_timeline"]

CHUNK_KINDS = (*FACT_KINDS, "query", "noise", "filler")
"""The kinds of chunk (module doc): the fact kinds first, at their ``FACT_KINDS`` index, so the env's
``info["ground_truth"]["fact_kind"]`` is a chunk kind wherever it is >= 0. :func:`chunk_kinds` gives each chunk's
index into this tuple."""

_QUERY, _NOISE, _FILLER = (CHUNK_KINDS.index(k) for k in ("query", "noise", "filler"))


def chunk_kinds(stream: TaskStream) -> np.ndarray:
    """(n,) int64: the kind of each of the stream's n chunks, an index into :data:`CHUNK_KINDS`.

    A fact's kind wins over a query at the same chunk, and both over noise (no shipped task puts two of
    them in one chunk: noise bursts lie in chunks free of facts, cues and answers).
    """
    kinds = np.full(stream.n_chunks, _FILLER, dtype=np.int64)
    kinds[list(stream.noise_chunks)] = _NOISE
    for q in stream.queries:
        kinds[q.chunk] = _QUERY
    for f in stream.facts:
        if f.kind not in FACT_KINDS:
            raise ValueError(f"fact {f.fact_id} of a {type(stream).__name__} has kind {f.kind!r}, not one of "
                             f"{FACT_KINDS}; add it to FACT_KINDS")
        kinds[f.chunk] = CHUNK_KINDS.index(f.kind)
    return kinds


class KindOps(NamedTuple):
    """The operations a controller took at the chunks of one kind, summed over episodes."""

    kind: str
    """One of :data:`CHUNK_KINDS`."""
    chunks: int
    """Steps at chunks of this kind."""
    tokens: int
    """Tokens of those chunks (C each, the last chunk of a stream may be shorter)."""
    writes: int
    moves_to_ltm: int
    """Writes whose displaced WM entry moved to the long-term memory."""
    forgets: int
    """Working-memory plus long-term forgets."""
    retrievals: int
    """Reads of the working memory plus reads of the long-term memory (a read of both counts 2)."""

    def per_1k(self, op: str) -> float:
        """``op`` (a field name: ``"writes"``, ...) per 1K tokens of chunks of this kind; NaN if there were none."""
        return 1000.0 * getattr(self, op) / self.tokens if self.tokens else float("nan")

    def per_chunk(self, op: str) -> float:
        """``op`` per chunk of this kind (``writes``: the share of such chunks written); NaN if there were none."""
        return getattr(self, op) / self.chunks if self.chunks else float("nan")


OPS = ("writes", "moves_to_ltm", "forgets", "retrievals")
"""The operation fields of :class:`KindOps`, in table order."""

_COUNTERS = {"writes": ("writes",), "moves_to_ltm": ("moves_to_ltm",), "forgets": ("forgets_wm", "forgets_ltm"),
             "retrievals": ("retrievals_wm", "retrievals_ltm")}
"""Each :data:`OPS` field as a sum of ``info["memory"]`` counters (``ahm.envs.episode_batch.OP_COUNTERS``)."""


def _controller(controller: Controller | str | Path) -> Controller:
    if isinstance(controller, (str, Path)):
        from ahm.agents import make_controller  # the package's factory (a heuristic's name or a checkpoint)

        return make_controller(controller)
    return as_controller(controller)


def _stream_of(env: Any, stream_seed: int) -> TaskStream:
    c = env.config
    return make_task(c.task, c.seq_len, c.chunk_size, int(stream_seed), **dict(c.task_kwargs))


def _check_kinds(kind: np.ndarray, shown_info: Mapping[str, Any], live: np.ndarray) -> None:
    """The streams rebuilt here must be the env's: the chunk kinds ``kind`` (b,) of the rows' current chunks agree
    with the env's ground truth (``fact_kind``) on the ``live`` (b,) rows."""
    expected = np.where(kind < len(FACT_KINDS), kind, -1)
    shown = np.asarray(shown_info["ground_truth"]["fact_kind"], dtype=np.int64)
    bad = np.nonzero(live & (expected != shown))[0]
    if len(bad):
        raise RuntimeError(f"rows {bad.tolist()}: the env's ground truth has fact kinds {shown[bad].tolist()} but the "
                           f"streams rebuilt from their stream seeds have {expected[bad].tolist()}; the env and "
                           "make_task disagree")


def ops_by_chunk_kind(controller: Controller | str | Path, env_id: str | Mapping[str, Any], seq_len: int | None,
                      seeds: Sequence[int], *, episodes: int = 1, **env_kwargs: Any) -> dict[str, KindOps]:
    """Run ``controller`` on whole episodes and count its operations by the kind of chunk (module doc).

    Args:
        controller: a :class:`~ahm.agents.base.Controller`, or a spec for :func:`ahm.agents.make_controller`
            (``"update"``, a checkpoint path).
        env_id: a registered id (``ahm.envs.ENV_SPECS``) or a mapping of env arguments.
        seq_len: tokens per episode (None: the id's).
        seeds: evaluation seeds; seed s plays the streams ``evaluation_stream_seeds(s, episodes)``, the
            benchmark's episodes for that seed (streams no training run draws).
        episodes: episodes per seed.
        **env_kwargs: more env arguments (``backbone``, ``ltm_capacity``, ``chunk_size``, ...).

    Returns:
        ``{kind: KindOps}`` for every kind of :data:`CHUNK_KINDS`, in that order, summed over all episodes.
    """
    streams = [s for seed in seeds for s in evaluation_stream_seeds(int(seed), int(episodes))]
    if not streams:
        raise ValueError("ops_by_chunk_kind: pass at least one seed")
    ctrl = _controller(controller)
    env = make_eval_env(env_id, num_envs=len(streams), stream_seeds=streams, seq_len=seq_len, **env_kwargs)
    c = env.config
    kinds = np.stack([chunk_kinds(_stream_of(env, s)) for s in streams])  # (E, n)
    counts = np.zeros((len(CHUNK_KINDS), 1 + len(OPS)), dtype=np.int64)  # per kind: chunks, then OPS
    tokens = np.zeros(len(CHUNK_KINDS), dtype=np.int64)
    rows = np.arange(len(streams))
    ended = np.zeros(len(streams), dtype=bool)
    try:
        # One episode per row (rollout over an EpisodeBatch): a row whose episode ended plays no-ops on a restarted
        # stream until every row has ended; those steps are not counted.
        for step in rollout(ctrl, env.episodes, stream_seeds=streams):
            live = ~ended
            chunk = np.asarray(step.shown_info["chunk"], dtype=np.int64)
            kind = kinds[rows, chunk]
            _check_kinds(kind, step.shown_info, live)
            before, after = step.shown_info["memory"], step.info["memory"]
            size = np.minimum(c.chunk_size, c.seq_len - chunk * c.chunk_size)
            np.add.at(counts[:, 0], kind[live], 1)
            np.add.at(tokens, kind[live], size[live])
            for j, op in enumerate(OPS, start=1):
                done_now = sum(np.asarray(after[n], dtype=np.int64) - np.asarray(before[n], dtype=np.int64)
                               for n in _COUNTERS[op])
                np.add.at(counts[:, j], kind[live], done_now[live])
            ended |= step.done
    finally:
        env.close()
    return {k: KindOps(k, int(counts[i, 0]), int(tokens[i]), *(int(x) for x in counts[i, 1:]))
            for i, k in enumerate(CHUNK_KINDS)}


def ops_table(results: Mapping[str, Mapping[str, KindOps]], kinds: Sequence[str] | None = None) -> str:
    """A markdown table of :func:`ops_by_chunk_kind` results, ``{controller name: {kind: KindOps}}``.

    One row per controller and kind (kinds with no chunk are left out; ``kinds`` picks and orders them):
    chunks, the share of them written, and writes / moves to LTM / forgets / retrievals per 1K tokens of that kind.
    """
    lines = ["| controller | chunk kind | chunks | written | writes / 1K | moves to LTM / 1K | forgets / 1K | "
             "retrievals / 1K |", "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name, by_kind in results.items():
        for k in kinds or CHUNK_KINDS:
            row = by_kind[k]
            if not row.chunks:
                continue
            rates = " | ".join(f"{row.per_1k(op):.2f}" for op in OPS)
            lines.append(f"| {name} | {k} | {row.chunks} | {row.per_chunk('writes'):.0%} | {rates} |")
    return "\n".join(lines)


# ====================================================================== memory over time
class MemoryTimeline(NamedTuple):
    """One episode's memory after each step, entry by entry, as kinds of chunk (indices into :data:`CHUNK_KINDS`)."""

    controller: str
    stream_seed: int
    chunk_kinds: np.ndarray
    """(n,) int64: the kind of each chunk of the stream (:func:`chunk_kinds`)."""
    wm: np.ndarray
    """(T, K) int64: after step t, the kind of the chunk whose write the WM slot holds; -1 empty."""
    ltm: np.ndarray
    """(T, M) int64: the same for each long-term slot; -1 empty."""
    accuracy: float
    """The episode's accuracy (correct / total targets)."""

    def held(self, kind: str) -> np.ndarray:
        """(T,) int64: entries (WM and LTM) holding a chunk of ``kind`` after each step."""
        i = CHUNK_KINDS.index(kind)
        return (self.wm == i).sum(1) + (self.ltm == i).sum(1)


def _entry_origins(episodes: Any) -> tuple[np.ndarray, np.ndarray]:
    """(b, K) and (b, M) int64: the chunk that wrote each WM / LTM entry, -1 empty.

    Read from the EpisodeBatch's bookkeeping (:class:`~ahm.envs.episode_scoring.EntryOrigins`, the same record
    that rewards and ``info["ground_truth"]`` use): the env has no public accessor for the LTM's origins.
    """
    origins = episodes._origins
    return origins.wm.copy(), origins.ltm.copy()


def memory_timeline(controller: Controller | str | Path, env_id: str | Mapping[str, Any], seq_len: int | None,
                    seed: int = 0, **env_kwargs: Any) -> MemoryTimeline:
    """Run ``controller`` on one episode (the stream ``evaluation_stream_seeds(seed, 1)[0]``) and record its memory.

    Arguments as :func:`ops_by_chunk_kind`. Returns a :class:`MemoryTimeline` of T = the episode's steps.
    """
    stream_seed = evaluation_stream_seeds(int(seed), 1)[0]
    ctrl = _controller(controller)
    env = make_eval_env(env_id, num_envs=1, stream_seeds=(stream_seed,), seq_len=seq_len, **env_kwargs)
    kinds = chunk_kinds(_stream_of(env, stream_seed))
    wm_rows, ltm_rows = [], []
    final: Mapping[str, Any] = {}
    try:
        # A one-row EpisodeBatch: the rollout stops after the episode's last step without restarting it, so the
        # memory read after each step is that step's.
        for step in rollout(ctrl, env.episodes, stream_seeds=(stream_seed,)):
            _check_kinds(kinds[np.asarray(step.shown_info["chunk"], dtype=np.int64)], step.shown_info, np.ones(1, bool))
            wm, ltm = _entry_origins(env.episodes)
            wm_rows.append(np.where(wm[0] >= 0, kinds[np.maximum(wm[0], 0)], -1))
            ltm_rows.append(np.where(ltm[0] >= 0, kinds[np.maximum(ltm[0], 0)], -1))
            final = step.info
            if step.done[0]:
                break
    finally:
        env.close()
    targets = final["targets"]
    total = int(targets["total"][0])
    accuracy = int(targets["correct"][0]) / total if total else 0.0
    name = str(getattr(ctrl, "name", type(ctrl).__name__))
    return MemoryTimeline(name, int(stream_seed), kinds, np.stack(wm_rows), np.stack(ltm_rows), accuracy)


_COLOURS = {"empty": "#f2f2f2", "target": "#1a9850", "decoy": "#d73027", "stale": "#fc8d59", "query": "#4575b4",
            "noise": "#984ea3", "filler": "#bdbdbd"}
"""Colour of each kind (and of an empty entry): targets green, what should not be stored warm, filler grey."""


def plot_memory_timeline(timelines: Sequence[tuple[str, MemoryTimeline]], path: str | Path) -> Path:
    """Draw each ``(label, timeline)`` as one panel, one above the other, and save a PNG at ``path``.

    A panel is an image: x the step (chunk), y the K working-memory slots (top) above the M long-term
    slots, each cell coloured by the kind of the chunk its entry was written at (white-grey: empty); a strip
    above them shows the kind of the chunk each step is at. Needs matplotlib (``pip install 'ahm-ssm[plots]'``).
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.colors import ListedColormap
        from matplotlib.patches import Patch
    except ImportError as err:
        raise ImportError("plot_memory_timeline needs matplotlib: pip install 'ahm-ssm[plots]'") from err
    if not timelines:
        raise ValueError("plot_memory_timeline: pass at least one (label, MemoryTimeline)")
    names = ("empty", *CHUNK_KINDS)
    cmap = ListedColormap([_COLOURS[n] for n in names])
    heights = [2 + tl.wm.shape[1] + tl.ltm.shape[1] for _, tl in timelines]
    fig, axes = plt.subplots(len(timelines), 1, figsize=(10, 1.2 + 0.022 * sum(heights) + 0.6 * len(timelines)),
                             squeeze=False, gridspec_kw={"height_ratios": heights})
    for ax, (label, tl) in zip(axes[:, 0], timelines):
        t, k = tl.wm.shape
        strip = np.broadcast_to(tl.chunk_kinds[:t], (2, t))  # 2 rows tall, so the strip stays visible
        image = np.concatenate([strip, tl.wm.T, tl.ltm.T]) + 1  # (2 + K + M, T); 0 = empty
        ax.imshow(image, aspect="auto", interpolation="nearest", cmap=cmap, vmin=0, vmax=len(names) - 1)
        ax.axhline(1.5, color="black", linewidth=0.8)
        ax.axhline(1.5 + k, color="black", linewidth=0.8)
        ax.set_yticks([0.5, 1.5 + k / 2, 1.5 + k + tl.ltm.shape[1] / 2], ["chunk", "WM", "LTM"])
        ax.set_title(f"{label}: accuracy {tl.accuracy:.2f} (stream {tl.stream_seed})", fontsize=9, loc="left")
    axes[-1, 0].set_xlabel("step (chunk)")
    fig.legend(handles=[Patch(color=_COLOURS[n], label=n) for n in names], loc="lower center", ncol=len(names),
               fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
