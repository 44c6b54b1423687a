"""The no-grad fast path of one hierarchical-memory step: numba kernels over numpy views of the state tensors.

:meth:`HierarchicalMemory.apply` and :meth:`AHMModel.observe` are a few dozen tiny
torch ops each (a few microseconds apiece), which made the RL environment's step
cost milliseconds on cached features. Without gradients the same step is a short
loop per sequence over K working-memory slots and the LTM's occupied prefix, so
here it runs as two compiled kernels (observe; validate + apply) on the memory's
tensors in place. The torch code stays the reference (``HierarchicalMemory._apply_ref``,
``AHMModel._observe_ref``) and ``tests/test_memory_fast.py`` holds the two together
over random operation sequences.

Scope (:func:`fast_path_unsupported` says why a memory does not qualify): CPU
tensors, float32 working memory, the ``none`` or ``int8`` LTM codec, ``exact`` LTM
search. Everything else runs the reference.

Differences from the reference, by design: similarities are accumulated in float64
and rounded once (the reference sums in float32 through BLAS), so scores and
weights agree to ~1e-6, not bit for bit; ties in a top-k or argmax go to the
lower index. The working-memory tensors are updated in place (the reference
replaces them, for autograd): the first fast call after the reference replaced
them takes private copies, so tensors a caller or an autograd graph holds are
never written.

Glossary: b sequences, K slots, M LTM capacity, k hits, dk / dv key / value dims.
"""

from __future__ import annotations

import operator
from typing import NamedTuple, Protocol

import numba
import numpy as np
import torch

from . import memory_ops as op  # the op codes (op.RETRIEVE_WM ...): numba compiles them in as constants
from .long_term_memory import LongTermMemory, LTMConfig
from .working_memory import WorkingMemory

__all__ = ["FastPathMemory", "MemorySettings", "FastObservation", "FastReadout", "MemoryFastPath",
           "fast_path_unsupported"]

_WM = ("keys", "values", "occupied", "write_step", "uses", "last_read", "clock")
_LTM = ("occupied", "write_step", "uses", "last_read", "count", "clock")
_wm_tensors = operator.attrgetter(*_WM)
_ltm_tensors = operator.attrgetter("key_codes", "value_codes", *_LTM)
"""What identifies the LTM's storage: the code tuples (replaced whole, never edited) and the bookkeeping tensors."""


class MemorySettings(Protocol):
    """The parts of a memory's configuration the fast path reads (:class:`~ahm.backbone.MemoryConfig` has them)."""

    @property
    def read_mode(self) -> str: ...
    @property
    def joint_read(self) -> bool: ...
    @property
    def ltm(self) -> LTMConfig: ...


class FastPathMemory(Protocol):
    """What the fast path reads and writes of a hierarchical memory (:class:`~ahm.backbone.HierarchicalMemory` is
    one). A protocol, so this module depends on the two levels' classes only, not on the memory that holds them
    (which imports this module lazily, on its first fast step)."""

    wm: WorkingMemory
    ltm: LongTermMemory

    @property
    def config(self) -> MemorySettings: ...
    @property
    def device(self) -> torch.device: ...


class FastObservation(NamedTuple):
    """The memory before a step's operations, as numpy arrays (what :meth:`AHMModel.observe` reports)."""

    wm_occupied: np.ndarray
    """(b, K) bool."""
    wm_age: np.ndarray
    """(b, K) int64: clock - write_step, 0 if empty."""
    wm_uses: np.ndarray
    """(b, K) int64."""
    wm_similarity: np.ndarray
    """(b, K) float32: <key, query>, 0 for empty slots."""
    wm_key_similarity: np.ndarray
    """(b, K) float32: <slot key, the chunk's key>, 0 for empty slots."""
    ltm_count: np.ndarray
    """(b,) int64."""
    hit_scores: np.ndarray
    """(b, k) float32: the top-k LTM similarities, best first, -inf where fewer entries exist."""
    hit_indices: np.ndarray
    """(b, k) int64: their slots, -1 where fewer entries exist."""
    key_score: np.ndarray
    """(b,) float32: the top-1 LTM similarity to the chunk's key, -inf for an empty LTM."""
    masks: np.ndarray
    """(b, 2 K + 12) bool: :class:`OpMasks`' fields concatenated."""


