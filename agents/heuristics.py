"""Hand-written memory controllers and the oracle.

Every controller here implements :class:`ahm.agents.base.Controller` (batched: b
environments per call) and decides from the env's observation and action mask
only, except :class:`OracleController`, which reads the task's ground truth from
``info["ground_truth"]``: it is an upper bound on what memory management can
achieve with the given backbone, not a policy an agent could learn from
observations, and is labelled as such in every table.

Shared conventions (K working-memory slots; action = [write_slot + 1, evict_to_ltm,
retrieve, forget_slot + 1, ltm_forget], see ``AHMMemoryEnv``):

* a write goes into a free slot if there is one, else into the slot each rule picks;
  the displaced entry moves to the long-term memory (``evict_to_ltm = 1``);
* "retrieve from what holds something": 3 (both) when both levels are non-empty, 1 (WM)
  or 2 (LTM) when only one is, 0 when both are empty (read off the action mask);
* no controller here forgets on its own except the oracle (a full LTM evicts by its rule).

Glossary of observation keys used: ``wm_occupied``, ``wm_age`` (chunks since written,
divided by the episode's chunks), ``wm_similarity`` (cosine of each slot's key with
the chunk's query), ``ssm_features`` (tanh of the backbone's state features).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from ahm.envs.streams import FACT_KINDS

__all__ = ["NoMemoryController", "RandomController", "WriteAllController", "LRUController", "SurpriseController",
           "DedupeController", "OracleController", "retrieve_from_available", "first_free_or"]

_TARGET = FACT_KINDS.index("target")


def _size(observation: Mapping[str, np.ndarray]) -> tuple[int, int]:
    """(b, K) from an observation."""
    b, k = np.asarray(observation["wm_occupied"]).shape
    return b, k


def _component_masks(action_mask: np.ndarray | None, b: int, k: int) -> list[np.ndarray]:
    """The flat (b, 2 K + 11) mask split into the five components' (b, n_j) masks (all True if None)."""
    nvec = [k + 1, 2, 4, k + 1, 3]
    if action_mask is None:
        return [np.ones((b, n), dtype=bool) for n in nvec]
    mask = np.asarray(action_mask, dtype=bool)
    if mask.shape != (b, sum(nvec)):
        raise ValueError(f"action_mask must have shape ({b}, {sum(nvec)}) for K = {k}, got {mask.shape}")
    return np.split(mask, np.cumsum(nvec)[:-1], axis=1)


def retrieve_from_available(observation: Mapping[str, np.ndarray], action_mask: np.ndarray | None) -> np.ndarray:
    """(b,) the retrieve value reading every non-empty level: 3 both, 1 WM, 2 LTM, 0 none."""
    b, k = _size(observation)
    if action_mask is not None:
        m = _component_masks(action_mask, b, k)[2]
        wm, ltm = m[:, 1], m[:, 2]
    else:
        wm = np.asarray(observation["wm_occupied"]).max(1) > 0.5
        ltm = np.asarray(observation["ltm_fill"]).reshape(b) > 0
    return np.where(wm & ltm, 3, np.where(wm, 1, np.where(ltm, 2, 0))).astype(np.int64)


def first_free_or(occupied: np.ndarray, fallback: np.ndarray) -> np.ndarray:
    """(b,) the first free slot of each row, or ``fallback`` (b,) where every slot is occupied."""
    free = ~occupied
    return np.where(free.any(1), free.argmax(1), fallback).astype(np.int64)


class _Stateless:
    name = "stateless"

    def reset(self, num_envs: int) -> None:
        pass


class NoMemoryController(_Stateless):
    """Never writes, retrieves or forgets: the backbone alone (the no-memory baseline)."""

    name = "none"

    def act(self, observation: Mapping[str, np.ndarray], action_mask: np.ndarray | None = None,
            info: Mapping[str, Any] | None = None, episode_start: np.ndarray | None = None) -> np.ndarray:
        b, _ = _size(observation)
        return np.zeros((b, 5), dtype=np.int64)


