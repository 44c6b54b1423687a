"""``decoy``: associative recall with distractor facts, a cue saying which kind is asked, and noise bursts.

Write-everything and surprise-driven memory policies look good on plain recall
because every fact is worth storing and every surprising chunk is a fact. This
task takes both shortcuts away: half the facts (by default) are decoys in
exactly the targets' format that are never asked, and bursts of random tokens,
more surprising than any fact, sit in chunks that hold nothing worth storing.
What tells a target from a decoy is context a policy can read from the SSM
state: a cue at the start of the stream names the kind of fact that will be
asked, and every fact opens with its kind's marker.

It parameterises the token-level recall tasks (mqar, and forget with
``reassign_fraction > 0``); passkey and copy have no decoy version yet.
"""

from __future__ import annotations

import numpy as np

from ahm.envs.forget import ForgetStream
from ahm.envs.mqar import ASK, KIND_MARKERS
from ahm.envs.streams import _check_int

__all__ = ["DecoyStream"]


class DecoyStream(ForgetStream):
    """MQAR (or forget) with decoy facts told apart only by context, plus bursts of surprising noise.

    **Description.** The vocabulary, regions and queries of
    :class:`~ahm.envs.mqar.MQARStream`. The stream opens with the cue
    ``(ASK, m)``, where ``m``, one of the two ``KIND_MARKERS`` drawn per episode,
    is the kind that will be asked. Every fact is ``(marker, key, value)``:
    targets carry ``m``, ``num_decoys`` decoys carry the other marker and have
    keys of their own, which are never queried. ``noise_bursts`` runs of
    ``burst_length`` tokens drawn uniformly from the values lie in chunks with no
    fact, cue or answer; against the default ``"repeat"`` filler (a 16-token
    cycle) they are far more surprising than a fact. With
    ``reassign_fraction > 0`` the targets are re-assigned as in
    :class:`~ahm.envs.forget.ForgetStream`: the decoy variant of forget.

    **Layout** (F = ``n_full_chunks``):

    * chunk 0 opens with the cue ``(ASK, m)`` (2 tokens);
    * each fact ``(marker, key, value)`` ends a distinct random chunk of the context region
      (targets, stale assignments and decoys in random order);
    * each query ``(key,)`` ends a chunk of the query region; the next chunk opens with ``(value,)``;
    * each noise burst lies at a random offset inside a chunk of ``[1, F)`` that holds no
      fact, cue or answer (:attr:`noise_chunks`); the marker and key tokens never occur in noise or filler.

    **Annotations.** Facts of kind ``"target"``, ``"stale"`` (forget) and ``"decoy"``,
    ``key=(key,)``, ``value=(value,)``, ``tokens=(marker, key, value)``; queries point at
    targets only. :attr:`asked_marker` / :attr:`decoy_marker` are the two markers,
    :attr:`noise_chunks` the chunks with a burst.

    **Arguments.** Those of forget (``reassign_fraction`` defaults to 0 here: decoy MQAR),
    with ``filler`` defaulting to ``"repeat"``, plus:
        num_decoys: decoy facts. Default ``None``: ``num_pairs``. The automatic ``num_pairs``
            counts the decoys' chunks too.
        noise_bursts: bursts of noise. Default ``None``: ``num_pairs``, fewer if the stream has
            fewer free chunks (an explicit number that does not fit raises).
        burst_length: tokens per burst, 1 to ``chunk_size``. Default ``None``: ``chunk_size // 2``.

    **Chance accuracy.** 1/H, as mqar.

    **Memory necessity.** As mqar (or forget), and storing well needs the kind cue from the start of the
    stream, which only the SSM state carries: writing everything spends half the memory on decoys, and
    writing on surprise stores the noise bursts.

    Example:
        >>> s = DecoyStream(seq_len=8192, chunk_size=64, seed=0)
        >>> sorted({f.kind for f in s.facts}), all(s.facts[q.fact_id].kind == "target" for q in s.queries)
        (['decoy', 'target'], True)
        >>> [int(t) for t in s.chunk(0)[:2]] == [0, s.asked_marker], len(s.noise_chunks) > 0
        (True, True)
    """

    memory_necessity = (
        "As mqar (or forget), and storing well needs the kind cue from the start of the stream, which only the SSM "
        "state carries: writing everything spends half the memory on decoys, and writing on surprise stores the "
        "noise bursts."
    )

    def __init__(self, seq_len: int, chunk_size: int, seed: int, *, num_decoys: int | None = None,
                 noise_bursts: int | None = None, burst_length: int | None = None, reassign_fraction: float = 0.0,
                 assignments: int = 2, vocab_size: int = 8192, num_pairs: int | None = None,
                 num_queries: int | None = None, context_fraction: float = 0.5, query_fraction: float = 0.25,
                 filler: str = "repeat") -> None:
        self.num_decoys, self.noise_bursts, self.burst_length = num_decoys, noise_bursts, burst_length
        super().__init__(seq_len, chunk_size, seed, reassign_fraction=reassign_fraction, assignments=assignments,
                         vocab_size=vocab_size, num_pairs=num_pairs, num_queries=num_queries,
                         context_fraction=context_fraction, query_fraction=query_fraction, filler=filler)

    _fact_len = 3  # (marker, key, value)

    def _min_chunk_size(self) -> int:
        return 2 + self._fact_len  # chunk 0 opens with the 2-token cue and may end with a fact

    def _validate(self) -> None:
        super()._validate()
        if self.num_decoys is not None:
            _check_int("num_decoys", self.num_decoys, 0)
        if self.noise_bursts is not None:
            _check_int("noise_bursts", self.noise_bursts, 0)
        self.burst_length = self.chunk_size // 2 if self.burst_length is None else self.burst_length
        _check_int("burst_length", self.burst_length, 1)
        if self.burst_length > self.chunk_size:
            raise ValueError(f"burst_length={self.burst_length} must be at most chunk_size={self.chunk_size} "
                             f"(a burst lies inside one chunk); lower burst_length")

    def _n_decoys(self, num_pairs: int) -> int:
        return num_pairs if self.num_decoys is None else self.num_decoys

    def _describe_facts(self, num_pairs: int) -> str:
        return f"{super()._describe_facts(num_pairs)} and num_decoys={self._n_decoys(num_pairs)}"

    def _before_plan(self, rng: np.random.Generator) -> None:
        asked = int(rng.integers(2))
        self.asked_marker, self.decoy_marker = KIND_MARKERS[asked], KIND_MARKERS[1 - asked]

    @property
    def cue(self) -> tuple[int, int]:
        """The tokens that open the stream: ``(ASK, asked_marker)``."""
        return (ASK, self.asked_marker)

    def _fact_tokens(self, key: int, value: int, kind: str) -> tuple[int, ...]:
        return (self.decoy_marker if kind == "decoy" else self.asked_marker, key, value)

    def _after_plan(self, rng: np.random.Generator, used_chunks: set[int]) -> None:
        self._add_span(0, self.cue)
        # Bursts go in full chunks 1 .. F-1 that hold no annotation: draw enough distinct
        # candidates that, with the used ones dropped, `wanted` remain (no O(F) list of free chunks).
        used = {c for c in used_chunks if 1 <= c < self.n_full_chunks}
        n_free = self.n_full_chunks - 1 - len(used)
        wanted = min(self.num_pairs, n_free) if self.noise_bursts is None else self.noise_bursts
        if wanted > n_free:
            raise ValueError(f"DecoyStream: noise_bursts={wanted} but only {n_free} chunks are free of facts, "
                             f"cues and answers; lower noise_bursts or raise seq_len")
        candidates = 1 + rng.choice(self.n_full_chunks - 1, size=wanted + len(used), replace=False)
        chunks = np.sort([c for c in candidates.tolist() if c not in used][:wanted]).astype(np.int64)
        offsets = rng.integers(0, self.chunk_size - self.burst_length + 1, size=wanted)
        values = self.value_tokens
        for chunk, offset in zip(chunks.tolist(), offsets.tolist()):
            self._add_noise(chunk * self.chunk_size + offset, self.burst_length, values.start, values.stop)
        self.noise_chunks = tuple(chunks.tolist())
