"""``EpisodeBatch``: b episodes of the ``AHMMemory`` environments stepped together (proposal Sec. 2.2).

One step is one chunk of C tokens: the backbone (an :class:`~ahm.backbone.AHMModel`)
has read the chunk, the agent sees features of its recurrent state and a summary
of the memory, and chooses this chunk's memory operations. Rewards come from the
frozen model's readout and the task's private annotations (:mod:`ahm.rewards`,
:mod:`ahm.envs.episode_scoring`).

:class:`EpisodeBatch` steps b episodes together on one batched
:class:`~ahm.backbone.HierarchicalMemory`: :class:`~ahm.envs.memory_env.AHMMemoryEnv` is it with b = 1 and
:class:`~ahm.envs.vector_env.AHMMemoryVectorEnv` with b = ``num_envs``, so the two
run the same code and agree step for step.

Glossary: b episodes, n chunks per episode (``ceil(seq_len / chunk_size)``), t the
chunk index, K working-memory slots, M long-term capacity, F state features,
dk / dv key / value widths, D d_model, V vocabulary.

Per step t (readout integration, the default):

1. the observation of chunk t was computed from the cached boundary features of
   chunk t and the memory *before* this chunk's operations (``AHMModel.observe``);
2. the action becomes :class:`~ahm.backbone.MemoryOps` and
   :meth:`HierarchicalMemory.apply` runs it: retrieve r_t with chunk t's query, then
   forget, then evict-and-write chunk t's (key, value);
3. if chunk t ends a query cue (text: always, but the last chunk), the answer is
   scored from ``model.readout(h_last_t, r_t)``: the next-token logits at the
   boundary from the last hidden state plus the memory retrieved at this boundary;
   the same with ``r_t = 0`` gives the counterfactual of retrieval gain and
   information gain;
4. rewards, then the observation of chunk t + 1.

In ``readout`` integration the backbone never sees memory, so at reset the
episode's boundary features (per chunk: state features, key, value, query, last
hidden state: :class:`EpisodeFeatures`; O(n (F + 2 dk + dv + D)) floats, never the full
hidden states) are computed once in batched forward passes under ``torch.no_grad()`` and a step runs
memory operations only. In ``state`` integration r_t is fed into the SSM input of
chunk t + 1, so the backbone runs once per step (much slower).
"""

from __future__ import annotations

import sys
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import torch
from torch import Tensor

from ahm.backbone import (
    RETRIEVE_BOTH,
    RETRIEVE_LTM,
    RETRIEVE_WM,
    BoundaryFeatures,
    ChunkFeatures,
    HierarchicalMemory,
    MemoryOps,
    MemoryReadout,
)
from ahm.backbone.errors import NonFiniteError
from ahm.backbone.mamba import LayerState, MambaState
from ahm.envs.config import INVALID_ACTION_PENALTY, AHMMemoryConfig, check_stream_seed
from ahm.envs.default_backbones import keep_torch_threads, resolve_backbone
from ahm.envs.episode_scoring import Annotations, EntryOrigins, score_answers, usefulness
from ahm.envs.spaces import (  # noqa: F401  (OBSERVATION_KEYS re-exported: the keys of what observe() returns)
    ACTION_COMPONENTS,
    OBSERVATION_KEYS,
    ActionLayout,
    CheckedActions,
    fast_observation_arrays,
    observation_arrays,
    observation_space,
)
from ahm.envs.streams import TaskStream, make_task
from ahm.rewards import RewardBreakdown, RewardFunction, StepContext

if TYPE_CHECKING:
    from ahm.backbone.memory_fast import MemoryFastPath

LONG_RESET_TOKENS = 2**20
"""From this episode length on, a reset that computes features says on a terminal how long it will take."""
RESET_TOKENS_PER_S = 7_000
"""Tokens per second of a reset's feature pass, the default env (AHMMemory-v0, passkey backbone) on 2 CPU cores:
100K tokens in 13.6-14.2 s (measured; docs/environments.md, "Long episodes")."""

__all__ = ["EpisodeBatch", "EpisodeFeatures", "StepResult", "OP_COUNTERS", "INVALID_ACTION_TERM", "write_credit"]

OP_COUNTERS = ("writes", "moves_to_ltm", "drops", "retrievals_wm", "retrievals_ltm", "forgets_wm", "forgets_ltm")
"""Per-episode operation counts in ``info["memory"]``: a drop is a displaced WM entry that was not moved to LTM."""

INVALID_ACTION_TERM = "invalid_action"
"""The reward term of ``invalid_actions="penalty"`` in ``info["reward_terms"]``: raw value the number of this step's
masked-invalid components, weight :data:`~ahm.envs.config.INVALID_ACTION_PENALTY`."""


