"""``passkey``: a single needle in a haystack, in the three variants of RULER's S-NIAH.

RULER (Hsieh et al., 2024) tests single-needle retrieval with three haystack /
needle combinations, all of which are here, byte-level (vocabulary 256):

========== ================================================ ======================= =================
variant    RULER task                                       haystack                value
========== ================================================ ======================= =================
repeated   niah_single_1 (the classic passkey)              one repeated paragraph  7-digit number
varied     niah_single_2                                    corpus text             7-digit number
uuid       niah_single_3                                    corpus text             uuid (36 chars)
========== ================================================ ======================= =================

The needle and the question keep RULER's wording, shortened so that either fits
in a 64-byte chunk (RULER's question alone is over 150 bytes).
"""

from __future__ import annotations

import functools

import numpy as np

from ahm.envs.streams import TaskStream, _check_fraction, _check_int, periodic_tokens
from ahm.envs.text_stream import CorpusBytes, corpus_bytes, cyclic_bytes

__all__ = ["PasskeyStream", "PASSKEY_VARIANTS", "KEY_WORDS"]

PASSKEY_VARIANTS = ("repeated", "varied", "uuid")

# RULER's "noise" haystack (niah_single_1): this paragraph repeated.
REPEATED_HAYSTACK = b"The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "

# Needle keys (RULER draws words too); at most 8 letters so a number needle fits in 64 bytes.
KEY_WORDS = (
    "apple", "river", "castle", "garden", "pencil", "window", "rocket", "violin",
    "forest", "candle", "dragon", "harbor", "island", "jacket", "kettle", "lemon",
    "marble", "walnut", "orange", "parrot", "quartz", "saddle", "tiger", "umbrella",
    "valley", "zebra", "yacht", "anchor", "basket", "cactus", "desert", "engine",
    "falcon", "glacier", "hammer", "igloo", "jungle", "koala", "ladder", "meadow",
    "nickel", "oyster", "pepper", "quiver", "rabbit", "salmon", "tunnel", "velvet",
    "wagon", "bridge", "copper", "dolphin", "feather", "ginger", "helmet", "lantern",
    "mirror", "nutmeg", "orchid", "planet", "ribbon", "spider", "teapot", "cobalt",
)  # fmt: skip

# The phrase every needle and question contains. It is kept out of corpus haystacks
# (a corpus that contains it gets "special-magic" instead), so it occurs exactly twice.
RESERVED_PHRASE = b"special magic"

_NEEDLE = {"number": b" One of the special magic numbers for %s is: %s.",
           "uuid": b" One of the special magic uuids for %s is: %s."}
_QUESTION = {"number": b" What is the special magic number for %s? Answer: ",
             "uuid": b" What is the special magic uuid for %s? Answer: "}
_ANSWER_SUFFIX = b"."
_UUID_LEN = 36


@functools.lru_cache(maxsize=4)
def _haystack(source: str) -> CorpusBytes:
    """The corpus's train split with :data:`RESERVED_PHRASE` broken up wherever it occurs."""
    text = corpus_bytes(source, "train")
    if RESERVED_PHRASE not in text.data:
        return text
    data = text.data.replace(RESERVED_PHRASE, b"special-magic")  # same length: doc_starts stay valid
    return CorpusBytes(data, np.frombuffer(data, dtype=np.uint8), text.doc_starts)


def _uuid4(rng: np.random.Generator) -> bytes:
    """A random (version 4) uuid, ``xxxxxxxx-xxxx-4xxx-yxxx-xxxxxxxxxxxx``, as 36 ASCII bytes."""
    b = rng.integers(0, 256, size=16, dtype=np.uint8)
    b[6] = (b[6] & 0x0F) | 0x40  # version 4
    b[8] = (b[8] & 0x3F) | 0x80  # RFC 4122 variant
    h = b.tobytes().hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}".encode()