class RandomController:
    """Uniform among the values valid now, per component (always-valid values only without a mask).

    Deterministic in ``seed``: :meth:`reset` re-seeds its own generator.
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
        masks = _component_masks(action_mask, b, k)
        if action_mask is None:  # only what is valid in every state: write / evict at random, nothing else
            for m in masks[2:]:
                m[:, 1:] = False
        out = np.zeros((b, 5), dtype=np.int64)
        for j, m in enumerate(masks):
            u = self.rng.random(m.shape)
            out[:, j] = np.where(m, u, -1.0).argmax(1)  # uniform among the valid values (value 0 always valid)
        return out


class WriteAllController(_Stateless):
    """FIFO: write every chunk into the first free slot, else the oldest; displaced entries go to LTM;
    retrieve from every non-empty level; never forget."""

    name = "write_all"

    def act(self, observation: Mapping[str, np.ndarray], action_mask: np.ndarray | None = None,
            info: Mapping[str, Any] | None = None, episode_start: np.ndarray | None = None) -> np.ndarray:
        b, _ = _size(observation)
        occupied = np.asarray(observation["wm_occupied"]) > 0.5
        oldest = np.where(occupied, np.asarray(observation["wm_age"]), -1.0).argmax(1)
        out = np.zeros((b, 5), dtype=np.int64)
        out[:, 0] = first_free_or(occupied, oldest) + 1
        out[:, 1] = 1
        out[:, 2] = retrieve_from_available(observation, action_mask)
        return out


class LRUController:
    """Least recently used, with the age rule of Kaiser et al. (2017, "Learning to Remember Rare Events").

    Every slot has an age that grows by one each step and is reset to 0 when the slot is
    written or used; a write goes into a free slot, else the oldest (least recently
    used) one. "Used" is read off the observation: when the controller retrieves from the
    working memory, the occupied slot most similar to the query (``wm_similarity``) is the
    one the read mostly returns. Writes every chunk; retrieves from every non-empty level.
    """

    name = "lru"

    def __init__(self) -> None:
        self.age: np.ndarray | None = None

    def reset(self, num_envs: int) -> None:
        self.age = None

    def act(self, observation: Mapping[str, np.ndarray], action_mask: np.ndarray | None = None,
            info: Mapping[str, Any] | None = None, episode_start: np.ndarray | None = None) -> np.ndarray:
        b, k = _size(observation)
        if self.age is None or self.age.shape != (b, k):
            self.age = np.zeros((b, k), dtype=np.int64)
        if episode_start is not None:
            self.age[np.asarray(episode_start, dtype=bool)] = 0
        occupied = np.asarray(observation["wm_occupied"]) > 0.5
        self.age += 1
        self.age[~occupied] = 0
        retrieve = retrieve_from_available(observation, action_mask)
        reads_wm = (retrieve == 1) | (retrieve == 3)
        rows = np.nonzero(reads_wm)[0]
        if len(rows):
            sim = np.where(occupied[rows], np.asarray(observation["wm_similarity"])[rows], -np.inf)
            self.age[rows, sim.argmax(1)] = 0  # used now
        least_recent = np.where(occupied, self.age, -1).argmax(1)
        slot = first_free_or(occupied, least_recent)
        self.age[np.arange(b), slot] = 0  # written now
        out = np.zeros((b, 5), dtype=np.int64)
        out[:, 0], out[:, 1], out[:, 2] = slot + 1, 1, retrieve
        return out


class SurpriseController:
    """Write only surprising chunks: when the backbone's state moved unusually far since the last chunk.

    Surprise of chunk t = the Euclidean distance between its ``ssm_features`` and chunk
    t - 1's (a novelty signal: a chunk that changes the recurrent state much carries
    information the state had not predicted). A chunk is written when its z-score against
    the episode's running mean and standard deviation of that distance (Welford) exceeds
    ``threshold`` (the first ``warmup`` chunks only build the statistics). Writes go into a
    free slot or the oldest; retrieves from every non-empty level.
    """

    name = "surprise"

    def __init__(self, threshold: float = 1.5, warmup: int = 4) -> None:
        if not threshold == threshold or warmup < 1:
            raise ValueError(f"threshold must be a number and warmup >= 1, got {threshold!r}, {warmup!r}")
        self.threshold, self.warmup = float(threshold), int(warmup)
        self.reset(0)

    def reset(self, num_envs: int) -> None:
        self.prev: np.ndarray | None = None
        self.n = self.mean = self.m2 = None

    def act(self, observation: Mapping[str, np.ndarray], action_mask: np.ndarray | None = None,
            info: Mapping[str, Any] | None = None, episode_start: np.ndarray | None = None) -> np.ndarray:
        b, _ = _size(observation)
        x = np.asarray(observation["ssm_features"], dtype=np.float64)
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
        # Welford update of the running statistics (the first chunk of an episode has no distance)
        upd = ~start
        self.n[upd] += 1
        delta = dist[upd] - self.mean[upd]
        self.mean[upd] += delta / self.n[upd]
        self.m2[upd] += delta * (dist[upd] - self.mean[upd])
        self.prev = x.copy()
        occupied = np.asarray(observation["wm_occupied"]) > 0.5
        oldest = np.where(occupied, np.asarray(observation["wm_age"]), -1.0).argmax(1)
        out = np.zeros((b, 5), dtype=np.int64)
        out[:, 0] = np.where(surprising, first_free_or(occupied, oldest) + 1, 0)
        out[:, 1] = 1
        out[:, 2] = retrieve_from_available(observation, action_mask)
        return out


class DedupeController:
    """FIFO writes that skip near-duplicates of what is stored.

    The controller remembers the ``ssm_features`` of the chunk it wrote into each slot (it
    sees nothing else of the stored entries) and skips a write when the cosine of the
    current chunk's features with any occupied slot's remembered features exceeds
    ``threshold``. Retrieves from every non-empty level.
    """

    name = "dedupe"

    def __init__(self, threshold: float = 0.98) -> None:
        self.threshold = float(threshold)
        self.stored: np.ndarray | None = None

    def reset(self, num_envs: int) -> None:
        self.stored = None

    def act(self, observation: Mapping[str, np.ndarray], action_mask: np.ndarray | None = None,
            info: Mapping[str, Any] | None = None, episode_start: np.ndarray | None = None) -> np.ndarray:
        b, k = _size(observation)
        x = np.asarray(observation["ssm_features"], dtype=np.float64)
        if self.stored is None or self.stored.shape[:2] != (b, k):
            self.stored = np.zeros((b, k, x.shape[1]))
        occupied = np.asarray(observation["wm_occupied"]) > 0.5
        unit = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
        stored = self.stored / np.maximum(np.linalg.norm(self.stored, axis=2, keepdims=True), 1e-12)
        cos = np.einsum("bkf,bf->bk", stored, unit)
        duplicate = (np.where(occupied, cos, -np.inf) > self.threshold).any(1)
        oldest = np.where(occupied, np.asarray(observation["wm_age"]), -1.0).argmax(1)
        slot = first_free_or(occupied, oldest)
        write = ~duplicate
        self.stored[np.nonzero(write)[0], slot[write]] = x[write]
        out = np.zeros((b, 5), dtype=np.int64)
        out[:, 0] = np.where(write, slot + 1, 0)
        out[:, 1] = 1
        out[:, 2] = retrieve_from_available(observation, action_mask)
        return out


class OracleController(_Stateless):
    """**Reads ground truth** (``info["ground_truth"]``): an upper bound, not a learnable policy.

    * write a chunk iff a fact of kind ``target`` ends at it (decoys and stale facts are never
      written); into a free slot, else a slot holding no fact, else the oldest, moving the
      displaced entry to LTM;
    * at a query chunk, retrieve from the level that holds the queried fact (WM first), else nothing;
    * never forget: stale facts are never written, so nothing needs forgetting.
    """

    name = "oracle"

    def act(self, observation: Mapping[str, np.ndarray], action_mask: np.ndarray | None = None,
            info: Mapping[str, Any] | None = None, episode_start: np.ndarray | None = None) -> np.ndarray:
        if info is None or "ground_truth" not in info:
            raise ValueError("the oracle reads info['ground_truth']; pass the env's info (batched, see "
                             "ahm.agents.batch_info) to act()")
        gt = info["ground_truth"]
        b, k = _size(observation)
        occupied = np.asarray(observation["wm_occupied"]) > 0.5
        holds_fact = np.asarray(gt["wm_fact_id"]).reshape(b, k) >= 0
        age = np.asarray(observation["wm_age"])
        no_fact = np.where(occupied & ~holds_fact, 1.0 + age, -1.0)
        oldest = np.where(occupied, age, -1.0).argmax(1)
        fallback = np.where(no_fact.max(1) > 0, no_fact.argmax(1), oldest)
        write = np.asarray(gt["fact_kind"]).reshape(b) == _TARGET
        out = np.zeros((b, 5), dtype=np.int64)
        out[:, 0] = np.where(write, first_free_or(occupied, fallback) + 1, 0)
        out[:, 1] = 1
        query = np.asarray(gt["query_fact_id"]).reshape(b) >= 0
        in_wm = np.asarray(gt["query_fact_in_wm"]).reshape(b).astype(bool)
        in_ltm = np.asarray(gt["query_fact_in_ltm"]).reshape(b).astype(bool)
        out[:, 2] = np.where(query & in_wm, 1, np.where(query & in_ltm, 2, 0))
        return out
