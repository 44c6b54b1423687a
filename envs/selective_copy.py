"""``copy``: the Mamba paper's selective copying (Gu & Dao, 2023, Sec. 4.1.1), adapted to chunks."""

from __future__ import annotations

import numpy as np

from ahm.envs.streams import TaskStream, _check_int

__all__ = ["SelectiveCopyStream", "NOISE_TOKEN"]

NOISE_TOKEN = 0
PAPER_DATA_TOKENS = 16  # Gu & Dao (2023), Sec. 4.1.1: vocabulary 16, 16 data tokens, length 4,096


class SelectiveCopyStream(TaskStream):
    """Data tokens scattered through noise, to be reproduced in order after copy markers.

    **Description.** As in the Mamba paper (and ``benchmarks/mamba_selective_copying.py``):
    token 0 is noise, ``vocab_size - 1`` the copy marker, and the ``data_tokens``
    data tokens are drawn uniformly (with repetition) from ``1 .. vocab_size - 2``
    and lie at random positions in a noise region; then at each marker the next
    token is the next data token, in order. The paper's setting (vocabulary 16,
    16 data tokens) is the default.

    **Layout** (adapted to chunks; D = ``data_tokens``, F = ``n_full_chunks``):

    * data region, chunks ``[0, F - 1 - D)``: each data token is the LAST token of a
      distinct random chunk (the paper's random positions, quantised to chunk ends);
      every other token is noise;
    * copy phase, chunks ``F - 1 - D + i`` for i = 0 .. D-1: chunk ``F - 1 - D + i`` ends with
      the marker and chunk ``F - D + i`` opens with data token i, then noise. Unlike the
      paper, where the copy phase is D markers in a row and the outputs are never inputs,
      each answer is in the stream (teacher forcing) before the next marker, as the chunk
      contract requires; the order to reproduce is still only in the data region.

    **Annotations.** Fact i: ``key=()`` (the binding is the order), ``value=(data_i,)``,
    ``tokens=(data_i,)``. Query i: ``cue=(marker,)``, ``answer=(data_i,)``, ``fact_id=i``.

    **Arguments.**
        vocab_size: V >= 3: noise, marker and V - 2 data tokens. Default 16.
        data_tokens: D. Default ``None``: 16 (the paper), or fewer when the stream has fewer than
            ``2 * 16 + 1`` full chunks (as many as fit, at least 1); an explicit D needs ``2 D + 1`` full chunks.

    **Chance accuracy.** 1 / (V - 2) (1/14 by default), a uniform guess over data tokens.

    **Memory necessity.** Not at the paper's scale: 16 tokens (64 bits) fit in the state, and Mamba solves the
    task at length 4,096 (99.8%, Gu & Dao Table 1); memory is needed only when the backbone's state does not
    keep them over far longer noise, which long streams test.

    Example:
        >>> s = SelectiveCopyStream(seq_len=4096, chunk_size=64, seed=0)
        >>> len(s.facts), s.chance_accuracy == 1 / 14
        (16, True)
        >>> [s.chunk(q.chunk + 1)[0] for q in s.queries] == [f.value[0] for f in s.facts]
        True
    """

    memory_necessity = (
        "Not at the paper's scale: 16 tokens (64 bits) fit in the state, and Mamba solves the task at length 4,096 "
        "(99.8%, Gu & Dao Table 1); memory is needed only when the backbone's state does not keep them over far "
        "longer noise, which long streams test."
    )

    def __init__(self, seq_len: int, chunk_size: int, seed: int, *, vocab_size: int = 16,
                 data_tokens: int | None = None) -> None:
        self.vocab_size, self.data_tokens = vocab_size, data_tokens
        super().__init__(seq_len, chunk_size, seed)

    @property
    def marker(self) -> int:
        """The copy marker token, ``vocab_size - 1``."""
        return self.vocab_size - 1

    def _build(self, rng: np.random.Generator) -> None:
        self.vocab_size = _check_int("vocab_size", self.vocab_size, 3)
        if self.chunk_size < 2:
            raise ValueError(f"copy: chunk_size={self.chunk_size} must be >= 2 (an answer and the next marker); "
                             f"raise chunk_size")
        full = self.n_full_chunks
        if self.data_tokens is None:
            data = min(PAPER_DATA_TOKENS, (full - 1) // 2)
            if data < 1:
                raise ValueError(f"copy: seq_len={self.seq_len} holds {full} full chunks of {self.chunk_size}; one "
                                 f"data token needs 3: raise seq_len or lower chunk_size")
        else:
            data = _check_int("data_tokens", self.data_tokens, 1)
            if 2 * data + 1 > full:
                raise ValueError(f"copy: data_tokens={data} needs {2 * data + 1} full chunks (one per data token, "
                                 f"one per marker, one for the last answer) but seq_len={self.seq_len} holds {full} "
                                 f"of {self.chunk_size}; lower data_tokens, raise seq_len or lower chunk_size")
        self.data_tokens = data
        self.chance_accuracy = 1 / (self.vocab_size - 2)

        region = full - 1 - data
        chunks = np.sort(rng.choice(region, size=data, replace=False))
        tokens = rng.integers(1, self.vocab_size - 1, size=data)
        for chunk, token in zip(chunks.tolist(), tokens.tolist()):
            self._add_fact(chunk, (token,), (), (token,), "target")
        for i, fact in enumerate(self.facts):
            self._add_query(region + i, (self.marker,), fact.value, fact.fact_id)

    def _filler(self, start: int, end: int) -> np.ndarray:
        return np.full(end - start, NOISE_TOKEN, dtype=np.int64)
