"""The AHM model: Mamba backbone + hierarchical memory + integration + heads (proposal Sec. 2.1).

Glossary: b sequences, C chunk size, D d_model, V vocabulary, K working-memory
slots, M long-term capacity, dk key dim, dv value dim, R = 2 dv retrieved width,
N d_state, L n_layer, F = D + L N observation features.

One chunk t of C tokens (:meth:`AHMModel.process_chunk`):

1. **Backbone.** hidden (b, C, D) from the chunk and the carried SSM state. In
   ``state`` integration the token embeddings are offset by
   ``sigmoid(W_g r_{t-1}) * W_s r_{t-1}``, the memory retrieved at the previous
   boundary (proposal Sec. 2.1, item 5: "integrated back into the main SSM computation").
2. **Readout.** logits (b, C, V) = ``lm_head(hidden + W_r r_{t-1})`` in ``readout``
   integration, ``lm_head(hidden)`` in ``state`` integration. ``W_r`` and ``W_s`` start
   at zero, so an untrained AHM model is exactly its backbone LM.
3. **Boundary features**: ``h = hidden[:, -1]`` and learnt attention poolings over the chunk's
   positions, ``p = sum_i a_i hidden[:, i]`` with ``a = softmax(w . hidden_i - lambda d_i + beta[d_i])``
   (d_i the distance from the boundary, lambda a learnt recency, beta a learnt bias of the last
   :data:`POSITION_BIAS` positions): ``p_k`` for the key and ``p_v`` for the value (``split``
   pooling; ``shared``: one ``p`` for both, no beta); key = normalize(W_k p_k), value = W_v p_v,
   query = normalize(W_q h) (unit vectors: inner products are cosines); ``ssm_features`` (b, F) =
   [h, per layer the root mean square over the d_inner channels of the SSM state (b, N)].
4. **Observation -> controller -> ops.** :class:`MemoryObservation` describes the
   memory *before* this chunk's operations; a controller (any callable
   ``MemoryObservation -> MemoryOps``) returns the :class:`MemoryOps`.
5. **Memory operations**, in this order (:meth:`HierarchicalMemory.apply`):
   retrieve (with the query, from the memory as observed), forget (WM slot, then
   LTM oldest / least used / nearest to the chunk's key), evict-and-write (the displaced WM entry moves to LTM,
   compressed, if asked; then the new entry is written), then the clocks tick.
6. r_t = [m_wm, m_ltm] (b, R) is carried in :class:`AHMState` to chunk t + 1. The integration reads it
   as ``W_r (m_wm + m_ltm)`` (``shared`` level readout: one projection for both levels, so an entry
   reads the same whichever level holds it) or ``W_r [m_wm; m_ltm]`` (``separate``: each level its own
   columns), :attr:`AHMConfig.level_readout`. With ``shared`` a read of both levels is one attention over
   both (:attr:`MemoryConfig.joint_read`).

Causality: memory written or retrieved at the end of chunk t affects chunk t + 1
and later only, so logits never see the chunk's own future tokens.

In ``readout`` integration the backbone never sees memory, so the per-chunk
features do not depend on the controller: :meth:`AHMModel.chunk_features` can be
computed once per sequence and cached, and :meth:`AHMModel.memory_step` runs the
memory alone on the cached :class:`BoundaryFeatures` (what makes RL over 100K-1M
token episodes affordable).

Invalid operations raise before anything changes (:meth:`HierarchicalMemory.validate`):
a slot outside ``[-1, K)`` (IndexError), retrieving from an empty WM or LTM,
forgetting an empty WM slot or from an empty LTM, an unknown op code
(ValueError). :meth:`HierarchicalMemory.op_masks` says which values are valid.

Where the parts live: the memory (step 5) in :mod:`ahm.backbone.hierarchical_memory`, the integration
(steps 1, 2, 6) in :mod:`ahm.backbone.integration`, the operation contract (step 4) in
:mod:`ahm.backbone.memory_ops`; this module wires them to the backbone.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .codecs import CodecOptions, make_codec
from .config import MambaConfig, dataclass_from_dict
from .hierarchical_memory import HierarchicalMemory, MemoryConfig, MemoryReadout  # also re-exported (__all__)
from .integration import INTEGRATIONS, LEVEL_READOUTS, make_integration
from .long_term_memory import EVICTION_RULES, SEARCH_MODES, LTMConfig, LTMHits
from .mamba import MambaBackbone, MambaState
from .memory_ops import (  # noqa: F401  (re-exported: the contract's names, from its one home)
    LTM_FORGET_LEAST_USED,
    LTM_FORGET_NEAREST,
    LTM_FORGET_NONE,
    LTM_FORGET_OLDEST,
    RETRIEVE_BOTH,
    RETRIEVE_LTM,
    RETRIEVE_NONE,
    RETRIEVE_WM,
    DefaultController,
    MemoryObservation,
    MemoryOps,
    MemoryPolicy,
    NullController,
    OpMasks,
)
from .working_memory import READ_MODES

Controller = MemoryPolicy
"""Deprecated alias of :data:`~ahm.backbone.memory_ops.MemoryPolicy` (renamed: ``ahm.agents.Controller`` is the
environments' controller protocol)."""

__all__ = [
    "MemoryConfig", "MemoryReadout", "HierarchicalMemory",
    "AHMConfig", "AHMState", "BoundaryFeatures", "ChunkFeatures", "MemoryStep", "ChunkOutput", "AHMModel",
]

WRITE_POOLINGS = ("split", "shared")
POSITION_BIAS = 8
"""Positions before a chunk boundary whose write-pooling score has a learnt bias of its own (``split`` pooling)."""


@dataclass(frozen=True)
class AHMConfig:
    """Configuration of :class:`AHMModel`; the defaults run as they are."""

    backbone: MambaConfig = field(default_factory=MambaConfig)
    """The Mamba backbone."""
    chunk_size: int = 64
    """Tokens per chunk C: memory operations happen at chunk boundaries."""
    wm_slots: int = 16
    """Working-memory slots K."""
    ltm_capacity: int = 4096
    """Long-term memory entries M per sequence."""
    ltm_codec: str = "int8"
    """LTM codec: ``none``, ``int8``, ``pq`` (call ``calibrate_codecs`` first), ``autoencoder``, ``hash``."""
    codec_options: CodecOptions = field(default_factory=CodecOptions)
    """Parameters of the codec."""
    key_dim: int = 32
    """Key / query width dk."""
    value_dim: int | None = None
    """Value width dv; None means d_model."""
    integration: str = "readout"
    """``readout`` (memory enters the logits; features cacheable) or ``state`` (gated into the SSM input)."""
    read_mode: str = "soft"
    """``soft`` attention or ``top1`` reads, both levels."""
    ltm_read_k: int = 4
    """LTM hits combined per read."""
    obs_topk: int = 4
    """k_obs: LTM similarities in the observation."""
    ltm_eviction: str = "oldest"
    """What a write into a full LTM replaces: ``oldest`` or ``least_used``."""
    ltm_search: str = "exact"
    """LTM search: ``exact``, or faiss ``ivf`` / ``hnsw`` (the ``ann`` extra) for large stores."""
    ann_min_entries: int = 100_000
    """Approximate LTM search starts once every sequence holds this many entries."""
    init_inv_temperature: float = 10.0
    """Initial scale of the (cosine) similarities in soft reads; learnt (log-parametrised)."""
    write_pooling: str = "split"
    """How the write candidate is read from the chunk (module doc, step 3): ``split``, a pooling each for the key
    and the value with learnt biases of the last positions, so a fact ``(key, value)`` ending the chunk can send
    its key token to the key and its value token to the value; or ``shared``, one pooling for both (checkpoints
    made before ``split`` existed load as ``shared``). With ``shared`` pooling a 64-wide model trained on MQAR
    stayed at (copy accuracy) / (number of pairs): its keys carried the value token as much as the key token."""
    level_readout: str = "shared"
    """How the reads of the two levels enter the integration (module doc, step 6): ``shared``, one projection of
    ``m_wm + m_ltm``, so an entry moved to the LTM (compressed) is read as it was in the WM; or ``separate``, a
    projection of ``[m_wm; m_ltm]`` with columns of its own per level (checkpoints made before this field existed
    load as ``separate``). With ``separate``, columns of a level the training never read from stay at their
    initialisation: the recall backbone trained while every fact sat in the WM answered 0.147 of MQAR queries at
    100K tokens under the oracle (most facts in the LTM by then), 0.893 once its LTM columns were set to the WM's
    (README, "Default checkpoints")."""

    keep_head: bool = False
    """A head on the backbone that predicts, at each chunk boundary, whether the chunk's entry will be needed
    later (the hindsight label: a later query asks for the fact that ends in the chunk); controllers see its
    probability as the observation ``keep_score``. Trained in the supervised phase (``--keep-weight``, the
    gradient reaching the backbone, so the backbone learns to carry what tells a needed chunk apart). Checkpoints
    saved before it existed load without it (False)."""
    ask_head: bool = False
    """A head that predicts, at each chunk boundary, the first token of the fact the next query will ask for (a
    hindsight label, like the keep head's: the kind marker of the asked facts where facts carry one). It is an
    auxiliary objective of the supervised phase (``--ask-weight``): the keep label asks the backbone for what a
    fact is AND for what the stream will ask, and its loss gives no gradient towards carrying the second (on
    Decoy, a cue at the start of the stream) until the first is known; this head's loss does. Controllers do not
    see it. Checkpoints saved before it existed load without it (False)."""

    def __post_init__(self) -> None:
        for name in ("chunk_size", "wm_slots", "ltm_capacity", "key_dim", "ltm_read_k", "obs_topk"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"AHMConfig.{name} must be a positive int, got {value!r}")
        if self.value_dim is not None and (not isinstance(self.value_dim, int) or self.value_dim < 1):
            raise ValueError(f"AHMConfig.value_dim must be None or a positive int, got {self.value_dim!r}")
        if self.integration not in INTEGRATIONS:
            raise ValueError(f"AHMConfig.integration must be one of {INTEGRATIONS}, got {self.integration!r}")
        if self.read_mode not in READ_MODES:
            raise ValueError(f"AHMConfig.read_mode must be one of {READ_MODES}, got {self.read_mode!r}")
        if self.ltm_eviction not in EVICTION_RULES:
            raise ValueError(f"AHMConfig.ltm_eviction must be one of {EVICTION_RULES}, got {self.ltm_eviction!r}")
        if self.ltm_search not in SEARCH_MODES:
            raise ValueError(f"AHMConfig.ltm_search must be one of {SEARCH_MODES}, got {self.ltm_search!r}")
        if self.write_pooling not in WRITE_POOLINGS:
            raise ValueError(f"AHMConfig.write_pooling must be one of {WRITE_POOLINGS}, got {self.write_pooling!r}")
        if self.level_readout not in LEVEL_READOUTS:
            raise ValueError(f"AHMConfig.level_readout must be one of {LEVEL_READOUTS}, got {self.level_readout!r}")
        if not self.init_inv_temperature > 0:
            raise ValueError(f"AHMConfig.init_inv_temperature must be > 0, got {self.init_inv_temperature}")
        self.memory_config()  # codec / search combinations are checked there

    @property
    def resolved_value_dim(self) -> int:
        return self.value_dim if self.value_dim is not None else self.backbone.d_model

    @property
    def feature_dim(self) -> int:
        """F, the width of ``MemoryObservation.ssm_features``: d_model + n_layer * d_state."""
        return self.backbone.d_model + self.backbone.n_layer * self.backbone.d_state

    def memory_config(self) -> MemoryConfig:
        dv = self.resolved_value_dim
        ltm = LTMConfig(capacity=self.ltm_capacity, key_dim=self.key_dim, value_dim=dv, codec=self.ltm_codec,
                        codec_options=self.codec_options, eviction=self.ltm_eviction, search=self.ltm_search,
                        ann_min_entries=self.ann_min_entries)
        return MemoryConfig(self.wm_slots, self.key_dim, dv, self.read_mode, ltm,
                            joint_read=self.level_readout == "shared")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AHMConfig:
        # saved before these fields existed: the one pooling and the per-level readout columns they had
        data = {"write_pooling": "shared", "level_readout": "separate", **data}
        return dataclass_from_dict(cls, data)


class BoundaryFeatures(NamedTuple):
    """What the memory step needs from a chunk (cacheable in ``readout`` integration)."""

    ssm_features: Tensor
    """(b, F) float32, detached: see :attr:`MemoryObservation.ssm_features`."""
    key: Tensor
    """(b, dk) unit vectors: the write candidate's key."""
    value: Tensor
    """(b, dv): the write candidate's value."""
    query: Tensor
    """(b, dk) unit vectors: the retrieval query."""
    keep_logit: Tensor | None = None
    """(b,) the keep head's logit (``AHMConfig.keep_head``; carries the graph), else None."""
    ask_logits: Tensor | None = None
    """(b, V) the ask head's logits (``AHMConfig.ask_head``; carries the graph), else None."""


class ChunkFeatures(NamedTuple):
    """The backbone's output for one chunk."""

    hidden: Tensor
    """(b, C, D): final-norm hidden states of the chunk's tokens."""
    boundary: BoundaryFeatures
    """Features at the chunk's last position."""


class AHMState(NamedTuple):
    """Everything carried from chunk to chunk. ``memory`` is mutable and updated in place."""

    backbone: MambaState
    memory: HierarchicalMemory
    retrieved: Tensor
    """(b, 2 dv): r_t, read at the last boundary, consumed by the next chunk."""

    def nbytes(self) -> Tensor:
        """(b,) int64: state bytes per sequence, the SSM's recurrent state plus the memory's entries
        (the x-axis of accuracy-against-state-bytes plots)."""
        return self.memory.nbytes() + self.backbone.nbytes() // self.backbone.batch_size

    def detach(self) -> AHMState:
        """Cut the graph (truncated backpropagation); detaches the memory in place."""
        self.memory.detach_()
        return AHMState(self.backbone.detach(), self.memory, self.retrieved.detach())


class MemoryStep(NamedTuple):
    """Result of :meth:`AHMModel.memory_step`."""

    observation: MemoryObservation
    ops: MemoryOps
    readout: MemoryReadout
    retrieved: Tensor
    """(b, 2 dv): ``readout.vector()``."""


class ChunkOutput(NamedTuple):
    """Result of :meth:`AHMModel.process_chunk`."""

    logits: Tensor
    """(b, C, V): next-token logits for the chunk's tokens (from hidden + memory read at the previous boundary)."""
    state: AHMState
    features: ChunkFeatures
    observation: MemoryObservation
    ops: MemoryOps


class AHMModel(nn.Module):
    """Backbone + hierarchical memory + integration + LM head (module doc).

    Example (streaming a sequence in constant memory with the default controller)::

        >>> import torch
        >>> from ahm.backbone import AHMConfig, AHMModel, DefaultController, MambaConfig
        >>> model = AHMModel(AHMConfig(MambaConfig(vocab_size=16, d_model=16, n_layer=1), chunk_size=8,
        ...                            wm_slots=2, ltm_capacity=8))
        >>> with torch.no_grad():
        ...     outs = [out.logits.shape for out in model.stream(torch.randint(0, 16, (2, 40)), DefaultController())]
        >>> outs[0], len(outs)
        (torch.Size([2, 8, 16]), 5)
    """

    def __init__(self, config: AHMConfig | None = None) -> None:
        super().__init__()
        config = config or AHMConfig()
        self.config = config
        d, dk, dv = config.backbone.d_model, config.key_dim, config.resolved_value_dim
        self.backbone = MambaBackbone(config.backbone)
        self.lm_head = nn.Linear(d, config.backbone.vocab_size, bias=False)
        if config.backbone.tie_embeddings:
            self.lm_head.weight = self.backbone.embedding.weight
        self.key_proj = nn.Linear(d, dk, bias=False)
        self.query_proj = nn.Linear(d, dk, bias=False)
        self.value_proj = nn.Linear(d, dv, bias=False)
        self.write_attention = nn.Linear(d, 1, bias=False)  # scores of the chunk's positions for the write
        nn.init.zeros_(self.write_attention.weight)
        # Recency prior of the write: scores fall by softplus(rho) per token before the boundary, where facts end
        # (the task streams' chunk contract). Init 0.1 per token: the last ~10 tokens hold most of the weight.
        self.write_recency = nn.Parameter(torch.zeros(()))
        if config.write_pooling == "split":  # the key's own pooling, and position biases (row 0 value, 1 key)
            self.key_attention = nn.Linear(d, 1, bias=False)
            nn.init.zeros_(self.key_attention.weight)
            self.key_recency = nn.Parameter(torch.zeros(()))
            self.write_position = nn.Parameter(torch.zeros(2, POSITION_BIAS))
        self.set_write_recency(0.1)
        self.log_inv_temperature = nn.Parameter(torch.tensor(math.log(config.init_inv_temperature)))
        self.key_codec = make_codec(config.ltm_codec, dk, config.codec_options)
        self.value_codec = make_codec(config.ltm_codec, dv, config.codec_options)
        self.integration = make_integration(config.integration, dv, d, config.level_readout)
        if config.keep_head:  # P(this chunk's entry is needed later), from the boundary's hidden state
            self.keep_head = nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.Linear(d, 1))
        if config.ask_head:  # the first token of the fact the next query asks for, from the same hidden state
            self.ask_head = nn.Linear(d, config.backbone.vocab_size)

    def with_level_readout(self, level_readout: str) -> AHMModel:
        """This model with its integration reading the levels as ``level_readout`` (a new model; self unchanged).

        ``separate`` -> ``shared`` keeps the working memory's columns of the projection(s) as the shared one (the
        LTM's are dropped: the WM's are the ones a model trained with facts in the WM has learnt); ``shared`` ->
        ``separate`` gives both levels the shared columns (the same function of the reads). Every other weight is
        copied.
        """
        if level_readout not in LEVEL_READOUTS:
            raise ValueError(f"with_level_readout: level_readout must be one of {LEVEL_READOUTS}, "
                             f"got {level_readout!r}")
        if level_readout == self.config.level_readout:
            return self
        model = AHMModel(replace(self.config, level_readout=level_readout))
        weights = self.state_dict()
        dv = self.config.resolved_value_dim
        for name in [n for n in weights if n.startswith("integration.") and n.endswith("weight")]:
            w = weights[name]
            weights[name] = w[:, :dv].clone() if level_readout == "shared" else torch.cat([w, w], dim=1)
        model.load_state_dict(weights)
        model.requires_grad_(any(p.requires_grad for p in self.parameters()))
        return model.to(self.lm_head.weight.device).train(self.training)

    def with_heads(self, keep: bool = False, ask: bool = False) -> AHMModel:
        """This model with a keep head (``keep``) and an ask head (``ask``) where it has none, each freshly
        initialised from torch's generator, and every other weight copied (a new model; self unchanged). A model
        that has every head asked for is returned as it is."""
        add = {name for name, wanted in (("keep_head", keep), ("ask_head", ask)) if wanted}
        add -= {name for name in add if getattr(self.config, name)}
        if not add:
            return self
        model = AHMModel(replace(self.config, **{name: True for name in add}))
        missing, unexpected = model.load_state_dict(self.state_dict(), strict=False)
        assert not unexpected and all(name.split(".")[0] in add for name in missing), (missing, unexpected)
        model.requires_grad_(any(p.requires_grad for p in self.parameters()))
        return model.to(self.lm_head.weight.device).train(self.training)

    @torch.no_grad()
    def set_write_recency(self, per_token: float) -> None:
        """Set the recency decay lambda (> 0, per token) of every write pooling (stored as softplus^-1)."""
        if not per_token > 0:
            raise ValueError(f"set_write_recency: per_token must be > 0, got {per_token!r}")
        for recency in (self.write_recency, getattr(self, "key_recency", None)):
            if recency is not None:
                recency.fill_(math.log(math.expm1(per_token)))

    # ---------------------------------------------------------------- state
    def init_state(self, batch: int, device: torch.device | str | None = None) -> AHMState:
        """Zero backbone state, empty memory (sharing the model's codecs), nothing retrieved."""
        device = torch.device(device) if device is not None else self.lm_head.weight.device
        memory = HierarchicalMemory(batch, self.config.memory_config(), self.key_codec, self.value_codec, device)
        retrieved = torch.zeros(batch, 2 * self.config.resolved_value_dim, device=device)
        return AHMState(self.backbone.init_state(batch, device), memory, retrieved)

    # ---------------------------------------------------------------- the pieces
    def chunk_features(self, tokens: Tensor, backbone_state: MambaState | None = None,
                       input_offset: Tensor | None = None) -> tuple[ChunkFeatures, MambaState]:
        """Run the backbone on one chunk: tokens (b, C) -> :class:`ChunkFeatures` and the next backbone state.

        In ``readout`` integration (``input_offset=None``) this does not depend on memory or the
        controller: compute it once per sequence and cache it.
        """
        hidden, state = self.backbone(tokens, backbone_state, input_offset)
        return ChunkFeatures(hidden, self.boundary_features(hidden, state)), state

    def boundary_features(self, hidden: Tensor, state: MambaState) -> BoundaryFeatures:
        """hidden (b, l, D) of a chunk and the backbone state after it -> :class:`BoundaryFeatures`.

        The write candidate (key, value) is read from the chunk's hidden states by learnt
        attentions over its positions (:meth:`_pool`), ``pooled = sum_i softmax_i(w . h_i - lambda d_i +
        beta[d_i]) h_i`` with d_i the distance of position i from the boundary, ``lambda = softplus(recency)``
        and beta the position biases (``w`` and beta zero and lambda 0.1 at init: a recency-weighted mean);
        one pooling each for the key and the value in ``split`` pooling (``AHMConfig.write_pooling``), one
        for both, without beta, in ``shared``. The query and the state features come from the last
        position. Why pooled: a fact's tokens end at the boundary, but the token to recall (a
        passkey's first digit) lies a few positions before it, and a small SSM's last hidden state
        keeps it only if trained to; with the last hidden state alone the answer path of a
        passkey model stayed at chance for 300 training steps (training/supervised.py), since the
        backbone learns to keep the token only through a memory path that is itself untrained.
        """
        last_hidden = hidden[:, -1]
        ssm = [layer.ssm.detach().float().pow(2).mean(1).sqrt() for layer in state.layers]  # L x (b, N)
        features = torch.cat([last_hidden.detach().float(), *ssm], dim=-1)  # (b, F)
        if self.config.write_pooling == "split":
            pooled_value = self._pool(hidden, self.write_attention, self.write_recency, self.write_position[0])
            pooled_key = self._pool(hidden, self.key_attention, self.key_recency, self.write_position[1])
        else:
            pooled_value = pooled_key = self._pool(hidden, self.write_attention, self.write_recency, None)
        keep = self.keep_head(last_hidden).squeeze(-1).float() if self.config.keep_head else None
        ask = self.ask_head(last_hidden).float() if self.config.ask_head else None
        return BoundaryFeatures(
            features,
            F.normalize(self.key_proj(pooled_key), dim=-1),
            self.value_proj(pooled_value),
            F.normalize(self.query_proj(last_hidden), dim=-1),
            keep,
            ask,
        )

    @staticmethod
    def _pool(hidden: Tensor, attention: nn.Linear, recency: Tensor, position: Tensor | None) -> Tensor:
        """sum_i softmax_i(w . h_i - softplus(recency) d_i + position[d_i]) h_i over the chunk: (b, l, D) -> (b, D)."""
        length = hidden.shape[1]
        distance = torch.arange(length - 1, -1, -1, device=hidden.device, dtype=torch.float32)  # (l,)
        scores = attention(hidden).squeeze(-1).float() - F.softplus(recency) * distance
        if position is not None:
            k = min(length, position.shape[0])
            scores = scores + torch.cat([scores.new_zeros(length - k), position[:k].flip(0).float()])
        weights = torch.softmax(scores, dim=-1)  # (b, l)
        return torch.einsum("bl,bld->bd", weights.to(hidden.dtype), hidden)

    @torch.no_grad()
    def observe(self, boundary: BoundaryFeatures, memory: HierarchicalMemory,
                fast: bool | None = None) -> tuple[MemoryObservation, LTMHits]:
        """The observation of the memory before this chunk's ops, and the LTM hits it searched (b, 1, k).

        ``fast``: the compiled path (:mod:`ahm.backbone.memory_fast`); None uses it where the memory qualifies.
        :meth:`_observe_ref` is the reference.
        """
        path = memory.fast if fast is None or fast else None
        if path is None:
            if fast:
                raise ValueError("AHMModel.observe(fast=True): the memory does not qualify for the fast path")
            return self._observe_ref(boundary, memory)
        c = self.config
        k = max(c.obs_topk, c.ltm_read_k)
        o = path.observe(boundary.query.detach().float().numpy(), k, boundary.key.detach().float().numpy())
        t = torch.from_numpy
        scores = o.hit_scores[:, : c.obs_topk]
        obs = MemoryObservation(
            ssm_features=boundary.ssm_features.float(),
            wm_occupied=t(o.wm_occupied.astype(np.float32)),
            wm_age=t(o.wm_age.astype(np.float32)),
            wm_uses=t(o.wm_uses.astype(np.float32)),
            wm_similarity=t(o.wm_similarity),
            wm_key_similarity=t(o.wm_key_similarity),
            ltm_fill=t(o.ltm_count.astype(np.float32) / np.float32(memory.ltm.capacity)),
            ltm_topk_similarity=t(np.where(np.isinf(scores), np.float32(0.0), scores)),
            ltm_key_similarity=t(np.where(np.isinf(o.key_score), np.float32(0.0), o.key_score)),
            keep_score=_keep_score(boundary),
        )
        return obs, LTMHits(t(o.hit_scores[:, None, :]), t(o.hit_indices[:, None, :]))

    def _observe_ref(self, boundary: BoundaryFeatures, memory: HierarchicalMemory) -> tuple[MemoryObservation, LTMHits]:
        """The torch reference of :meth:`observe`."""
        c = self.config
        query = boundary.query.detach()
        key = boundary.key.detach()
        hits = memory.search_ltm(query, max(c.obs_topk, c.ltm_read_k))
        wm = memory.wm
        zero_inf = lambda t: torch.where(torch.isinf(t), torch.zeros_like(t), t).float()
        obs = MemoryObservation(
            ssm_features=boundary.ssm_features.float(),
            wm_occupied=wm.occupied.float(),
            wm_age=wm.age.float(),
            wm_uses=wm.uses.float(),
            wm_similarity=zero_inf(wm.similarity(query)),
            wm_key_similarity=zero_inf(wm.similarity(key)),
            ltm_fill=memory.ltm.fill(),
            ltm_topk_similarity=zero_inf(hits.scores[:, 0, : c.obs_topk]),
            ltm_key_similarity=zero_inf(memory.search_ltm(key, 1).scores[:, 0, 0]),
            keep_score=_keep_score(boundary),
        )
        return obs, hits

    def memory_step(self, boundary: BoundaryFeatures, memory: HierarchicalMemory,
                    controller: MemoryPolicy) -> MemoryStep:
        """Observe, ask the controller, apply its ops to ``memory`` (in place), and return what was read.

        Needs only the boundary features, so it runs on cached ones in ``readout`` integration.
        """
        obs, hits = self.observe(boundary, memory)
        ops = controller(obs)
        readout = memory.apply(ops, boundary.key, boundary.value, boundary.query,
                               hits.indices[:, 0, : self.config.ltm_read_k], self.config.ltm_read_k,
                               self.log_inv_temperature.exp())
        return MemoryStep(obs, ops, readout, readout.vector())

    def readout(self, hidden: Tensor, retrieved: Tensor) -> Tensor:
        """hidden (b, l, D) and the retrieved r (b, 2 dv) of the previous boundary -> logits (b, l, V)."""
        if self.config.integration == "readout":
            hidden = hidden + self.integration(retrieved)[:, None, :]
        return self.lm_head(hidden)

    def input_offset(self, retrieved: Tensor) -> Tensor | None:
        """The SSM-input offset (b, D) for the next chunk (``state`` integration), else None."""
        return self.integration(retrieved) if self.config.integration == "state" else None

    # ---------------------------------------------------------------- chunks and streams
    def process_chunk(self, tokens: Tensor, state: AHMState, controller: MemoryPolicy) -> ChunkOutput:
        """One chunk (module doc, steps 1-6): tokens (b, C) -> logits (b, C, V) and the next state."""
        features, backbone_state = self.chunk_features(tokens, state.backbone, self.input_offset(state.retrieved))
        logits = self.readout(features.hidden, state.retrieved)
        step = self.memory_step(features.boundary, state.memory, controller)
        return ChunkOutput(logits, AHMState(backbone_state, state.memory, step.retrieved), features,
                           step.observation, step.ops)

    def stream(self, tokens: Tensor, controller: MemoryPolicy, state: AHMState | None = None,
               chunk_size: int | None = None) -> Iterator[ChunkOutput]:
        """Process tokens (b, L) chunk by chunk, yielding each :class:`ChunkOutput`.

        Memory use is constant in L as long as the caller does not keep the outputs (and
        runs under ``torch.no_grad()`` or detaches the state between chunks). The last
        chunk may be shorter than ``chunk_size`` (default ``config.chunk_size``).
        """
        if tokens.dim() != 2 or tokens.shape[1] < 1:
            raise ValueError(f"stream: tokens must have shape (batch, length >= 1), got {tuple(tokens.shape)}")
        chunk = chunk_size or self.config.chunk_size
        state = state if state is not None else self.init_state(tokens.shape[0], tokens.device)
        for s in range(0, tokens.shape[1], chunk):
            out = self.process_chunk(tokens[:, s : s + chunk], state, controller)
            state = out.state
            yield out

    # ---------------------------------------------------------------- codecs
    @torch.no_grad()
    def calibrate_codecs(self, tokens: Tensor, generator: torch.Generator | None = None) -> None:
        """Fit the LTM codecs (needed by ``pq``) on the keys / values of every position of tokens (b, L).

        Uses the backbone without memory; every position's projections, not only chunk
        boundaries, so a few thousand tokens give enough samples (pq needs 2**pq_bits).
        """
        hidden, _ = self.backbone(tokens)
        hidden = hidden.reshape(-1, hidden.shape[-1])
        self.key_codec.fit(F.normalize(self.key_proj(hidden), dim=-1), generator)
        self.value_codec.fit(self.value_proj(hidden), generator)

    def codec_loss(self, boundary: BoundaryFeatures) -> Tensor:
        """Reconstruction loss of this chunk's keys and values through the LTM codecs (trains ``autoencoder``).

        The targets are detached: the loss trains the codec, not the projections.
        """
        return (self.key_codec.reconstruction_loss(boundary.key.detach())
                + self.value_codec.reconstruction_loss(boundary.value.detach()))


def _keep_score(boundary: BoundaryFeatures) -> Tensor | None:
    """The keep head's probability (b,), detached, or None without a head."""
    return None if boundary.keep_logit is None else torch.sigmoid(boundary.keep_logit.detach().float())
