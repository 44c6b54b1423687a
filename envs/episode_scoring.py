"""What one step of b episodes is scored by: the answer at the boundary and the facts the memory's entries hold.

:class:`~ahm.envs.episode_batch.EpisodeBatch` hands these to
:class:`~ahm.rewards.StepContext` next to its operation counts: the answer's loss and
entropy with and without the memory retrieved at this boundary (:func:`score_answers`,
step 3 of :mod:`ahm.envs.episode_batch`), the read weight on the entries that hold the
asked fact (:func:`fact_read_weight`), and whether an entry holds a fact that is never
asked or asked later (:func:`usefulness`, for the ``discard`` reward). Entries are
followed by their *origin*, the chunk that wrote them (:class:`EntryOrigins`), so the
fact an entry holds is ``fact_at[origin]`` and the memory itself never stores ground truth.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ahm.backbone import AHMModel
from ahm.envs.streams import FACT_KINDS, TaskStream

__all__ = ["Annotations", "AnswerScores", "score_answers", "EntryOrigins", "usefulness", "next_asked_tokens"]


class Annotations(NamedTuple):
    """One episode's ground truth, laid out per chunk (what rewards, info and the oracle read)."""

    target: np.ndarray
    """(n,) int64: the token scored at chunk t's boundary (a query's first answer token; text: the next token), -1."""
    target_fact: np.ndarray
    """(n,) int64: the fact a query at chunk t asks about, -1."""
    target_fact_chunk: np.ndarray
    """(n,) int64: the chunk of that fact (where its entry would be written), -1."""
    is_query: np.ndarray
    """(n,) bool: a query cue ends at chunk t."""
    fact_at: np.ndarray
    """(n,) int64: the fact that ends at chunk t, -1."""
    fact_kind: np.ndarray
    """(n,) int64: its kind as an index into ``FACT_KINDS`` (-1 none)."""
    fact_query_chunk: np.ndarray
    """(n,) int64: the chunk of the first query about the fact that ends at chunk t; -1 if it is never asked
    (or no fact ends there): what the ``discard`` reward calls needed (asked later) and useless (never asked)."""
    n_targets: int
    last_chunk: int
    """The chunk after whose step the episode terminates (``stream.last_query_chunk``)."""

    def keep_labels(self) -> np.ndarray:
        """(n,) float32 hindsight labels of the backbone's keep head: 1 where chunk t's entry is needed later
        (a fact ends at t and a later query asks for it: a target, not a decoy, a stale assignment or filler),
        else 0. Known only after the episode (privileged, like Belady's future accesses): they train the head in
        the supervised phase and never reach an observation."""
        return (self.fact_query_chunk > np.arange(len(self.fact_query_chunk))).astype(np.float32)

    def reuse_distance(self) -> np.ndarray:
        """(n,) int64: chunks from t to the first query that asks for the fact ending at t; -1 where none."""
        n = len(self.fact_query_chunk)
        return np.where(self.keep_labels() > 0, self.fact_query_chunk - np.arange(n), -1)

    @classmethod
    def of_stream(cls, stream: TaskStream) -> Annotations:
        """The annotations of ``stream``'s n chunks (its facts and queries; text: the next token at each boundary)."""
        n = stream.n_chunks
        target, target_fact, target_fact_chunk = (np.full(n, -1, dtype=np.int64) for _ in range(3))
        is_query = np.zeros(n, dtype=bool)
        fact_at, fact_kind, fact_query_chunk = (np.full(n, -1, dtype=np.int64) for _ in range(3))
        for f in stream.facts:
            fact_at[f.chunk] = f.fact_id
            fact_kind[f.chunk] = FACT_KINDS.index(f.kind) if f.kind in FACT_KINDS else len(FACT_KINDS)
        if stream.queries:
            for q in stream.queries:
                target[q.chunk], target_fact[q.chunk], is_query[q.chunk] = q.answer[0], q.fact_id, True
                target_fact_chunk[q.chunk] = stream.facts[q.fact_id].chunk
                first = fact_query_chunk[target_fact_chunk[q.chunk]]
                fact_query_chunk[target_fact_chunk[q.chunk]] = q.chunk if first < 0 else min(first, q.chunk)
        else:  # text: the first token of the next chunk, at every boundary but the last
            starts = np.arange(1, n) * stream.chunk_size
            target[: n - 1] = stream.tokens(0, stream.seq_len)[starts] if n > 1 else target[:0]
        n_targets = int((target >= 0).sum())
        return cls(target, target_fact, target_fact_chunk, is_query, fact_at, fact_kind, fact_query_chunk,
                   max(1, n_targets), stream.last_query_chunk)