class FastReadout(NamedTuple):
    """What a fast :meth:`HierarchicalMemory.apply` read and did, as numpy arrays."""

    wm: np.ndarray
    """(b, dv) float32."""
    ltm: np.ndarray
    """(b, dv) float32."""
    wm_weights: np.ndarray
    """(b, K) float32."""
    ltm_weights: np.ndarray
    """(b, k) float32."""
    ltm_indices: np.ndarray
    """(b, k) int64."""
    displaced: np.ndarray
    """(b,) bool: the write displaced an occupied WM entry (after this step's forget)."""
    moved_slot: np.ndarray
    """(b,) int64: the LTM slot the displaced entry moved to, -1 where none moved."""
    ltm_forgot: np.ndarray
    """(b,) int64: the LTM slot ``ltm_forget`` emptied, -1 where none."""


def fast_path_unsupported(memory: FastPathMemory) -> str | None:
    """Why ``memory`` cannot use the fast path, or None if it can."""
    ltm = memory.ltm
    if memory.device.type != "cpu":
        return f"the memory is on {memory.device}, the fast path runs on CPU"
    if memory.wm.keys.dtype != torch.float32:
        return f"the working memory is {memory.wm.keys.dtype}, the fast path needs float32"
    if ltm.key_codec.name not in ("none", "int8") or ltm.value_codec.name not in ("none", "int8"):
        return f"the LTM codec is {ltm.key_codec.name!r}, the fast path supports 'none' and 'int8'"
    if ltm.config.search != "exact":
        return f"LTM search is {ltm.config.search!r}, the fast path searches exactly"
    return None


def _np(t: torch.Tensor) -> np.ndarray:
    return t.numpy()


