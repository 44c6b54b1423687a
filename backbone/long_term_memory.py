"""Long-term memory: M compressed (key, value) entries per sequence.

The large level of the hierarchical memory (proposal Sec. 2.1, item 3). Keys and
values are stored through a codec (:mod:`ahm.backbone.codecs`): ``none``,
``int8``, ``pq``, ``autoencoder`` or ``hash``. Capacity M per sequence is fixed at
construction (1M entries at d = 32 with ``int8`` keys and values is about 100 MB
per sequence); the storage is allocated once and written in place.

Glossary: b sequences, M capacity, q queries per sequence, k results, dk / dv
key / value dims.

Bookkeeping, all (b, M): ``occupied``; ``write_step`` (the clock when written, -1
empty); ``uses`` (reads whose top-1 hit this was); ``last_read`` (-1 never); and
``count`` (b,). The clock (b,) advances with :meth:`LongTermMemory.tick`.

Operations:

* :meth:`~LongTermMemory.write` one entry per sequence (from a working-memory
  eviction, or directly); into the first free slot, or, when the memory is full,
  over the entry chosen by the **eviction rule** (``eviction``): ``"oldest"``
  (smallest write_step; the lowest slot among ties) or ``"least_used"`` (fewest
  uses; the oldest among those, then the lowest slot). :meth:`~LongTermMemory.extend`
  writes many entries per sequence into free slots (bulk loading).
* :meth:`~LongTermMemory.search` top-k keys by inner product: exact through
  :mod:`ahm.kernels.retrieval` (blocked: never a (q x M) score matrix), or
  approximate through a faiss IVF / HNSW index per sequence (``search``), used
  once every sequence holds ``ann_min_entries`` entries. Approximate candidates
  (``ann_oversample * k`` of them) are re-scored exactly against the stored codes,
  so a stale index entry can cost recall but never returns a wrong score or an
  empty slot.
* :meth:`~LongTermMemory.read` decodes the values of the hits and combines them
  (top-1 or softmax over the k hits); gradients reach the query.
* :meth:`~LongTermMemory.forget` by index, :meth:`~LongTermMemory.forget_oldest`,
  :meth:`~LongTermMemory.forget_least_used`.

Stored codes never carry gradients (the memory is a store, not a graph). The
faiss index is a cache: it is not saved and is rebuilt from the codes on demand.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor

from .codecs import CodecOptions, VectorCodec, import_faiss, make_codec
from .config import dataclass_from_dict

__all__ = ["EVICTION_RULES", "SEARCH_MODES", "LTMConfig", "LTMHits", "LTMRead", "LTMWrite", "LongTermMemory"]

EVICTION_RULES = ("oldest", "least_used")
SEARCH_MODES = ("exact", "ivf", "hnsw")
_INT64_MAX = torch.iinfo(torch.int64).max


@dataclass(frozen=True)
class LTMConfig:
    """Shape, codec, eviction rule and search of a long-term memory."""

    capacity: int = 4096
    """Entries per sequence, M (tested to 1M)."""
    key_dim: int = 32
    """Width dk of keys (and queries)."""
    value_dim: int = 64
    """Width dv of values."""
    codec: str = "int8"
    """Codec of keys and values: ``none``, ``int8``, ``pq``, ``autoencoder`` or ``hash``."""
    codec_options: CodecOptions = field(default_factory=CodecOptions)
    """Parameters of the codec."""
    eviction: str = "oldest"
    """What a write into a full memory replaces: ``oldest`` or ``least_used`` (module doc)."""
    search: str = "exact"
    """``exact``, or approximate through faiss ``ivf`` / ``hnsw`` (needs the ``ann`` extra)."""
    ann_min_entries: int = 100_000
    """Approximate search is used only once every sequence holds this many entries."""
    ann_nlist: int = 0
    """``ivf``: inverted lists; 0 means ``4 sqrt(n)`` (faiss's rule of thumb) at build time."""
    ann_nprobe: int = 16
    """``ivf``: lists visited per query."""
    hnsw_m: int = 32
    """``hnsw``: neighbours per node."""
    hnsw_ef_search: int = 64
    """``hnsw``: candidate list size at search time."""
    ann_oversample: int = 2
    """Approximate candidates per result, re-scored exactly."""

    def __post_init__(self) -> None:
        for name in ("capacity", "key_dim", "value_dim", "ann_min_entries", "ann_nprobe", "hnsw_m",
                     "hnsw_ef_search", "ann_oversample"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"LTMConfig.{name} must be a positive int, got {value!r}")
        if not isinstance(self.ann_nlist, int) or self.ann_nlist < 0:
            raise ValueError(f"LTMConfig.ann_nlist must be an int >= 0 (0 = automatic), got {self.ann_nlist!r}")
        if self.eviction not in EVICTION_RULES:
            raise ValueError(f"LTMConfig.eviction must be one of {EVICTION_RULES}, got {self.eviction!r}")
        if self.search not in SEARCH_MODES:
            raise ValueError(f"LTMConfig.search must be one of {SEARCH_MODES}, got {self.search!r}")
        if self.search != "exact" and self.codec == "hash":
            raise ValueError("LTMConfig: the hash codec searches by Hamming distance; use search='exact' with it")
        if not isinstance(self.codec_options, CodecOptions):
            raise ValueError(f"LTMConfig.codec_options must be a CodecOptions, got {type(self.codec_options).__name__}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LTMConfig:
        return dataclass_from_dict(cls, data)


class LTMHits(NamedTuple):
    """Result of :meth:`LongTermMemory.search`, best first."""

    scores: Tensor
    """(b, q, k) float32: similarity by the codec (inner product with the decoded key; hash: cos estimate)."""
    indices: Tensor
    """(b, q, k) int64 slots; -1 (score -inf) where fewer than k entries exist."""


class LTMRead(NamedTuple):
    """Result of :meth:`LongTermMemory.read`."""

    value: Tensor
    """(b, dv): the combined decoded values; zeros for sequences that did not read."""
    weights: Tensor
    """(b, k): weight of each hit (one-hot for ``top1``); zeros where not read or no hit."""
    indices: Tensor
    """(b, k) int64: the hits' slots (-1 none)."""
    scores: Tensor
    """(b, k): inner products of the query with the hits' decoded keys (-inf where no hit)."""


class LTMWrite(NamedTuple):
    """Result of :meth:`LongTermMemory.write`."""

    slot: Tensor
    """(b,) int64: where each entry went, -1 where the sequence did not write."""
    displaced: Tensor
    """(b,) bool: the memory was full and the eviction rule replaced an entry."""


class LongTermMemory:
    """M compressed key-value entries per sequence, batched over b sequences (module doc).

    Args:
        batch: number of sequences b.
        config: capacity, dims, codec, eviction rule, search.
        key_codec, value_codec: codecs to share (e.g. :class:`AHMModel`'s, whose parameters
            train); by default new ones from ``config``.
        device: where the storage lives.
    """

    TENSORS = ("occupied", "write_step", "uses", "last_read", "count", "clock")
    """Bookkeeping tensors of the state; the codes are ``key_codes`` / ``value_codes``."""

    def __init__(self, batch: int, config: LTMConfig | None = None, key_codec: VectorCodec | None = None,
                 value_codec: VectorCodec | None = None, device: torch.device | str | None = None) -> None:
        config = config or LTMConfig()
        if not isinstance(batch, int) or batch < 1:
            raise ValueError(f"LongTermMemory: batch must be a positive int, got {batch!r}")
        self.batch, self.config = batch, config
        self.key_codec = key_codec if key_codec is not None else make_codec(
            config.codec, config.key_dim, config.codec_options).to(device)
        self.value_codec = value_codec if value_codec is not None else make_codec(
            config.codec, config.value_dim, config.codec_options).to(device)
        for what, codec, dim in (("key", self.key_codec, config.key_dim), ("value", self.value_codec,
                                                                             config.value_dim)):
            if codec.name != config.codec or codec.dim != dim:
                raise ValueError(
                    f"LongTermMemory: the {what} codec is {codec.name!r} of dim {codec.dim}, the config asks for "
                    f"{config.codec!r} of dim {dim}"
                )
        if config.search != "exact":
            import_faiss()  # say now, not at the first large search, that the extra is missing
        m = config.capacity
        kw = {"device": device}
        self.key_codes = tuple(torch.zeros(batch, m, *f.shape, dtype=f.dtype, **kw) for f in self.key_codec.fields)
        self.value_codes = tuple(
            torch.zeros(batch, m, *f.shape, dtype=f.dtype, **kw) for f in self.value_codec.fields)
        self.occupied = torch.zeros(batch, m, dtype=torch.bool, **kw)  # (b, M)
        self.write_step = torch.full((batch, m), -1, dtype=torch.int64, **kw)  # (b, M)
        self.uses = torch.zeros(batch, m, dtype=torch.int64, **kw)  # (b, M)
        self.last_read = torch.full((batch, m), -1, dtype=torch.int64, **kw)  # (b, M)
        self.count = torch.zeros(batch, dtype=torch.int64, **kw)  # (b,)
        self.clock = torch.zeros(batch, dtype=torch.int64, **kw)  # (b,)
        self._ann: _AnnIndex | None = None
        # 1 + the highest slot ever written since the last reset: writes fill the lowest free
        # slots, so exact search scans only [0, high_water) of a memory that is not yet full.
        self._high_water = 0

    # ---------------------------------------------------------------- queries
    @property
    def capacity(self) -> int:
        return self.config.capacity

    @property
    def device(self) -> torch.device:
        return self.occupied.device

    @property
    def bytes_per_entry(self) -> int:
        """Bytes one stored entry costs: key code + value code (bookkeeping not counted)."""
        return self.key_codec.bytes_per_vector + self.value_codec.bytes_per_vector

    def nbytes(self) -> Tensor:
        """(b,) int64: bytes held by the stored entries of each sequence (count x bytes_per_entry)."""
        return self.count * self.bytes_per_entry

    def fill(self) -> Tensor:
        """(b,) float32: count / capacity."""
        return self.count.float() / self.capacity

    def read_mask(self) -> Tensor:
        """(b,) bool: sequences that may read or forget (at least one entry)."""
        return self.count > 0

    def decode_keys(self, indices: Tensor) -> Tensor:
        """Decoded keys of slots ``indices`` (b, ...) int64 (no -1) -> (b, ..., dk) float32."""
        return self.key_codec.decode(self._gather(self.key_codes, indices))

    def decode_values(self, indices: Tensor) -> Tensor:
        """Decoded values of slots ``indices`` (b, ...) int64 (no -1) -> (b, ..., dv) float32."""
        return self.value_codec.decode(self._gather(self.value_codes, indices))

    # ---------------------------------------------------------------- writing
    def fit_codecs(self, keys: Tensor, values: Tensor, generator: torch.Generator | None = None) -> None:
        """Fit the key / value codecs on samples keys (n, dk), values (n, dv) (needed by ``pq``).

        Raises:
            ValueError: the memory already holds entries (their codes would no longer decode; reset() first).
        """
        if bool((self.count > 0).any()):
            raise ValueError("LongTermMemory.fit_codecs: the memory holds entries encoded with the current codecs; "
                             "fit codecs only on an empty memory (call reset() first)")
        self.key_codec.fit(keys, generator)
        self.value_codec.fit(values, generator)

    def write(self, key: Tensor, value: Tensor, active: Tensor | None = None) -> LTMWrite:
        """Store one entry per active sequence: key (b, dk), value (b, dv), active (b,) bool (default all).

        Goes to the first free slot; in a full memory, over the entry the eviction rule picks
        (``displaced``). The entry starts with write_step = clock, uses = 0, last_read = -1.
        """
        active = self._check_active(active, "write")
        self._check_vec(key, (self.batch, self.config.key_dim), "write: key")
        self._check_vec(value, (self.batch, self.config.value_dim), "write: value")
        none = torch.full((self.batch,), -1, dtype=torch.int64, device=self.device)
        if not bool(active.any()):
            return LTMWrite(none, torch.zeros_like(active))
        full = self.count >= self.capacity
        slot = (~self.occupied).to(torch.uint8).argmax(1)  # first free slot
        displaced = full & active
        if bool(displaced.any()):
            slot = torch.where(full, self._victim(), slot)
        bi = active.nonzero().flatten()
        self._store(bi, slot[bi], key[bi], value[bi])
        return LTMWrite(torch.where(active, slot, none), displaced)

    def extend(self, keys: Tensor, values: Tensor) -> Tensor:
        """Store n entries per sequence in its first n free slots: keys (b, n, dk), values (b, n, dv).

        Returns the slots (b, n) int64, in order. Raises ValueError if a sequence has fewer than n
        free slots (nothing is evicted here; use :meth:`write` for that).
        """
        self._check_vec(keys, (self.batch, keys.shape[1] if keys.dim() == 3 else -1, self.config.key_dim),
                        "extend: keys")
        n = keys.shape[1]
        self._check_vec(values, (self.batch, n, self.config.value_dim), "extend: values")
        free = ~self.occupied
        n_free = free.sum(1)
        if bool((n_free < n).any()):
            raise ValueError(
                f"LongTermMemory.extend: {n} entries per sequence but only {n_free.tolist()} free slots; "
                "forget entries first, or write() one at a time to evict by the eviction rule"
            )
        pick = free & (free.cumsum(1) <= n)  # the first n free slots of each row
        bi, si = pick.nonzero(as_tuple=True)  # row-major: each row's slots ascending
        self._store(bi, si, keys.reshape(-1, keys.shape[-1]), values.reshape(-1, values.shape[-1]))
        return si.view(self.batch, n)

    # ---------------------------------------------------------------- search and read
    @torch.no_grad()
    def search(self, queries: Tensor, k: int, exact: bool | None = None) -> LTMHits:
        """Top-k entries by key similarity for queries (b, q, dk) -> :class:`LTMHits` (b, q, k).

        ``exact=None`` follows the config (approximate once every sequence holds
        ``ann_min_entries``); True forces exact search, False forces the faiss index.
        """
        self._check_vec(queries, (self.batch, queries.shape[1] if queries.dim() == 3 else -1, self.config.key_dim),
                        "search: queries")
        if not isinstance(k, int) or k < 1:
            raise ValueError(f"LongTermMemory.search: k must be a positive int, got {k!r}")
        if exact is None:
            exact = self.config.search == "exact" or int(self.count.min()) < self.config.ann_min_entries
        if not exact:
            if self.config.search == "exact":
                raise ValueError("LongTermMemory.search: exact=False needs config.search 'ivf' or 'hnsw'")
            return self._ann_search(queries.float(), k)
        return self._exact_search(queries, k)

    def _exact_search(self, queries: Tensor, k: int) -> LTMHits:
        hw = max(1, self._high_water)
        codes = tuple(c[:, :hw] for c in self.key_codes)
        return LTMHits(*self.key_codec.search(queries, codes, k, self.occupied[:, :hw]))

    def read(self, query: Tensor, indices: Tensor, active: Tensor | None = None, mode: str = "soft",
             inv_temperature: float | Tensor = 1.0) -> LTMRead:
        """Read the hits ``indices`` (b, k) (from :meth:`search`) with query (b, dk) for active (b,) sequences.

        Weights: one-hot on the hit with the largest inner product with its decoded key (``top1``),
        or softmax of ``inv_temperature`` times those inner products (``soft``). The top-1 hit
        counts a use (uses += 1, last_read = clock).

        Raises:
            ValueError: an active sequence holds no entry.
        """
        if mode not in ("top1", "soft"):
            raise ValueError(f"LongTermMemory.read: mode must be 'top1' or 'soft', got {mode!r}")
        active = self._check_active(active, "read")
        self._check_vec(query, (self.batch, self.config.key_dim), "read: query")
        if indices.dim() != 2 or indices.shape[0] != self.batch or indices.dtype != torch.int64:
            raise ValueError(f"LongTermMemory.read: indices must be int64 (b, k), got {indices.dtype} "
                             f"{tuple(indices.shape)}")
        empty = active & (self.count == 0)
        if bool(empty.any()):
            raise ValueError(
                f"LongTermMemory.read: sequences {empty.nonzero().flatten().tolist()} read from an empty long-term "
                "memory; read only where read_mask() is True (MemoryObservation.ltm_fill > 0)"
            )
        valid = indices >= 0  # (b, k)
        safe = indices.clamp(min=0)
        scores = torch.einsum("bkd,bd->bk", self.decode_keys(safe), query.float())  # (b, k), grads reach query
        masked = scores.masked_fill(~valid, float("-inf"))
        best = masked.argmax(1)  # (b,)
        if mode == "top1":
            weights = torch.nn.functional.one_hot(best, indices.shape[1]).float()
        else:
            logits = (scores * inv_temperature).masked_fill(~valid & active[:, None], float("-inf"))
            weights = torch.softmax(logits, dim=1)
        reads = active & valid.any(1)
        weights = weights * reads[:, None]
        value = torch.einsum("bk,bkd->bd", weights, self.decode_values(safe))
        bi = reads.nonzero().flatten()
        top = indices[bi, best[bi]]
        self.uses[bi, top] += 1
        self.last_read[bi, top] = self.clock[bi]
        return LTMRead(value, weights, torch.where(valid, indices, -1), masked)

    def retrieve(self, query: Tensor, k: int, active: Tensor | None = None, mode: str = "soft",
                 inv_temperature: float | Tensor = 1.0) -> LTMRead:
        """:meth:`search` then :meth:`read`: query (b, dk) -> :class:`LTMRead` over the top-k."""
        hits = self.search(query[:, None, :], k)
        return self.read(query, hits.indices[:, 0], active, mode, inv_temperature)

    # ---------------------------------------------------------------- forgetting
    def forget(self, index: Tensor) -> None:
        """Forget slot ``index`` (b,) int64 per sequence (-1 = none).

        Raises:
            IndexError: an index outside [-1, M). ValueError: the slot is empty.
        """
        if not isinstance(index, Tensor) or index.shape != (self.batch,) or index.dtype != torch.int64:
            raise ValueError(f"LongTermMemory.forget: index must be an int64 tensor of shape ({self.batch},)")
        bad = (index < -1) | (index >= self.capacity)
        if bool(bad.any()):
            raise IndexError(f"LongTermMemory.forget: indices {index[bad].tolist()} out of range for capacity "
                             f"{self.capacity}; use 0..{self.capacity - 1}, or -1 for none")
        bi = (index >= 0).nonzero().flatten()
        si = index[bi]
        empty = ~self.occupied[bi, si]
        if bool(empty.any()):
            raise ValueError(f"LongTermMemory.forget: slots {si[empty].tolist()} of sequences "
                             f"{bi[empty].tolist()} are empty; forget only occupied slots")
        self._clear(bi, si)

    def forget_oldest(self, active: Tensor | None = None) -> Tensor:
        """Forget the oldest entry (smallest write_step, lowest slot among ties) of active (b,) sequences.

        Returns the forgotten slots (b,), -1 where inactive. Raises ValueError for an empty active sequence.
        """
        return self._forget_by(self._oldest(self.occupied), active, "forget_oldest")

    def forget_least_used(self, active: Tensor | None = None) -> Tensor:
        """Forget the least used entry (then oldest, then lowest slot) of active (b,) sequences; as forget_oldest."""
        return self._forget_by(self._least_used(), active, "forget_least_used")

    def forget_nearest(self, key: Tensor, active: Tensor | None = None) -> Tensor:
        """Forget the entry whose key is nearest to ``key`` (b, dk) (the :meth:`search` top-1) of active sequences.

        The update of a key-value store: an entry about to be superseded by a new one with
        this key is removed first. Returns the forgotten slots (b,), -1 where inactive;
        raises ValueError for an empty active sequence, as forget_oldest.
        """
        self._check_vec(key, (self.batch, self.config.key_dim), "forget_nearest: key")
        slot = self.search(key.detach()[:, None, :], 1).indices[:, 0, 0]
        return self._forget_by(slot, active, "forget_nearest")

    # ---------------------------------------------------------------- time and reset
    def tick(self, steps: int = 1) -> None:
        """Advance every sequence's clock by ``steps``."""
        if not isinstance(steps, int) or steps < 0:
            raise ValueError(f"LongTermMemory.tick: steps must be a non-negative int, got {steps!r}")
        self.clock += steps

    def reset(self, which: Tensor | None = None) -> None:
        """Empty the sequences where ``which`` (b,) bool is True (default all); their clocks restart at 0."""
        which = self._check_active(which, "reset")
        w = which[:, None]
        for t in (*self.key_codes, *self.value_codes):
            t[which] = 0
        self.occupied.masked_fill_(w, False)
        self.write_step.masked_fill_(w, -1)
        self.uses.masked_fill_(w, 0)
        self.last_read.masked_fill_(w, -1)
        self.count.masked_fill_(which, 0)
        self.clock.masked_fill_(which, 0)
        self._ann = None
        if bool(which.all()):
            self._high_water = 0

    def rebuild_caches(self) -> None:
        """Recompute what is derived from the state tensors (after they were replaced, e.g. by a load)."""
        used = self.occupied.any(0).nonzero()
        self._high_water = int(used.max()) + 1 if used.numel() else 0
        self._ann = None

    # ---------------------------------------------------------------- internals
    def _gather(self, codes: tuple[Tensor, ...], indices: Tensor) -> tuple[Tensor, ...]:
        bi = torch.arange(self.batch, device=indices.device).view(self.batch, *([1] * (indices.dim() - 1)))
        return tuple(c[bi, indices] for c in codes)

    def _store(self, bi: Tensor, si: Tensor, keys: Tensor, values: Tensor) -> None:
        """Encode and store entries at (bi, si); bookkeeping restarts. Encodes first, so errors change nothing."""
        key_codes, value_codes = self.key_codec.encode(keys), self.value_codec.encode(values)
        for store, code in zip((*self.key_codes, *self.value_codes), (*key_codes, *value_codes)):
            store[bi, si] = code.to(store.device)
        new = ~self.occupied[bi, si]
        self.count.index_add_(0, bi, new.long())
        self.occupied[bi, si] = True
        self.write_step[bi, si] = self.clock[bi]
        self.uses[bi, si] = 0
        self.last_read[bi, si] = -1
        if si.numel():
            self._high_water = max(self._high_water, int(si.max()) + 1)
        if self._ann is not None:
            self._ann.add(bi, si, self.key_codec.decode(key_codes))

    def _clear(self, bi: Tensor, si: Tensor) -> None:
        for store in (*self.key_codes, *self.value_codes):
            store[bi, si] = 0
        self.count.index_add_(0, bi, -self.occupied[bi, si].long())
        self.occupied[bi, si] = False
        self.write_step[bi, si] = -1
        self.uses[bi, si] = 0
        self.last_read[bi, si] = -1

    def _oldest(self, candidates: Tensor) -> Tensor:
        """(b,) slot with the smallest write_step among ``candidates`` (b, M) bool; the lowest slot on ties."""
        return self.write_step.masked_fill(~candidates, _INT64_MAX).argmin(1)

    def _least_used(self) -> Tensor:
        least = self.uses.masked_fill(~self.occupied, _INT64_MAX).amin(1, keepdim=True)  # (b, 1)
        return self._oldest(self.occupied & (self.uses == least))

    def _victim(self) -> Tensor:
        """(b,) the slot the eviction rule replaces in a full memory."""
        return self._oldest(self.occupied) if self.config.eviction == "oldest" else self._least_used()

    def _forget_by(self, slot: Tensor, active: Tensor | None, what: str) -> Tensor:
        active = self._check_active(active, what)
        empty = active & (self.count == 0)
        if bool(empty.any()):
            raise ValueError(f"LongTermMemory.{what}: sequences {empty.nonzero().flatten().tolist()} hold no entry; "
                             "forget only where read_mask() is True")
        bi = active.nonzero().flatten()
        self._clear(bi, slot[bi])
        return torch.where(active, slot, -1)

    def _ann_search(self, queries: Tensor, k: int) -> LTMHits:
        if self._ann is None or self._ann.needs_rebuild(self.count):
            self._ann = _AnnIndex(self)
        n = k * self.config.ann_oversample
        ids = self._ann.search(queries, n).sort(-1).values  # (b, q, n), -1 first
        dup = torch.zeros_like(ids, dtype=torch.bool)
        dup[..., 1:] = ids[..., 1:] == ids[..., :-1]
        safe = ids.clamp(min=0)
        live = self.occupied.gather(1, safe.flatten(1)).view_as(ids)
        valid = (ids >= 0) & ~dup & live
        scores = torch.einsum("bqnd,bqd->bqn", self.decode_keys(safe), queries).masked_fill(~valid, float("-inf"))
        scores, order = torch.topk(scores, k, dim=-1)  # n = k * oversample >= k
        idx = torch.gather(ids, -1, order)
        if bool((torch.isneginf(scores[..., 0]) & (self.count > 0)[:, None]).any()):
            # Every candidate was stale for some query: fall back to exact search for this call.
            return self._exact_search(queries, k)
        return LTMHits(scores, torch.where(torch.isneginf(scores), -1, idx))

    def _check_active(self, active: Tensor | None, what: str) -> Tensor:
        if active is None:
            return torch.ones(self.batch, dtype=torch.bool, device=self.device)
        if not isinstance(active, Tensor) or active.shape != (self.batch,) or active.dtype != torch.bool:
            raise ValueError(f"LongTermMemory.{what}: active must be a bool tensor of shape ({self.batch},)")
        return active

    def _check_vec(self, x: Tensor, shape: tuple[int, ...], what: str) -> None:
        ok = isinstance(x, Tensor) and x.is_floating_point() and x.dim() == len(shape) and all(
            want < 0 or got == want for got, want in zip(x.shape, shape))
        if not ok:
            got = f"{x.dtype} {tuple(x.shape)}" if isinstance(x, Tensor) else type(x).__name__
            want = ", ".join("n" if s < 0 else str(s) for s in shape)
            raise ValueError(f"LongTermMemory.{what} must be a float tensor of shape ({want}), got {got}")


class _AnnIndex:
    """One faiss index per sequence over the decoded keys of a :class:`LongTermMemory`.

    Built from the stored codes; kept in step with writes (``add_with_ids`` of the new
    entry under its slot id). Forgotten or overwritten entries stay in the index until
    the next rebuild; re-scoring in ``_ann_search`` masks them. A rebuild happens once
    an index holds more than twice the live entries (plus 1024).
    """

    _DECODE_BLOCK = 65536

    def __init__(self, ltm: LongTermMemory) -> None:
        self.faiss = import_faiss()
        self.config = ltm.config
        self.indexes = []
        self.ntotal = torch.zeros(ltm.batch, dtype=torch.int64)
        for i in range(ltm.batch):  # one index per sequence: faiss indexes are not batched
            slots = ltm.occupied[i].nonzero().flatten()
            parts = [ltm.key_codec.decode(tuple(c[i, slots[s : s + self._DECODE_BLOCK]] for c in ltm.key_codes))
                     for s in range(0, slots.numel(), self._DECODE_BLOCK)]
            x = np.ascontiguousarray(torch.cat(parts).cpu().numpy(), dtype=np.float32)
            index = self._new_index(x)
            index.add_with_ids(x, slots.cpu().numpy().astype(np.int64))
            self.indexes.append(index)
            self.ntotal[i] = slots.numel()

    def _new_index(self, x: np.ndarray) -> Any:
        faiss, c, d = self.faiss, self.config, x.shape[1]
        if c.search == "hnsw":
            hnsw = faiss.IndexHNSWFlat(d, c.hnsw_m, faiss.METRIC_INNER_PRODUCT)
            hnsw.hnsw.efSearch = c.hnsw_ef_search
            return faiss.IndexIDMap(hnsw)  # faiss's Python wrapper keeps hnsw alive
        nlist = c.ann_nlist or max(1, int(4 * math.sqrt(x.shape[0])))
        nlist = min(nlist, max(1, x.shape[0] // 39))  # faiss warns below 39 training points per list
        quantizer = faiss.IndexFlatIP(d)
        index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
        index.cp.seed = c.codec_options.seed
        train = x
        if x.shape[0] > 64 * nlist:  # k-means needs ~30-256 points per list (faiss's guidance); more only costs
            g = torch.Generator().manual_seed(c.codec_options.seed)
            train = x[torch.randperm(x.shape[0], generator=g)[: 64 * nlist].sort().values.numpy()]
        index.train(np.ascontiguousarray(train))
        index.nprobe = c.ann_nprobe
        return index

    def needs_rebuild(self, count: Tensor) -> bool:
        return bool((self.ntotal > 2 * count.cpu() + 1024).any())

    def add(self, bi: Tensor, si: Tensor, keys: Tensor) -> None:
        """Add decoded keys (n, dk) of entries (bi, si)."""
        keys_np = np.ascontiguousarray(keys.detach().float().cpu().numpy())
        bi_np, si_np = bi.cpu().numpy(), si.cpu().numpy().astype(np.int64)
        for i in np.unique(bi_np):
            rows = bi_np == i
            self.indexes[i].add_with_ids(keys_np[rows], si_np[rows])
            self.ntotal[i] += int(rows.sum())

    def search(self, queries: Tensor, n: int) -> Tensor:
        """queries (b, q, dk) -> candidate slots (b, q, n) int64, -1 where missing."""
        q_np = queries.detach().float().cpu().numpy()
        out = [torch.from_numpy(index.search(np.ascontiguousarray(q_np[i]), n)[1]) for i, index in
               enumerate(self.indexes)]
        return torch.stack(out).to(queries.device)
