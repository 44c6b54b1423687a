"""``AHMMemoryEnv``: memory management over a task stream as a Gymnasium environment (proposal Sec. 2.2).

One step is one chunk of C tokens: the backbone (an :class:`~ahm.backbone.AHMModel`)
has read the chunk, the agent sees features of its recurrent state and a summary
of the memory, and chooses this chunk's memory operations. Rewards come from the
frozen model's readout and the task's private annotations (:mod:`ahm.rewards`).

The machinery is :class:`EpisodeBatch`, b episodes stepped together on one batched
:class:`~ahm.backbone.HierarchicalMemory`: ``AHMMemoryEnv`` is it with b = 1 and
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
hidden state; O(n (F + 2 dk + dv + D)) floats, never the full hidden states) are
computed once in batched forward passes under ``torch.no_grad()`` and a step runs
memory operations only. In ``state`` integration r_t is fed into the SSM input of
chunk t + 1, so the backbone runs once per step (much slower).
"""

from __future__ import annotations

import contextlib
import math
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import gymnasium as gym
import numpy as np
import torch
import torch.nn.functional as F
from gymnasium import spaces
from torch import Tensor

from ahm.backbone import (
    RETRIEVE_BOTH,
    RETRIEVE_LTM,
    RETRIEVE_WM,
    AHMConfig,
    AHMModel,
    BoundaryFeatures,
    HierarchicalMemory,
    MambaConfig,
    MemoryObservation,
    MemoryOps,
    MemoryReadout,
)
from ahm.backbone.checkpoint import (  # noqa: F401  (checkpoint I/O re-exported from its old home)
    AHM_META,
    AHM_WEIGHTS,
    load_ahm_checkpoint,
    load_ahm_config,
    save_ahm_checkpoint,
)
from ahm.backbone.mamba import LayerState, MambaState
from ahm.envs.spaces import (  # noqa: F401  (re-exported: the spaces' names, from their one home)
    ACTION_COMPONENTS,
    OBSERVATION_KEYS,
    ActionLayout,
    MemoryOpsSpace,
    action_nvec,
    observation_arrays,
    observation_space,
)
from ahm.envs.streams import FACT_KINDS, TaskStream, make_task
from ahm.rewards import RewardFunction, RewardTerm, RewardWeights, StepContext

if TYPE_CHECKING:
    from ahm.backbone.memory_fast import MemoryFastPath

__all__ = [
    "AHMMemoryEnv", "AHMMemoryConfig", "EpisodeBatch", "MemoryOpsSpace", "ACTION_COMPONENTS", "OBSERVATION_KEYS",
    "DEFAULT_BACKBONE", "action_nvec", "random_backbone", "save_ahm_checkpoint", "load_ahm_checkpoint",
    "load_ahm_config", "observation_arrays",
]

OP_COUNTERS = ("writes", "moves_to_ltm", "drops", "retrievals_wm", "retrievals_ltm", "forgets_wm", "forgets_ltm")
"""Per-episode operation counts in ``info["memory"]``: a drop is a displaced WM entry that was not moved to LTM."""


@dataclass(frozen=True)
class BackboneShape:
    """Sizes of the random-initialised default backbone (vocabulary comes from the task)."""

    d_model: int = 32
    n_layer: int = 2
    d_state: int = 8
    key_dim: int = 16
    seed: int = 0
    """Torch seed of the initialisation: every default backbone of a task is the same model."""


DEFAULT_BACKBONE = BackboneShape()
"""The backbone of tasks without a shipped checkpoint (and of ``backbone="random"``): a small **random** model
(d_model 32, 2 layers, d_state 8, keys of 16, values of 32: F = 48 state features). Its answers are at chance
level; it exists so the environment, its rewards and the controllers run end to end."""

# ====================================================================== backbones
def random_backbone(vocab_size: int, ltm_codec: str = "int8", integration: str = "readout",
                    shape: BackboneShape = DEFAULT_BACKBONE) -> AHMModel:
    """The default backbone: a small random-initialised :class:`AHMModel` in eval mode, deterministic in its seed.

    Unlike a fresh ``AHMModel``, whose integration projection starts at zero (so memory
    has no effect until trained), the integration weights are random too, so that
    retrieval changes the readout and every reward term is exercised.
    """
    config = AHMConfig(MambaConfig(vocab_size=vocab_size, d_model=shape.d_model, n_layer=shape.n_layer,
                                   d_state=shape.d_state), key_dim=shape.key_dim, ltm_codec=ltm_codec,
                       integration=integration)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(shape.seed)
        model = AHMModel(config)
        with torch.no_grad():
            model.integration.proj.weight.normal_(0.0, 1.0 / math.sqrt(model.integration.proj.in_features))
    return model.eval().requires_grad_(False)


SHIPPED_BACKBONES = Path(__file__).parent / "checkpoints"
"""Task-trained default backbones shipped with the package, one folder per task family (``<task>/``, or the
shared folder :data:`SHIPPED_FOLDER` names), each made by the ``train_lm.py`` command in its ``ahm_model.json``
(``extra.command``) and in the README."""

SHIPPED_FOLDER = {"mqar": "recall", "forget": "recall", "decoy": "recall"}
"""Task families that share one shipped backbone: the three 8,192-token key-value recall tasks have one vocabulary
layout and one fact format up to the decoy's kind marker, and one model is trained on a mix of the three."""


def shipped_backbone_path(task: str) -> Path | None:
    """The folder of the task-trained default backbone for ``task``, or None if the package ships none."""
    path = SHIPPED_BACKBONES / SHIPPED_FOLDER.get(task, task)
    return path if (path / AHM_META).is_file() and (path / AHM_WEIGHTS).is_file() else None


def resolve_backbone(backbone: AHMModel | str | Path | None, vocab_size: int, ltm_codec: str | None,
                     integration: str | None, calibration: TaskStream, task: str = "") -> AHMModel:
    """The env's model from its ``backbone`` argument; checks it against the task and the memory arguments.

    None: the task's shipped task-trained backbone (:func:`shipped_backbone_path`) when there is one and
    ``ltm_codec`` / ``integration`` are None or equal its own; otherwise (or with ``"random"``) the
    random-initialised :func:`random_backbone`.
    """
    if backbone is None:
        shipped = shipped_backbone_path(task)
        if shipped is not None:
            saved = load_ahm_config(shipped)
            if ltm_codec in (None, saved.ltm_codec) and integration in (None, saved.integration):
                backbone = shipped
    if backbone is None or backbone == "random":
        model = random_backbone(vocab_size, ltm_codec or "int8", integration or "readout")
        if not (model.key_codec.is_fitted and model.value_codec.is_fitted):  # pq: fit on a sample of the task
            sample = torch.from_numpy(calibration.tokens(0, min(calibration.seq_len, 8192)))[None]
            with torch.no_grad():
                model.calibrate_codecs(sample, torch.Generator().manual_seed(0))
        return model
    if isinstance(backbone, (str, Path)):
        model, _ = load_ahm_checkpoint(backbone)
    elif isinstance(backbone, AHMModel):
        model = backbone
    else:
        raise ValueError(f"backbone must be None (the random default), an AHMModel, or a checkpoint directory; "
                         f"got {type(backbone).__name__}")
    c = model.config
    if c.backbone.vocab_size < vocab_size:
        raise ValueError(f"backbone vocabulary {c.backbone.vocab_size} is smaller than the task's {vocab_size}")
    for name, want, have in (("ltm_codec", ltm_codec, c.ltm_codec), ("integration", integration, c.integration)):
        if want is not None and want != have:
            raise ValueError(f"{name}={want!r} but the backbone was built with {have!r}; leave {name} as None to use "
                             "the backbone's, or pass a backbone built with it")
    if not (model.key_codec.is_fitted and model.value_codec.is_fitted):
        raise ValueError("the backbone's LTM codecs are not fitted; call model.calibrate_codecs(tokens) first")
    return model