class MemoryFastPath:
    """Numpy views of a :class:`HierarchicalMemory`'s state and the kernels' entry points (module doc).

    Views are refreshed whenever a state tensor was replaced (by the reference path, a
    reset of the working memory, or a load), so the two paths can be mixed freely.
    """

    def __init__(self, memory: FastPathMemory) -> None:
        reason = fast_path_unsupported(memory)
        if reason is not None:
            raise ValueError(f"MemoryFastPath: {reason}; use HierarchicalMemory.apply(..., fast=False)")
        self.memory = memory
        c = memory.config
        self.soft = c.read_mode == "soft"
        self.joint = c.joint_read
        self.oldest = c.ltm.eviction == "oldest"
        self.capacity = c.ltm.capacity
        wm = memory.wm
        self._wm_entry_bytes = (wm.key_dim + wm.value_dim) * wm.keys.element_size()
        self._ltm_entry_bytes = memory.ltm.bytes_per_entry
        self._wm_src: tuple[torch.Tensor, ...] = ()
        self._ltm_src: tuple[torch.Tensor, ...] = ()
        self._unit_scales: dict[tuple[int, int], np.ndarray] = {}

    def __getstate__(self) -> dict:
        """For pickle and ``copy.deepcopy``: without the numpy views of the memory's tensors. A copy would turn each
        view into an array of its own, which the copied memory's in-place writes (a reset emptying the LTM) never
        reach; the views are made again from the copied tensors on first use."""
        return {**self.__dict__, "_wm_src": (), "_ltm_src": ()}

    # ---------------------------------------------------------------- views
    def _wm_views(self, write: bool = True) -> tuple[np.ndarray, ...]:
        """Views of the WM tensors; ``write=False`` only reads, so it leaves tensors that carry a graph in place."""
        current = _wm_tensors(self.memory.wm)
        if self._wm_src and all(map(operator.is_, current, self._wm_src)):
            return self._wm
        if not write:
            return tuple(_np(t.detach()) for t in current)
        wm = self.memory.wm
        # Private copies: the reference replaces these tensors, so callers and autograd graphs may hold the old ones.
        owned = tuple(t.detach().clone(memory_format=torch.contiguous_format) for t in current)
        for name, t in zip(_WM, owned):
            setattr(wm, name, t)
        self._wm_src, self._wm = owned, tuple(_np(t) for t in owned)
        return self._wm

    def _ltm_views(self) -> tuple[np.ndarray, ...]:
        ltm = self.memory.ltm
        current = _ltm_tensors(ltm)
        if self._ltm_src and all(map(operator.is_, current, self._ltm_src)):
            return self._ltm
        tensors = (*ltm.key_codes, *ltm.value_codes, *(getattr(ltm, name) for name in _LTM))
        if not all(t.is_contiguous() for t in tensors):  # the LTM is written in place: keep it so, contiguously
            ltm.key_codes = tuple(t.contiguous() for t in ltm.key_codes)
            ltm.value_codes = tuple(t.contiguous() for t in ltm.value_codes)
            for name in _LTM:
                setattr(ltm, name, getattr(ltm, name).contiguous())
            tensors = (*ltm.key_codes, *ltm.value_codes, *(getattr(ltm, name) for name in _LTM))
        self._ltm_src = _ltm_tensors(ltm)
        keys = self._codes(ltm.key_codes)
        values = self._codes(ltm.value_codes)
        self._ltm = (*keys, *values, *(_np(getattr(ltm, name)) for name in _LTM))
        return self._ltm

    def _codes(self, codes: tuple[torch.Tensor, ...]) -> tuple[np.ndarray, np.ndarray]:
        """(codes (b, M, d), scales (b, M)): int8 as stored; ``none`` with a constant scale of 1 (never written)."""
        if len(codes) == 2:
            return _np(codes[0]), _np(codes[1])
        shape = tuple(codes[0].shape[:2])
        if shape not in self._unit_scales:
            self._unit_scales[shape] = np.ones(shape, dtype=np.float32)
        return _np(codes[0]), self._unit_scales[shape]

    # ---------------------------------------------------------------- entry points
    def nbytes(self) -> np.ndarray:
        """(b,) int64: :meth:`HierarchicalMemory.nbytes` (occupied WM entries + stored LTM entries)."""
        occ = self._wm_views(write=False)[2]
        count = self._ltm_views()[-2]
        return occ.sum(1) * self._wm_entry_bytes + count * self._ltm_entry_bytes

    def observe(self, query: np.ndarray, k: int, key: np.ndarray) -> FastObservation:
        """The memory as it is now, seen with ``query`` and the chunk's ``key`` (b, dk) float32; ``k`` LTM hits."""
        keys, _, occ, wstep, uses, _, clock = self._wm_views(write=False)
        kc, ks, _, _, locc, _, _, _, count, _ = self._ltm_views()
        hw = max(1, self.memory.ltm._high_water)
        f32 = np.float32
        sim, key_sim, age, hs, hi, key_score, masks = _observe_kernel(
            np.ascontiguousarray(query, dtype=f32), np.ascontiguousarray(key, dtype=f32), keys, occ, wstep, clock,
            kc, ks, locc, count, hw, k)
        return FastObservation(occ.copy(), age, uses.copy(), sim, key_sim, count.copy(), hs, hi, key_score, masks)

    def apply(self, write_slot: np.ndarray, evict_to_ltm: np.ndarray, retrieve: np.ndarray, forget_slot: np.ndarray,
              ltm_forget: np.ndarray, key: np.ndarray, value: np.ndarray, query: np.ndarray, hits: np.ndarray,
              inv_temperature: float) -> FastReadout | None:
        """One step's operations, as :meth:`HierarchicalMemory.apply` orders them; None (nothing changed) if invalid.

        Args: the five :class:`MemoryOps` fields as (b,) int64; key (b, dk), value (b, dv), query (b, dk)
        float32; hits (b, k) int64 LTM slots from :meth:`observe` on the memory as it is now.
        """
        wm = self._wm_views()
        ltm = self._ltm_views()
        f32 = np.float32
        ltm_m = self.memory.ltm
        out = _apply_kernel(
            write_slot, evict_to_ltm, retrieve, forget_slot, ltm_forget,
            np.ascontiguousarray(key, dtype=f32), np.ascontiguousarray(value, dtype=f32),
            np.ascontiguousarray(query, dtype=f32), np.ascontiguousarray(hits, dtype=np.int64),
            f32(inv_temperature), self.soft, self.joint, self.oldest, ltm_m.key_codec.name == "int8",
            ltm_m.value_codec.name == "int8", ltm_m._high_water, *wm, *ltm)
        ok, high = out[0], out[1]
        if not ok:
            return None
        ltm_m._high_water = max(ltm_m._high_water, int(high))
        return FastReadout(*out[2:])


