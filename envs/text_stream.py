"""``text``: a byte stream from a text corpus, for the language-modelling reward.

Also home of :func:`corpus_bytes`, the read-only byte view of a corpus that the
passkey haystacks share with this task.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import numpy as np

from ahm.envs.streams import TaskStream, _check_int
from ahm.envs.text_corpus import DOC_SEPARATOR, load_corpus

__all__ = ["CorpusBytes", "corpus_bytes", "TextStream", "SPLITS"]

SPLITS = ("train", "heldout")


class CorpusBytes(NamedTuple):
    """One split of a corpus as a single byte string: each document followed by ``DOC_SEPARATOR``."""

    data: bytes
    """The concatenated documents."""
    array: np.ndarray
    """(len(data),) uint8, a read-only view of ``data``."""
    doc_starts: np.ndarray
    """(n_documents,) int64: where each document starts in ``data``."""


@functools.lru_cache(maxsize=4)
def corpus_bytes(source: str = "stdlib", split: str = "train", max_documents: int = 0) -> CorpusBytes:
    """The ``split`` of :func:`ahm.envs.text_corpus.load_corpus` ``(source, max_documents=...)``, cached.

    Loaded on first use and kept for the process (the built-in corpus: about 30 MB,
    2 s to read once); its size does not depend on any stream's length.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    corpus = load_corpus(source, max_documents=max_documents)
    docs = corpus.train if split == "train" else corpus.heldout
    sep = bytes([DOC_SEPARATOR])
    data = b"".join([part for d in docs for part in (memoryview(d), sep)])  # one copy of the text, no more
    lengths = np.array([len(d) + 1 for d in docs], dtype=np.int64)
    doc_starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    return CorpusBytes(data, np.frombuffer(data, dtype=np.uint8), doc_starts)


def cyclic_bytes(array: np.ndarray, offset: int, start: int, end: int) -> np.ndarray:
    """``array`` read cyclically from ``offset``: positions ``start .. end - 1`` as (end - start,) int64."""
    n = len(array)
    first = (offset + start) % n
    if first + (end - start) <= n:
        return array[first : first + end - start].astype(np.int64)
    return array[(first + np.arange(end - start)) % n].astype(np.int64)


class TextStream(TaskStream):
    """Bytes of a text corpus, read from the start of a random document, for language modelling.

    **Description.** The stream is the corpus split read in order, cyclically,
    from the start of a document drawn from the seed (documents end in byte 0).
    There are no facts and no queries: the environment scores next-byte
    prediction (bits per byte) with the language-modelling reward, and the
    episode runs to the last chunk (``last_query_chunk == n_chunks - 1``).

    **Layout.** Chunk i is bytes ``[i * C, (i + 1) * C)`` of that reading; nothing
    is aligned to chunk boundaries.

    **Arguments.**
        corpus: ``"stdlib"`` (the built-in corpus: this interpreter's standard
            library sources, no download) or a folder of ``.txt`` / ``.md`` / ``.py``
            files. Default ``"stdlib"``.
        split: ``"train"`` or ``"heldout"`` (documents split by path hash, see
            :mod:`ahm.envs.text_corpus`). Default ``"train"``. A stream longer than
            the split (the built-in held-out split is about 1.4 MB) wraps around.
        max_documents: use only the first N documents in sorted order (0: all).

    **Chance accuracy.** 1/256, a uniform guess over bytes (the LM reward uses bits per byte instead).

    **Memory necessity.** Not a recall test: most next-byte prediction is local, and memory helps only where a
    document repeats text (identifiers, imports, code) from further back than the state retains.

    Example:
        >>> s = TextStream(seq_len=4096, chunk_size=256, seed=0, max_documents=20)
        >>> s.chunk(0).shape, s.vocab_size, len(s.queries)
        ((256,), 256, 0)
    """

    memory_necessity = (
        "Not a recall test: most next-byte prediction is local, and memory helps only where a document repeats "
        "text (identifiers, imports, code) from further back than the state retains."
    )

    def __init__(self, seq_len: int, chunk_size: int, seed: int, *, corpus: str = "stdlib", split: str = "train",
                 max_documents: int = 0) -> None:
        self.corpus, self.split, self.max_documents = corpus, split, max_documents
        self.vocab_size = 256
        self.chance_accuracy = 1 / 256
        super().__init__(seq_len, chunk_size, seed)

    def _build(self, rng: np.random.Generator) -> None:
        if not isinstance(self.corpus, str):
            raise ValueError(f"corpus must be 'stdlib' or a folder path (str), got {self.corpus!r}")
        if self.split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {self.split!r}")
        _check_int("max_documents", self.max_documents, 0)
        self._text = corpus_bytes(self.corpus, self.split, self.max_documents)
        self.offset = int(self._text.doc_starts[rng.integers(len(self._text.doc_starts))])

    def _filler(self, start: int, end: int) -> np.ndarray:
        return cyclic_bytes(self._text.array, self.offset, start, end)
