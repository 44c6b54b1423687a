"""Task streams: token sequences with private annotations, generated lazily chunk by chunk.

A task stream is the input side of one ``AHMMemory-v0`` episode: ``seq_len``
tokens, cut into chunks of ``chunk_size`` tokens, plus ground truth that only
rewards, metrics and the oracle controller may read (ARCHITECTURE.md, "Honest
readout"): where the facts are, what is queried, and the answer.

Glossary: L = ``seq_len``, C = ``chunk_size``; chunk i covers tokens
``[i * C, min((i + 1) * C, L))``, so every chunk has C tokens except possibly
the last; ``n_chunks = ceil(L / C)``.

The chunk contract (the environment steps once per chunk and writes / retrieves
memory only from the hidden state at the last token of a chunk):

* a **fact** is a run of tokens that ENDS at a chunk boundary: ``Fact.tokens``
  are the last ``len(tokens)`` tokens of chunk ``Fact.chunk``, so the boundary
  state after that chunk has just read it;
* a **query** cue ENDS at a chunk boundary: ``Query.cue`` are the last tokens of
  chunk ``Query.chunk``, and ``Query.answer`` are the first tokens of chunk
  ``Query.chunk + 1``. The environment scores the prediction of the next token
  at that boundary, so ``answer[0]`` is the primary target;
* facts, cues and answers lie in full chunks (the last chunk, if shorter than C,
  holds filler only), and each task keeps its fact and cue formats out of its
  filler (reserved tokens or phrases), so a read-back of the stream finds them
  only where the annotations say.

Randomness and memory. Everything is a pure function of ``(seed, position)``:
the annotations (a number bounded by the task's arguments, never by L) are
planned once from ``SeedSequence([seed, 0])``, and filler tokens are hashed from
their absolute position with a key drawn from ``SeedSequence([seed, tag])``
(counter-based, like Philox, but vectorised over positions). So ``chunk(i)`` is
random access, ``tokens(a, b)`` equals the concatenation of the chunks it spans,
nothing proportional to L is stored, and no per-chunk generator is built (that
alone costs about 10 us, which would cap throughput near 5M tokens/s at C = 64).
Chunks are rendered a block of about 64K tokens at a time and the last block is
kept, so a sequential pass costs one vectorised render per block.

A new task family subclasses :class:`TaskStream` (``_build`` plans, ``_filler``
draws the background), documents its layout, chance accuracy and memory
necessity, and adds itself to ``_TASK_CLASSES`` below; the shared tests in
``tests/test_task_streams.py`` then cover it.
"""

from __future__ import annotations

import bisect
import importlib
import inspect
import math
import operator
from abc import ABC, abstractmethod
from typing import ClassVar, NamedTuple

import numpy as np

from ahm.backbone.errors import AHMConfigError

__all__ = [
    "FACT_KINDS",
    "Fact",
    "Query",
    "TaskStream",
    "TASKS",
    "make_task",
    "uniform_tokens",
    "periodic_tokens",
]

FACT_KINDS = ("target", "decoy", "stale")
"""``target``: answers a query (or would, for tasks whose queries sample the keys);
``decoy``: same format as a target but never queried; ``stale``: a key's value
that a later fact re-assigns (:attr:`Fact.superseded_by`), so it is never the answer."""

# SeedSequence spawn keys: one per independent random stream of an episode.
_PLAN_STREAM, _FILLER_STREAM, _NOISE_STREAM = 0, 1, 2

# Tokens rendered per cached block (rounded down to whole chunks): 512 KiB of int64, large
# enough that numpy's per-call overhead (a few us) is amortised over many small chunks.
_BLOCK_TOKENS = 1 << 16


class Fact(NamedTuple):
    """One fact of an episode: tokens that end exactly at the boundary of chunk ``chunk``."""

    chunk: int
    """The chunk whose last ``len(tokens)`` tokens are this fact."""
    key: tuple[int, ...]
    """The tokens that identify the fact (a contiguous run inside ``tokens``, before ``value``);
    empty when the binding is by order, as in selective copying."""
    value: tuple[int, ...]
    """The tokens a query about this fact must produce (a contiguous run inside ``tokens``)."""
    kind: str
    """One of :data:`FACT_KINDS`."""
    fact_id: int
    """Index in :attr:`TaskStream.facts` (facts are numbered in stream order)."""
    tokens: tuple[int, ...]
    """Exactly the stream's tokens of this fact (key, value and any format tokens)."""
    superseded_by: int = -1
    """``fact_id`` of the later fact that re-assigns this key (``kind == "stale"``); -1 if none."""