def next_asked_tokens(stream: TaskStream) -> np.ndarray:
    """(n,) int64 hindsight labels of the backbone's ask head: at chunk t's boundary, the first token of the fact
    that the first query after t (its cue ending in a later chunk) asks for; -1 where no query follows (and in
    text). Where facts open with a kind marker (Decoy) that token is the marker of the asked kind, which the
    stream's opening cue names; where they open with their key it is the next key asked, which nothing before the
    query tells. Privileged like :meth:`Annotations.keep_labels`: training labels only."""
    n = stream.n_chunks
    out = np.full(n, -1, dtype=np.int64)
    if not stream.queries:
        return out
    queries = sorted(stream.queries, key=lambda q: q.chunk)
    chunks = np.array([q.chunk for q in queries])
    first = np.array([stream.facts[q.fact_id].tokens[0] for q in queries], dtype=np.int64)
    following = np.searchsorted(chunks, np.arange(n), side="right")  # the first query whose chunk is > t
    has = following < len(queries)
    out[has] = first[following[has]]
    return out


class AnswerScores(NamedTuple):
    """The answer prediction at the boundary of b rows, each (b,) (:mod:`ahm.envs.episode_batch`, step 3)."""

    correct: np.ndarray
    """bool: the readout's argmax is the target."""
    loss: np.ndarray
    """float64: -log p(target) from ``model.readout(h_last, r_t)``."""
    loss_without_retrieval: np.ndarray
    """float64: the same with ``r_t = 0`` (``state`` integration: equal to ``loss``)."""
    entropy: np.ndarray
    """float64: entropy of the readout's distribution."""
    entropy_without_retrieval: np.ndarray
    """float64: the same with ``r_t = 0``."""


def score_answers(model: AHMModel, last_hidden: Tensor, retrieved: Tensor, target: np.ndarray, scored: np.ndarray,
                  integration: str) -> AnswerScores:
    """Score the answers of b rows, each (b,) array 0 where not ``scored`` (b,) bool.

    ``last_hidden`` (b, D), ``retrieved`` (b, R) the memory read at the boundary, ``target`` (b,) int64 token ids;
    ``integration`` is the backbone's (``readout`` also scores the counterfactual r_t = 0).
    """
    b = len(scored)
    zeros = np.zeros(b)
    if not scored.any():
        return AnswerScores(np.zeros(b, dtype=bool), zeros, zeros, zeros, zeros)
    idx = np.nonzero(scored)[0]
    idx_t = torch.from_numpy(idx).to(last_hidden.device)
    last_hidden, retrieved, target = last_hidden[idx_t], retrieved[idx_t], target[idx]
    logits = model.readout(last_hidden[:, None, :], retrieved)[:, 0].float()  # (r, V)
    tgt = torch.from_numpy(target).to(last_hidden.device)[:, None]
    logp = F.log_softmax(logits, dim=-1)
    loss = -logp.gather(1, tgt)[:, 0]
    entropy = -(logp.exp() * logp).sum(-1)
    if integration == "readout":
        logp0 = F.log_softmax(model.readout(last_hidden[:, None, :], torch.zeros_like(retrieved))[:, 0].float(), -1)
        loss0, entropy0 = -logp0.gather(1, tgt)[:, 0], -(logp0.exp() * logp0).sum(-1)
    else:  # state integration: r_t reaches only the next chunk, so the answer here does not depend on it
        loss0, entropy0 = loss, entropy
    correct = logits.argmax(-1) == tgt[:, 0]
    out = AnswerScores(np.zeros(b, dtype=bool), zeros.copy(), zeros.copy(), zeros.copy(), zeros.copy())
    for full, part in zip(out, (correct, loss.double(), loss0.double(), entropy.double(), entropy0.double())):
        full[idx] = part.cpu().numpy()
    return out


