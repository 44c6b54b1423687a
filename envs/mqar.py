"""``mqar``: multi-query associative recall (Zoology, Arora et al., 2023), one fact per chunk.

This module also holds the key-value engine that ``forget`` (keys re-assigned)
and ``decoy`` (distractor facts, a cue, noise bursts) parameterise through a few
hooks, so the three share one vocabulary layout and one placement rule.

Vocabulary layout (V = ``vocab_size``, H = ``(V - 4) // 2``)::

    0              ASK: opens the decoy task's cue           } reserved: never emitted
    1, 2           KIND_MARKERS: the two kinds of fact        } by mqar / forget
    3              reserved
    [4, 4 + H)     keys
    [4 + H, 4 + 2H) values (and filler / noise)

Keys and values come from disjoint halves of the vocabulary, as in Zoology.
Zoology fills the rest of the sequence with random tokens of the whole
vocabulary; here filler is drawn from the values only, so a key token occurs
nowhere but in a fact or a query cue and the filler can never form one.
"""

from __future__ import annotations

import numpy as np

from ahm.envs.streams import _FILLER_STREAM, TaskStream, _check_fraction, _check_int, periodic_tokens, uniform_tokens

__all__ = ["MQARStream", "ASK", "KIND_MARKERS", "N_RESERVED", "FILLERS", "DEFAULT_MAX_PAIRS"]

ASK = 0
KIND_MARKERS = (1, 2)
N_RESERVED = 4

FILLERS = ("random", "repeat")
"""``random``: uniform value tokens (Zoology's random non-query tokens); ``repeat``: a fixed cycle of
``FILLER_PERIOD`` value tokens drawn per episode, predictable after one period (low surprise)."""
FILLER_PERIOD = 16

DEFAULT_MAX_PAIRS = 64
"""The automatic ``num_pairs`` stops here: mid-range of Zoology's 4 to 256, and 64 facts of the
default 100K-token stream (chunk 256: 390 chunks) still leave most of the context region as filler."""


