"""Working memory: K (key, value) slots per sequence with per-slot bookkeeping.

The small, fast, uncompressed level of the hierarchical memory (proposal
Sec. 2.1, item 2): ``{(k_i, v_i)}_{i=1..K}`` per sequence, batched over b
sequences. Every operation takes one argument per sequence ((b,) slot ids, -1 =
nothing for that sequence) and is vectorised over the batch.

Glossary: b sequences, K slots, dk key dim, dv value dim.

Bookkeeping per slot, all (b, K): ``occupied``; ``write_step`` (the clock when
written, -1 if empty); ``age`` = clock - write_step (steps since the write, 0 if
empty); ``uses`` (reads whose top-1 slot this was, since the write); ``last_read``
(the clock at the last such read, -1 never). The clock (b,) counts steps (chunks)
and advances with :meth:`WorkingMemory.tick`.

Writes replace whole tensors instead of updating them in place, so gradients
flow from what is read back to what was written (K is small; the copy is cheap).
:meth:`WorkingMemory.detach_` cuts that graph for truncated backpropagation.

Invalid operations raise: a slot id outside ``[-1, K)`` (IndexError), forgetting
or evicting an empty slot, or reading for a sequence whose memory is empty
(ValueError). :meth:`WorkingMemory.read_mask` and :attr:`occupied` say what is valid.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

__all__ = ["WMEntry", "WMRead", "WorkingMemory", "READ_MODES"]

READ_MODES = ("top1", "soft")
"""``top1``: the value of the best-matching slot; ``soft``: softmax attention over occupied slots."""


class WMEntry(NamedTuple):
    """Entries taken out of the working memory, one per sequence (see :meth:`WorkingMemory.evict`)."""

    key: Tensor
    """(b, dk); zeros where ``valid`` is False."""
    value: Tensor
    """(b, dv); zeros where ``valid`` is False."""
    valid: Tensor
    """(b,) bool: an entry was taken for this sequence."""
    uses: Tensor
    """(b,) int64: its use count."""
    write_step: Tensor
    """(b,) int64: the clock when it was written (-1 where not valid)."""


class WMRead(NamedTuple):
    """The result of :meth:`WorkingMemory.read`."""

    value: Tensor
    """(b, dv): the value read; zeros for sequences that did not read."""
    weights: Tensor
    """(b, K): attention weights over slots (one-hot for ``top1``); zeros where not read."""
    slot: Tensor
    """(b,) int64: the top-1 slot, -1 where not read."""
    score: Tensor
    """(b,): the top-1 similarity (inner product), -inf where not read."""


def _check_slot(slot: Tensor, batch: int, slots: int, what: str) -> None:
    if not isinstance(slot, Tensor) or slot.shape != (batch,) or slot.dtype != torch.int64:
        got = f"{slot.dtype} {tuple(slot.shape)}" if isinstance(slot, Tensor) else type(slot).__name__
        raise ValueError(f"{what}: slot must be an int64 tensor of shape ({batch},), got {got}")
    bad = (slot < -1) | (slot >= slots)
    if bool(bad.any()):
        seqs = bad.nonzero().flatten().tolist()
        raise IndexError(
            f"{what}: slot ids {slot[bad].tolist()} (sequences {seqs}) are out of range for a working memory "
            f"with {slots} slots; use 0..{slots - 1}, or -1 for no operation"
        )


class WorkingMemory:
    """K key-value slots per sequence, batched over b sequences (module doc).

    Example::

        >>> import torch
        >>> wm = WorkingMemory(batch=2, slots=4, key_dim=3, value_dim=2)
        >>> wm.write(torch.tensor([0, -1]), torch.ones(2, 3), torch.ones(2, 2))
        >>> wm.occupied.sum(1).tolist()
        [1, 0]
        >>> wm.read(torch.ones(2, 3), mode="top1", active=torch.tensor([True, False])).slot.tolist()
        [0, -1]
    """

    def __init__(self, batch: int, slots: int, key_dim: int, value_dim: int,
                 device: torch.device | str | None = None, dtype: torch.dtype = torch.float32) -> None:
        for name, v in (("batch", batch), ("slots", slots), ("key_dim", key_dim), ("value_dim", value_dim)):
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"WorkingMemory: {name} must be a positive int, got {v!r}")
        self.batch, self.slots, self.key_dim, self.value_dim = batch, slots, key_dim, value_dim
        kw = {"device": device}
        self.keys = torch.zeros(batch, slots, key_dim, dtype=dtype, **kw)  # (b, K, dk)
        self.values = torch.zeros(batch, slots, value_dim, dtype=dtype, **kw)  # (b, K, dv)
        self.occupied = torch.zeros(batch, slots, dtype=torch.bool, **kw)  # (b, K)
        self.write_step = torch.full((batch, slots), -1, dtype=torch.int64, **kw)  # (b, K)
        self.uses = torch.zeros(batch, slots, dtype=torch.int64, **kw)  # (b, K)
        self.last_read = torch.full((batch, slots), -1, dtype=torch.int64, **kw)  # (b, K)
        self.clock = torch.zeros(batch, dtype=torch.int64, **kw)  # (b,)

    TENSORS = ("keys", "values", "occupied", "write_step", "uses", "last_read", "clock")
    """Names of the tensors that make up the state (what save / load round-trip)."""

    # ---------------------------------------------------------------- queries
    @property
    def device(self) -> torch.device:
        return self.keys.device

    @property
    def age(self) -> Tensor:
        """(b, K) int64: steps since each slot was written; 0 for empty slots."""
        return torch.where(self.occupied, self.clock[:, None] - self.write_step, torch.zeros_like(self.write_step))

    @property
    def count(self) -> Tensor:
        """(b,) int64: occupied slots per sequence."""
        return self.occupied.sum(1)

    def read_mask(self) -> Tensor:
        """(b,) bool: sequences that may read (at least one occupied slot)."""
        return self.occupied.any(1)

    def similarity(self, query: Tensor) -> Tensor:
        """Inner product of each slot's key with the query: query (b, dk) -> (b, K), -inf for empty slots."""
        return self._raw_scores(query).masked_fill(~self.occupied, float("-inf"))

    def _raw_scores(self, query: Tensor) -> Tensor:
        """(b, K) inner products with every slot, empty ones included (finite, so gradients stay finite)."""
        self._check_vec(query, self.key_dim, "similarity: query")
        return torch.einsum("bkd,bd->bk", self.keys, query.to(self.keys.dtype))

    def nbytes(self) -> Tensor:
        """(b,) int64: bytes held by occupied entries (key + value at the storage dtype)."""
        per_entry = (self.key_dim + self.value_dim) * self.keys.element_size()
        return self.count * per_entry

    # ---------------------------------------------------------------- operations
    def write(self, slot: Tensor, key: Tensor, value: Tensor) -> None:
        """Write (key, value) into ``slot`` per sequence, overwriting what was there.

        Args:
            slot: (b,) int64, -1 = no write for that sequence.
            key: (b, dk). value: (b, dv).

        Bookkeeping of the written slots restarts: write_step = clock, uses = 0, last_read = -1.
        Move a displaced entry elsewhere with :meth:`evict` first.
        """
        _check_slot(slot, self.batch, self.slots, "WorkingMemory.write")
        self._check_vec(key, self.key_dim, "write: key")
        self._check_vec(value, self.value_dim, "write: value")
        sel = self._one_hot(slot)  # (b, K)
        self.keys = torch.where(sel[..., None], key.to(self.keys.dtype)[:, None, :], self.keys)
        self.values = torch.where(sel[..., None], value.to(self.values.dtype)[:, None, :], self.values)
        self.occupied = self.occupied | sel
        self.write_step = torch.where(sel, self.clock[:, None], self.write_step)
        self.uses = self.uses.masked_fill(sel, 0)
        self.last_read = self.last_read.masked_fill(sel, -1)

    def read(self, query: Tensor, mode: str = "soft", active: Tensor | None = None,
             inv_temperature: float | Tensor = 1.0) -> WMRead:
        """Read with ``query`` (b, dk) from the occupied slots of the ``active`` sequences.

        Args:
            query: (b, dk).
            mode: ``"top1"`` (value of the slot with the largest inner product) or ``"soft"``
                (softmax over occupied slots of ``inv_temperature * <query, key>``).
            active: (b,) bool, sequences that read (default all).
            inv_temperature: scalar (float or 0-d tensor, may require grad) for ``soft``.

        The top-1 slot of each reading sequence counts a use (uses += 1, last_read = clock).

        Raises:
            ValueError: an active sequence has an empty working memory.
        """
        if mode not in READ_MODES:
            raise ValueError(f"WorkingMemory.read: mode must be one of {READ_MODES}, got {mode!r}")
        active = self._check_active(active, "read")
        empty = active & ~self.read_mask()
        if bool(empty.any()):
            raise ValueError(
                f"WorkingMemory.read: sequences {empty.nonzero().flatten().tolist()} read from an empty working "
                "memory; read only where read_mask() is True (MemoryObservation.wm_occupied.any(1))"
            )
        raw = self._raw_scores(query)  # (b, K)
        best_score, best = raw.masked_fill(~self.occupied, float("-inf")).max(1)  # (b,)
        if mode == "top1":
            weights = torch.nn.functional.one_hot(best, self.slots).to(self.values.dtype)
        else:
            # Rows that do not read get uniform logits (then zero weight), never a row of -inf.
            logits = (raw * inv_temperature).masked_fill(~self.occupied & active[:, None], float("-inf"))
            weights = torch.softmax(logits, dim=1)
        weights = weights * active[:, None]
        value = torch.einsum("bk,bkd->bd", weights, self.values)
        hit = torch.nn.functional.one_hot(best, self.slots).bool() & active[:, None]  # (b, K)
        self.uses = self.uses + hit.long()
        self.last_read = torch.where(hit, self.clock[:, None], self.last_read)
        return WMRead(
            value,
            weights,
            torch.where(active, best, torch.full_like(best, -1)),
            torch.where(active, best_score.detach(), torch.full_like(best_score, float("-inf")).detach()),
        )

    def forget(self, slot: Tensor) -> None:
        """Empty ``slot`` (b,) per sequence (-1 = none). Raises ValueError if a named slot is empty."""
        self._take(slot, "forget")

    def evict(self, slot: Tensor) -> WMEntry:
        """Take the entry out of ``slot`` (b,) per sequence (-1 = none) and return it.

        Raises:
            ValueError: a named slot is empty (check :attr:`occupied`).
        """
        return self._take(slot, "evict")

    def tick(self, steps: int = 1) -> None:
        """Advance every sequence's clock by ``steps`` (one step per chunk in :class:`AHMModel`)."""
        if not isinstance(steps, int) or steps < 0:
            raise ValueError(f"WorkingMemory.tick: steps must be a non-negative int, got {steps!r}")
        self.clock = self.clock + steps

    def reset(self, which: Tensor | None = None) -> None:
        """Empty the memory of the sequences where ``which`` (b,) bool is True (default all), clocks to 0."""
        which = self._check_active(which, "reset")
        w = which[:, None]
        self.keys = self.keys.masked_fill(w[..., None], 0.0)
        self.values = self.values.masked_fill(w[..., None], 0.0)
        self.occupied = self.occupied & ~w
        self.write_step = self.write_step.masked_fill(w, -1)
        self.uses = self.uses.masked_fill(w, 0)
        self.last_read = self.last_read.masked_fill(w, -1)
        self.clock = self.clock.masked_fill(which, 0)

    def detach_(self) -> None:
        """Cut the stored keys and values from the autograd graph (truncated backpropagation)."""
        self.keys, self.values = self.keys.detach(), self.values.detach()

    # ---------------------------------------------------------------- helpers
    def _take(self, slot: Tensor, what: str) -> WMEntry:
        _check_slot(slot, self.batch, self.slots, f"WorkingMemory.{what}")
        sel = self._one_hot(slot)  # (b, K)
        named = slot >= 0
        empty = named & ~(sel & self.occupied).any(1)
        if bool(empty.any()):
            seqs = empty.nonzero().flatten().tolist()
            raise ValueError(
                f"WorkingMemory.{what}: slots {slot[empty].tolist()} of sequences {seqs} are empty; "
                f"{what} only occupied slots (see occupied), or pass -1 for no operation"
            )
        w = sel.to(self.keys.dtype)
        entry = WMEntry(
            torch.einsum("bk,bkd->bd", w, self.keys),
            torch.einsum("bk,bkd->bd", w, self.values),
            named,
            (self.uses * sel).sum(1),
            torch.where(named, (self.write_step * sel).sum(1), torch.full_like(slot, -1)),
        )
        self.keys = self.keys.masked_fill(sel[..., None], 0.0)
        self.values = self.values.masked_fill(sel[..., None], 0.0)
        self.occupied = self.occupied & ~sel
        self.write_step = self.write_step.masked_fill(sel, -1)
        self.uses = self.uses.masked_fill(sel, 0)
        self.last_read = self.last_read.masked_fill(sel, -1)
        return entry

    def _one_hot(self, slot: Tensor) -> Tensor:
        """(b,) slot ids with -1 -> (b, K) bool selection."""
        return torch.nn.functional.one_hot(slot.clamp(min=0), self.slots).bool() & (slot >= 0)[:, None]

    def _check_vec(self, x: Tensor, dim: int, what: str) -> None:
        if not isinstance(x, Tensor) or x.shape != (self.batch, dim) or not x.is_floating_point():
            got = f"{x.dtype} {tuple(x.shape)}" if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"WorkingMemory.{what} must be a float tensor of shape ({self.batch}, {dim}), got {got}")

    def _check_active(self, active: Tensor | None, what: str) -> Tensor:
        if active is None:
            return torch.ones(self.batch, dtype=torch.bool, device=self.device)
        if not isinstance(active, Tensor) or active.shape != (self.batch,) or active.dtype != torch.bool:
            got = f"{active.dtype} {tuple(active.shape)}" if isinstance(active, Tensor) else type(active).__name__
            raise ValueError(f"WorkingMemory.{what}: active must be a bool tensor of shape ({self.batch},), got {got}")
        return active
