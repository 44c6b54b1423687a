"""The memory-operation contract between a policy and the hierarchical memory (proposal Sec. 2.1, item 4).

One module that every layer imports: the operation codes, :class:`MemoryOps` (what a
policy decides per chunk), :class:`MemoryObservation` (what it sees), :class:`OpMasks`
(which operation values are valid now), and :data:`MemoryPolicy`, the tensor-level
policy type ``MemoryObservation -> MemoryOps``. The environments' action layout
(``ahm.envs.spaces.ActionLayout``) maps its integer actions onto :class:`MemoryOps`.

Glossary: b sequences, K working-memory slots, F observation features, k_obs the LTM
similarities shown.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor

__all__ = [
    "RETRIEVE_NONE", "RETRIEVE_WM", "RETRIEVE_LTM", "RETRIEVE_BOTH",
    "LTM_FORGET_NONE", "LTM_FORGET_OLDEST", "LTM_FORGET_LEAST_USED", "LTM_FORGET_NEAREST",
    "MemoryOps", "MemoryObservation", "OpMasks", "MemoryPolicy", "DefaultController", "NullController",
]

RETRIEVE_NONE, RETRIEVE_WM, RETRIEVE_LTM, RETRIEVE_BOTH = 0, 1, 2, 3
"""Values of :attr:`MemoryOps.retrieve`."""
LTM_FORGET_NONE, LTM_FORGET_OLDEST, LTM_FORGET_LEAST_USED, LTM_FORGET_NEAREST = 0, 1, 2, 3
"""Values of :attr:`MemoryOps.ltm_forget`."""


class MemoryOps(NamedTuple):
    """The memory operations of one chunk, one int64 (b,) tensor per operation.

    Each field's meaning is documented below; :meth:`HierarchicalMemory.apply` applies
    them in the order retrieve, forget (WM slot, then LTM), evict-and-write.
    """

    write_slot: Tensor
    """-1 no write; else 0..K-1: write this chunk's (key, value) into that WM slot, overwriting it."""
    evict_to_ltm: Tensor
    """0: an entry displaced by the write is dropped; 1: it moves to LTM (compressed) first.
    Without a write, or when the written slot is empty, there is nothing to displace and it has no effect."""
    retrieve: Tensor
    """0 none, 1 WM, 2 LTM, 3 both (:data:`RETRIEVE_WM` ...), with this chunk's query."""
    forget_slot: Tensor
    """-1 none; else 0..K-1: empty that (occupied) WM slot."""
    ltm_forget: Tensor
    """0 none, 1 forget the oldest LTM entry, 2 the least used one, 3 the one whose key is nearest to this
    chunk's key (its top-1 LTM match: how a key-value store is updated when the chunk re-assigns a key)."""

    @classmethod
    def noop(cls, batch: int, device: torch.device | str | None = None) -> MemoryOps:
        """Operations that do nothing, for ``batch`` sequences."""
        minus, zero = (torch.full((batch,), v, dtype=torch.int64, device=device) for v in (-1, 0))
        return cls(minus, zero, zero.clone(), minus.clone(), zero.clone())


class MemoryObservation(NamedTuple):
    """What a controller sees at a chunk boundary; fixed-size float32, detached.

    All describe the memory before this chunk's operations.
    """

    ssm_features: Tensor
    """(b, F), F = D + n_layer * d_state: the last hidden state of the chunk (D), then per layer the
    root mean square over the d_inner channels of the SSM state (d_state values)."""
    wm_occupied: Tensor
    """(b, K): 1 where a WM slot holds an entry."""
    wm_age: Tensor
    """(b, K): chunks since each slot was written (0 if empty)."""
    wm_uses: Tensor
    """(b, K): reads whose top-1 was this slot, since it was written."""
    wm_similarity: Tensor
    """(b, K): inner product of each slot's key with this chunk's query (a cosine: both are unit
    vectors in AHMModel); 0 for empty slots."""
    wm_key_similarity: Tensor
    """(b, K): inner product of each slot's key with this chunk's key (the write candidate's): high where a
    slot holds an entry this chunk's write would duplicate or supersede; 0 for empty slots."""
    ltm_fill: Tensor
    """(b,): LTM entries / capacity."""
    ltm_topk_similarity: Tensor
    """(b, k_obs): the top-k LTM similarities to the query (codec's score: the inner product with the
    decoded key, or the hash codec's cosine estimate), best first; 0 where fewer entries exist."""
    ltm_key_similarity: Tensor
    """(b,): the top-1 LTM similarity to this chunk's key (the entry ``ltm_forget=3`` would forget); 0 if empty."""
    keep_score: Tensor | None = None
    """(b,) in [0, 1]: the backbone's keep head's prediction that this chunk's entry will be needed later
    (``AHMConfig.keep_head``); None for a backbone without the head."""


class OpMasks(NamedTuple):
    """Which values of each operation are valid now, bool; index j of a field is its j-th value."""

    write_slot: Tensor
    """(b, K + 1): [no write, slot 0, ..., slot K-1]; always valid."""
    evict_to_ltm: Tensor
    """(b, 2): always valid."""
    retrieve: Tensor
    """(b, 4): [none, WM (WM not empty), LTM (LTM not empty), both (both not empty)]."""
    forget_slot: Tensor
    """(b, K + 1): [none, slot 0 occupied, ...]."""
    ltm_forget: Tensor
    """(b, 4): [none, oldest, least used, nearest to the key]; the last three need a non-empty LTM."""


MemoryPolicy = Callable[[MemoryObservation], MemoryOps]
"""A tensor-level memory policy: maps a batched observation to memory operations. The model calls one per
chunk (:meth:`~ahm.backbone.AHMModel.stream`). Not to be confused with :class:`ahm.agents.Controller`, the
numpy protocol of the environments' controllers, which :func:`ahm.agents.rollout` bridges to this type."""


class DefaultController:
    """The built-in default: a simple, valid policy for tests and as a baseline (not a research controller).

    Every chunk: write into the first free WM slot, or, when the WM is full, into the
    oldest one, moving the displaced entry to LTM; retrieve from every level that holds
    something; never forget (the LTM's eviction rule handles a full LTM).
    """

    def __call__(self, obs: MemoryObservation) -> MemoryOps:
        occupied = obs.wm_occupied > 0.5  # (b, K)
        free = ~occupied
        first_free = free.to(torch.uint8).argmax(1)
        oldest = obs.wm_age.masked_fill(free, -1.0).argmax(1)
        slot = torch.where(free.any(1), first_free, oldest)
        retrieve = occupied.any(1).long() * RETRIEVE_WM + (obs.ltm_fill > 0).long() * RETRIEVE_LTM
        ones = torch.ones_like(slot)
        return MemoryOps(slot, ones, retrieve, -ones, torch.zeros_like(slot))


class NullController:
    """Never touches memory (the memory-free baseline)."""

    def __call__(self, obs: MemoryObservation) -> MemoryOps:
        return MemoryOps.noop(obs.ltm_fill.shape[0], obs.ltm_fill.device)