class Query(NamedTuple):
    """One query: a cue that ends at the boundary of chunk ``chunk``, answered by the next tokens."""

    chunk: int
    """The chunk whose last ``len(cue)`` tokens are the cue."""
    cue: tuple[int, ...]
    """The cue tokens."""
    answer: tuple[int, ...]
    """The first ``len(answer)`` tokens of chunk ``chunk + 1``; ``answer[0]`` is the primary target."""
    fact_id: int
    """The fact whose value is the answer (always ``kind == "target"``)."""
    stale_fact_ids: tuple[int, ...] = ()
    """Earlier facts with the same key whose (now wrong) values a memory might return (forget)."""


class _Span(NamedTuple):
    start: int
    end: int
    tokens: np.ndarray | None  # None: uniform noise tokens in [noise_low, noise_high)
    noise_low: int = 0
    noise_high: int = 0


def _check_int(name: str, value: object, minimum: int) -> int:
    """``value`` as an int >= ``minimum``, or a ValueError that names the argument."""
    try:
        as_int = operator.index(value)
    except TypeError:
        raise ValueError(f"{name} must be an int, got {value!r}") from None
    if isinstance(value, bool) or as_int < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return as_int


def _check_fraction(name: str, value: object, low: float = 0.0, high: float = 1.0, open_low: bool = False) -> float:
    """``value`` as a float in [low, high] ((low, high] if ``open_low``), or a ValueError naming it."""
    try:
        as_float = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    below = as_float <= low if open_low else as_float < low
    if not math.isfinite(as_float) or below or as_float > high:
        bracket = "(" if open_low else "["
        raise ValueError(f"{name} must lie in {bracket}{low}, {high}], got {value!r}")
    return as_float


_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1, _MIX2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)
_S27, _S30, _S31, _S32 = np.uint64(27), np.uint64(30), np.uint64(31), np.uint64(32)


def uniform_tokens(key: int, start: int, end: int, low: int, high: int) -> np.ndarray:
    """Tokens uniform in ``[low, high)`` at absolute positions ``start .. end - 1``: (end - start,) int64.

    A pure function of ``(key, position)``: splitmix64 (Steele et al., 2014) of
    ``key + position * golden``, mapped to the range by a 32-bit multiply-shift
    (bias below ``(high - low) / 2**32``). Any sub-range gives the same tokens.
    """
    if not 0 < high - low < 2**32:
        raise ValueError(f"token range [{low}, {high}) must hold 1 to 2**32 - 1 tokens")
    x = np.arange(start, end, dtype=np.uint64)
    x *= _GOLDEN  # uint64 arithmetic wraps modulo 2**64, which the hash relies on
    x += np.uint64(key)
    x ^= x >> _S30
    x *= _MIX1
    x ^= x >> _S27
    x *= _MIX2
    x ^= x >> _S31
    x >>= _S32
    x *= np.uint64(high - low)
    x >>= _S32
    out = x.astype(np.int64)
    out += low
    return out