# ====================================================================== the episode machinery
def _annotate(stream: TaskStream) -> Annotations:
    """The episode's ground truth, laid out per chunk (a module-level hook: tests/env_contract.py scrambles it to
    check that no observation depends on it)."""
    return Annotations.of_stream(stream)


class EpisodeFeatures(NamedTuple):
    """Boundary features of chunks, read by name: what a memory step and the readout need from the backbone.

    Every field is (..., width) float32: (n, width) for one episode's n chunks (the feature
    cache), (b, n, width) for the batch's episodes, (b, width) for each row's current chunk.
    The compiled fast path reads the same tuple as numpy views (:meth:`numpy`).
    """

    ssm_features: Tensor
    """(..., F): the state features (:attr:`~ahm.backbone.MemoryObservation.ssm_features`, before ``tanh``)."""
    key: Tensor
    """(..., dk) unit vectors: the write candidate's key."""
    value: Tensor
    """(..., dv): the write candidate's value."""
    query: Tensor
    """(..., dk) unit vectors: the retrieval query."""
    last_hidden: Tensor
    """(..., D): the final-norm hidden state at the chunk's last token, the readout's input."""
    keep: Tensor
    """(..., 1): the keep head's probability that the chunk's entry is needed later (``AHMConfig.keep_head``);
    0 for a backbone without the head (then no observation shows it)."""

    @classmethod
    def of_chunk(cls, features: ChunkFeatures) -> EpisodeFeatures:
        """The (b, width) features of one chunk of b sequences, from the backbone's output."""
        b = features.boundary
        keep = (b.ssm_features.new_zeros(b.ssm_features.shape[0]) if b.keep_logit is None
                else torch.sigmoid(b.keep_logit.float()))
        return cls(b.ssm_features.float(), b.key.float(), b.value.float(), b.query.float(),
                   features.hidden[:, -1].float(), keep[:, None])

    def boundary(self, keep_head: bool = False) -> BoundaryFeatures:
        """The fields the memory step reads, as the backbone's :class:`~ahm.backbone.BoundaryFeatures` (with the
        keep head's logit where the backbone has the head)."""
        keep = torch.logit(self.keep[..., 0].double()).float() if keep_head else None
        return BoundaryFeatures(self.ssm_features, self.key, self.value, self.query, keep)

    def map(self, fn: Callable[[Any], Any]) -> EpisodeFeatures:
        """The features with ``fn`` applied to every field (an index, a copy, a conversion)."""
        return EpisodeFeatures(*(fn(x) for x in self))

    def numpy(self) -> EpisodeFeatures:
        """Numpy views of the (CPU) fields, sharing their memory: what the compiled fast path reads."""
        return self.map(lambda x: x.numpy())


class _Episode(NamedTuple):
    """What a reset produces for one row; kept in the feature cache (readout integration)."""

    stream: TaskStream
    annotations: Annotations
    features: EpisodeFeatures | None
    """(n, width) boundary features per field (readout integration), else None."""


class StepResult(NamedTuple):
    """One :meth:`EpisodeBatch.step` of b episodes."""

    observation: dict[str, np.ndarray]
    """Observation of each row's next chunk, (b, ...) float32 per key."""
    reward: np.ndarray
    """(b,) float64."""
    terminated: np.ndarray
    """(b,) bool."""
    truncated: np.ndarray
    """(b,) bool."""
    info: dict[str, Any]
    """Nested dict of (b, ...) arrays (see :class:`AHMMemoryEnv`, "Info")."""


