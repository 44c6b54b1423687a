"""``forget``: associative recall where keys are re-assigned later, so stale entries must be forgotten."""

from __future__ import annotations

import numpy as np

from ahm.envs.mqar import MQARStream
from ahm.envs.streams import _check_fraction, _check_int

__all__ = ["ForgetStream"]


class ForgetStream(MQARStream):
    """MQAR in which some keys receive a new value later in the stream; the answer is the most recent value.

    **Description.** As :class:`~ahm.envs.mqar.MQARStream` (same vocabulary,
    filler and regions), but a share ``reassign_fraction`` of the ``num_pairs``
    keys is assigned ``assignments`` distinct values at different fact chunks.
    Every assignment happens before the gap, so each query's answer is the last
    value its key received; the earlier ones are stale, in exactly the format of
    the answer, and a memory that keeps them (or retrieves the first match)
    answers wrong.

    **Layout.** As mqar: each assignment is a fact ``(key, value)`` ending a
    distinct random chunk of the context region, in a random order (a key's
    re-assignment can follow it at once or much later); queries ``(key,)`` end
    chunks of the query region and the next chunk opens with the answer.

    **Annotations.** Facts of kind ``"stale"`` (re-assigned later; ``superseded_by``
    is the fact that re-assigns it) and ``"target"`` (a key's last value). A query
    points at its key's target fact, and ``Query.stale_fact_ids`` lists the key's
    stale facts, so the rate of stale answers can be measured.

    **Arguments.** Those of mqar (``num_pairs`` counts distinct keys; the automatic
    value counts every assignment's chunk), plus:
        reassign_fraction: share of the keys that are re-assigned, in [0, 1]; rounded, at least one
            key when positive. Default 0.5.
        assignments: values a re-assigned key receives in all, >= 2. Default 2 (one re-assignment).

    **Chance accuracy.** 1/H, as mqar; a model that returns a random value it has seen for
    the key gets 1/``assignments`` on re-assigned keys.

    **Memory necessity.** As mqar, plus the memory must overwrite or forget: a write-only store that keeps
    every assignment holds stale values in exactly the answer's format, and fills its capacity faster.

    Example:
        >>> s = ForgetStream(seq_len=8192, chunk_size=64, seed=0)
        >>> stale = [f for f in s.facts if f.kind == "stale"]
        >>> all(s.facts[f.superseded_by].key == f.key for f in stale), len(stale) > 0
        (True, True)
    """

    memory_necessity = (
        "As mqar, plus the memory must overwrite or forget: a write-only store that keeps every assignment holds "
        "stale values in exactly the answer's format, and fills its capacity faster."
    )

    def __init__(self, seq_len: int, chunk_size: int, seed: int, *, reassign_fraction: float = 0.5,
                 assignments: int = 2, vocab_size: int = 8192, num_pairs: int | None = None,
                 num_queries: int | None = None, context_fraction: float = 0.5, query_fraction: float = 0.25,
                 filler: str = "random") -> None:
        self.reassign_fraction, self.assignments = reassign_fraction, assignments
        super().__init__(seq_len, chunk_size, seed, vocab_size=vocab_size, num_pairs=num_pairs,
                         num_queries=num_queries, context_fraction=context_fraction, query_fraction=query_fraction,
                         filler=filler)

    def _validate(self) -> None:
        super()._validate()
        self.reassign_fraction = _check_fraction("reassign_fraction", self.reassign_fraction)
        self.assignments = _check_int("assignments", self.assignments, 2)

    def _n_reassigned(self, num_pairs: int) -> int:
        if self.reassign_fraction == 0:
            return 0
        return max(1, round(self.reassign_fraction * num_pairs))

    def _describe_facts(self, num_pairs: int) -> str:
        return (f"{super()._describe_facts(num_pairs)} (reassign_fraction={self.reassign_fraction}, "
                f"assignments={self.assignments})")

    def _n_facts(self, num_pairs: int) -> int:
        return super()._n_facts(num_pairs) + self._n_reassigned(num_pairs) * (self.assignments - 1)

    def _assignment_counts(self, rng: np.random.Generator, num_pairs: int) -> np.ndarray:
        counts = np.ones(num_pairs, dtype=np.int64)
        counts[rng.choice(num_pairs, size=self._n_reassigned(num_pairs), replace=False)] = self.assignments
        return counts