# ====================================================================== kernels
@numba.njit(cache=True, fastmath=True)
def _dot_code(q, codes, scales, r, slot, d):
    """<q, decode(codes[r, slot])> = scale * <q, codes[r, slot]>: float32, vectorised (the LTM scan's inner loop).

    The reference rounds every decoded element first (``codes * scale``); the two differ by a few ulp.
    """
    acc = np.float32(0.0)
    for j in range(d):
        acc += q[j] * np.float32(codes[r, slot, j])
    return acc * scales[r, slot]


@numba.njit(cache=True)
def _nearest_code(x, kc, ks, locc, r, hw, dk):
    """(slot, score) of the occupied LTM entry nearest to x (the first on ties); (-1, -inf) if none."""
    best, best_sc = -1, np.float32(-np.inf)
    for slot in range(hw):
        if locc[r, slot]:
            sc = np.float32(_dot_code(x, kc, ks, r, slot, dk))
            if best < 0 or sc > best_sc:
                best, best_sc = slot, sc
    return best, best_sc


@numba.njit(cache=True)
def _observe_kernel(query, key, keys, occ, wstep, clock, kc, ks, locc, count, hw, k):
    b, n_slots, dk = keys.shape
    sim = np.zeros((b, n_slots), dtype=np.float32)
    key_sim = np.zeros((b, n_slots), dtype=np.float32)
    age = np.zeros((b, n_slots), dtype=np.int64)
    hs = np.full((b, k), -np.inf, dtype=np.float32)
    hi = np.full((b, k), -1, dtype=np.int64)
    key_score = np.full(b, -np.inf, dtype=np.float32)
    masks = np.zeros((b, 2 * n_slots + 12), dtype=np.bool_)
    for r in range(b):
        wm_any = False
        for s in range(n_slots):
            if occ[r, s]:
                wm_any = True
                acc = 0.0
                acc_key = 0.0
                for j in range(dk):
                    acc += keys[r, s, j] * query[r, j]
                    acc_key += keys[r, s, j] * key[r, j]
                sim[r, s] = acc
                key_sim[r, s] = acc_key
                age[r, s] = clock[r] - wstep[r, s]
        # Top-k over the occupied prefix, best first; a later slot must beat (not tie) to pass an earlier one.
        # The same pass finds the best match of the chunk's key (what ltm_forget=3 would remove).
        n = 0
        if count[r] > 0:
            for slot in range(hw):
                if not locc[r, slot]:
                    continue
                key_sc = np.float32(_dot_code(key[r], kc, ks, r, slot, dk))
                if key_sc > key_score[r]:
                    key_score[r] = key_sc
                sc = np.float32(_dot_code(query[r], kc, ks, r, slot, dk))
                if n == k and not sc > hs[r, k - 1]:
                    continue
                pos = n if n < k else k - 1
                while pos > 0 and sc > hs[r, pos - 1]:
                    if pos < k:
                        hs[r, pos] = hs[r, pos - 1]
                        hi[r, pos] = hi[r, pos - 1]
                    pos -= 1
                hs[r, pos] = sc
                hi[r, pos] = slot
                if n < k:
                    n += 1
        ltm_any = count[r] > 0
        # [write_slot K + 1 | evict 2 | retrieve 4 | forget_slot K + 1 | ltm_forget 4]
        for j in range(n_slots + 3):
            masks[r, j] = True
        o = n_slots + 3
        masks[r, o + op.RETRIEVE_NONE] = True
        masks[r, o + op.RETRIEVE_WM] = wm_any
        masks[r, o + op.RETRIEVE_LTM] = ltm_any
        masks[r, o + op.RETRIEVE_BOTH] = wm_any and ltm_any
        o += 4
        masks[r, o] = True
        for s in range(n_slots):
            masks[r, o + 1 + s] = occ[r, s]
        o += n_slots + 1
        masks[r, o + op.LTM_FORGET_NONE] = True
        masks[r, o + op.LTM_FORGET_OLDEST] = ltm_any
        masks[r, o + op.LTM_FORGET_LEAST_USED] = ltm_any
        masks[r, o + op.LTM_FORGET_NEAREST] = ltm_any
    return sim, key_sim, age, hs, hi, key_score, masks