def periodic_tokens(pattern: np.ndarray, start: int, end: int) -> np.ndarray:
    """``pattern`` repeated from position 0, tokens ``start .. end - 1``: (end - start,) int64."""
    period = len(pattern)
    reps = -(-(end - start + period) // period)
    offset = start % period
    return np.tile(pattern.astype(np.int64, copy=False), reps)[offset : offset + end - start]


class TaskStream(ABC):
    """A task's token stream and its private annotations; abstract base of every task family.

    Construct with ``(seq_len, chunk_size, seed, **task_kwargs)``. Subclasses store
    their arguments, then call ``super().__init__(seq_len, chunk_size, seed)``,
    which sets the geometry below and calls :meth:`_build` (validate the task's
    arguments, plan facts and queries) with the planning generator; tokens come
    from :meth:`_filler` plus the spans that :meth:`_add_fact`, :meth:`_add_query`,
    :meth:`_add_span` and :meth:`_add_noise` laid over it.

    Attributes:
        seq_len, chunk_size, seed: as given.
        n_chunks: ``ceil(seq_len / chunk_size)``; the episode steps once per chunk.
        n_full_chunks: chunks with exactly ``chunk_size`` tokens (``seq_len // chunk_size``).
        vocab_size: tokens lie in ``[0, vocab_size)``.
        chance_accuracy: the accuracy of a uniform guess over the values the primary
            answer token (``Query.answer[0]``) can take; see each task.
        memory_necessity: one line (also in the class docstring): when the backbone
            alone cannot solve the task.
        facts: :class:`Fact` s in stream order (``facts[f.fact_id] is f``).
        queries: :class:`Query` s in stream order.
        noise_chunks: chunks that hold a burst of noise tokens (decoy), sorted.
    """

    memory_necessity: ClassVar[str] = ""
    vocab_size: int
    chance_accuracy: float

    def __init__(self, seq_len: int, chunk_size: int, seed: int) -> None:
        self.seq_len = _check_int("seq_len", seq_len, 1)
        self.chunk_size = _check_int("chunk_size", chunk_size, 1)
        self.seed = _check_int("seed", seed, 0)
        self.n_chunks = -(-self.seq_len // self.chunk_size)
        self.n_full_chunks = self.seq_len // self.chunk_size
        self.facts: list[Fact] = []
        self.queries: list[Query] = []
        self.noise_chunks: tuple[int, ...] = ()
        self._spans: list[_Span] = []
        self._build(np.random.default_rng(np.random.SeedSequence([self.seed, _PLAN_STREAM])))
        self._seal()

    # ----------------------------------------------------------------- overrides
    @abstractmethod
    def _build(self, rng: np.random.Generator) -> None:
        """Validate the task's arguments against the geometry, then plan facts, queries and spans."""

    @abstractmethod
    def _filler(self, start: int, end: int) -> np.ndarray:
        """The background tokens at positions ``start .. end - 1``: a fresh, writable (end - start,) int64."""

    # ------------------------------------------------------------------- public
    @property
    def last_query_chunk(self) -> int:
        """The chunk of the last query; the episode terminates after it (``n_chunks - 1`` without queries)."""
        return self.queries[-1].chunk if self.queries else self.n_chunks - 1

    def chunk_bounds(self, i: int) -> tuple[int, int]:
        """``(start, end)`` positions of chunk ``i``."""
        if not 0 <= i < self.n_chunks:
            raise IndexError(f"chunk {i} is out of range [0, {self.n_chunks})")
        start = i * self.chunk_size
        return start, min(start + self.chunk_size, self.seq_len)

    def chunk(self, i: int) -> np.ndarray:
        """Tokens of chunk ``i``: (chunk_size,) int64 (the last chunk may be shorter); a fresh array."""
        start, end = self.chunk_bounds(i)
        block, offset = divmod(start, self._block_len)
        if block != self._cached_block:
            block_start = block * self._block_len
            self._cached_tokens = self._render(block_start, min(block_start + self._block_len, self.seq_len))
            self._cached_block = block
        return self._cached_tokens[offset : offset + end - start].copy()

    def tokens(self, start: int, end: int) -> np.ndarray:
        """Tokens at positions ``start .. end - 1`` across chunks: (end - start,) int64."""
        if not 0 <= start <= end <= self.seq_len:
            raise IndexError(f"token range [{start}, {end}) is not inside [0, {self.seq_len}]")
        return self._render(start, end)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(seq_len={self.seq_len}, chunk_size={self.chunk_size}, seed={self.seed}, "
            f"facts={len(self.facts)}, queries={len(self.queries)})"
        )

    # -------------------------------------------------------- helpers for _build
    def _stream_key(self, tag: int) -> int:
        """A 64-bit key for :func:`uniform_tokens`, independent per (seed, tag)."""
        return int(np.random.SeedSequence([self.seed, tag]).generate_state(1, np.uint64)[0])

    def _add_span(self, start: int, tokens: tuple[int, ...] | np.ndarray) -> None:
        """Lay ``tokens`` over the filler from absolute position ``start``."""
        arr = np.asarray(tokens, dtype=np.int64)
        self._spans.append(_Span(start, start + len(arr), arr))

    def _add_noise(self, start: int, length: int, low: int, high: int) -> None:
        """A run of ``length`` tokens uniform in ``[low, high)`` from ``start`` (drawn when rendered)."""
        self._spans.append(_Span(start, start + length, None, low, high))

    def _add_fact(self, chunk: int, tokens: tuple[int, ...], key: tuple[int, ...], value: tuple[int, ...],
                  kind: str) -> int:
        """Place ``tokens`` at the end of ``chunk`` and annotate them; returns the new fact's id.

        Facts must be added in stream order (their ids are their order).
        """
        if self.facts and chunk <= self.facts[-1].chunk:
            raise RuntimeError(f"facts must be added in stream order: chunk {chunk} after {self.facts[-1].chunk}")
        fact = Fact(chunk, tuple(key), tuple(value), kind, len(self.facts), tuple(tokens))
        self._add_span((chunk + 1) * self.chunk_size - len(fact.tokens), fact.tokens)
        self.facts.append(fact)
        return fact.fact_id

    def _add_query(self, chunk: int, cue: tuple[int, ...], answer: tuple[int, ...], fact_id: int,
                   stale_fact_ids: tuple[int, ...] = (), answer_suffix: tuple[int, ...] = ()) -> None:
        """Place ``cue`` at the end of ``chunk`` and ``answer + answer_suffix`` at the start of ``chunk + 1``.

        Queries must be added in stream order.
        """
        if self.queries and chunk <= self.queries[-1].chunk:
            raise RuntimeError(f"queries must be added in stream order: chunk {chunk} after {self.queries[-1].chunk}")
        query = Query(chunk, tuple(cue), tuple(answer), fact_id, tuple(stale_fact_ids))
        boundary = (chunk + 1) * self.chunk_size
        self._add_span(boundary - len(query.cue), query.cue)
        self._add_span(boundary, query.answer + tuple(answer_suffix))
        self.queries.append(query)

    def _seal(self) -> None:
        """Sort the spans, check they neither overlap nor leave the stream, and set up the block cache."""
        self._spans.sort(key=lambda s: s.start)
        for a, b in zip(self._spans, self._spans[1:]):
            if b.start < a.end:  # _build validated the layout, so this is a bug in the task
                raise RuntimeError(f"{type(self).__name__}: spans [{a.start}, {a.end}) and [{b.start}, {b.end}) "
                                   "overlap")
        if self._spans and (self._spans[0].start < 0 or self._spans[-1].end > self.seq_len):
            raise RuntimeError(f"{type(self).__name__}: a span lies outside the stream [0, {self.seq_len})")
        self._span_starts = [s.start for s in self._spans]
        self._span_ends = [s.end for s in self._spans]
        self._noise_key = self._stream_key(_NOISE_STREAM)
        self._block_len = self.chunk_size * max(1, _BLOCK_TOKENS // self.chunk_size)
        self._cached_block = -1
        self._cached_tokens = np.empty(0, dtype=np.int64)

    def _render(self, start: int, end: int) -> np.ndarray:
        out = self._filler(start, end)
        j = bisect.bisect_right(self._span_ends, start)  # first span that ends after `start`
        while j < len(self._spans) and self._span_starts[j] < end:
            span = self._spans[j]
            lo, hi = max(span.start, start), min(span.end, end)
            if span.tokens is None:
                out[lo - start : hi - start] = uniform_tokens(self._noise_key, lo, hi, span.noise_low,
                                                              span.noise_high)
            else:
                out[lo - start : hi - start] = span.tokens[lo - span.start : hi - span.start]
            j += 1
        return out


# The registry is filled on first use: the task modules import this one for the
# base class, so importing them here at module level would be circular.
_TASK_CLASSES = {
    "passkey": ("ahm.envs.passkey", "PasskeyStream"),
    "mqar": ("ahm.envs.mqar", "MQARStream"),
    "forget": ("ahm.envs.forget", "ForgetStream"),
    "copy": ("ahm.envs.selective_copy", "SelectiveCopyStream"),
    "decoy": ("ahm.envs.decoy", "DecoyStream"),
    "text": ("ahm.envs.text_stream", "TextStream"),
}

TASKS: dict[str, type[TaskStream]]
"""Task family name -> :class:`TaskStream` subclass; tests, registration and docs iterate over it."""


def __getattr__(name: str) -> object:  # PEP 562: build TASKS on first access
    if name == "TASKS":
        tasks = {key: getattr(importlib.import_module(module), cls) for key, (module, cls) in _TASK_CLASSES.items()}
        globals()["TASKS"] = tasks
        return tasks
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def make_task(name: str, seq_len: int, chunk_size: int, seed: int, **task_kwargs: object) -> TaskStream:
    """``TASKS[name](seq_len, chunk_size, seed, **task_kwargs)`` with a clear error for unknown names."""
    tasks: dict[str, type[TaskStream]] = globals().get("TASKS") or __getattr__("TASKS")  # type: ignore[assignment]
    if name not in tasks:
        raise ValueError(f"unknown task {name!r}; choose one of {sorted(tasks)}")
    cls = tasks[name]
    params = inspect.signature(cls.__init__).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        unknown = sorted(set(task_kwargs) - set(params) - {"self"})
        if unknown:
            known = sorted(k for k, p in params.items() if k not in ("self", "seq_len", "chunk_size", "seed")
                           and p.kind is not inspect.Parameter.VAR_POSITIONAL)
            raise AHMConfigError(f"task {name!r} takes no keyword argument(s) {unknown} (--task-kwargs); it "
                                 f"takes {known}")
    return cls(seq_len, chunk_size, seed, **task_kwargs)