def usefulness(origin: np.ndarray, t: np.ndarray, fact_at: np.ndarray,
               fact_query_chunk: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(useless, needed) (b, m) bool of entries written at chunks ``origin`` (b, m) (-1 none), seen at chunk
    t (b,): useless holds a fact no query ever asks (stale, decoy); needed, one a query after chunk t asks.

    ``fact_at`` and ``fact_query_chunk`` (b, n) are the episodes' annotations (:class:`Annotations` of the same names).
    """
    chunk = np.maximum(origin, 0)
    rows = np.arange(len(origin))[:, None]
    fact = (origin >= 0) & (fact_at[rows, chunk] >= 0)
    asked_at = fact_query_chunk[rows, chunk]
    return fact & (asked_at < 0), fact & (asked_at > t[:, None])


class EntryOrigins:
    """The chunk that wrote each memory entry, per row: ``wm`` (b, K) and ``ltm`` (b, M) int64, -1 for an empty
    slot. Origins move with evictions to the LTM (:meth:`step`)."""

    def __init__(self, batch: int, wm_slots: int, ltm_capacity: int) -> None:
        self.wm = np.full((batch, wm_slots), -1, dtype=np.int64)
        self.ltm = np.full((batch, ltm_capacity), -1, dtype=np.int64)

    def reset(self, rows: np.ndarray) -> None:
        """Empty the memories of ``rows``."""
        self.wm[rows], self.ltm[rows] = -1, -1

    def step(self, t: np.ndarray, write: np.ndarray, forget: np.ndarray, displaced: np.ndarray, moved: np.ndarray,
             moved_slot: np.ndarray, ltm_forgot: np.ndarray) -> np.ndarray:
        """Follow one step at chunks ``t`` (b,) and return the (b, 5) origins of the entries it touched (-1 none).

        Args, all (b,): ``write`` / ``forget`` the WM slot written / emptied (-1 none); ``displaced`` the write
        displaced an entry, ``moved`` which went to LTM slot ``moved_slot``; ``ltm_forgot`` the LTM slot
        ``ltm_forget`` emptied (-1 none).
        """
        rows = np.arange(len(t))
        forgets, writes = forget >= 0, write >= 0
        moved_origin = self.wm[rows, np.maximum(write, 0)]
        # Entries leaving the memory, by the chunk that wrote them: a forgotten WM slot, a displaced entry that is
        # dropped, the LTM entry ltm_forget empties, and the one a move into a full LTM replaces.
        # Columns: those four, then this step's write (origin t), for the discard reward.
        left = np.full((len(t), 5), -1, dtype=np.int64)
        left[:, 0] = np.where(forgets, self.wm[rows, np.maximum(forget, 0)], -1)
        left[:, 1] = np.where(displaced & ~moved, moved_origin, -1)
        self.wm[rows[forgets], forget[forgets]] = -1
        lf_rows = np.nonzero(ltm_forgot >= 0)[0]
        left[lf_rows, 2] = self.ltm[lf_rows, ltm_forgot[lf_rows]]
        self.ltm[lf_rows, ltm_forgot[lf_rows]] = -1
        left[:, 4] = np.where(writes, t, -1)
        if moved.any():
            mrows = np.nonzero(moved)[0]
            left[mrows, 3] = self.ltm[mrows, moved_slot[mrows]]  # >= 0: the LTM was full
            self.ltm[mrows, moved_slot[mrows]] = moved_origin[mrows]
        self.wm[rows[writes], write[writes]] = t[writes]
        return left

    def fact_read_weight(self, read: Any, fact_chunk: np.ndarray) -> np.ndarray:
        """(b,) read weight on entries written at ``fact_chunk`` (b,), the chunk of each row's target fact (-1 none).

        ``read`` is the step's :class:`~ahm.backbone.MemoryReadout` or
        :class:`~ahm.backbone.memory_fast.FastReadout`; call it before :meth:`step` (origins as before the step).
        """
        rows = np.arange(len(fact_chunk))[:, None]
        fact_chunk = fact_chunk[:, None]  # (b, 1)
        host = lambda x: x.cpu().numpy() if isinstance(x, Tensor) else x  # a MemoryReadout or a FastReadout
        wm = (host(read.wm_weights) * (self.wm == fact_chunk)).sum(1)
        idx = host(read.ltm_indices)
        origin = np.where(idx >= 0, self.ltm[rows, np.maximum(idx, 0)], -1)
        ltm = (host(read.ltm_weights) * (origin == fact_chunk)).sum(1)
        return np.where(fact_chunk[:, 0] >= 0, wm + ltm, 0.0)

    def ground_truth(self, ann: Mapping[str, np.ndarray], is_query: np.ndarray, t: np.ndarray) -> dict[str, Any]:
        """The task's annotations of each row's current chunk t (b,), for the oracle and metrics (never observed).

        ``ann`` holds the episodes' (b, n) :class:`Annotations` arrays by name; ``is_query`` (b, n) bool.
        """
        rows = np.arange(len(t))
        query_fact = np.where(is_query[rows, t], ann["target_fact"][rows, t], -1)
        origin = self.wm
        wm_fact = np.where(origin >= 0, ann["fact_at"][rows[:, None], np.maximum(origin, 0)], -1)
        in_ltm = np.zeros(len(t), dtype=bool)
        for r in np.nonzero(query_fact >= 0)[0]:  # at most one row in a hundred or so
            lo = self.ltm[r]
            facts = np.where(lo >= 0, ann["fact_at"][r, np.maximum(lo, 0)], -1)
            in_ltm[r] = bool((facts == query_fact[r]).any())
        return {
            "fact_id": ann["fact_at"][rows, t],
            "fact_kind": ann["fact_kind"][rows, t],
            "query_fact_id": query_fact,
            "answer": ann["target"][rows, t],
            "wm_fact_id": wm_fact,
            "query_fact_in_wm": (query_fact >= 0) & (wm_fact == query_fact[:, None]).any(1),
            "query_fact_in_ltm": in_ltm,
        }