class PasskeyStream(TaskStream):
    """A single needle (a number or uuid bound to a key word) in a haystack; one question at the end.

    **Description.** Byte-level (``vocab_size`` 256). The haystack is RULER's
    repeated paragraph (``variant="repeated"``) or corpus text read from the start
    of a random document (``"varied"``, ``"uuid"``). One needle sentence,
    ``" One of the special magic numbers for {key} is: {value}."`` (``uuids`` for
    the uuid variant), with ``key`` a word from :data:`KEY_WORDS` and ``value`` a
    ``digits``-digit number (no leading zero) or a uuid, is placed at ``depth``;
    the question ``" What is the special magic number for {key}? Answer: "`` comes
    at the end and the answer is ``value`` followed by ``"."``.

    **Layout** (chunks of C bytes, F = ``n_full_chunks``):

    * the question ends chunk ``F - 2``; chunk ``F - 1`` opens with the answer;
    * the needle ends chunk ``round(depth * (F - 3))``: ``depth=0`` puts it in the
      first chunk, ``depth=1`` in the chunk just before the question (RULER's
      depth is a token fraction; here it is quantised to chunk boundaries);
    * everything else is haystack. The phrase ``"special magic"`` is reserved: it
      occurs exactly twice in the stream, in the needle and in the question.

    **Annotations.** One :class:`Fact` (``key`` = the word's bytes, ``value`` = the
    digits' or uuid's bytes, ``tokens`` = the needle sentence) and one
    :class:`Query` (``cue`` = the question, ``answer`` = all digits / uuid
    characters). The environment scores ``answer[0]``, the first digit (or uuid
    character); the whole value is exposed for exact-match metrics.

    **Arguments.**
        variant: ``"repeated"`` (default), ``"varied"`` or ``"uuid"``, see the module table.
        depth: where the needle is, as a fraction of the haystack in [0, 1]. Default 0.5.
        digits: digits of the number (variants ``repeated`` and ``varied``), 1 to 18. Default 7 (RULER).
        corpus: the corpus of the ``varied`` / ``uuid`` haystacks: ``"stdlib"`` (built in) or a folder
            (see :mod:`ahm.envs.text_corpus`). Default ``"stdlib"``.

    Needs ``chunk_size`` >= the longest needle (59 bytes for 7 digits; 86 for a uuid) and
    ``seq_len`` >= 3 chunks.

    **Chance accuracy.** 1/9 for the first digit (numbers have no leading zero), 1/16 for the
    first uuid character; exact match by chance: 1 / (9 * 10**(digits - 1)), or 2**-122 for a uuid.

    **Memory necessity.** Not strictly necessary: one needle (23 bits for 7 digits) fits in any SSM state, so
    this measures whether the backbone's state keeps it across the haystack, which SSMs typically fail to do
    far beyond their training length; a memory write at the needle makes retrieval length-independent.

    Example:
        >>> s = PasskeyStream(seq_len=4096, chunk_size=64, seed=0, depth=0.25)
        >>> fact, query = s.facts[0], s.queries[0]
        >>> fact.chunk, s.chunk(fact.chunk).astype("uint8").tobytes()
        (15, b' we go. One of the special magic numbers for helmet is: 6732655.')
        >>> query.chunk, s.chunk(query.chunk)[-21:].astype("uint8").tobytes()
        (62, b' for helmet? Answer: ')
        >>> s.chunk(query.chunk + 1)[:8].astype("uint8").tobytes(), bytes(query.answer)
        (b'6732655.', b'6732655')
    """

    memory_necessity = (
        "Not strictly necessary: one needle (23 bits for 7 digits) fits in any SSM state, so this measures "
        "whether the backbone's state keeps it across the haystack, which SSMs typically fail to do far beyond "
        "their training length; a memory write at the needle makes retrieval length-independent."
    )

    def __init__(self, seq_len: int, chunk_size: int, seed: int, *, variant: str = "repeated", depth: float = 0.5,
                 digits: int = 7, corpus: str = "stdlib") -> None:
        self.variant, self.depth, self.digits, self.corpus = variant, depth, digits, corpus
        self.vocab_size = 256
        super().__init__(seq_len, chunk_size, seed)

    def _build(self, rng: np.random.Generator) -> None:
        if self.variant not in PASSKEY_VARIANTS:
            raise ValueError(f"variant must be one of {PASSKEY_VARIANTS}, got {self.variant!r}")
        self.depth = _check_fraction("depth", self.depth)
        self.digits = _check_int("digits", self.digits, 1)
        if self.digits > 18:
            raise ValueError(f"digits must be at most 18 (an int64), got {self.digits}")
        if not isinstance(self.corpus, str):
            raise ValueError(f"corpus must be 'stdlib' or a folder path (str), got {self.corpus!r}")
        kind = "uuid" if self.variant == "uuid" else "number"
        value_len = _UUID_LEN if kind == "uuid" else self.digits
        longest_word = max(len(w) for w in KEY_WORDS)
        needle_len = len(_NEEDLE[kind] % (b"w" * longest_word, b"0" * value_len))
        question_len = len(_QUESTION[kind] % (b"w" * longest_word))
        need = max(needle_len, question_len, value_len + len(_ANSWER_SUFFIX))
        if self.chunk_size < need:
            alt = " or use variant='varied'" if kind == "uuid" else " or lower digits"
            raise ValueError(f"passkey variant={self.variant!r}: chunk_size={self.chunk_size} is smaller than the "
                             f"needle ({need} bytes); raise chunk_size to >= {need}{alt}")
        if self.n_full_chunks < 3:
            raise ValueError(f"passkey: seq_len={self.seq_len} holds {self.n_full_chunks} full chunks of "
                             f"{self.chunk_size}; needle, question and answer need 3: raise seq_len or lower "
                             f"chunk_size")
        self.chance_accuracy = 1 / 16 if kind == "uuid" else 1 / 9

        if self.variant == "repeated":
            self._pattern = np.frombuffer(REPEATED_HAYSTACK, dtype=np.uint8)
        else:
            self._text = _haystack(self.corpus)
            self._offset = int(self._text.doc_starts[rng.integers(len(self._text.doc_starts))])
        key = KEY_WORDS[rng.integers(len(KEY_WORDS))].encode()
        if kind == "uuid":
            value = _uuid4(rng)
        else:
            value = str(rng.integers(10 ** (self.digits - 1), 10**self.digits)).encode()
        question_chunk = self.n_full_chunks - 2
        needle_chunk = round(self.depth * (question_chunk - 1))
        fact_id = self._add_fact(needle_chunk, tuple(_NEEDLE[kind] % (key, value)), tuple(key), tuple(value), "target")
        self._add_query(question_chunk, tuple(_QUESTION[kind] % key), tuple(value), fact_id,
                        answer_suffix=tuple(_ANSWER_SUFFIX))

    def _filler(self, start: int, end: int) -> np.ndarray:
        if self.variant == "repeated":
            return periodic_tokens(self._pattern, start, end)
        return cyclic_bytes(self._text.array, self._offset, start, end)