@numba.njit(cache=True)
def _logsumexp(logits, valid, n):
    """log sum exp of logits[:n] over valid entries, in float64."""
    m = -np.inf
    for j in range(n):
        if valid[j] and logits[j] > m:
            m = logits[j]
    total = 0.0
    for j in range(n):
        if valid[j]:
            total += np.exp(np.float64(logits[j]) - m)
    return m + np.log(total)


@numba.njit(cache=True)
def _softmax_into(logits, valid, n, out, r):
    """out[r, :n] = softmax of logits[:n] over valid entries (float64 inside), 0 elsewhere."""
    lse = _logsumexp(logits, valid, n)
    for j in range(n):
        out[r, j] = np.exp(np.float64(logits[j]) - lse) if valid[j] else 0.0


@numba.njit(cache=True)
def _ltm_clear(r, slot, kc, ks, vc, vs, locc, lws, luses, llast, lcount, kint8, vint8):
    kc[r, slot, :] = 0
    vc[r, slot, :] = 0
    if kint8:
        ks[r, slot] = 0.0
    if vint8:
        vs[r, slot] = 0.0
    if locc[r, slot]:
        lcount[r] -= 1
    locc[r, slot] = False
    lws[r, slot] = -1
    luses[r, slot] = 0
    llast[r, slot] = -1


@numba.njit(cache=True)
def _oldest(r, hw, locc, lws, luses, least_used):
    """The occupied slot with the smallest write_step (among the least used if asked); the lowest on ties."""
    least = np.iinfo(np.int64).max
    if least_used:
        for s in range(hw):
            if locc[r, s] and luses[r, s] < least:
                least = luses[r, s]
    best, best_ws = 0, np.iinfo(np.int64).max
    for s in range(hw):
        if locc[r, s] and (not least_used or luses[r, s] == least) and lws[r, s] < best_ws:
            best, best_ws = s, lws[r, s]
    return best


@numba.njit(cache=True)
def _encode_into(x, codes, scales, r, slot, as_int8):
    """Store x (d,) float32 at codes[r, slot]: int8 as ``quantize_int8`` (round half to even), or as it is."""
    d = x.shape[0]
    if not as_int8:
        for j in range(d):
            codes[r, slot, j] = x[j]
        return
    amax = np.float32(0.0)
    for j in range(d):
        a = np.float32(abs(x[j]))
        if a > amax:
            amax = a
    scale = np.float32(amax / np.float32(127.0))
    safe = scale if scale > 0 else np.float32(1.0)
    for j in range(d):
        v = np.round(np.float32(x[j] / safe))
        codes[r, slot, j] = min(max(v, -127.0), 127.0)
    scales[r, slot] = scale