class MQARStream(TaskStream):
    """Multi-query associative recall: key-value facts, then after a gap a query per key; one fact per chunk.

    **Description.** ``num_pairs`` facts ``(key, value)`` with distinct keys and
    distinct values (Zoology samples both without replacement), then a long gap,
    then ``num_queries`` queries, each a key whose answer is its value. Filler is
    value tokens (see the module docstring), so key tokens occur only in facts and cues.

    **Layout** (F = ``n_full_chunks``):

    * context region, chunks ``[0, n_ctx)`` with ``n_ctx = max(1, int(context_fraction * F))``:
      each fact is the 2 tokens ``(key, value)`` ending a distinct random chunk;
    * gap: filler only;
    * query region, chunks ``[F - 1 - n_qry, F - 1)`` with ``n_qry = max(1, int(query_fraction * F))``:
      each query cue is the 1 token ``(key,)`` ending a distinct random chunk, and the next
      chunk opens with the answer ``(value,)``; keys are asked in random order, each at most once.

    **Annotations.** Facts of kind ``"target"``, ``key=(k,)``, ``value=(v,)``,
    ``tokens=(k, v)``; queries with ``cue=(k,)``, ``answer=(v,)``.

    **Arguments.**
        vocab_size: V; Zoology uses up to 8,192. Needs H >= the number of facts. Default 8192.
        num_pairs: key-value facts (Zoology: 4 to 256). Default ``None``: the largest number up to
            ``DEFAULT_MAX_PAIRS`` (64) whose facts fill at most half the context region (and need
            at most H values) and whose queries fill at most half the query region (at least 1);
            48 at 100K tokens in chunks of 256.
        num_queries: queries (distinct keys). Default ``None``: ``num_pairs`` (every key once).
        context_fraction: share of the chunks where facts may sit. Default 0.5.
        query_fraction: share of the chunks, at the end, where queries sit. Default 0.25; the
            rest (at least ``1 - context_fraction - query_fraction``) is the gap.
        filler: ``"random"`` (default) or ``"repeat"``, see :data:`FILLERS`.

    After construction ``num_pairs`` and ``num_queries`` hold the numbers used.

    **Chance accuracy.** 1/H (4,094 values at V = 8,192), a uniform guess over values; a
    model that knows which values occurred but not their keys gets 1/``num_pairs``.

    **Memory necessity.** Necessary once num_pairs bindings exceed what the backbone's fixed state can hold
    across the gap: recurrent models need state that grows with the number of pairs (Zoology), so a small
    SSM fails at the default 64 pairs while a memory written at each fact chunk stays exact.

    Example:
        >>> s = MQARStream(seq_len=4096, chunk_size=64, seed=0)
        >>> len(s.facts), len(s.queries), s.vocab_size
        (8, 8, 8192)
        >>> q = s.queries[0]
        >>> int(s.chunk(q.chunk)[-1]) == q.cue[0], int(s.chunk(q.chunk + 1)[0]) == s.facts[q.fact_id].value[0]
        (True, True)
    """

    memory_necessity = (
        "Necessary once num_pairs bindings exceed what the backbone's fixed state can hold across the gap: "
        "recurrent models need state that grows with the number of pairs (Zoology), so a small SSM fails at the "
        "default 64 pairs while a memory written at each fact chunk stays exact."
    )

    def __init__(self, seq_len: int, chunk_size: int, seed: int, *, vocab_size: int = 8192,
                 num_pairs: int | None = None, num_queries: int | None = None, context_fraction: float = 0.5,
                 query_fraction: float = 0.25, filler: str = "random") -> None:
        self.vocab_size = vocab_size
        self.num_pairs, self.num_queries = num_pairs, num_queries
        self.context_fraction, self.query_fraction, self.filler = context_fraction, query_fraction, filler
        super().__init__(seq_len, chunk_size, seed)

    # ------------------------------------------------------------------ hooks
    _fact_len = 2  # tokens of one fact: (key, value)

    def _n_decoys(self, num_pairs: int) -> int:
        """Decoy facts for ``num_pairs`` targets (decoy)."""
        return 0

    def _n_facts(self, num_pairs: int) -> int:
        """Fact chunks needed for ``num_pairs`` keys: targets, re-assignments (forget) and decoys."""
        return num_pairs + self._n_decoys(num_pairs)

    def _assignment_counts(self, rng: np.random.Generator, num_pairs: int) -> np.ndarray:
        """How many values each target key receives, (num_pairs,) int (forget: some more than 1)."""
        return np.ones(num_pairs, dtype=np.int64)

    def _describe_facts(self, num_pairs: int) -> str:
        """The arguments that set the number of facts, for error messages."""
        return f"num_pairs={num_pairs}"

    def _fact_tokens(self, key: int, value: int, kind: str) -> tuple[int, ...]:
        return (key, value)

    def _min_chunk_size(self) -> int:
        """Fact at a chunk's end; answer at the start of a chunk that may end with another cue."""
        return max(self._fact_len, 2)

    def _validate(self) -> None:
        """Check the arguments that do not depend on the plan (subclasses extend)."""
        self.vocab_size = _check_int("vocab_size", self.vocab_size, N_RESERVED + 2)
        self.context_fraction = _check_fraction("context_fraction", self.context_fraction, open_low=True)
        self.query_fraction = _check_fraction("query_fraction", self.query_fraction, open_low=True)
        if self.context_fraction + self.query_fraction >= 1:
            raise ValueError(f"context_fraction + query_fraction must be < 1 to leave a gap, got "
                             f"{self.context_fraction} + {self.query_fraction}; lower one of them")
        if self.filler not in FILLERS:
            raise ValueError(f"filler must be one of {FILLERS}, got {self.filler!r}")
        if self.chunk_size < self._min_chunk_size():
            raise ValueError(f"{self._task}: chunk_size={self.chunk_size} is smaller than a fact and an answer "
                             f"({self._min_chunk_size()} tokens); raise chunk_size")

    def _before_plan(self, rng: np.random.Generator) -> None:
        """Draw what the fact format depends on (decoy: which kind is asked), before any fact is placed."""

    def _after_plan(self, rng: np.random.Generator, used_chunks: set[int]) -> None:
        """Lay anything else over the stream (decoy: the cue and noise bursts); ``used_chunks`` hold annotations."""

    # ------------------------------------------------------------------- plan
    @property
    def _task(self) -> str:
        return type(self).__name__

    @property
    def n_keys(self) -> int:
        """H: the number of key tokens (and of value tokens)."""
        return (self.vocab_size - N_RESERVED) // 2

    @property
    def key_tokens(self) -> range:
        return range(N_RESERVED, N_RESERVED + self.n_keys)

    @property
    def value_tokens(self) -> range:
        return range(N_RESERVED + self.n_keys, N_RESERVED + 2 * self.n_keys)

    def _regions(self) -> tuple[int, int]:
        """``(n_ctx, n_qry)``: chunks of the context region and of the query region."""
        full = self.n_full_chunks
        n_ctx = max(1, int(self.context_fraction * full))
        n_qry = max(1, int(self.query_fraction * full))
        if n_ctx + n_qry > full - 1:
            raise ValueError(f"{self._task}: seq_len={self.seq_len} holds {full} full chunks of {self.chunk_size}, "
                             f"too few for a context region, a query region and the answer chunk; raise seq_len or "
                             f"lower chunk_size")
        return n_ctx, n_qry

    def _resolve_num_pairs(self, n_ctx: int, n_qry: int) -> int:
        if self.num_pairs is not None:
            return _check_int("num_pairs", self.num_pairs, 1)
        fits = [p for p in range(1, DEFAULT_MAX_PAIRS + 1)
                if self._n_facts(p) <= min(n_ctx // 2, self.n_keys) and p <= n_qry // 2]
        return max(fits, default=1)

    def _build(self, rng: np.random.Generator) -> None:
        self._validate()
        n_ctx, n_qry = self._regions()
        num_pairs = self._resolve_num_pairs(n_ctx, n_qry)
        num_queries = num_pairs if self.num_queries is None else _check_int("num_queries", self.num_queries, 1)
        n_facts, n_decoys = self._n_facts(num_pairs), self._n_decoys(num_pairs)
        hint = "raise seq_len, lower chunk_size"
        if n_facts > n_ctx:
            raise ValueError(f"{self._task}: {self._describe_facts(num_pairs)} need {n_facts} fact chunks but the "
                             f"context region (context_fraction={self.context_fraction} of {self.n_full_chunks} "
                             f"chunks) has {n_ctx}; lower them, {hint} or raise context_fraction")
        if num_queries > num_pairs:
            raise ValueError(f"{self._task}: num_queries={num_queries} exceeds num_pairs={num_pairs} (each key is "
                             f"asked at most once); lower num_queries")
        if num_queries > n_qry:
            raise ValueError(f"{self._task}: num_queries={num_queries} needs {num_queries} query chunks but the query "
                             f"region (query_fraction={self.query_fraction} of {self.n_full_chunks} chunks) has "
                             f"{n_qry}; lower num_pairs / num_queries, {hint} or raise query_fraction")
        if n_facts > self.n_keys:
            raise ValueError(f"{self._task}: vocab_size={self.vocab_size} has {self.n_keys} keys and values, fewer "
                             f"than the {n_facts} facts of {self._describe_facts(num_pairs)}; raise vocab_size or "
                             f"lower them")
        self.num_pairs, self.num_queries = num_pairs, num_queries
        self.chance_accuracy = 1 / self.n_keys
        self._filler_key = self._stream_key(_FILLER_STREAM)
        self._before_plan(rng)
        if self.filler == "repeat":
            self._pattern = rng.choice(self.value_tokens, size=FILLER_PERIOD)

        # Distinct keys (targets first, then decoys) and distinct values, as in Zoology.
        keys = self.key_tokens[0] + rng.choice(self.n_keys, size=num_pairs + n_decoys, replace=False)
        counts = self._assignment_counts(rng, num_pairs)
        schedule = np.concatenate([np.repeat(np.arange(num_pairs), counts), num_pairs + np.arange(n_decoys)])
        rng.shuffle(schedule)  # the stream order of all assignments; a key's j-th occurrence is its j-th value
        values = self.value_tokens[0] + rng.choice(self.n_keys, size=n_facts, replace=False)
        fact_chunks = np.sort(rng.choice(n_ctx, size=n_facts, replace=False))

        last_slot = {key_index: slot for slot, key_index in enumerate(schedule.tolist())}
        latest: dict[int, list[int]] = {}  # target key index -> its fact ids in stream order
        for slot, (chunk, key_index, value) in enumerate(zip(fact_chunks.tolist(), schedule.tolist(), values.tolist())):
            is_decoy = key_index >= num_pairs
            kind = "decoy" if is_decoy else ("target" if last_slot[key_index] == slot else "stale")
            key = int(keys[key_index])
            fact_id = self._add_fact(chunk, self._fact_tokens(key, value, kind), (key,), (value,), kind)
            if not is_decoy:
                history = latest.setdefault(key_index, [])
                if history:
                    self.facts[history[-1]] = self.facts[history[-1]]._replace(superseded_by=fact_id)
                history.append(fact_id)

        asked = rng.choice(num_pairs, size=num_queries, replace=False)
        query_chunks = np.sort(self.n_full_chunks - 1 - n_qry + rng.choice(n_qry, size=num_queries, replace=False))
        for chunk, key_index in zip(query_chunks.tolist(), asked.tolist()):
            *stale, answer_id = latest[key_index]
            fact = self.facts[answer_id]
            self._add_query(chunk, fact.key, fact.value, answer_id, tuple(stale))

        used = set(fact_chunks.tolist()) | set(query_chunks.tolist()) | set((query_chunks + 1).tolist())
        self._after_plan(rng, used)

    def _filler(self, start: int, end: int) -> np.ndarray:
        if self.filler == "repeat":
            return periodic_tokens(self._pattern, start, end)
        values = self.value_tokens
        return uniform_tokens(self._filler_key, start, end, values.start, values.stop)
