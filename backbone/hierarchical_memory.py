"""The hierarchical memory of b sequences: working memory + long-term memory, driven by :class:`MemoryOps`.

Glossary: b sequences, K working-memory slots, M long-term capacity, dk key dim, dv value dim, k LTM hits read.

Two levels (proposal Sec. 2.1, items 2-3): the working memory (:mod:`ahm.backbone.working_memory`, K slots
of full-precision (key, value) entries) and the long-term memory (:mod:`ahm.backbone.long_term_memory`,
M compressed entries per sequence, searched by key). A policy decides, once per chunk, what happens to them
(:class:`~ahm.backbone.memory_ops.MemoryOps`); :meth:`HierarchicalMemory.apply` carries the operations out,
in this order:

1. **retrieve** with the chunk's query, from the memory as observed (before anything below changes it):
   the WM, the LTM's top-k hits, or both (:attr:`MemoryConfig.joint_read` says how a read of both weighs them);
2. **forget**: the named WM slot, then the LTM's oldest / least used entry / the entry nearest to the chunk's key;
3. **evict-and-write**: the WM entry the write displaces moves to the LTM (compressed) if asked, then the
   chunk's (key, value) is written into the slot;
4. the clocks of both levels tick.

Invalid operations raise before anything changes (:meth:`HierarchicalMemory.validate`):
a slot outside ``[-1, K)`` (IndexError), retrieving from an empty WM or LTM,
forgetting an empty WM slot or from an empty LTM, an unknown op code
(ValueError). :meth:`HierarchicalMemory.op_masks` says which values are valid.

Without gradients, :meth:`HierarchicalMemory.apply` runs the compiled fast path of
:mod:`ahm.backbone.memory_fast` where the memory qualifies; :meth:`HierarchicalMemory._apply_ref`
is the differentiable torch reference it is tested against.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
from torch import Tensor

from .codecs import VectorCodec
from .config import dataclass_from_dict
from .long_term_memory import LongTermMemory, LTMConfig, LTMHits
from .memory_ops import (
    LTM_FORGET_LEAST_USED,
    LTM_FORGET_NEAREST,
    LTM_FORGET_OLDEST,
    RETRIEVE_BOTH,
    RETRIEVE_LTM,
    RETRIEVE_WM,
    MemoryOps,
    OpMasks,
)
from .working_memory import READ_MODES, WorkingMemory

if TYPE_CHECKING:
    from .memory_fast import MemoryFastPath

__all__ = ["MemoryConfig", "MemoryReadout", "HierarchicalMemory"]


@dataclass(frozen=True)
class MemoryConfig:
    """Shape of a :class:`HierarchicalMemory`."""

    wm_slots: int = 16
    """Working-memory slots K."""
    key_dim: int = 32
    """Key / query width dk."""
    value_dim: int = 64
    """Value width dv."""
    read_mode: str = "soft"
    """``soft`` (softmax attention) or ``top1``, for both levels."""
    ltm: LTMConfig = field(default_factory=LTMConfig)
    """The long-term memory; its key_dim / value_dim must equal the ones above."""
    joint_read: bool = False
    """How a read from both levels (``retrieve=3``) weighs them. False: each level's attention sums to one on its
    own, so ``m_wm`` and ``m_ltm`` are each a full read, whatever their match. True: one attention over the WM's
    slots and the LTM's hits together (``soft``: one softmax, i.e. each level's read scaled by its share of the
    joint normaliser; ``top1``: only the level holding the best match reads), so the level without a match adds
    next to nothing. What ``AHMConfig.level_readout='shared'`` uses: there ``m_wm + m_ltm`` is read as one vector.
    Use counts (``uses``, ``last_read``) still credit each level's own top-1, as without it."""

    def __post_init__(self) -> None:
        for name in ("wm_slots", "key_dim", "value_dim"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"MemoryConfig.{name} must be a positive int, got {value!r}")
        if self.read_mode not in READ_MODES:
            raise ValueError(f"MemoryConfig.read_mode must be one of {READ_MODES}, got {self.read_mode!r}")
        if (self.ltm.key_dim, self.ltm.value_dim) != (self.key_dim, self.value_dim):
            raise ValueError(
                f"MemoryConfig: ltm dims ({self.ltm.key_dim}, {self.ltm.value_dim}) must equal key_dim, value_dim "
                f"({self.key_dim}, {self.value_dim})"
            )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MemoryConfig:
        return dataclass_from_dict(cls, data)