@numba.njit(cache=True)
def _apply_kernel(write, evict, retrieve, forget, ltm_forget, key, value, query, hits, inv_t, soft, joint, oldest_rule,
                  kint8, vint8, hw, keys, values, occ, wstep, uses, last_read, clock,
                  kc, ks, vc, vs, locc, lws, luses, llast, lcount, lclock):
    b, n_slots, dk = keys.shape
    dv = values.shape[2]
    k = hits.shape[1]
    capacity = locc.shape[1]
    wm_val = np.zeros((b, dv), dtype=np.float32)
    ltm_val = np.zeros((b, dv), dtype=np.float32)
    wm_w = np.zeros((b, n_slots), dtype=np.float32)
    ltm_w = np.zeros((b, k), dtype=np.float32)
    ltm_idx = np.full((b, k), -1, dtype=np.int64)
    displaced = np.zeros(b, dtype=np.bool_)
    moved_slot = np.full(b, -1, dtype=np.int64)
    forgot = np.full(b, -1, dtype=np.int64)
    # Validate every row before changing anything (HierarchicalMemory.validate).
    any_ltm = False
    for r in range(b):
        w, f, e, q, lf = write[r], forget[r], evict[r], retrieve[r], ltm_forget[r]
        if (w < -1 or w >= n_slots or f < -1 or f >= n_slots or e < 0 or e > 1 or q < op.RETRIEVE_NONE
                or q > op.RETRIEVE_BOTH or lf < op.LTM_FORGET_NONE or lf > op.LTM_FORGET_NEAREST):
            return False, hw, wm_val, ltm_val, wm_w, ltm_w, ltm_idx, displaced, moved_slot, forgot
        wm_any = False
        for s in range(n_slots):
            wm_any = wm_any or occ[r, s]
        if ((q == op.RETRIEVE_WM or q == op.RETRIEVE_BOTH) and not wm_any) or (
                q >= op.RETRIEVE_LTM and lcount[r] == 0) or (f >= 0 and not occ[r, f]) or (
                lf != op.LTM_FORGET_NONE and lcount[r] == 0):
            return False, hw, wm_val, ltm_val, wm_w, ltm_w, ltm_idx, displaced, moved_slot, forgot
        any_ltm = any_ltm or q >= op.RETRIEVE_LTM
    raw = np.zeros(n_slots, dtype=np.float32)
    valid = np.zeros(max(n_slots, k), dtype=np.bool_)
    lscore = np.zeros(k, dtype=np.float32)
    entry_k = np.zeros(dk, dtype=np.float32)
    entry_v = np.zeros(dv, dtype=np.float32)
    for r in range(b):
        q = retrieve[r]
        wm_level = ltm_level = -np.inf  # each level's log normaliser (soft) or best score (top1), for joint reads
        # Retrieve from the working memory (WorkingMemory.read).
        if q == op.RETRIEVE_WM or q == op.RETRIEVE_BOTH:
            best, best_sc = -1, -np.inf
            for s in range(n_slots):
                valid[s] = occ[r, s]
                if occ[r, s]:
                    acc = 0.0
                    for j in range(dk):
                        acc += keys[r, s, j] * query[r, j]
                    raw[s] = acc
                    if raw[s] > best_sc or best < 0:
                        best, best_sc = s, raw[s]
            wm_level = best_sc
            if soft:
                for s in range(n_slots):
                    raw[s] = raw[s] * inv_t
                _softmax_into(raw, valid, n_slots, wm_w, r)
                wm_level = _logsumexp(raw, valid, n_slots)
            else:
                wm_w[r, best] = 1.0
            for j in range(dv):
                acc = 0.0
                for s in range(n_slots):
                    if wm_w[r, s] != 0.0:
                        acc += wm_w[r, s] * values[r, s, j]
                wm_val[r, j] = acc
            uses[r, best] += 1
            last_read[r, best] = clock[r]
        # Retrieve from the LTM hits (LongTermMemory.read); indices are reported for every row once any row reads.
        if any_ltm:
            for j in range(k):
                ltm_idx[r, j] = hits[r, j]
        if q >= op.RETRIEVE_LTM:
            best, n_valid = -1, 0
            for j in range(k):
                slot = hits[r, j]
                valid[j] = slot >= 0
                if slot >= 0:
                    n_valid += 1
                    lscore[j] = np.float32(_dot_code(query[r], kc, ks, r, slot, dk))
                    if best < 0 or lscore[j] > lscore[best]:
                        best = j
            if n_valid > 0:
                ltm_level = lscore[best]
                if soft:
                    for j in range(k):
                        lscore[j] = lscore[j] * inv_t
                    _softmax_into(lscore, valid, k, ltm_w, r)
                    ltm_level = _logsumexp(lscore, valid, k)
                else:
                    ltm_w[r, best] = 1.0
                for j in range(k):
                    if ltm_w[r, j] != 0.0:
                        slot = hits[r, j]
                        vsc = vs[r, slot]
                        for d in range(dv):
                            ltm_val[r, d] += ltm_w[r, j] * np.float32(np.float32(vc[r, slot, d]) * vsc)
                top = hits[r, best]
                luses[r, top] += 1
                llast[r, top] = lclock[r]
        # A joint read of both levels (MemoryConfig.joint_read): each level scaled by its share.
        if joint and q == op.RETRIEVE_BOTH:
            if soft:
                share = 1.0 / (1.0 + np.exp(ltm_level - wm_level))
            else:
                share = 1.0 if wm_level >= ltm_level else 0.0
            for s in range(n_slots):
                wm_w[r, s] = np.float32(wm_w[r, s] * share)
            for d in range(dv):
                wm_val[r, d] = np.float32(wm_val[r, d] * share)
            for j in range(k):
                ltm_w[r, j] = np.float32(ltm_w[r, j] * (1.0 - share))
            for d in range(dv):
                ltm_val[r, d] = np.float32(ltm_val[r, d] * (1.0 - share))
        # Forget: the WM slot, then the LTM's oldest / least used entry / the entry nearest to the chunk's key.
        f = forget[r]
        if f >= 0:
            keys[r, f, :] = 0.0
            values[r, f, :] = 0.0
            occ[r, f] = False
            wstep[r, f] = -1
            uses[r, f] = 0
            last_read[r, f] = -1
        lf = ltm_forget[r]
        if lf != op.LTM_FORGET_NONE:
            if lf == op.LTM_FORGET_NEAREST:
                victim = _nearest_code(key[r], kc, ks, locc, r, hw, dk)[0]
            else:
                victim = _oldest(r, hw, locc, lws, luses, lf == op.LTM_FORGET_LEAST_USED)
            _ltm_clear(r, victim, kc, ks, vc, vs, locc, lws, luses, llast, lcount, kint8, vint8)
            forgot[r] = victim
        # Evict-and-write: a displaced entry moves to the LTM if asked, then the new entry is written.
        w = write[r]
        if w >= 0:
            if occ[r, w]:
                displaced[r] = True
                if evict[r] == 1:
                    entry_k[:] = keys[r, w, :]
                    entry_v[:] = values[r, w, :]
                    if lcount[r] >= capacity:
                        slot = _oldest(r, hw, locc, lws, luses, not oldest_rule)
                    else:
                        slot = 0
                        while locc[r, slot]:
                            slot += 1
                    _encode_into(entry_k, kc, ks, r, slot, kint8)
                    _encode_into(entry_v, vc, vs, r, slot, vint8)
                    if not locc[r, slot]:
                        lcount[r] += 1
                    locc[r, slot] = True
                    lws[r, slot] = lclock[r]
                    luses[r, slot] = 0
                    llast[r, slot] = -1
                    moved_slot[r] = slot
                    if slot + 1 > hw:
                        hw = slot + 1
            keys[r, w, :] = key[r]
            values[r, w, :] = value[r]
            occ[r, w] = True
            wstep[r, w] = clock[r]
            uses[r, w] = 0
            last_read[r, w] = -1
        clock[r] += 1
        lclock[r] += 1
    return True, hw, wm_val, ltm_val, wm_w, ltm_w, ltm_idx, displaced, moved_slot, forgot