@contextlib.contextmanager
def _keep_torch_threads() -> Iterator[None]:
    """Restore torch's thread count after backbone calls.

    The numba scan kernel (ahm.kernels.scan_cpu) sets numba's thread count and back;
    with the OpenMP threading layer that also resets torch's, undoing a caller's
    ``torch.set_num_threads(1)`` (measured: memory steps of 64 episodes then take
    ~100 ms instead of ~2 ms on a loaded 2-core machine).
    """
    threads = torch.get_num_threads()
    try:
        yield
    finally:
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)


# ====================================================================== configuration
@dataclass(frozen=True)
class AHMMemoryConfig:
    """Every argument of :class:`AHMMemoryEnv` (and of the vector env); see the env's docstring."""

    task: str = "passkey"
    seq_len: int = 100_000
    chunk_size: int = 256
    wm_slots: int = 8
    ltm_capacity: int = 512
    ltm_codec: str | None = None
    integration: str | None = None
    backbone: AHMModel | str | Path | None = None
    reward_weights: RewardWeights | Mapping[str, float] | None = None
    extra_reward_terms: tuple[RewardTerm, ...] = ()
    task_kwargs: Mapping[str, Any] = field(default_factory=dict)
    max_steps: int | None = None
    feature_cache_size: int = 1
    stream_seeds: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        for name in ("seq_len", "chunk_size", "wm_slots", "ltm_capacity"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if self.max_steps is not None and (not isinstance(self.max_steps, (int, np.integer)) or self.max_steps < 1):
            raise ValueError(f"max_steps must be None or a positive int, got {self.max_steps!r}")
        if not isinstance(self.feature_cache_size, int) or self.feature_cache_size < 0:
            raise ValueError(f"feature_cache_size must be an int >= 0, got {self.feature_cache_size!r}")
        if not isinstance(self.task_kwargs, Mapping):
            raise ValueError(f"task_kwargs must be a mapping, got {type(self.task_kwargs).__name__}")
        object.__setattr__(self, "extra_reward_terms", tuple(self.extra_reward_terms))
        if self.stream_seeds is not None:
            seeds = tuple(int(s) for s in self.stream_seeds)
            if not seeds or min(seeds) < 0:
                raise ValueError(f"stream_seeds must be None or a non-empty sequence of ints >= 0, got "
                                 f"{self.stream_seeds!r}")
            object.__setattr__(self, "stream_seeds", seeds)

    def draw_stream_seed(self, rng: np.random.Generator) -> int:
        """The stream seed of a new episode, from the env's ``np_random`` (so ``reset(seed=s)`` fixes it):
        uniform over ``stream_seeds`` if given, else any seed in [0, 2**63 - 1)."""
        if self.stream_seeds is not None:
            return self.stream_seeds[int(rng.integers(len(self.stream_seeds)))]
        return int(rng.integers(0, 2**63 - 1))




# ====================================================================== the episode machinery
class _Annotations(NamedTuple):
    """One episode's ground truth, laid out per chunk (what rewards, info and the oracle read)."""

    target: np.ndarray
    """(n,) int64: the token scored at chunk t's boundary (a query's first answer token; text: the next token), -1."""
    target_fact: np.ndarray
    """(n,) int64: the fact a query at chunk t asks about, -1."""
    target_fact_chunk: np.ndarray
    """(n,) int64: the chunk of that fact (where its entry would be written), -1."""
    is_query: np.ndarray
    """(n,) bool: a query cue ends at chunk t."""
    fact_at: np.ndarray
    """(n,) int64: the fact that ends at chunk t, -1."""
    fact_kind: np.ndarray
    """(n,) int64: its kind as an index into ``FACT_KINDS`` (-1 none)."""
    fact_query_chunk: np.ndarray
    """(n,) int64: the chunk of the first query about the fact that ends at chunk t; -1 if it is never asked
    (or no fact ends there): what the ``discard`` reward calls needed (asked later) and useless (never asked)."""
    n_targets: int
    last_chunk: int
    """The chunk after whose step the episode terminates (``stream.last_query_chunk``)."""


def _annotate(stream: TaskStream) -> _Annotations:
    n = stream.n_chunks
    target, target_fact, target_fact_chunk = (np.full(n, -1, dtype=np.int64) for _ in range(3))
    is_query = np.zeros(n, dtype=bool)
    fact_at, fact_kind, fact_query_chunk = (np.full(n, -1, dtype=np.int64) for _ in range(3))
    for f in stream.facts:
        fact_at[f.chunk] = f.fact_id
        fact_kind[f.chunk] = FACT_KINDS.index(f.kind) if f.kind in FACT_KINDS else len(FACT_KINDS)
    if stream.queries:
        for q in stream.queries:
            target[q.chunk], target_fact[q.chunk], is_query[q.chunk] = q.answer[0], q.fact_id, True
            target_fact_chunk[q.chunk] = stream.facts[q.fact_id].chunk
            first = fact_query_chunk[target_fact_chunk[q.chunk]]
            fact_query_chunk[target_fact_chunk[q.chunk]] = q.chunk if first < 0 else min(first, q.chunk)
    else:  # text: the first token of the next chunk, at every boundary but the last
        starts = np.arange(1, n) * stream.chunk_size
        target[: n - 1] = stream.tokens(0, stream.seq_len)[starts] if n > 1 else target[:0]
    n_targets = int((target >= 0).sum())
    return _Annotations(target, target_fact, target_fact_chunk, is_query, fact_at, fact_kind, fact_query_chunk,
                        max(1, n_targets), stream.last_query_chunk)


class _Episode(NamedTuple):
    """What a reset produces for one row; kept in the feature cache (readout integration)."""

    stream: TaskStream
    annotations: _Annotations
    features: Tensor | None
    """(n, W) packed boundary features [ssm_features F, key dk, value dv, query dk, last hidden D] (readout)."""


class _Readout(NamedTuple):
    """The answer prediction at scored rows (module doc, step 3)."""

    correct: np.ndarray
    loss: np.ndarray
    loss0: np.ndarray
    entropy: np.ndarray
    entropy0: np.ndarray


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
        widths = (self.feature_dim, dk, dv, dk, d)
        self._splits = np.cumsum((0, *widths))
        self.nvec = action_nvec(k)
        self._mask_offsets = np.concatenate([[0], np.cumsum(self.nvec)[:-1]])
        self.observation_space = spaces.Dict({
            "ssm_features": spaces.Box(-1.0, 1.0, (self.feature_dim,), np.float32),
            "wm_occupied": spaces.Box(0.0, 1.0, (k,), np.float32),
            "wm_age": spaces.Box(0.0, 1.0, (k,), np.float32),
            "wm_uses": spaces.Box(0.0, 1.0, (k,), np.float32),
            "wm_similarity": spaces.Box(-1.0, 1.0, (k,), np.float32),
            "wm_key_similarity": spaces.Box(-1.0, 1.0, (k,), np.float32),
            "ltm_fill": spaces.Box(0.0, 1.0, (1,), np.float32),
            "ltm_topk_similarity": spaces.Box(-1.0, 1.0, (mc.obs_topk,), np.float32),
            "ltm_key_similarity": spaces.Box(-1.0, 1.0, (1,), np.float32),
            "progress": spaces.Box(0.0, 1.0, (1,), np.float32),
        })
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
        if self.integration == "readout":
            self._features = torch.zeros(b, n, int(self._splits[-1]), device=self.device)
        else:
            self._features = torch.zeros(b, int(self._splits[-1]), device=self.device)  # the current chunk's
            self._backbone_state = model.backbone.init_state(b, self.device)
        self.t = np.zeros(b, dtype=np.int64)
        self.steps = np.zeros(b, dtype=np.int64)
        self.active = np.zeros(b, dtype=bool)
        """Rows inside an episode (reset, not yet terminated or truncated)."""
        self._wm_origin = np.full((b, k), -1, dtype=np.int64)
        self._ltm_origin = np.full((b, config.ltm_capacity), -1, dtype=np.int64)
        self._op_counts = np.zeros((b, len(OP_COUNTERS)), dtype=np.int64)
        self._answered = np.zeros(b, dtype=np.int64)
        self._correct = np.zeros(b, dtype=np.int64)
        self._terms_zero = {name: np.zeros(b) for name in self.reward_fn.names}
        self.history: list[list[dict[str, np.ndarray]]] = [[] for _ in range(b)]
        self.last_action = np.zeros((b, 5), dtype=np.int64)
        self.last_reward = np.zeros(b)
        self.observation: dict[str, np.ndarray] = {}
        self.masks = np.zeros((b, int(self.nvec.sum())), dtype=bool)

    # ---------------------------------------------------------------- episodes
    def _episodes(self, seeds: Sequence[int]) -> list[_Episode]:
        """Streams, annotations and (readout) packed features for the given stream seeds; cached features reused."""
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
    def _compute_features(self, streams: list[TaskStream]) -> list[Tensor]:
        """Packed boundary features (n, W) per stream, the backbone batched over the streams."""
        model, c = self.model, self.config
        tokens = torch.from_numpy(np.stack([s.tokens(0, c.seq_len) for s in streams])).to(self.device)  # (r, L)
        rows = []
        state = None
        for start in range(0, c.seq_len, c.chunk_size):
            with _keep_torch_threads():  # per call: the next chunk's torch ops must not run on the reset count
                feats, state = model.chunk_features(tokens[:, start : start + c.chunk_size], state)
            rows.append(self._pack(feats.boundary, feats.hidden[:, -1]))
        packed = torch.stack(rows, dim=1)  # (r, n, W)
        return [p.clone() for p in packed.unbind(0)]  # separate storage: the cache may keep some rows only

    @staticmethod
    def _pack(boundary: BoundaryFeatures, last_hidden: Tensor) -> Tensor:
        return torch.cat([boundary.ssm_features, boundary.key.float(), boundary.value.float(), boundary.query.float(),
                          last_hidden.float()], dim=-1)

    def _unpack(self, packed: Tensor) -> tuple[BoundaryFeatures, Tensor]:
        s = self._splits
        parts = [packed[:, s[i] : s[i + 1]] for i in range(5)]
        return BoundaryFeatures(*parts[:4]), parts[4]

    @torch.no_grad()
    def reset_rows(self, rows: np.ndarray, stream_seeds: Sequence[int]) -> None:
        """Start new episodes in ``rows`` (b,) indices with the given stream seeds; call :meth:`observe` after."""
        rows = np.asarray(rows, dtype=np.int64)
        episodes = self._episodes(stream_seeds)
        for r, seed, ep in zip(rows.tolist(), stream_seeds, episodes):
            self._streams[r] = ep.stream
            self.stream_seeds[r] = int(seed)
            a = ep.annotations
            for name in self._ann:
                self._ann[name][r] = getattr(a, name)
            self._is_query[r] = a.is_query
            self._n_targets[r], self._last_chunk[r] = a.n_targets, a.last_chunk
            if ep.features is not None:
                self._features[r] = ep.features
            self.history[r] = []
        which = torch.zeros(self.batch, dtype=torch.bool, device=self.device)
        which[torch.from_numpy(rows).to(self.device)] = True
        self.memory.reset(which)
        self.t[rows], self.steps[rows], self.active[rows] = 0, 0, True
        self._wm_origin[rows], self._ltm_origin[rows] = -1, -1
        self._op_counts[rows], self._answered[rows], self._correct[rows] = 0, 0, 0
        self.last_action[rows], self.last_reward[rows] = 0, 0.0
        if self.integration == "state":
            self._backbone_state = _zero_rows(self._backbone_state, which)
            self._run_backbone(rows, torch.zeros(len(rows), 2 * self.memory_config.value_dim, device=self.device))

    @torch.no_grad()
    def _run_backbone(self, rows: np.ndarray, retrieved: Tensor) -> None:
        """``state`` integration: the backbone reads chunk ``t[rows]`` with the input offset of ``retrieved`` (r, R)."""
        c, model = self.config, self.model
        lengths = np.minimum(c.chunk_size, c.seq_len - self.t[rows] * c.chunk_size)
        with _keep_torch_threads():
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
                self._features[idx] = self._pack(feats.boundary, feats.hidden[:, -1])

    # ---------------------------------------------------------------- observing
    def _current(self) -> Tensor:
        """(b, W) packed features of each row's current chunk t."""
        if self.integration == "readout":
            return self._features[self._rows_t, torch.from_numpy(self.t).to(self.device)]
        return self._features

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
        features = self._features.numpy()
        packed = features[self._rows, self.t] if self.integration == "readout" else features.copy()  # (b, W)
        self._packed_np = packed
        self._packed_now = torch.from_numpy(packed)
        s, c = self._splits, self.model.config
        o = path.observe(packed[:, s[3] : s[4]], max(c.obs_topk, self._read_k), packed[:, s[1] : s[2]])
        self._fast_obs = o
        self._hits = o.hit_indices[:, : self._read_k]
        self.masks = o.masks
        self._wm_occupied = o.wm_occupied
        n, one = np.float32(self.n_chunks), np.float32(1.0)
        uses = o.wm_uses.astype(np.float32)
        topk = o.hit_scores[:, : c.obs_topk]
        # As observation_arrays(model.observe(...)) computes them (tests/test_memory_fast.py compares the two).
        self.observation = {
            "ssm_features": np.tanh(packed[:, : s[1]]),
            "wm_occupied": o.wm_occupied.astype(np.float32),
            "wm_age": np.minimum(o.wm_age.astype(np.float32) / n, one),
            "wm_uses": uses / (one + uses),
            "wm_similarity": np.clip(o.wm_similarity, -1.0, 1.0),
            "wm_key_similarity": np.clip(o.wm_key_similarity, -1.0, 1.0),
            "ltm_fill": np.clip(o.ltm_count.astype(np.float32) / np.float32(path.capacity), 0.0, 1.0)[:, None],
            "ltm_topk_similarity": np.clip(np.where(np.isinf(topk), np.float32(0.0), topk), -1.0, 1.0),
            "ltm_key_similarity": np.clip(np.where(np.isinf(o.key_score), np.float32(0.0), o.key_score),
                                          -1.0, 1.0)[:, None],
            "progress": np.minimum((self.t + 1) / n, 1.0).astype(np.float32)[:, None],
        }
        return self.observation

    @torch.no_grad()
    def _observe_ref(self) -> dict[str, np.ndarray]:
        """The reference of :meth:`observe`: ``AHMModel.observe`` and ``observation_arrays`` in torch."""
        self._packed_now = self._current()
        boundary, _ = self._unpack(self._packed_now)
        obs, hits = self.model.observe(boundary, self.memory, fast=False)
        self._hits = hits.indices[:, 0, : self._read_k]
        self.masks = torch.cat(list(self.memory.op_masks()), dim=1).cpu().numpy()
        self.observation = self._observation_arrays(obs)
        return self.observation

    def _observation_arrays(self, obs: MemoryObservation) -> dict[str, np.ndarray]:
        self._wm_occupied = obs.wm_occupied.cpu().numpy() > 0.5
        return observation_arrays(obs, self.t, self.n_chunks)

    # ---------------------------------------------------------------- actions
    def check_actions(self, actions: Any) -> np.ndarray:
        """``actions`` (b, 5) as int64, or a ValueError naming the component, the value and why it is invalid."""
        a = np.asarray(actions)
        if a.shape != (self.batch, 5):
            raise ValueError(f"an action must be 5 integers {ACTION_COMPONENTS} per environment, shape "
                             f"{(self.batch, 5) if self.batch > 1 else (5,)}; got shape {a.shape}")
        if not np.issubdtype(a.dtype, np.integer):
            if not (np.issubdtype(a.dtype, np.floating) and np.all(a == np.round(a))):
                raise ValueError(f"actions must be integers (MultiDiscrete), got dtype {a.dtype} values {a.tolist()}")
        a = a.astype(np.int64)
        # All components at once; the loop below runs only to name the first invalid one.
        if ((a >= 0) & (a < self.nvec)).all() and self.masks[self._rows[:, None], self._mask_offsets + a].all():
            return a
        for j, name in enumerate(ACTION_COMPONENTS):
            bad = (a[:, j] < 0) | (a[:, j] >= self.nvec[j])
            if bad.any():
                r = int(np.nonzero(bad)[0][0])
                raise ValueError(f"action component {j} ({name}) = {a[r, j]}{self._where(r)} is outside the action "
                                 f"space [0, {self.nvec[j]})")
            ok = self.masks[self._rows, self._mask_offsets[j] + a[:, j]]
            if not ok.all():
                r = int(np.nonzero(~ok)[0][0])
                valid = np.nonzero(self.masks[r, self._mask_offsets[j] : self._mask_offsets[j] + self.nvec[j]])[0]
                raise ValueError(f"action component {j} ({name}) = {a[r, j]}{self._where(r)} is invalid now: "
                                 f"{self._why(j, int(a[r, j]))}; valid values now are {valid.tolist()}. "
                                 "Mask actions with env.action_masks() (MaskablePPO does this).")
        return a

    def mask_tuple(self, row: int) -> tuple[np.ndarray, ...]:
        """Row ``row``'s mask split per action component, as int8 arrays (for ``MultiDiscrete.sample``)."""
        return tuple(np.split(self.masks[row].astype(np.int8), self._mask_offsets[1:]))

    def _where(self, row: int) -> str:
        return f" (environment {row})" if self.batch > 1 else ""

    @staticmethod
    def _why(component: int, value: int) -> str:
        if component == 2:
            return {RETRIEVE_WM: "the working memory is empty", RETRIEVE_LTM: "the long-term memory is empty",
                    RETRIEVE_BOTH: "the working or the long-term memory is empty"}[value]
        if component == 3:
            return f"working-memory slot {value - 1} is empty"
        return "the long-term memory is empty"

    # ---------------------------------------------------------------- stepping
    @torch.no_grad()
    def step(self, actions: Any) -> StepResult:
        """Apply one chunk's operations in every row, score, reward, and observe the next chunk."""
        if not self.active.all():
            raise RuntimeError(f"episodes {np.nonzero(~self.active)[0].tolist()} are over (terminated or truncated) "
                               "or were never started; call reset() first")
        a = self.check_actions(actions)
        write, evict, retrieve, forget, ltm_forget = a[:, 0] - 1, a[:, 1], a[:, 2], a[:, 3] - 1, a[:, 4]
        t, rows = self.t, self._rows
        forgets, writes = forget >= 0, write >= 0
        moved_origin = self._wm_origin[rows, np.maximum(write, 0)]
        path = self._fast()
        if path is not None:  # the compiled step; the else branch is its torch reference
            s = self._splits
            packed = self._packed_np
            read = path.apply(write, evict, retrieve, forget, ltm_forget, packed[:, s[1] : s[2]],
                              packed[:, s[2] : s[3]], packed[:, s[3] : s[4]], self._hits, float(self._inv_temperature))
            if read is None:
                raise AssertionError("memory_fast refused actions that check_actions accepted")
            displaced, moved_slot, ltm_forgot = read.displaced, read.moved_slot, read.ltm_forgot
            moved = moved_slot >= 0
            retrieved_np = np.concatenate([read.wm, read.ltm], axis=1)  # (b, 2 dv)
            retrieved = torch.from_numpy(retrieved_np)
            last_hidden = self._packed_now[:, s[4] :]
            if self.record:  # the renderer reads torch tensors
                read = MemoryReadout(*(torch.from_numpy(x) for x in read[:5]))
        else:
            # Which WM entry the write displaces (after this step's forget, as HierarchicalMemory.apply orders them).
            occupied = self._wm_occupied.copy()
            occupied[rows[forgets], forget[forgets]] = False
            displaced = writes & occupied[rows, np.maximum(write, 0)]
            moved = displaced & (evict == 1)
            ops = MemoryOps(*(torch.from_numpy(np.ascontiguousarray(x)).to(self.device)
                              for x in (write, evict, retrieve, forget, ltm_forget)))
            boundary, last_hidden = self._unpack(self._packed_now)
            read = self.memory.apply(ops, boundary.key, boundary.value, boundary.query, self._hits, self._read_k,
                                     self._inv_temperature, fast=False)
            retrieved = read.vector()
            ltm_forgot = read.ltm_forgot.cpu().numpy()

        # Score the answer at the boundary, from h_last and r_t (module doc, step 3).
        target = self._ann["target"][rows, t]
        scored = target >= 0
        zeros = np.zeros(self.batch)
        correct, loss, loss0, entropy, entropy0 = np.zeros(self.batch, dtype=bool), zeros, zeros, zeros, zeros
        fact_weight = np.zeros(self.batch)
        if scored.any():
            idx = np.nonzero(scored)[0]
            out = self._score(last_hidden[torch.from_numpy(idx).to(self.device)],
                              retrieved[torch.from_numpy(idx).to(self.device)], target[idx])
            correct, loss, loss0, entropy, entropy0 = (np.zeros(self.batch, dtype=bool), zeros.copy(), zeros.copy(),
                                                       zeros.copy(), zeros.copy())
            correct[idx], loss[idx], loss0[idx], entropy[idx], entropy0[idx] = out
            fact_weight = self._fact_read_weight(read, t)

        # Bookkeeping: which chunk wrote each entry (origins move with evictions to LTM; -1 marks an empty slot).
        # Entries leaving the memory, by the chunk that wrote them: a forgotten WM slot, a displaced entry that is
        # dropped, the LTM entry ltm_forget empties, and the one a move into a full LTM replaces.
        # Columns: those four, then this step's write (origin t), for the discard reward.
        left = np.full((self.batch, 5), -1, dtype=np.int64)
        left[:, 0] = np.where(forgets, self._wm_origin[rows, np.maximum(forget, 0)], -1)
        left[:, 1] = np.where(displaced & ~moved, moved_origin, -1)
        self._wm_origin[rows[forgets], forget[forgets]] = -1
        lf_rows = np.nonzero(ltm_forgot >= 0)[0]
        left[lf_rows, 2] = self._ltm_origin[lf_rows, ltm_forgot[lf_rows]]
        self._ltm_origin[lf_rows, ltm_forgot[lf_rows]] = -1
        left[:, 4] = np.where(writes, t, -1)
        if moved.any():
            mrows = np.nonzero(moved)[0]
            if path is None:  # the slot the entry went to: the one the LTM wrote at this step's clock
                mt = torch.from_numpy(mrows).to(self.device)
                ltm = self.memory.ltm
                clock = torch.from_numpy(self.steps[mrows]).to(self.device)[:, None]  # the LTM clock of this step
                fresh = (ltm.write_step[mt] == clock) & ltm.occupied[mt]
                moved_slot = np.full(self.batch, -1, dtype=np.int64)
                moved_slot[mrows] = fresh.to(torch.uint8).argmax(1).cpu().numpy()
            left[mrows, 3] = self._ltm_origin[mrows, moved_slot[mrows]]  # >= 0: the LTM was full
            self._ltm_origin[mrows, moved_slot[mrows]] = moved_origin[mrows]
        self._wm_origin[rows[writes], write[writes]] = t[writes]
        useless, needed = self._usefulness(left, t)
        discarded_useless, discarded_needed = useless[:, :4].sum(1), needed[:, :4].sum(1)
        written_useless = useless[:, 4].astype(np.int64)
        ltm_forgets = ltm_forget > 0
        counts = np.stack([writes, moved, displaced & ~moved, (retrieve == RETRIEVE_WM) | (retrieve == RETRIEVE_BOTH),
                           retrieve >= RETRIEVE_LTM, forgets, ltm_forgets], axis=1)
        self._op_counts += counts
        self._answered += scored
        self._correct += correct

        nbytes = path.nbytes() if path is not None else self.memory.nbytes().cpu().numpy()
        ctx = StepContext(scored=scored, correct=correct, loss=loss, loss_without_retrieval=loss0, entropy=entropy,
                          entropy_without_retrieval=entropy0, fact_read_weight=fact_weight, n_targets=self._n_targets,
                          n_ops=counts.sum(1), memory_bytes=nbytes, episode_steps=self._episode_steps(),
                          written_useless=written_useless, discarded_useless=discarded_useless,
                          discarded_needed=discarded_needed)
        rewards = self.reward_fn(ctx)

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
        info = self.info(rewards.weighted, rewards.raw, scored, correct, nbytes)
        info["is_success"] = self._correct == self._n_targets
        return StepResult(observation, rewards.total, terminated, truncated, info)

    def _score(self, last_hidden: Tensor, retrieved: Tensor, target: np.ndarray) -> tuple[np.ndarray, ...]:
        """Correct, loss, loss without retrieval, entropy, entropy without retrieval (r,) for r scored rows."""
        model = self.model
        logits = model.readout(last_hidden[:, None, :], retrieved)[:, 0].float()  # (r, V)
        tgt = torch.from_numpy(target).to(self.device)[:, None]
        logp = F.log_softmax(logits, dim=-1)
        loss = -logp.gather(1, tgt)[:, 0]
        entropy = -(logp.exp() * logp).sum(-1)
        if self.integration == "readout":
            logp0 = F.log_softmax(model.readout(last_hidden[:, None, :], torch.zeros_like(retrieved))[:, 0].float(), -1)
            loss0, entropy0 = -logp0.gather(1, tgt)[:, 0], -(logp0.exp() * logp0).sum(-1)
        else:  # state integration: r_t reaches only the next chunk, so the answer here does not depend on it
            loss0, entropy0 = loss, entropy
        correct = logits.argmax(-1) == tgt[:, 0]
        return tuple(x.cpu().numpy() for x in (correct, loss.double(), loss0.double(), entropy.double(),
                                               entropy0.double()))

    def _fact_read_weight(self, read: Any, t: np.ndarray) -> np.ndarray:
        """(b,) read weight on entries written at the chunk of the target's fact (origins as before this step)."""
        fact_chunk = self._ann["target_fact_chunk"][self._rows, t][:, None]  # (b, 1), -1 none
        host = lambda x: x.cpu().numpy() if isinstance(x, Tensor) else x  # a MemoryReadout or a FastReadout
        wm = (host(read.wm_weights) * (self._wm_origin == fact_chunk)).sum(1)
        idx = host(read.ltm_indices)
        origin = np.where(idx >= 0, self._ltm_origin[self._rows[:, None], np.maximum(idx, 0)], -1)
        ltm = (host(read.ltm_weights) * (origin == fact_chunk)).sum(1)
        return np.where(fact_chunk[:, 0] >= 0, wm + ltm, 0.0)

    def _usefulness(self, origin: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(useless, needed) (b, m) bool of entries written at chunks ``origin`` (b, m) (-1 none), seen at chunk
        t (b,): useless holds a fact no query ever asks (stale, decoy); needed, one a query after chunk t asks."""
        chunk = np.maximum(origin, 0)
        rows = self._rows[:, None]
        fact = (origin >= 0) & (self._ann["fact_at"][rows, chunk] >= 0)
        asked_at = self._ann["fact_query_chunk"][rows, chunk]
        return fact & (asked_at < 0), fact & (asked_at > t[:, None])

    def _episode_steps(self) -> np.ndarray:
        steps = self._last_chunk + 1
        return np.minimum(steps, self.config.max_steps) if self.config.max_steps else steps

    # ---------------------------------------------------------------- info
    def info(self, weighted: dict[str, np.ndarray] | None = None, raw: dict[str, np.ndarray] | None = None,
             scored: np.ndarray | None = None, correct: np.ndarray | None = None,
             memory_bytes: np.ndarray | None = None) -> dict[str, Any]:
        """Nested dict of (b, ...) arrays describing every row now (after a step, or after a reset if no args)."""
        rows, t = self._rows, self.t
        weighted = weighted if weighted is not None else self._terms_zero
        raw = raw if raw is not None else self._terms_zero
        false = np.zeros(self.batch, dtype=bool)
        counts = self._op_counts
        memory = {name: counts[:, j].copy() for j, name in enumerate(OP_COUNTERS)}
        nbytes = memory_bytes if memory_bytes is not None else self.memory.nbytes().cpu().numpy()
        memory.update(bytes=nbytes.copy(), wm_entries=self._wm_occupied.sum(1),
                      ltm_entries=self.memory.ltm.count.cpu().numpy().copy())
        return {
            "chunk": t.copy(),
            "steps": self.steps.copy(),
            "episode_steps": self._episode_steps(),
            "reward_terms": {k: np.asarray(v, dtype=np.float64) for k, v in weighted.items()},
            "reward_terms_raw": {k: np.asarray(v, dtype=np.float64) for k, v in raw.items()},
            "scored": scored if scored is not None else false,
            "correct": correct if correct is not None else false,
            "targets": {"answered": self._answered.copy(), "correct": self._correct.copy(),
                        "total": self._n_targets.copy()},
            "memory": memory,
            "ground_truth": self._ground_truth(rows, t),
        }

    def _ground_truth(self, rows: np.ndarray, t: np.ndarray) -> dict[str, np.ndarray]:
        """The task's annotations of each row's current chunk t, for the oracle and metrics (never observed)."""
        ann = self._ann
        query_fact = np.where(self._is_query[rows, t], ann["target_fact"][rows, t], -1)
        origin = self._wm_origin
        wm_fact = np.where(origin >= 0, ann["fact_at"][rows[:, None], np.maximum(origin, 0)], -1)
        in_ltm = np.zeros(self.batch, dtype=bool)
        for r in np.nonzero(query_fact >= 0)[0]:  # at most one row in a hundred or so
            lo = self._ltm_origin[r]
            facts = np.where(lo >= 0, ann["fact_at"][r, np.maximum(lo, 0)], -1)
            in_ltm[r] = bool((facts == query_fact[r]).any())
        return {
            "stream_seed": self.stream_seeds.copy(),
            "fact_id": ann["fact_at"][rows, t],
            "fact_kind": ann["fact_kind"][rows, t],
            "query_fact_id": query_fact,
            "answer": ann["target"][rows, t],
            "wm_fact_id": wm_fact,
            "query_fact_in_wm": (query_fact >= 0) & (wm_fact == query_fact[:, None]).any(1),
            "query_fact_in_ltm": in_ltm,
        }

    # ---------------------------------------------------------------- rendering support
    def _record(self, read: Any, reward: np.ndarray) -> None:
        wm_w = read.wm_weights.cpu().numpy()
        ltm_w = read.ltm_weights.cpu().numpy().sum(1)
        fill = self.memory.ltm.fill().cpu().numpy()
        for r in range(self.batch):
            self.history[r].append({"occupied": self._wm_occupied[r].copy(), "origin": self._wm_origin[r].copy(),
                                    "wm_read": wm_w[r].copy(), "ltm_read": float(ltm_w[r]),
                                    "ltm_fill": float(fill[r]), "reward": float(reward[r]), "chunk": int(self.t[r])})

    def snapshot(self, row: int) -> dict[str, Any]:
        """A plain description of row ``row`` now, for :func:`ahm.envs.render.render_ansi`."""
        wm = self.memory.wm
        return {
            "chunk": int(self.t[row]), "n_chunks": self.n_chunks, "steps": int(self.steps[row]),
            "occupied": self._wm_occupied[row].copy(), "age": wm.age[row].cpu().numpy(),
            "uses": wm.uses[row].cpu().numpy().copy(), "origin": self._wm_origin[row].copy(),
            "fact_at": self._ann["fact_at"][row], "ltm_count": int(self.memory.ltm.count[row]),
            "ltm_capacity": self.config.ltm_capacity, "bytes": int(self.memory.nbytes()[row]),
            "last_action": self.last_action[row].copy(), "last_reward": float(self.last_reward[row]),
            "answered": int(self._answered[row]), "correct": int(self._correct[row]),
            "targets": int(self._n_targets[row]),
        }


def _zero_rows(state: MambaState, which: Tensor) -> MambaState:
    """The backbone state with the rows where ``which`` (b,) is True set to zero."""
    keep = (~which).to(state.layers[0].ssm.dtype)
    return MambaState(tuple(LayerState(s.conv * keep.to(s.conv.dtype)[:, None, None], s.ssm * keep[:, None, None])
                            for s in state.layers))


def row_info(info: dict[str, Any], row: int) -> dict[str, Any]:
    """Row ``row`` of a nested dict of (b, ...) arrays: Python scalars and (...) arrays."""
    out: dict[str, Any] = {}
    for key, value in info.items():
        if isinstance(value, dict):
            out[key] = row_info(value, row)
        else:
            x = value[row]
            out[key] = x.item() if np.ndim(x) == 0 else np.array(x)
    return out


# ====================================================================== the environment
class AHMMemoryEnv(gym.Env[dict[str, np.ndarray], np.ndarray]):
    """Managing a working memory and a long-term memory for an SSM reading a long task stream.

    ## Description

    An :class:`~ahm.backbone.AHMModel` (a Mamba-style SSM with a hierarchical memory,
    frozen) reads a task stream of ``seq_len`` tokens (:mod:`ahm.envs.streams`:
    passkey, MQAR, forget, selective copy, decoy, text), one chunk of
    ``chunk_size`` tokens per step. At each chunk boundary the agent decides the
    memory operations: which working-memory (WM) slot to write this chunk's
    (key, value) into, whether a displaced entry moves to the compressed long-term
    memory (LTM) or is dropped, whether to retrieve (none / WM / LTM / both) with
    this chunk's query, which WM slot to forget, and which LTM entry to forget. When
    a query's cue ends at a chunk, the model answers from its last hidden state
    plus the memory retrieved at that boundary; facts end exactly at chunk
    boundaries, so writing at the right chunk stores them.

    The default backbone is the task-trained checkpoint the package ships for the task
    (``ahm/envs/checkpoints/<task>/``, made by the ``train_lm.py`` command recorded in it and
    in the README); for a task without one, or with ``backbone="random"``, a small
    **random-initialised** model (:data:`DEFAULT_BACKBONE`) whose answers are at chance level,
    so only the mechanics are meaningful. Pass ``backbone=`` a trained :class:`AHMModel`
    or a checkpoint directory (:func:`save_ahm_checkpoint`) for your own.

    ## Observation Space

    A flat ``Dict`` of float32 ``Box`` es with finite bounds (K = ``wm_slots``,
    F = the backbone's ``d_model + n_layer * d_state``, k = its ``obs_topk``), all
    describing the memory *before* this chunk's operations:

    | key | shape | bounds | meaning |
    | --- | --- | --- | --- |
    | ``ssm_features`` | (F,) | [-1, 1] | ``tanh`` of the state features: last hidden state, per-layer SSM state RMS |
    | ``wm_occupied`` | (K,) | [0, 1] | 1 where a slot holds an entry |
    | ``wm_age`` | (K,) | [0, 1] | chunks since the slot was written / n_chunks (0 if empty) |
    | ``wm_uses`` | (K,) | [0, 1] | ``u / (1 + u)`` for u reads whose top-1 was the slot |
    | ``wm_similarity`` | (K,) | [-1, 1] | cosine of each slot's key with this chunk's query (0 if empty) |
    | ``wm_key_similarity`` | (K,) | [-1, 1] | cosine of each slot's key with this chunk's key, the write candidate's |
    | ``ltm_fill`` | (1,) | [0, 1] | LTM entries / capacity |
    | ``ltm_topk_similarity`` | (k,) | [-1, 1] | top-k LTM similarities to the query, clipped (0 if fewer entries) |
    | ``ltm_key_similarity`` | (1,) | [-1, 1] | top-1 LTM similarity to this chunk's key (0 if the LTM is empty) |
    | ``progress`` | (1,) | [0, 1] | (t + 1) / n_chunks |

    Ground truth (where facts are, what is asked, answers) never enters it.

    ## Action Space

    ``MultiDiscrete([K + 1, 2, 4, K + 1, 4])``, the :class:`~ahm.backbone.MemoryOps` of the chunk:

    | index | component | values |
    | --- | --- | --- |
    | 0 | ``write_slot`` | 0 no write; s + 1: write this chunk's entry into WM slot s |
    | 1 | ``evict_to_ltm`` | 0 drop the entry the write displaces; 1 move it to LTM (compressed) |
    | 2 | ``retrieve`` | 0 none, 1 WM, 2 LTM, 3 both |
    | 3 | ``forget_slot`` | 0 none; s + 1: empty WM slot s |
    | 4 | ``ltm_forget`` | 0 none; forget the LTM's 1 oldest entry, 2 least used one, 3 nearest to the chunk's key |

    Order within a step: retrieve (from the memory as observed), forget, evict-and-write.
    The space is a :class:`MemoryOpsSpace`: its unmasked ``sample()`` draws only
    operations valid in every state (write / evict at random, no retrieve or forget);
    ``action_space.sample(mask=env.action_mask_tuple())`` samples among the valid ones.
    :meth:`action_masks` gives the valid values as one flat boolean vector of
    ``2 K + 12`` entries (the per-component masks concatenated, as sb3-contrib's
    ``MaskablePPO`` expects); an invalid action (retrieving from an empty level,
    forgetting an empty slot or from an empty LTM) raises ``ValueError`` naming the
    component.

    ## Rewards

    The weighted sum of :mod:`ahm.rewards` terms, each also in ``info["reward_terms"]``
    (weighted) and ``info["reward_terms_raw"]``. Defaults (:class:`~ahm.rewards.RewardWeights`):
    task outcome 1.0 (episode sum = accuracy), retrieval gain 0.1, store-then-use 0.5,
    memory cost 0.01, information gain 0.05, discard 0 (off). Targets: a query's first answer token at
    the chunk where its cue ends; for ``text`` (no queries) the next token at every
    boundary. The readout is ``model.readout(h_last, r_t)``; retrieval gain and
    information gain compare it with ``r_t = 0``. In ``state`` integration r_t only
    reaches the next chunk, so those two terms are 0 there. Discard follows the entries by
    the chunk that wrote them: it pays for an entry holding a never-asked fact (stale,
    decoy) when it leaves the memory (forgotten, dropped by an overwrite, or replaced in a
    full LTM), charges the same when one is written, and charges for one a later query asks.

    ## Starting State

    Empty memory; the backbone has read chunk 0. The stream's seed is drawn from
    ``np_random`` (``reset(seed=s)`` fixes it; from ``stream_seeds`` if given), or given as
    ``options={"stream_seed": s}``.

    ## Episode End

    Terminated after the step of the last query's chunk (``stream.last_query_chunk``),
    so an episode lasts ``last_query_chunk + 1`` steps (``text``: ``n_chunks``);
    truncated after ``max_steps`` steps if given. ``info["episode_steps"]`` is the
    length. ``info["is_success"]``: every target answered correctly.

    ## Arguments

    * ``task`` (``"passkey"``): a key of ``ahm.envs.TASKS``.
    * ``seq_len`` (100_000): tokens per episode.
    * ``chunk_size`` (256): tokens per step; episodes have ``ceil(seq_len / chunk_size)`` chunks.
    * ``wm_slots`` (8): working-memory slots K.
    * ``ltm_capacity`` (512): long-term entries M (a write into a full LTM replaces by the backbone's eviction rule).
    * ``ltm_codec`` (None): LTM codec (``none``, ``int8``, ``pq``, ``autoencoder``, ``hash``); None: the
      backbone's (``int8`` for the default one).
    * ``integration`` (None): ``readout`` (features cached per episode; fast) or ``state`` (the backbone
      runs every step); None: the backbone's (``readout`` for the default one).
    * ``backbone`` (None): None (the task's shipped checkpoint, else the random default; see Description),
      ``"random"``, an ``AHMModel``, or a checkpoint directory written by :func:`save_ahm_checkpoint`.
    * ``reward_weights`` (None): :class:`~ahm.rewards.RewardWeights` or a mapping of term name to weight.
    * ``extra_reward_terms`` (()): custom :class:`~ahm.rewards.RewardTerm` instances added to the sum.
    * ``task_kwargs`` (None): arguments of the task stream (see its class).
    * ``max_steps`` (None): truncate after this many steps.
    * ``feature_cache_size`` (1): episodes whose cached features are kept (per environment), keyed by stream
      seed, so resetting with the same seed skips the backbone.
    * ``stream_seeds`` (None): draw every episode's stream from this fixed set of stream seeds (a training or
      evaluation set); their features are cached after first use, so later episodes skip the backbone. None:
      a fresh stream every episode (a backbone pass per reset).
    * ``render_mode`` (None): ``"ansi"`` (text view of memory) or ``"rgb_array"`` (slots, ages and reads over time).

    ## Info

    ``chunk``, ``steps``, ``episode_steps``; ``reward_terms`` / ``reward_terms_raw``; ``scored`` and
    ``correct`` (this step's target); ``targets`` (answered, correct, total); ``memory`` (per-episode
    operation counts, ``bytes`` held, ``wm_entries``, ``ltm_entries``); ``ground_truth`` of the
    observed chunk (``fact_id`` / ``fact_kind`` ending at it, ``query_fact_id`` and ``answer`` of a
    query ending at it, ``wm_fact_id`` per slot, ``query_fact_in_wm`` / ``_in_ltm``,
    ``stream_seed``) for the oracle and metrics; ``is_success`` after each step.

    ## Performance

    On a CPU, run the process with ``torch.set_num_threads(1)``: memory operations are
    tiny tensor ops, and a second thread makes them 10-50x slower. The env keeps the
    caller's thread count across backbone calls. A reset with a new stream costs one
    backbone pass over it, usually more than the episode's steps: reuse streams with
    ``stream_seeds`` (``benchmarks/env_throughput.py`` reports both costs).

    ## Version History

    * v0: initial version.

    Example::

        >>> import gymnasium as gym
        >>> import ahm
        >>> env = gym.make("AHMMemory-v0", seq_len=2048, chunk_size=64)
        >>> obs, info = env.reset(seed=0)
        >>> sorted(obs) == sorted(ahm.envs.OBSERVATION_KEYS), env.action_space
        (True, MultiDiscrete([9 2 4 9 4]))
        >>> mask = env.unwrapped.action_masks()
        >>> mask.shape, bool(mask[8 + 1 + 2 + 1])  # retrieve from WM: invalid while the WM is empty
        ((28,), False)
        >>> obs, reward, terminated, truncated, info = env.step([1, 0, 0, 0, 0])  # write into slot 0
        >>> info["memory"]["wm_entries"], info["memory"]["writes"]
        (1, 1)
        >>> steps = 1
        >>> while not (terminated or truncated):
        ...     obs, reward, terminated, truncated, info = env.step([0, 0, 1, 0, 0])  # retrieve from WM
        ...     steps += 1
        >>> steps == info["episode_steps"], sorted(info["reward_terms"])[:2]
        (True, ['discard', 'information_gain'])
    """

    metadata = {"render_modes": ["ansi", "rgb_array"], "render_fps": 30}

    def __init__(self, task: str = "passkey", seq_len: int = 100_000, chunk_size: int = 256, wm_slots: int = 8,
                 ltm_capacity: int = 512, ltm_codec: str | None = None, integration: str | None = None,
                 backbone: AHMModel | str | Path | None = None,
                 reward_weights: RewardWeights | Mapping[str, float] | None = None,
                 extra_reward_terms: Sequence[RewardTerm] = (), task_kwargs: Mapping[str, Any] | None = None,
                 max_steps: int | None = None, feature_cache_size: int = 1, stream_seeds: Sequence[int] | None = None,
                 render_mode: str | None = None) -> None:
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode must be None or one of {self.metadata['render_modes']}, got {render_mode!r}")
        self.config = AHMMemoryConfig(task, seq_len, chunk_size, wm_slots, ltm_capacity, ltm_codec, integration,
                                      backbone, reward_weights, tuple(extra_reward_terms), dict(task_kwargs or {}),
                                      max_steps, feature_cache_size, stream_seeds)
        self.render_mode = render_mode
        self._episodes = EpisodeBatch(self.config, batch=1, record=render_mode == "rgb_array")
        self.observation_space = self._episodes.observation_space
        self.action_space = MemoryOpsSpace(self._episodes.nvec)
        self._started = False

    @property
    def model(self) -> AHMModel:
        """The (frozen) backbone."""
        return self._episodes.model

    @property
    def stream(self) -> TaskStream | None:
        """The current episode's task stream (ground truth lives in its annotations)."""
        return self._episodes._streams[0]

    def reset(self, *, seed: int | None = None,
              options: dict[str, Any] | None = None) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        super().reset(seed=seed)
        options = options or {}
        stream_seed = options.get("stream_seed")
        stream_seed = self.config.draw_stream_seed(self.np_random) if stream_seed is None else int(stream_seed)
        episodes = self._episodes
        episodes.reset_rows(np.zeros(1, dtype=np.int64), [stream_seed])
        obs = episodes.observe()
        self._started = True
        return {k: v[0] for k, v in obs.items()}, row_info(episodes.info(), 0)

    def step(self, action: Any) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any]]:
        if not self._started:
            raise RuntimeError("AHMMemoryEnv: call reset() before step()")
        action = np.asarray(action)
        if action.shape != (5,):
            raise ValueError(f"an action must be 5 integers {ACTION_COMPONENTS} (shape (5,)), got shape {action.shape}")
        out = self._episodes.step(action[None])
        obs = {k: v[0] for k, v in out.observation.items()}
        return obs, float(out.reward[0]), bool(out.terminated[0]), bool(out.truncated[0]), row_info(out.info, 0)

    def action_masks(self) -> np.ndarray:
        """(2 K + 12,) bool: the valid values of each action component now, concatenated (for MaskablePPO)."""
        return self._episodes.masks[0].copy()

    def action_mask_tuple(self) -> tuple[np.ndarray, ...]:
        """The same mask split per component (int8), the form ``action_space.sample(mask=...)`` takes."""
        return self._episodes.mask_tuple(0)

    def render(self) -> str | np.ndarray | None:
        from ahm.envs.render import render_ansi, render_rgb

        if self.render_mode == "ansi":
            return render_ansi(self._episodes.snapshot(0))
        if self.render_mode == "rgb_array":
            return render_rgb(self._episodes.history[0], self.config.wm_slots)
        return None
