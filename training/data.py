"""Training data behind one interface: byte-level text and the task streams of :mod:`ahm.envs`.

Both sources hand the trainer a :class:`SequenceBatch`: b token sequences of one
length L, which the trainer cuts into truncated-backpropagation windows (state and
memory carried across them) and then into chunks. Task batches also carry the
per-chunk answer targets (a query's first answer token at the chunk where its cue
ends, as the environment scores it) and the stream seeds, so the memory operations
of any controller, the oracle included, can be computed on the same episodes by the
environment (:func:`ahm.agents.rollout.controller_actions`).

All randomness comes from the numpy ``Generator`` passed in, whose state the
training checkpoint stores: a resumed run draws the same batches.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from ahm.envs.episode_scoring import Annotations, next_asked_tokens
from ahm.envs.streams import TASKS, make_task
from ahm.envs.text_corpus import ByteCorpus, load_corpus

__all__ = ["SequenceBatch", "TextSource", "TaskSource", "Curriculum"]


class SequenceBatch(NamedTuple):
    """b sequences of L tokens."""

    tokens: np.ndarray
    """(b, L) int64."""
    task: str | None
    """The task family, or None for text."""
    stream_seeds: tuple[int, ...]
    """Task streams: the seed of each row's stream (empty for text)."""
    answer_targets: np.ndarray | None
    """(b, n) int64: per chunk, the token the answer at that boundary must be (-1 none); None for text."""
    keep_targets: np.ndarray | None = None
    """(b, n) float32: per chunk, the keep head's hindsight label
    (:meth:`ahm.envs.episode_scoring.Annotations.keep_labels`: 1 where a later query asks for the fact ending
    there); None for text."""
    ask_targets: np.ndarray | None = None
    """(b, n) int64: per chunk, the ask head's hindsight label (:func:`ahm.envs.episode_scoring.next_asked_tokens`:
    the first token of the fact the next query asks for, -1 none); None for text."""


class TextSource:
    """Random spans of ``length`` bytes of a byte corpus's training split (documents joined by NUL)."""

    def __init__(self, corpus: ByteCorpus | str = "stdlib", max_documents: int = 0) -> None:
        self.corpus = corpus if isinstance(corpus, ByteCorpus) else load_corpus(corpus, max_documents=max_documents)
        self.vocab_size = 256

    def sample(self, batch: int, length: int, rng: np.random.Generator) -> SequenceBatch:
        windows = self.corpus.sample_windows(batch, length - 1, rng)  # (b, length): sample_windows adds one
        return SequenceBatch(windows.astype(np.int64), None, (), None)


@dataclass
class Curriculum:
    """Which sequence lengths a task batch may have.

    Short and long sequences are mixed (Zoology's maintainers report that models
    trained only on long MQAR sequences fail to learn). ``mode``:

    * ``mixed``: every batch draws its length uniformly from all ``lengths``;
    * ``grow``: start with the shortest; when the answer accuracy at the longest active
      length, averaged over the last ``window`` batches of that length, reaches
      ``threshold``, the next length joins; batches draw uniformly from the active ones.
    """

    lengths: tuple[int, ...]
    mode: str = "grow"
    threshold: float = 0.9
    window: int = 10
    active: int = 1
    history: dict[str, list[float]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.lengths or any(int(n) < 1 for n in self.lengths):
            raise ValueError(f"curriculum lengths must be positive ints, got {self.lengths!r}")
        if self.mode not in ("mixed", "grow"):
            raise ValueError(f"curriculum mode must be 'mixed' or 'grow', got {self.mode!r}")
        self.lengths = tuple(sorted(int(n) for n in self.lengths))
        if self.mode == "mixed":
            self.active = len(self.lengths)

    def draw(self, rng: np.random.Generator) -> int:
        return self.lengths[int(rng.integers(self.active))]

    def update(self, length: int, accuracy: float) -> bool:
        """Record a batch's answer accuracy; returns True when a longer length joins."""
        hist = self.history.setdefault(str(length), [])
        hist.append(float(accuracy))
        del hist[: -self.window]
        top = self.lengths[self.active - 1]
        if (self.mode == "grow" and self.active < len(self.lengths) and length == top
                and len(hist) >= self.window and float(np.mean(hist)) >= self.threshold):
            self.active += 1
            return True
        return False

    def state(self) -> dict[str, Any]:
        return {"active": self.active, "history": self.history}

    def load_state(self, state: Mapping[str, Any]) -> None:
        self.active = int(state["active"])
        self.history = {k: list(v) for k, v in state["history"].items()}


class TaskSource:
    """Batches of task streams (``ahm.envs.TASKS``) with a length :class:`Curriculum`; tasks drawn uniformly."""

    def __init__(self, tasks: Sequence[str], chunk_size: int, curriculum: Curriculum,
                 task_kwargs: Mapping[str, Any] | None = None) -> None:
        unknown = [t for t in tasks if t not in TASKS]
        if not tasks or unknown:
            raise ValueError(f"unknown task(s) {unknown or tasks!r}; choose from {sorted(TASKS)}")
        if "text" in tasks:
            raise ValueError("'text' is not a task with answers: use --source text for language modelling")
        self.tasks, self.chunk_size, self.curriculum = tuple(tasks), chunk_size, curriculum
        self.task_kwargs = dict(task_kwargs or {})
        probes = [make_task(t, curriculum.lengths[-1], chunk_size, 0, **self.task_kwargs) for t in self.tasks]
        self.vocab_size = max(p.vocab_size for p in probes)

    def sample(self, batch: int, length: int, rng: np.random.Generator) -> SequenceBatch:
        """b streams of one task (drawn uniformly) at ``length`` tokens, with their answer targets per chunk."""
        task = self.tasks[int(rng.integers(len(self.tasks)))]
        seeds = tuple(int(s) for s in rng.integers(0, 2**62, size=batch))
        streams = [make_task(task, length, self.chunk_size, s, **self.task_kwargs) for s in seeds]
        tokens = np.stack([s.tokens(0, length) for s in streams]).astype(np.int64)
        annotations = [Annotations.of_stream(stream) for stream in streams]  # one pass over facts and queries each
        targets = np.stack([np.where(a.is_query, a.target, -1) for a in annotations])
        keep = np.stack([a.keep_labels() for a in annotations])
        ask = np.stack([next_asked_tokens(stream) for stream in streams])
        return SequenceBatch(tokens, task, seeds, targets, keep, ask)