class EpisodeBatch:
    """b episodes of one configuration stepped together on a batched memory (module doc).

    Rows are reset individually (:meth:`reset_rows`, with their own stream seeds)
    and stepped together (:meth:`step`). All arrays have leading dimension b.
    """

    def __init__(self, config: AHMMemoryConfig, batch: int, record: bool = False) -> None:
        if not isinstance(batch, int) or batch < 1:
            raise ValueError(f"batch must be a positive int, got {batch!r}")
        self.config, self.batch, self.record = config, batch, record
        probe = make_task(config.task, config.seq_len, config.chunk_size, 0, **dict(config.task_kwargs))
        self.vocab_size = probe.vocab_size
        self.n_chunks = probe.n_chunks
        model = resolve_backbone(config.backbone, probe.vocab_size, config.ltm_codec, config.integration, probe,
                                 config.task)
        self.model = model
        mc = model.config
        self.integration = mc.integration
        self.memory_config = replace(mc, wm_slots=config.wm_slots, ltm_capacity=config.ltm_capacity).memory_config()
        self.device = model.lm_head.weight.device
        self.memory = HierarchicalMemory(batch, self.memory_config, model.key_codec, model.value_codec, self.device)
        self.reward_fn = RewardFunction.from_weights(config.reward_weights, config.extra_reward_terms)
        k, d, dk, dv = config.wm_slots, mc.backbone.d_model, mc.key_dim, mc.resolved_value_dim
        self.feature_dim = mc.feature_dim
        self.layout = ActionLayout(k)
        """The action layout (:class:`~ahm.envs.spaces.ActionLayout`) for K = ``wm_slots``."""
        self.nvec = self.layout.nvec
        self.keep_head = mc.keep_head
        self.observation_space = observation_space(self.feature_dim, k, mc.obs_topk, keep_score=mc.keep_head)
        self._inv_temperature = model.log_inv_temperature.detach().exp()
        self._read_k = mc.ltm_read_k
        self._cache: OrderedDict[int, _Episode] = OrderedDict()
        n, b = self.n_chunks, batch
        self._rows = np.arange(b)
        self._rows_t = torch.arange(b, device=self.device)
        self._streams: list[TaskStream | None] = [None] * b
        self.stream_seeds = np.zeros(b, dtype=np.int64)
        self._ann = {name: np.full((b, n), -1, dtype=np.int64) for name in
                     ("target", "target_fact", "target_fact_chunk", "fact_at", "fact_kind", "fact_query_chunk")}
        self._is_query = np.zeros((b, n), dtype=bool)
        self._n_targets = np.ones(b, dtype=np.int64)
        self._last_chunk = np.zeros(b, dtype=np.int64)
        leading = (b, n) if self.integration == "readout" else (b,)  # state: the current chunk's only
        self._features = EpisodeFeatures(*(torch.zeros(*leading, w, device=self.device)
                                           for w in (self.feature_dim, dk, dv, dk, d, 1)))
        if self.integration == "state":
            self._backbone_state = model.backbone.init_state(b, self.device)
        self._features_np: EpisodeFeatures | None = None
        self._now_np: EpisodeFeatures | None = None  # the current chunk's features: fast path (numpy)
        self._now: EpisodeFeatures | None = None  # ... and torch reference
        self.t = np.zeros(b, dtype=np.int64)
        self.steps = np.zeros(b, dtype=np.int64)
        self.active = np.zeros(b, dtype=bool)
        """Rows inside an episode (reset, not yet terminated or truncated)."""
        self._origins = EntryOrigins(b, k, config.ltm_capacity)
        self._op_counts = np.zeros((b, len(OP_COUNTERS)), dtype=np.int64)
        self._invalid_noops = np.zeros(b, dtype=np.int64)
        self._no_invalid = np.zeros((b, len(ACTION_COMPONENTS)), dtype=bool)
        self._answered = np.zeros(b, dtype=np.int64)
        self._correct = np.zeros(b, dtype=np.int64)
        self._penalise_invalid = config.invalid_actions == "penalty"
        term_names = [*self.reward_fn.names, *([INVALID_ACTION_TERM] if self._penalise_invalid else [])]
        self._terms_zero = {name: np.zeros(b) for name in term_names}
        self.history: list[list[dict[str, np.ndarray]]] = [[] for _ in range(b)]
        self.last_action = np.zeros((b, len(ACTION_COMPONENTS)), dtype=np.int64)
        self.last_reward = np.zeros(b)
        self.observation: dict[str, np.ndarray] = {}
        self.masks = np.zeros((b, self.layout.mask_width), dtype=bool)

    # ---------------------------------------------------------------- copies
    def __getstate__(self) -> dict[str, Any]:
        """The state for pickle and ``copy.deepcopy``, without the numpy views of torch storage.

        ``_features_np`` are views of ``_features`` (``Tensor.numpy()`` shares memory), and the memory's
        fast path keeps views of the memory's tensors. A copy turns every view into an array of its own, so
        the copy's torch writes (a reset writes the features and empties the LTM in place) would no longer
        reach what the compiled step reads: a copied env kept stale LTM entries after ``reset(seed)``. The
        features' views are dropped here and made again on first use; the memory's fast path drops its own
        (``MemoryFastPath.__getstate__``).
        """
        state = self.__dict__.copy()
        state["_features_np"] = None
        return state

    # ---------------------------------------------------------------- episodes
    def _episodes(self, seeds: Sequence[int]) -> list[_Episode]:
        """Streams, annotations and (readout) boundary features for the given stream seeds; cached features reused."""
        c = self.config
        out: list[_Episode | None] = []
        missing: list[int] = []
        for i, seed in enumerate(seeds):
            hit = self._cache.get(int(seed))
            if hit is not None:
                self._cache.move_to_end(int(seed))
            else:
                missing.append(i)
            out.append(hit)
        if missing:
            unique = list(dict.fromkeys(int(seeds[i]) for i in missing))  # rows may share a stream seed
            streams = [make_task(c.task, c.seq_len, c.chunk_size, seed, **dict(c.task_kwargs)) for seed in unique]
            features = self._compute_features(streams) if self.integration == "readout" else [None] * len(streams)
            built = {seed: _Episode(stream, _annotate(stream), feats)
                     for seed, stream, feats in zip(unique, streams, features)}
            for i in missing:
                out[i] = built[int(seeds[i])]
            capacity = c.feature_cache_size * self.batch + len(c.stream_seeds or ())
            for seed, episode in built.items():
                if capacity and episode.features is not None:
                    self._cache[seed] = episode
                    while len(self._cache) > capacity:
                        self._cache.popitem(last=False)
        return out  # type: ignore[return-value]

    @torch.no_grad()
    def _compute_features(self, streams: list[TaskStream]) -> list[EpisodeFeatures]:
        """Boundary features, (n, width) per field, per stream, the backbone batched over the streams."""
        model, c = self.model, self.config
        tokens = torch.from_numpy(np.stack([s.tokens(0, c.seq_len) for s in streams])).to(self.device)  # (r, L)
        chunks = []
        state = None
        starts: Any = range(0, c.seq_len, c.chunk_size)
        if c.seq_len >= LONG_RESET_TOKENS and sys.stderr.isatty():  # a long reset: minutes of backbone, shown
            from tqdm import tqdm

            minutes = len(streams) * c.seq_len / RESET_TOKENS_PER_S / 60
            print(f"reset: computing the backbone's features of {len(streams)} stream(s) of {c.seq_len:,} tokens, "
                  f"about {minutes:.0f} min at {RESET_TOKENS_PER_S:,} tokens/s (docs/environments.md)",
                  file=sys.stderr, flush=True)
            starts = tqdm(starts, desc=f"reading {len(streams)} stream(s) of {c.seq_len:,} tokens", unit="chunk",
                          leave=False)
        for start in starts:
            with keep_torch_threads():  # per call: the next chunk's torch ops must not run on the reset count
                feats, state = model.chunk_features(tokens[:, start : start + c.chunk_size], state)
            chunks.append(EpisodeFeatures.of_chunk(feats))
        stacked = EpisodeFeatures(*(torch.stack(field, dim=1) for field in zip(*chunks)))  # (r, n, width)
        for name, values in zip(EpisodeFeatures._fields, stacked):  # checked once, before anything is cached
            bad = ~torch.isfinite(values)
            if bool(bad.any()):
                r, chunk = (int(i) for i in bad.flatten(2).any(2).nonzero()[0])
                raise NonFiniteError(
                    f"the backbone produced non-finite features ({name!r} of the stream with seed "
                    f"{streams[r].seed}, chunk {chunk}); its checkpoint holds NaN / inf weights or overflows on this "
                    "input: load another backbone")
        # separate storage per stream: the cache may keep some of them only
        return [stacked.map(lambda x, i=i: x[i].clone()) for i in range(len(streams))]

    def _unpack(self, features: EpisodeFeatures) -> tuple[BoundaryFeatures, Tensor]:
        """(b, width) features as the memory step's :class:`BoundaryFeatures` and the last hidden state (b, D)."""
        return features.boundary(), features.last_hidden

    @torch.no_grad()
    def warm(self, stream_seeds: Sequence[int]) -> None:
        """Read ``stream_seeds``' streams through the backbone in one batched pass so their features are cached
        (kept if the cache has room: an env whose ``stream_seeds`` contain them); no episode changes. Measured:
        3 streams of 100K tokens in 9.3 s together against 23.1 s one at a time (one torch thread)."""
        self._episodes([check_stream_seed(s, f"stream seed {i}") for i, s in enumerate(stream_seeds)])

    @torch.no_grad()
    def reset_rows(self, rows: np.ndarray, stream_seeds: Sequence[int]) -> None:
        """Start new episodes in ``rows`` (b,) indices with the given stream seeds; call :meth:`observe` after.

        Everything that can fail (a seed outside [0, 2**63), a backbone producing NaN / inf features) fails
        before any row changes, so a refused reset leaves every episode as it was.
        """
        rows = np.asarray(rows, dtype=np.int64)
        if len(rows) != len(stream_seeds):
            raise ValueError(f"reset_rows: {len(rows)} rows but {len(stream_seeds)} stream seeds")
        stream_seeds = [check_stream_seed(s, f"stream seed {i}") for i, s in enumerate(stream_seeds)]
        episodes = self._episodes(stream_seeds)  # may raise (a NaN backbone): no row has changed yet
        for r, seed, ep in zip(rows.tolist(), stream_seeds, episodes):
            self._streams[r] = ep.stream
            self.stream_seeds[r] = int(seed)
            a = ep.annotations
            for name in self._ann:
                self._ann[name][r] = getattr(a, name)
            self._is_query[r] = a.is_query
            self._n_targets[r], self._last_chunk[r] = a.n_targets, a.last_chunk
            if ep.features is not None:
                for mine, cached in zip(self._features, ep.features):
                    mine[r] = cached
            self.history[r] = []
        which = torch.zeros(self.batch, dtype=torch.bool, device=self.device)
        which[torch.from_numpy(rows).to(self.device)] = True
        self.memory.reset(which)
        self.t[rows], self.steps[rows], self.active[rows] = 0, 0, True
        self._origins.reset(rows)
        self._op_counts[rows], self._answered[rows], self._correct[rows] = 0, 0, 0
        self._invalid_noops[rows] = 0
        self.last_action[rows], self.last_reward[rows] = 0, 0.0
        if self.integration == "state":
            self._backbone_state = _zero_rows(self._backbone_state, which)
            self._run_backbone(rows, torch.zeros(len(rows), 2 * self.memory_config.value_dim, device=self.device))

    @torch.no_grad()
    def _run_backbone(self, rows: np.ndarray, retrieved: Tensor) -> None:
        """``state`` integration: the backbone reads chunk ``t[rows]`` with the input offset of ``retrieved`` (r, R)."""
        c, model = self.config, self.model
        lengths = np.minimum(c.chunk_size, c.seq_len - self.t[rows] * c.chunk_size)
        with keep_torch_threads():
            for length in np.unique(lengths).tolist():
                sel = np.nonzero(lengths == length)[0]
                group = rows[sel]
                tokens = torch.from_numpy(np.stack([self._streams[r].chunk(int(self.t[r])) for r in group]))
                idx = torch.from_numpy(group).to(self.device)
                sub = MambaState(tuple(LayerState(s.conv[idx], s.ssm[idx]) for s in self._backbone_state.layers))
                offset = model.input_offset(retrieved[torch.from_numpy(sel).to(self.device)])
                feats, new = model.chunk_features(tokens.to(self.device), sub, offset)
                self._backbone_state = MambaState(tuple(
                    LayerState(old.conv.index_copy(0, idx, upd.conv), old.ssm.index_copy(0, idx, upd.ssm))
                    for old, upd in zip(self._backbone_state.layers, new.layers)))
                for mine, computed in zip(self._features, EpisodeFeatures.of_chunk(feats)):
                    mine[idx] = computed

    # ---------------------------------------------------------------- observing
    def _current(self) -> EpisodeFeatures:
        """(b, width) features of each row's current chunk t."""
        if self.integration == "readout":
            t = torch.from_numpy(self.t).to(self.device)
            return self._features.map(lambda x: x[self._rows_t, t])
        return self._features

    @property
    def _packed_now(self) -> EpisodeFeatures:
        """(b, width) torch features of the chunk :meth:`observe` saw last (read by tests/test_memory_fast.py)."""
        return self._now if self._now is not None else self._now_np.map(torch.from_numpy)

    use_fast_path: bool = True
    """Step the memory through :mod:`ahm.backbone.memory_fast` (compiled, no torch ops) where the memory qualifies;
    False runs the torch reference (:meth:`_observe_ref`, :meth:`_step_ref`), which the tests compare it with."""

    def _fast(self) -> MemoryFastPath | None:
        return self.memory.fast if self.use_fast_path else None

    @torch.no_grad()
    def observe(self) -> dict[str, np.ndarray]:
        """The observation of every row's current chunk (memory before its operations); also sets :attr:`masks`."""
        path = self._fast()
        if path is None:
            return self._observe_ref()
        if self._features_np is None:  # numpy views of the feature storage (written in place, so made once)
            self._features_np = self._features.numpy()
        if self.integration == "readout":
            now = EpisodeFeatures(*(x[self._rows, self.t] for x in self._features_np))  # (b, width)
        else:
            now = self._features_np.map(np.copy)
        self._now_np, self._now = now, None  # the reference path's torch features, None here
        c = self.model.config
        o = path.observe(now.query, max(c.obs_topk, self._read_k), now.key)
        self._hits = o.hit_indices[:, : self._read_k]
        self.masks = o.masks
        self._wm_occupied = o.wm_occupied
        self.observation = fast_observation_arrays(o, now.ssm_features, self.t, self.n_chunks, path.capacity,
                                                   c.obs_topk, now.keep if self.keep_head else None)
        return self.observation

    @torch.no_grad()
    def _observe_ref(self) -> dict[str, np.ndarray]:
        """The reference of :meth:`observe`: ``AHMModel.observe`` and ``observation_arrays`` in torch."""
        self._now = self._current()
        obs, hits = self.model.observe(self._now.boundary(self.keep_head), self.memory, fast=False)
        self._hits = hits.indices[:, 0, : self._read_k]
        self.masks = self.layout.join_masks(self.memory.op_masks()).cpu().numpy()
        self._wm_occupied = obs.wm_occupied.cpu().numpy() > 0.5
        self.observation = observation_arrays(obs, self.t, self.n_chunks)
        return self.observation

    # ---------------------------------------------------------------- actions
    def check_actions(self, actions: Any, invalid_actions: str | None = None) -> CheckedActions:
        """``actions`` (b, 5) checked against the current masks (:meth:`ActionLayout.check`): masked-invalid
        components become no-ops, or raise in ``"raise"`` mode (default: the config's ``invalid_actions``)."""
        mode = self.config.invalid_actions if invalid_actions is None else invalid_actions
        return self.layout.check(actions, self.masks, mode)

    def mask_tuple(self, row: int) -> tuple[np.ndarray, ...]:
        """Row ``row``'s mask split per action component, as int8 arrays (for ``MultiDiscrete.sample``)."""
        return tuple(self.layout.split_mask(self.masks[row].astype(np.int8)))

    # ---------------------------------------------------------------- stepping
    @torch.no_grad()
    def step(self, actions: Any, finished: np.ndarray | None = None) -> StepResult:
        """Apply one chunk's operations in every row, score, reward, and observe the next chunk.

        ``finished`` (b,) bool marks rows whose episode is over and that the caller resets right after this
        step (NEXT_STEP autoreset): they step too, and their results are the caller's to discard.
        """
        over = ~self.active if finished is None else ~self.active & ~np.asarray(finished, dtype=bool)
        if over.any():
            raise RuntimeError(f"episodes {np.nonzero(over)[0].tolist()} are over (terminated or truncated) "
                               "or were never started; call reset() first")
        a, invalid = self.check_actions(actions)
        # The ops in numpy, as ActionLayout.to_ops maps actions (its torch ops cost ~15% of a step here).
        write, evict, retrieve, forget, ltm_forget = ops = self.layout.to_op_arrays(a)
        t, rows = self.t, self._rows
        forgets, writes = forget >= 0, write >= 0
        path = self._fast()
        if path is not None:  # the compiled step; the else branch is its torch reference
            now = self._now_np
            read = path.apply(write, evict, retrieve, forget, ltm_forget, now.key, now.value, now.query, self._hits,
                              float(self._inv_temperature))
            if read is None:
                raise AssertionError("memory_fast refused actions that check_actions made valid")
            displaced, moved_slot, ltm_forgot = read.displaced, read.moved_slot, read.ltm_forgot
            moved = moved_slot >= 0
            retrieved_np = np.concatenate([read.wm, read.ltm], axis=1)  # (b, 2 dv)
            retrieved = torch.from_numpy(retrieved_np)
            last_hidden = torch.from_numpy(self._now_np.last_hidden)
            if self.record:  # the renderer reads torch tensors
                read = MemoryReadout(*(torch.from_numpy(x) for x in read[:5]))
        else:
            # Which WM entry the write displaces (after this step's forget, as HierarchicalMemory.apply orders them).
            occupied = self._wm_occupied.copy()
            occupied[rows[forgets], forget[forgets]] = False
            displaced = writes & occupied[rows, np.maximum(write, 0)]
            moved = displaced & (evict == 1)
            boundary, last_hidden = self._now.boundary(), self._now.last_hidden
            read = self.memory.apply(MemoryOps(*(torch.from_numpy(np.ascontiguousarray(x)).to(self.device)
                                                 for x in ops)), boundary.key, boundary.value,
                                     boundary.query, self._hits, self._read_k, self._inv_temperature, fast=False)
            retrieved = read.vector()
            ltm_forgot = read.ltm_forgot.cpu().numpy()
            moved_slot = self._moved_ltm_slot(moved)

        # Score the answer at the boundary, from h_last and r_t (module doc, step 3).
        target = self._ann["target"][rows, t]
        scored = target >= 0
        answers = score_answers(self.model, last_hidden, retrieved, target, scored, self.integration)
        correct = answers.correct
        fact_weight = np.zeros(self.batch)
        if scored.any():
            fact_weight = self._origins.fact_read_weight(read, self._ann["target_fact_chunk"][rows, t])

        # Bookkeeping: which chunk wrote each entry (origins move with evictions to LTM; -1 marks an empty slot).
        left = self._origins.step(t, write, forget, displaced, moved, moved_slot, ltm_forgot)
        useless, needed = usefulness(left, t, self._ann["fact_at"], self._ann["fact_query_chunk"])
        discarded_useless, discarded_needed = useless[:, :4].sum(1), needed[:, :4].sum(1)
        written_useless = useless[:, 4].astype(np.int64)
        ltm_forgets = ltm_forget > 0
        counts = np.stack([writes, moved, displaced & ~moved, (retrieve == RETRIEVE_WM) | (retrieve == RETRIEVE_BOTH),
                           retrieve >= RETRIEVE_LTM, forgets, ltm_forgets], axis=1)
        self._op_counts += counts
        self._answered += scored
        self._correct += correct

        nbytes = path.nbytes() if path is not None else self.memory.nbytes().cpu().numpy()
        ctx = StepContext(scored=scored, correct=correct, loss=answers.loss,
                          loss_without_retrieval=answers.loss_without_retrieval, entropy=answers.entropy,
                          entropy_without_retrieval=answers.entropy_without_retrieval,
                          fact_read_weight=fact_weight, n_targets=self._n_targets,
                          n_ops=counts.sum(1), memory_bytes=nbytes, episode_steps=self._episode_steps(),
                          written_useless=written_useless, discarded_useless=discarded_useless,
                          discarded_needed=discarded_needed)
        rewards = self.reward_fn(ctx)
        n_invalid = invalid.sum(1)
        self._invalid_noops += n_invalid
        if self._penalise_invalid:
            rewards = _with_invalid_penalty(rewards, n_invalid)

        if self.record:
            self._record(read, rewards.total)
        self.last_action, self.last_reward = a.copy(), rewards.total.copy()
        self.steps += 1
        terminated = t >= self._last_chunk
        truncated = ~terminated & (self.steps >= self.config.max_steps if self.config.max_steps else False)
        self.active &= ~(terminated | truncated)
        self.t = np.minimum(t + 1, self.n_chunks - 1)
        if self.integration == "state":
            go = np.nonzero(t + 1 < self.n_chunks)[0]
            if len(go):
                self._run_backbone(go, retrieved[torch.from_numpy(go).to(self.device)])
        observation = self.observe()
        credit = write_credit(scored & correct, self._ann["target_fact_chunk"][rows, t], fact_weight)
        info = self.info(rewards.weighted, rewards.raw, scored, correct, nbytes, invalid, credit)
        info["is_success"] = self._correct == self._n_targets
        return StepResult(observation, rewards.total, terminated, truncated, info)

    def _moved_ltm_slot(self, moved: np.ndarray) -> np.ndarray:
        """(b,) the LTM slot each ``moved`` entry went to (-1 elsewhere): the one the LTM wrote at this step's clock."""
        moved_slot = np.full(self.batch, -1, dtype=np.int64)
        if moved.any():
            mrows = np.nonzero(moved)[0]
            mt = torch.from_numpy(mrows).to(self.device)
            ltm = self.memory.ltm
            clock = torch.from_numpy(self.steps[mrows]).to(self.device)[:, None]  # the LTM clock of this step
            fresh = (ltm.write_step[mt] == clock) & ltm.occupied[mt]
            moved_slot[mrows] = fresh.to(torch.uint8).argmax(1).cpu().numpy()
        return moved_slot

    def _episode_steps(self) -> np.ndarray:
        steps = self._last_chunk + 1
        return np.minimum(steps, self.config.max_steps) if self.config.max_steps else steps

    # ---------------------------------------------------------------- info
    def info(self, weighted: dict[str, np.ndarray] | None = None, raw: dict[str, np.ndarray] | None = None,
             scored: np.ndarray | None = None, correct: np.ndarray | None = None,
             memory_bytes: np.ndarray | None = None, invalid: np.ndarray | None = None,
             credit: dict[str, np.ndarray] | None = None) -> dict[str, Any]:
        """Nested dict of (b, ...) arrays describing every row now (after a step, or after a reset if no args)."""
        t = self.t
        weighted = weighted if weighted is not None else self._terms_zero
        raw = raw if raw is not None else self._terms_zero
        false = np.zeros(self.batch, dtype=bool)
        counts = self._op_counts
        memory = {name: counts[:, j].copy() for j, name in enumerate(OP_COUNTERS)}
        nbytes = memory_bytes if memory_bytes is not None else self.memory.nbytes().cpu().numpy()
        memory.update(bytes=nbytes.copy(), wm_entries=self._wm_occupied.sum(1),
                      ltm_entries=self.memory.ltm.count.cpu().numpy().copy(), invalid_noops=self._invalid_noops.copy())
        return {
            "chunk": t.copy(),
            "steps": self.steps.copy(),
            "episode_steps": self._episode_steps(),
            "reward_terms": {k: np.asarray(v, dtype=np.float64) for k, v in weighted.items()},
            "reward_terms_raw": {k: np.asarray(v, dtype=np.float64) for k, v in raw.items()},
            "scored": scored if scored is not None else false,
            "correct": correct if correct is not None else false,
            "invalid_components": (invalid if invalid is not None else self._no_invalid).copy(),
            "write_credit": credit if credit is not None else write_credit(false, np.full(self.batch, -1), false),
            "targets": {"answered": self._answered.copy(), "correct": self._correct.copy(),
                        "total": self._n_targets.copy()},
            "memory": memory,
            "ground_truth": {"stream_seed": self.stream_seeds.copy(),
                             **self._origins.ground_truth(self._ann, self._is_query, t)},
        }

    # ---------------------------------------------------------------- rendering support
    def _record(self, read: Any, reward: np.ndarray) -> None:
        wm_w = read.wm_weights.cpu().numpy()
        ltm_w = read.ltm_weights.cpu().numpy().sum(1)
        fill = self.memory.ltm.fill().cpu().numpy()
        for r in range(self.batch):
            self.history[r].append({"occupied": self._wm_occupied[r].copy(), "origin": self._origins.wm[r].copy(),
                                    "wm_read": wm_w[r].copy(), "ltm_read": float(ltm_w[r]),
                                    "ltm_fill": float(fill[r]), "reward": float(reward[r]), "chunk": int(self.t[r])})

    def snapshot(self, row: int) -> dict[str, Any]:
        """A plain description of row ``row`` now, for :func:`ahm.envs.render.render_ansi`."""
        wm = self.memory.wm
        return {
            "chunk": int(self.t[row]), "n_chunks": self.n_chunks, "steps": int(self.steps[row]),
            "occupied": self._wm_occupied[row].copy(), "age": wm.age[row].cpu().numpy(),
            "uses": wm.uses[row].cpu().numpy().copy(), "origin": self._origins.wm[row].copy(),
            "fact_at": self._ann["fact_at"][row], "ltm_count": int(self.memory.ltm.count[row]),
            "ltm_capacity": self.config.ltm_capacity, "bytes": int(self.memory.nbytes()[row]),
            "last_action": self.last_action[row].copy(), "last_reward": float(self.last_reward[row]),
            "answered": int(self._answered[row]), "correct": int(self._correct[row]),
            "targets": int(self._n_targets[row]),
        }