class MemoryReadout(NamedTuple):
    """What one :meth:`HierarchicalMemory.apply` retrieved."""

    wm: Tensor
    """(b, dv): read from WM; zeros where not retrieved."""
    ltm: Tensor
    """(b, dv): read from LTM; zeros where not retrieved."""
    wm_weights: Tensor
    """(b, K): attention over WM slots (zeros where not retrieved)."""
    ltm_weights: Tensor
    """(b, k): attention over the LTM hits (zeros where not retrieved)."""
    ltm_indices: Tensor
    """(b, k): the LTM hits' slots (-1 none)."""
    ltm_forgot: Tensor | None = None
    """(b,) int64: the LTM slot this step's ``ltm_forget`` emptied, -1 where none (None: not reported)."""

    def vector(self) -> Tensor:
        """(b, 2 dv): [wm, ltm], the retrieved content r_t the integration consumes."""
        return torch.cat([self.wm, self.ltm], dim=-1)


class HierarchicalMemory:
    """Working memory + long-term memory of b sequences, driven by :class:`MemoryOps`.

    The state is mutable: :meth:`apply` updates it in place (and returns what was read).
    """

    def __init__(self, batch: int, config: MemoryConfig | None = None, key_codec: VectorCodec | None = None,
                 value_codec: VectorCodec | None = None, device: torch.device | str | None = None) -> None:
        config = config or MemoryConfig()
        self.config, self.batch = config, batch
        self.wm = WorkingMemory(batch, config.wm_slots, config.key_dim, config.value_dim, device=device)
        self.ltm = LongTermMemory(batch, config.ltm, key_codec, value_codec, device=device)
        self._fast: MemoryFastPath | bool | None = None  # None: not looked at yet; False: does not qualify

    @property
    def fast(self) -> MemoryFastPath | None:
        """The no-grad fast path over this memory's tensors (:mod:`ahm.backbone.memory_fast`), or None where the
        memory does not qualify (:func:`~ahm.backbone.memory_fast.fast_path_unsupported`)."""
        if self._fast is None:
            from .memory_fast import MemoryFastPath, fast_path_unsupported  # numba: imported on first use

            self._fast = MemoryFastPath(self) if fast_path_unsupported(self) is None else False
        return self._fast or None

    @property
    def device(self) -> torch.device:
        return self.wm.device

    def nbytes(self) -> Tensor:
        """(b,) int64: bytes held per sequence by occupied WM entries plus stored LTM entries."""
        return self.wm.nbytes() + self.ltm.nbytes()

    def op_masks(self) -> OpMasks:
        """Valid values of each operation for the current state (see :class:`OpMasks`)."""
        b, dev = self.batch, self.device
        yes = lambda n: torch.ones(b, n, dtype=torch.bool, device=dev)
        wm_any, ltm_any = self.wm.read_mask(), self.ltm.read_mask()
        return OpMasks(
            write_slot=yes(self.config.wm_slots + 1),
            evict_to_ltm=yes(2),
            retrieve=torch.stack([torch.ones_like(wm_any), wm_any, ltm_any, wm_any & ltm_any], 1),
            forget_slot=torch.cat([yes(1), self.wm.occupied], 1),
            ltm_forget=torch.stack([torch.ones_like(ltm_any), ltm_any, ltm_any, ltm_any], 1),
        )

    def validate(self, ops: MemoryOps) -> None:
        """Raise if ``ops`` is malformed or invalid in the current state; changes nothing.

        Raises:
            ValueError: wrong type / dtype / shape, an unknown op code, or an op on an empty store.
            IndexError: a WM slot outside [-1, K).
        """
        if not isinstance(ops, MemoryOps):
            raise ValueError(f"a controller must return MemoryOps, got {type(ops).__name__}")
        for name, t in zip(MemoryOps._fields, ops):
            if not isinstance(t, Tensor) or t.shape != (self.batch,) or t.dtype != torch.int64:
                got = f"{t.dtype} {tuple(t.shape)}" if isinstance(t, Tensor) else type(t).__name__
                raise ValueError(f"MemoryOps.{name} must be an int64 tensor of shape ({self.batch},), got {got}")
            if t.device != self.device:
                raise ValueError(f"MemoryOps.{name} is on {t.device}, the memory on {self.device}")
        k = self.config.wm_slots
        for name in ("write_slot", "forget_slot"):
            t = getattr(ops, name)
            bad = (t < -1) | (t >= k)
            if bool(bad.any()):
                raise IndexError(f"MemoryOps.{name}: slots {t[bad].tolist()} (sequences "
                                 f"{bad.nonzero().flatten().tolist()}) do not exist; use 0..{k - 1}, or -1 for none")
        for name, n in (("evict_to_ltm", 2), ("retrieve", 4), ("ltm_forget", 4)):
            t = getattr(ops, name)
            bad = (t < 0) | (t >= n)
            if bool(bad.any()):
                raise ValueError(f"MemoryOps.{name}: values {t[bad].tolist()} are not in 0..{n - 1}")
        wm_any, ltm_any = self.wm.read_mask(), self.ltm.read_mask()
        self._refuse(((ops.retrieve == RETRIEVE_WM) | (ops.retrieve == RETRIEVE_BOTH)) & ~wm_any,
                     "retrieve from an empty working memory (mask with MemoryObservation.wm_occupied.any(1))")
        self._refuse((ops.retrieve >= RETRIEVE_LTM) & ~ltm_any,
                     "retrieve from an empty long-term memory (mask with MemoryObservation.ltm_fill > 0)")
        named = ops.forget_slot >= 0
        slot_full = self.wm.occupied.gather(1, ops.forget_slot.clamp(min=0)[:, None])[:, 0]
        self._refuse(named & ~slot_full, "forget an empty working-memory slot (see MemoryObservation.wm_occupied)")
        self._refuse((ops.ltm_forget > 0) & ~ltm_any, "forget from an empty long-term memory")

    @staticmethod
    def _refuse(bad: Tensor, what: str) -> None:
        if bool(bad.any()):
            raise ValueError(f"invalid memory operation for sequences {bad.nonzero().flatten().tolist()}: {what}; "
                             "HierarchicalMemory.op_masks() lists the valid operations")

    def search_ltm(self, query: Tensor, k: int) -> LTMHits:
        """Top-k LTM hits for one query per sequence: query (b, dk) -> LTMHits (b, 1, k)."""
        return self.ltm.search(query.detach()[:, None, :], k)

    def apply(self, ops: MemoryOps, key: Tensor, value: Tensor, query: Tensor, ltm_hits: Tensor | None = None,
              read_k: int = 4, inv_temperature: float | Tensor = 1.0, fast: bool | None = None) -> MemoryReadout:
        """Apply one chunk's operations (in the order of the module doc; AHMModel's step 5) and return what was read.

        Args:
            ops: the operations (validated first; nothing changes if they are invalid).
            key: (b, dk), value: (b, dv): this chunk's write candidate. query: (b, dk).
            ltm_hits: (b, k) LTM slots from :meth:`search_ltm` on the memory as it is now
                (reused to avoid a second search); None searches the top ``read_k``.
            inv_temperature: scale of the similarities in ``soft`` reads.
            fast: run the compiled no-grad path (:mod:`ahm.backbone.memory_fast`; nothing it returns carries
                gradients); None (default) runs it when ``torch.is_grad_enabled()`` is False and the memory
                qualifies, else the differentiable reference :meth:`_apply_ref`.
        """
        if fast is None:
            fast = not torch.is_grad_enabled() and self.fast is not None
        if not fast:
            return self._apply_ref(ops, key, value, query, ltm_hits, read_k, inv_temperature)
        path = self.fast
        if path is None:
            from .memory_fast import fast_path_unsupported

            raise ValueError(f"HierarchicalMemory.apply(fast=True): {fast_path_unsupported(self)}; pass fast=False")
        if not isinstance(ops, MemoryOps) or any(not isinstance(t, Tensor) or t.dtype != torch.int64
                                                 or t.shape != (self.batch,) for t in ops):
            self.validate(ops)  # raises with the reason
        if ltm_hits is None:
            ltm_hits = self.search_ltm(query, read_k).indices[:, 0]
        plain = lambda t: t.detach().float().numpy()
        out = path.apply(*(t.numpy() for t in ops), plain(key), plain(value), plain(query), ltm_hits.numpy(),
                         float(inv_temperature))
        if out is None:
            self.validate(ops)  # raises with the reason
            raise AssertionError("memory_fast refused operations that HierarchicalMemory.validate accepts")
        t = torch.from_numpy
        return MemoryReadout(t(out.wm), t(out.ltm), t(out.wm_weights), t(out.ltm_weights), t(out.ltm_indices),
                             t(out.ltm_forgot))

    def _apply_ref(self, ops: MemoryOps, key: Tensor, value: Tensor, query: Tensor, ltm_hits: Tensor | None = None,
                   read_k: int = 4, inv_temperature: float | Tensor = 1.0) -> MemoryReadout:
        """The differentiable reference of :meth:`apply` (torch ops; what training runs, with gradients)."""
        self.validate(ops)
        mode = self.config.read_mode
        want_wm = (ops.retrieve == RETRIEVE_WM) | (ops.retrieve == RETRIEVE_BOTH)
        want_ltm = ops.retrieve >= RETRIEVE_LTM
        wm_read = self.wm.read(query, mode, want_wm, inv_temperature)
        if ltm_hits is None:
            ltm_hits = self.search_ltm(query, read_k).indices[:, 0]
        if bool(want_ltm.any()):
            ltm_read = self.ltm.read(query, ltm_hits, want_ltm, mode, inv_temperature)
            ltm_value, ltm_weights, ltm_idx = ltm_read.value, ltm_read.weights, ltm_read.indices
        else:
            ltm_value = query.new_zeros(self.batch, self.config.value_dim)
            ltm_weights = query.new_zeros(ltm_hits.shape)
            ltm_idx = torch.full_like(ltm_hits, -1)
        both = want_wm & want_ltm
        wm_value, wm_weights = wm_read.value, wm_read.weights
        if self.config.joint_read and bool(both.any()):
            # Logits of the entries each level read, -inf elsewhere; scaled while finite and masked after, so no
            # gradient meets -inf * inv_temperature (NaN). Rows that do not read both see zeros.
            wm_valid = self.wm.occupied & both[:, None]
            ltm_valid = torch.isfinite(ltm_read.scores) & both[:, None]
            wm_raw = torch.where(wm_valid, self.wm._raw_scores(query), 0.0)
            ltm_raw = torch.where(ltm_valid, ltm_read.scores, 0.0)
            scale = inv_temperature if mode == "soft" else 1.0
            wm_logits = (wm_raw * scale).masked_fill(~wm_valid & both[:, None], float("-inf"))
            ltm_logits = (ltm_raw * scale).masked_fill(~ltm_valid & both[:, None], float("-inf"))
            if mode == "soft":
                share = torch.sigmoid(torch.logsumexp(wm_logits, 1) - torch.logsumexp(ltm_logits, 1))
            else:
                share = (wm_logits.amax(1) >= ltm_logits.amax(1)).to(query.dtype)
            one = torch.ones_like(share)
            wm_share, ltm_share = torch.where(both, share, one), torch.where(both, 1 - share, one)
            wm_value, wm_weights = wm_value * wm_share[:, None], wm_weights * wm_share[:, None]
            ltm_value, ltm_weights = ltm_value * ltm_share[:, None], ltm_weights * ltm_share[:, None]

        self.wm.forget(ops.forget_slot)
        forgot = torch.full_like(ops.ltm_forget, -1)
        for code, forget in ((LTM_FORGET_OLDEST, self.ltm.forget_oldest),
                             (LTM_FORGET_LEAST_USED, self.ltm.forget_least_used),
                             (LTM_FORGET_NEAREST, lambda which: self.ltm.forget_nearest(key, which))):
            which = ops.ltm_forget == code
            if bool(which.any()):
                forgot = torch.where(which, forget(which), forgot)

        writes = ops.write_slot >= 0
        displaced = writes & self.wm.occupied.gather(1, ops.write_slot.clamp(min=0)[:, None])[:, 0]
        move = displaced & (ops.evict_to_ltm == 1)
        if bool(move.any()):
            entry = self.wm.evict(torch.where(move, ops.write_slot, -1))
            self.ltm.write(entry.key, entry.value, active=move)
        self.wm.write(ops.write_slot, key, value)
        self.tick()
        return MemoryReadout(wm_value, ltm_value, wm_weights, ltm_weights, ltm_idx, forgot)

    def tick(self, steps: int = 1) -> None:
        """Advance both levels' clocks."""
        self.wm.tick(steps)
        self.ltm.tick(steps)

    def reset(self, which: Tensor | None = None) -> None:
        """Empty the memory of the sequences where ``which`` (b,) bool is True (default all)."""
        self.wm.reset(which)
        self.ltm.reset(which)

    def detach_(self) -> None:
        """Cut the working memory from the autograd graph (the LTM holds no graph)."""
        self.wm.detach_()
