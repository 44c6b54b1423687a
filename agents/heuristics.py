"""Hand-written memory controllers and the oracle.

Every controller here implements :class:`ahm.agents.base.Controller` (batched: b
environments per call) and decides from the env's observation and action mask
only, except :class:`OracleController`, which reads the task's ground truth from
``info["ground_truth"]``: it is an upper bound on what memory management can
achieve with the given backbone, not a policy an agent could learn from
observations, and is labelled as such in every table.

Shared conventions (K working-memory slots; action = [write_slot + 1, evict_to_ltm,
retrieve, forget_slot + 1, ltm_forget], see ``AHMMemoryEnv``):

* a write goes into a free slot if there is one (the first), else into the occupied
  slot each rule ranks first (:func:`choose_write`); the displaced entry moves to the
  long-term memory (``evict_to_ltm = 1`` where a row writes, 0 where it does not);
* "retrieve from what holds something": 3 (both) when both levels are non-empty, 1 (WM)
  or 2 (LTM) when only one is, 0 when both are empty (:func:`retrieve_from_available`);
* no controller here forgets (a full LTM evicts by the backbone's rule), except ``update``,
  which replaces the entry a chunk's key re-assigns;
* masks: every controller but ``none`` returns only values its ``action_mask`` allows,
  for any mask with at least one allowed value per component (the env's masks always
  allow value 0 of every component, and every write); a rule's preferred value that is
  masked is replaced by the best allowed one (:func:`conform_to_mask`). A mask that
  allows nothing for a component raises ``ValueError``.

Glossary of observation keys used: ``wm_occupied`` (b, K), ``wm_age`` (b, K: chunks
since written, divided by the episode's chunks), ``wm_similarity`` (b, K: cosine of each
slot's key with the chunk's query), ``ltm_fill`` (b, 1), ``ssm_features`` (b, F: tanh of
the backbone's state features); ``update`` also ``wm_key_similarity`` (b, K),
``ltm_key_similarity`` (b, 1) and ``ltm_topk_similarity`` (b, k).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from ahm.envs.spaces import ACTION_COMPONENTS, ActionLayout
from ahm.envs.streams import FACT_KINDS

__all__ = ["NoMemoryController", "RandomController", "WriteAllController", "LRUController", "SurpriseController",
           "DedupeController", "UpdateController", "OracleController", "component_masks", "choose_write",
           "evict_when_writing", "retrieve_from_available", "conform_to_mask"]

_TARGET = FACT_KINDS.index("target")
_RETRIEVE_PREFERENCE = np.array([0.0, 2.0, 1.0, 3.0])
"""Score of retrieve values 0 none, 1 WM, 2 LTM, 3 both: read as much as is allowed, WM before LTM."""


def _size(observation: Mapping[str, np.ndarray]) -> tuple[int, int]:
    """(b, K) from an observation."""
    occupied = np.asarray(observation["wm_occupied"])
    if occupied.ndim != 2:
        raise ValueError(f"observation['wm_occupied'] must be batched, shape (b, K), got {occupied.shape}; "
                         "wrap a single env's observation with ahm.agents.batch_observation")
    b, k = occupied.shape
    return b, k


def component_masks(action_mask: np.ndarray | None, b: int, k: int) -> list[np.ndarray]:
    """The flat (b, 2 K + 12) mask split into the five components' (b, n_j) masks (all True if None).

    Raises ``ValueError`` if the shape is wrong or a row allows no value of some component.
    """
    layout = ActionLayout(k)
    if action_mask is None:
        return [np.ones((b, n), dtype=bool) for n in layout.nvec.tolist()]
    mask = np.asarray(action_mask, dtype=bool)
    if mask.shape != (b, layout.mask_width):
        raise ValueError(f"action_mask must have shape ({b}, {layout.mask_width}) for K = {k}, got {mask.shape}; "
                         "pass the env's action_masks() with a leading batch axis")
    parts = layout.split_mask(mask)
    for name, m in zip(ACTION_COMPONENTS, parts):
        empty = ~m.any(1)
        if empty.any():
            raise ValueError(f"action_mask allows no value of {name!r} for environment(s) "
                             f"{np.nonzero(empty)[0].tolist()}; every component needs at least one allowed value")
    return [p.copy() for p in parts]


def _best_allowed(scores: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """(b,) the allowed value with the highest score per row (ties: the lowest value). scores: (n,) or (b, n)."""
    scores = np.broadcast_to(np.asarray(scores, dtype=np.float64), mask.shape)
    return np.where(mask, scores, -np.inf).argmax(1).astype(np.int64)


def choose_write(occupied: np.ndarray, replace_priority: np.ndarray, write_mask: np.ndarray,
                 want: np.ndarray | None = None) -> np.ndarray:
    """(b,) the ``write_slot`` value (0 none, s + 1 slot s) of the shared write rule.

    Args:
        occupied: (b, K) bool, which WM slots hold an entry.
        replace_priority: (b, K) float, which occupied slot to overwrite when none is free (highest first).
        write_mask: (b, K + 1) bool, the allowed ``write_slot`` values.
        want: (b,) bool, rows that write at all (None: every row).

    Rows that write take the first allowed free slot, else the allowed occupied slot of highest
    priority, else no write; rows that do not write take 0 (or, if 0 is masked, the same choice).
    """
    b, k = occupied.shape
    slots = write_mask[:, 1:]
    free, used = slots & ~occupied, slots & occupied
    occ_best = np.where(used, replace_priority, -np.inf).argmax(1)
    chosen = np.where(free.any(1), free.argmax(1) + 1, np.where(used.any(1), occ_best + 1, 0)).astype(np.int64)
    if want is None:
        return chosen
    return np.where(~np.asarray(want, dtype=bool) & write_mask[:, 0], 0, chosen)


def evict_when_writing(write: np.ndarray, evict_mask: np.ndarray) -> np.ndarray:
    """(b,) ``evict_to_ltm``: 1 (move the displaced entry to LTM) where a row writes, 0 elsewhere, as allowed.

    write: (b,) ``write_slot`` values; evict_mask: (b, 2) the allowed ``evict_to_ltm`` values.
    """
    writes = (np.asarray(write) > 0)[:, None]
    return _best_allowed(np.where(writes, [0.0, 1.0], [1.0, 0.0]), evict_mask)


def retrieve_from_available(observation: Mapping[str, np.ndarray], action_mask: np.ndarray | None) -> np.ndarray:
    """(b,) the retrieve value reading every non-empty level: 3 both, 1 WM, 2 LTM, 0 none.

    With a mask, "non-empty" is what the mask allows (the env masks reads from an empty level);
    without one, it is read off ``wm_occupied`` and ``ltm_fill``.
    """
    b, k = _size(observation)
    if action_mask is not None:
        allowed = component_masks(action_mask, b, k)[2]
    else:
        wm = np.asarray(observation["wm_occupied"]).max(1) > 0.5
        ltm = np.asarray(observation["ltm_fill"]).reshape(b) > 0
        allowed = np.stack([np.ones(b, dtype=bool), wm, ltm, wm & ltm], 1)
    return _best_allowed(_RETRIEVE_PREFERENCE, allowed)


def conform_to_mask(actions: np.ndarray, action_mask: np.ndarray | None) -> np.ndarray:
    """(b, 5) ``actions`` with every masked component value replaced by 0 if allowed, else the lowest allowed value.

    A safety net for rules that prefer particular values (the env's masks always allow 0); values
    that are allowed are kept as they are. ``action_mask`` None returns ``actions`` unchanged.
    """
    if action_mask is None:
        return actions
    b = actions.shape[0]
    k = ActionLayout.from_mask_width(np.asarray(action_mask).shape[-1]).wm_slots
    out = actions.copy()
    for j, m in enumerate(component_masks(action_mask, b, k)):
        bad = ~m[np.arange(b), out[:, j]]
        if bad.any():
            out[bad, j] = m[bad].argmax(1)  # the lowest allowed value; 0 first
    return out


class _Stateless:
    name = "stateless"

    def reset(self, num_envs: int) -> None:
        pass


class NoMemoryController(_Stateless):
    """Never writes, retrieves or forgets: the backbone alone (the no-memory baseline).

    Returns all zeros whatever the mask: value 0 of every component is allowed in every state of the env.
    """

    name = "none"

    def act(self, observation: Mapping[str, np.ndarray], action_mask: np.ndarray | None = None,
            info: Mapping[str, Any] | None = None, episode_start: np.ndarray | None = None) -> np.ndarray:
        b, _ = _size(observation)
        return np.zeros((b, 5), dtype=np.int64)


class RandomController:
    """Uniform among the values valid now, per component, independently.

    Valid: what ``action_mask`` allows; without a mask, only the values valid in every state
    (any write, any eviction choice, no retrieve, no forget). Deterministic in ``seed``: its own
    generator, re-seeded by :meth:`reset`, so the same seed and observations give the same actions.
    """

    name = "random"

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed
        self.rng = np.random.default_rng(seed)

    def reset(self, num_envs: int) -> None:
        self.rng = np.random.default_rng(self.seed)

    def act(self, observation: Mapping[str, np.ndarray], action_mask: np.ndarray | None = None,
            info: Mapping[str, Any] | None = None, episode_start: np.ndarray | None = None) -> np.ndarray:
        b, k = _size(observation)
        masks = component_masks(action_mask, b, k)
        if action_mask is None:  # only what is valid in every state: write / evict at random, nothing else
            for m in masks[2:]:
                m[:, 1:] = False
        out = np.zeros((b, 5), dtype=np.int64)
        for j, m in enumerate(masks):
            # the argmax of i.i.d. uniforms over the allowed values is a uniform draw among them
            out[:, j] = _best_allowed(self.rng.random(m.shape), m)
        return out


class WriteAllController(_Stateless):
    """FIFO: write every chunk into the first free slot, else the oldest (largest ``wm_age``); the
    displaced entry goes to LTM; retrieve from every non-empty level; never forget."""

    name = "write_all"

    def act(self, observation: Mapping[str, np.ndarray], action_mask: np.ndarray | None = None,
            info: Mapping[str, Any] | None = None, episode_start: np.ndarray | None = None) -> np.ndarray:
        b, k = _size(observation)
        masks = component_masks(action_mask, b, k)
        occupied = np.asarray(observation["wm_occupied"]) > 0.5
        out = np.zeros((b, 5), dtype=np.int64)
        out[:, 0] = choose_write(occupied, np.asarray(observation["wm_age"], dtype=np.float64), masks[0])
        out[:, 1] = evict_when_writing(out[:, 0], masks[1])
        out[:, 2] = retrieve_from_available(observation, action_mask)
        return conform_to_mask(out, action_mask)  # forget / ltm_forget: 0, or the lowest allowed


class LRUController:
    """Least recently used, with the age rule of Kaiser et al. (2017, "Learning to Remember Rare Events", Sec. 3).

    The controller keeps its own age per slot (in chunks): every age grows by one each step
    and is reset to 0 when the slot is written or used; a write goes into a free slot, else
    the oldest one (the least recently used). "Used" is read off the observation: when the
    controller retrieves from the working memory, the occupied slot with the highest
    ``wm_similarity`` to the chunk's query is the one the read mostly returns (Kaiser et al.
    reset the age of the nearest neighbour that answered). Writes every chunk (displaced
    entries go to LTM); retrieves from every non-empty level.
    """

    name = "lru"

    def __init__(self) -> None:
        self.age: np.ndarray | None = None
        """(b, K) int64 chunks since each slot was last written or used."""

    def reset(self, num_envs: int) -> None:
        self.age = None

    def act(self, observation: Mapping[str, np.ndarray], action_mask: np.ndarray | None = None,
            info: Mapping[str, Any] | None = None, episode_start: np.ndarray | None = None) -> np.ndarray:
        b, k = _size(observation)
        masks = component_masks(action_mask, b, k)
        if self.age is None or self.age.shape != (b, k):
            self.age = np.zeros((b, k), dtype=np.int64)
        if episode_start is not None:
            self.age[np.asarray(episode_start, dtype=bool)] = 0
        occupied = np.asarray(observation["wm_occupied"]) > 0.5
        self.age += 1
        self.age[~occupied] = 0
        retrieve = retrieve_from_available(observation, action_mask)
        rows = np.nonzero((retrieve == 1) | (retrieve == 3))[0]
        if len(rows):
            sim = np.where(occupied[rows], np.asarray(observation["wm_similarity"])[rows], -np.inf)
            self.age[rows, sim.argmax(1)] = 0  # used now
        write = choose_write(occupied, self.age.astype(np.float64), masks[0])
        wrote = np.nonzero(write > 0)[0]
        self.age[wrote, write[wrote] - 1] = 0  # written now
        out = np.zeros((b, 5), dtype=np.int64)
        out[:, 0], out[:, 1], out[:, 2] = write, evict_when_writing(write, masks[1]), retrieve
        return conform_to_mask(out, action_mask)


class SurpriseController:
    """Write only surprising chunks: those where the backbone's state moved unusually far.

    Surprise of chunk t (per environment) = the Euclidean distance between its ``ssm_features``
    and chunk t - 1's (a novelty signal: a chunk that changes the recurrent state much carries
    information the state had not predicted). A chunk is written when the z-score of that
    distance against the episode's running mean and standard deviation of the distances so far
    (Welford's algorithm, over chunks 1 .. t - 1) exceeds ``threshold``. The first chunk of an
    episode has no distance, and the next ``warmup`` distances only build the statistics.
    Writes go into a free slot or the oldest (displaced entries to LTM); retrieves from every
    non-empty level.
    """

    name = "surprise"

    def __init__(self, threshold: float = 1.5, warmup: int = 4) -> None:
        if not np.isfinite(threshold) or int(warmup) < 1:
            raise ValueError(f"threshold must be a finite number and warmup an int >= 1, got {threshold!r}, "
                             f"{warmup!r}")
        self.threshold, self.warmup = float(threshold), int(warmup)
        self.reset(0)

    def reset(self, num_envs: int) -> None:
        self.prev: np.ndarray | None = None  # (b, F) the previous chunk's features
        self.n = self.mean = self.m2 = np.zeros(0)  # (b,) Welford statistics of the distances

    def surprise(self, features: np.ndarray, episode_start: np.ndarray | None) -> np.ndarray:
        """(b,) whether each row's chunk is surprising; updates the running statistics. features: (b, F)."""
        x = np.asarray(features, dtype=np.float64)
        b = x.shape[0]
        if self.prev is None or self.prev.shape != x.shape:
            self.prev, self.n, self.mean, self.m2 = x.copy(), np.zeros(b), np.zeros(b), np.zeros(b)
            start = np.ones(b, dtype=bool)
        else:
            start = np.zeros(b, dtype=bool) if episode_start is None else np.asarray(episode_start, dtype=bool)
        self.n[start], self.mean[start], self.m2[start] = 0, 0.0, 0.0
        self.prev[start] = x[start]
        dist = np.linalg.norm(x - self.prev, axis=1)
        std = np.sqrt(self.m2 / np.maximum(self.n - 1, 1))
        z = (dist - self.mean) / np.maximum(std, 1e-8)
        surprising = (self.n >= self.warmup) & (z > self.threshold) & ~start
        upd = ~start  # Welford update with this distance (after the test: the z-score compares with the past)
        self.n[upd] += 1
        delta = dist[upd] - self.mean[upd]
        self.mean[upd] += delta / self.n[upd]
        self.m2[upd] += delta * (dist[upd] - self.mean[upd])
        self.prev = x.copy()
        return surprising

    def act(self, observation: Mapping[str, np.ndarray], action_mask: np.ndarray | None = None,
            info: Mapping[str, Any] | None = None, episode_start: np.ndarray | None = None) -> np.ndarray:
        b, k = _size(observation)
        masks = component_masks(action_mask, b, k)
        surprising = self.surprise(observation["ssm_features"], episode_start)
        occupied = np.asarray(observation["wm_occupied"]) > 0.5
        out = np.zeros((b, 5), dtype=np.int64)
        out[:, 0] = choose_write(occupied, np.asarray(observation["wm_age"], dtype=np.float64), masks[0], surprising)
        out[:, 1] = evict_when_writing(out[:, 0], masks[1])
        out[:, 2] = retrieve_from_available(observation, action_mask)
        return conform_to_mask(out, action_mask)


class DedupeController:
    """FIFO writes that skip near-duplicates of what is stored.

    The controller remembers the ``ssm_features`` of the chunk it wrote into each slot (it
    sees nothing else of the stored entries) and skips a write when the cosine of the current
    chunk's features with any occupied slot's remembered features exceeds ``threshold``.
    Otherwise writes like ``write_all`` (first free slot, else the oldest; displaced entries to
    LTM). Retrieves from every non-empty level.
    """

    name = "dedupe"

    def __init__(self, threshold: float = 0.98) -> None:
        if not -1.0 <= float(threshold) <= 1.0:
            raise ValueError(f"threshold is a cosine similarity, in [-1, 1]; got {threshold!r}")
        self.threshold = float(threshold)
        self.stored: np.ndarray | None = None
        """(b, K, F) the features written into each slot (meaningful where the slot is occupied)."""

    def reset(self, num_envs: int) -> None:
        self.stored = None

    def act(self, observation: Mapping[str, np.ndarray], action_mask: np.ndarray | None = None,
            info: Mapping[str, Any] | None = None, episode_start: np.ndarray | None = None) -> np.ndarray:
        b, k = _size(observation)
        masks = component_masks(action_mask, b, k)
        x = np.asarray(observation["ssm_features"], dtype=np.float64)
        if self.stored is None or self.stored.shape != (b, k, x.shape[1]):
            self.stored = np.zeros((b, k, x.shape[1]))
        occupied = np.asarray(observation["wm_occupied"]) > 0.5
        unit = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
        stored = self.stored / np.maximum(np.linalg.norm(self.stored, axis=2, keepdims=True), 1e-12)
        cos = np.einsum("bkf,bf->bk", stored, unit)
        duplicate = (np.where(occupied, cos, -np.inf) > self.threshold).any(1)
        write = choose_write(occupied, np.asarray(observation["wm_age"], dtype=np.float64), masks[0], ~duplicate)
        wrote = np.nonzero(write > 0)[0]
        self.stored[wrote, write[wrote] - 1] = x[wrote]
        out = np.zeros((b, 5), dtype=np.int64)
        out[:, 0], out[:, 1] = write, evict_when_writing(write, masks[1])
        out[:, 2] = retrieve_from_available(observation, action_mask)
        return conform_to_mask(out, action_mask)


class UpdateController:
    """Key-value updates: write every chunk, replace what its key re-assigns, read the level that matches.

    Uses the write candidate's key similarities (``wm_key_similarity``, ``ltm_key_similarity``):

    * **write** every chunk: into the WM slot whose key matches the chunk's key above
      ``threshold`` (an update in place, the old entry dropped), else like ``write_all`` (first
      free slot, else the oldest; the displaced entry moves to LTM);
    * **forget** the LTM entry nearest to the chunk's key (``ltm_forget = 3``) when it matches
      above ``threshold``: the stale value of a re-assigned key;
    * **retrieve** from the one level holding the best match to the query (WM on ties), not both.

    ``threshold`` 0.9: with the shipped recall backbone, on two Forget streams of 100K tokens,
    fact chunks of the same key had key cosines of 0.89-0.94 on average and of different keys at
    most 0.89-0.91. A chunk that asks a key also matches it: its read comes first (the op order),
    so a fact is dropped only after it was asked; a task asking a key twice would lose it.
    """

    name = "update"

    def __init__(self, threshold: float = 0.9) -> None:
        if not -1.0 <= float(threshold) <= 1.0:
            raise ValueError(f"threshold is a cosine similarity, in [-1, 1]; got {threshold!r}")
        self.threshold = float(threshold)

    def reset(self, num_envs: int) -> None:
        pass

    def act(self, observation: Mapping[str, np.ndarray], action_mask: np.ndarray | None = None,
            info: Mapping[str, Any] | None = None, episode_start: np.ndarray | None = None) -> np.ndarray:
        b, k = _size(observation)
        masks = component_masks(action_mask, b, k)
        occupied = np.asarray(observation["wm_occupied"]) > 0.5
        key_sim = np.where(occupied, np.asarray(observation["wm_key_similarity"], dtype=np.float64), -np.inf)
        same_key = key_sim.max(1) > self.threshold
        write = choose_write(occupied, np.asarray(observation["wm_age"], dtype=np.float64), masks[0])
        write = np.where(same_key, key_sim.argmax(1) + 1, write)
        out = np.zeros((b, 5), dtype=np.int64)
        out[:, 0] = write
        out[:, 1] = np.where(same_key, 0, evict_when_writing(write, masks[1]))
        ltm_any = np.asarray(observation["ltm_fill"]).reshape(b) > 0
        out[:, 4] = np.where(ltm_any & (np.asarray(observation["ltm_key_similarity"]).reshape(b) > self.threshold),
                             3, 0)
        wm_best = np.where(occupied, np.asarray(observation["wm_similarity"], dtype=np.float64), -np.inf).max(1)
        ltm_best = np.where(ltm_any, np.asarray(observation["ltm_topk_similarity"], dtype=np.float64)[:, 0], -np.inf)
        available = retrieve_from_available(observation, action_mask)
        out[:, 2] = np.where(available == 3, np.where(wm_best >= ltm_best, 1, 2), available)
        return conform_to_mask(out, action_mask)


class OracleController:
    """**Reads ground truth** (``info["ground_truth"]``): an upper bound, not a learnable policy.

    Fields read: ``fact_kind`` (the kind of the fact ending at this chunk, an index into
    ``FACT_KINDS``, -1 none), ``query_fact_id``, ``wm_fact_id`` (per slot),
    ``query_fact_in_wm`` / ``query_fact_in_ltm``, and ``info["chunk"]`` (0 starts an episode).

    * **write** a chunk iff a fact of kind ``target`` ends at it: decoys are never asked, and
      stale facts are re-assigned before any query (every shipped task puts all assignments
      before its queries), so neither is written. The slot: a free one, else one holding no
      fact, else one whose fact was already asked (every shipped task asks a fact at most once,
      so it is no longer needed), else the oldest; the displaced entry moves to LTM;
    * **retrieve** at a query chunk from the WM if the queried fact is there, else from the LTM
      if it is there, else nothing; never elsewhere (a read where nothing is asked only adds
      noise to the readout);
    * **forget**: never. It never stores a stale fact, so no stored fact is ever superseded.
      (Forgetting what *another* policy stored would need to know which stored fact the current
      one re-assigns, which ``ground_truth`` does not say: a per-slot ``wm_fact_superseded``
      flag or the current fact's ``supersedes_fact_id`` would.)

    ``text`` has no facts or queries: the oracle writes and retrieves nothing there (as ``none``).
    Its only state is the set of facts asked so far per environment (cleared at episode starts).
    """

    name = "oracle"

    def __init__(self) -> None:
        self.asked: list[set[int]] = []

    def reset(self, num_envs: int) -> None:
        self.asked = [set() for _ in range(num_envs)]

    def act(self, observation: Mapping[str, np.ndarray], action_mask: np.ndarray | None = None,
            info: Mapping[str, Any] | None = None, episode_start: np.ndarray | None = None) -> np.ndarray:
        if info is None or "ground_truth" not in info:
            raise ValueError("the oracle reads info['ground_truth'] (it is an upper bound, not a policy); pass the "
                             "env's info to act(), batched (ahm.agents.batch_info for a single env, "
                             "AHMMemoryVectorEnv.step_arrays(...).info for a vector env)")
        gt = info["ground_truth"]
        b, k = _size(observation)
        masks = component_masks(action_mask, b, k)
        if len(self.asked) != b:
            self.asked = [set() for _ in range(b)]
        start = np.zeros(b, dtype=bool) if episode_start is None else np.asarray(episode_start, dtype=bool).copy()
        if "chunk" in info:
            start |= np.asarray(info["chunk"]).reshape(b) == 0
        for r in np.nonzero(start)[0]:
            self.asked[r] = set()

        occupied = np.asarray(observation["wm_occupied"]) > 0.5
        wm_fact = np.asarray(gt["wm_fact_id"]).reshape(b, k)
        asked = np.array([[int(f) in self.asked[r] for f in wm_fact[r]] for r in range(b)], dtype=bool).reshape(b, k)
        # Which occupied slot to overwrite: one holding no fact > a fact already asked > any; the oldest first
        # within each group (wm_age lies in [0, 1], so the group bonus of 2 or 4 dominates it).
        priority = np.asarray(observation["wm_age"], dtype=np.float64) + np.where(wm_fact < 0, 4.0,
                                                                                  np.where(asked, 2.0, 0.0))
        write = np.asarray(gt["fact_kind"]).reshape(b) == _TARGET
        query = np.asarray(gt["query_fact_id"]).reshape(b)
        in_wm = np.asarray(gt["query_fact_in_wm"]).reshape(b).astype(bool) & (query >= 0)
        in_ltm = np.asarray(gt["query_fact_in_ltm"]).reshape(b).astype(bool) & (query >= 0)

        out = np.zeros((b, 5), dtype=np.int64)
        out[:, 0] = choose_write(occupied, priority, masks[0], write)
        out[:, 1] = evict_when_writing(out[:, 0], masks[1])
        out[:, 2] = np.where(in_wm, 1, np.where(in_ltm, 2, 0))
        for r in np.nonzero(query >= 0)[0]:
            self.asked[r].add(int(query[r]))
        return conform_to_mask(out, action_mask)


class TeacherController(OracleController):
    """**Reads ground truth**: the oracle plus distractor writes, a teacher for the supervised phase.

    With the oracle alone the working memory holds only the facts that will be asked, so a
    backbone trained under it never has to pick the right entry by its key: a read returns
    the one entry there is, always from the WM. The teacher also writes each non-fact chunk
    with probability ``distractor_rate`` (its own generator, re-seeded by :meth:`reset`) into
    a free slot, else the oldest one, moving the displaced entry (a target fact too) to LTM;
    at a query it reads both levels when both hold something (else the oracle's level). So
    the read must select the queried entry among distractors, in the WM or, once the fact
    was displaced, in the compressed LTM, as a write-everything policy will need at test
    time. Not a benchmark controller.
    """

    name = "teacher"

    def __init__(self, distractor_rate: float = 1.0, seed: int = 0) -> None:
        super().__init__()
        if not 0.0 <= distractor_rate <= 1.0:
            raise ValueError(f"distractor_rate must lie in [0, 1], got {distractor_rate!r}")
        self.distractor_rate, self.seed = float(distractor_rate), seed
        self.rng = np.random.default_rng(seed)

    def reset(self, num_envs: int) -> None:
        super().reset(num_envs)
        self.rng = np.random.default_rng(self.seed)

    def act(self, observation: Mapping[str, np.ndarray], action_mask: np.ndarray | None = None,
            info: Mapping[str, Any] | None = None, episode_start: np.ndarray | None = None) -> np.ndarray:
        out = super().act(observation, action_mask, info, episode_start)
        gt = info["ground_truth"]  # present: the oracle checked
        b, k = _size(observation)
        masks = component_masks(action_mask, b, k)
        occupied = np.asarray(observation["wm_occupied"]) > 0.5
        no_fact_here = np.asarray(gt["fact_id"]).reshape(b) < 0
        distract = no_fact_here & (out[:, 0] == 0) & (self.rng.random(b) < self.distractor_rate)
        priority = np.asarray(observation["wm_age"], dtype=np.float64)
        slot = choose_write(occupied, priority, masks[0], distract)
        out[:, 0] = np.where(distract, slot, out[:, 0])
        out[:, 1] = np.where(distract, evict_when_writing(out[:, 0], masks[1]), out[:, 1])
        both = (out[:, 2] > 0) & masks[2][:, 3]
        out[:, 2] = np.where(both, 3, out[:, 2])
        return conform_to_mask(out, action_mask)