def write_credit(answered: np.ndarray, fact_chunk: np.ndarray, read_weight: np.ndarray) -> dict[str, np.ndarray]:
    """The hindsight credit of one step (``info["write_credit"]``): where a row answered correctly (``answered``
    (b,) bool) by reading the entry written at its target fact's chunk (``fact_chunk`` (b,), -1 none) with weight
    ``read_weight`` (b,) > 0, the write at that chunk earned ``read_weight``.

    Returns ``{"chunk": (b,) int64, "weight": (b,) float64}``: the chunk whose write step earned credit (-1 none)
    and how much. A learner adds it to the reward of that earlier step (:func:`ahm.agents.fast_ppo.credit_rewards`),
    so the write is paid when its entry is later read for a correct answer instead of through a return discounted
    over the hundreds of steps between them (MemAgent's final-answer credit, given to the write that earned it).
    Entries follow the chunk that wrote them (:class:`~ahm.envs.episode_scoring.EntryOrigins`), so the credit reaches
    the write even after the entry moved to the LTM.
    """
    earned = answered & (fact_chunk >= 0) & (read_weight > 0)
    return {"chunk": np.where(earned, fact_chunk, -1).astype(np.int64),
            "weight": np.where(earned, read_weight, 0.0).astype(np.float64)}


def _with_invalid_penalty(rewards: RewardBreakdown, n_invalid: np.ndarray) -> RewardBreakdown:
    """``rewards`` with the ``invalid_action`` term added: :data:`INVALID_ACTION_PENALTY` per masked-invalid
    component (``n_invalid`` (b,)); logged like every term, so the reward stays the sum of ``info["reward_terms"]``."""
    raw = n_invalid.astype(np.float64)
    weighted = INVALID_ACTION_PENALTY * raw
    return RewardBreakdown(rewards.total + weighted, {**rewards.weighted, INVALID_ACTION_TERM: weighted},
                           {**rewards.raw, INVALID_ACTION_TERM: raw})


def _zero_rows(state: MambaState, which: Tensor) -> MambaState:
    """The backbone state with the rows where ``which`` (b,) is True set to zero."""
    keep = (~which).to(state.layers[0].ssm.dtype)
    return MambaState(tuple(LayerState(s.conv * keep.to(s.conv.dtype)[:, None, None], s.ssm * keep[:, None, None])
                            for s in state.layers))
