"""``transformer``, ``longformer``, ``bigbird``: causal attention LMs whose streaming state is a bounded KV cache.

One pre-norm decoder (Vaswani et al., 2017, with the GPT-2 ordering ``h + f(norm(h))``) serves all three:
RMSNorm, rotary positions (RoPE, Su et al., 2021), SwiGLU MLPs (Shazeer, 2020) and a head tied to the
token embedding. The models differ only in *which keys a query may see*, a rule each config defines over
absolute positions (q the query's position, k a key's, k <= q always):

- ``transformer``: a limited context of W tokens: ``q - k < W`` (the query and the W - 1 tokens before it).
- ``longformer`` (Beltagy et al., 2020, Sec. 3.1): a sliding window of w tokens plus G global tokens.
  *Causal adaptation*: the global tokens are the first G tokens of the sequence, and every later query
  attends to them (``q - k < w or k < G``). The paper's global tokens also attend to the whole sequence;
  causally, a global token sees everything before it, which the rule already gives (every k <= q < G is
  global). The paper's dilated windows and task-chosen global tokens (e.g. [CLS]) are not modelled.
- ``bigbird`` (Zaheer et al., 2020, Sec. 2 and App. D, "ITC"): block-sparse attention made causal.
  Positions fall into blocks of B tokens (block ``p // B``); a query in block qb sees a key in block kb
  when kb is in the window ``qb - w_blocks <= kb <= qb`` (its own block causally), or kb is one of the
  first G global blocks, or kb is one of qb's r random blocks. The random blocks are drawn from a bounded
  pool, the P blocks just before the window (``qb - w_blocks - P <= kb < qb - w_blocks``, global blocks
  excluded); the paper draws them from the whole sequence, but a stream can then never forget a block and
  its state grows without bound: bounding the pool is what makes constant-memory streaming possible.
  The r picks are the pool blocks with the smallest hash ``h(seed, layer, qb, kb)`` (ties: the earlier
  block), so a stream and a one-call forward draw the same blocks without storing them:
  ``h = mix(seed); h = mix(h + layer); h = mix(h + qb); h = mix(h + kb)``, everything mod 2**32, where
  ``mix(x)`` does ``x = ((x >> 16) ^ x) * 0x45d9f3b mod 2**32`` twice, then ``(x >> 16) ^ x``.

Streaming (the contract of :mod:`.base`): the state (:class:`AttentionState`) holds, per layer, the keys
(already rotated by their absolute positions, so RoPE is consistent across chunks) and values of the
cache slots, the slots' absolute positions, and the position of the next token. A forward attends over
``[cache ++ new]`` with the mask computed from absolute positions (:meth:`AttentionLM.attention_mask`),
then keeps in the cache only the keys a later query may still see (each config's ``retained``). The cache
has a fixed number of slots (``cache_size``: W - 1; G + w - 1; G B + (w_blocks + P) B + B - 1), empty
ones at position -1, so :func:`~.base.state_nbytes` is the same from the first token on. All the
sequences of a batch advance together (one position counter per state).

Simplified: attention is computed densely with ``F.scaled_dot_product_attention`` and a boolean mask over
``[cache ++ new]`` keys, O(l (C + l)) per chunk of l tokens, not with the papers' banded / block-sparse
kernels: the same outputs, without their speed. ``torch.nn.attention.flex_attention`` was measured on
CPU (torch 2.13, b=4, 4 heads, L=1024, head 16, window 128 + 16 globals, 2 shared cores): its compiled
forward took 0.12 s against SDPA's 0.18 s, after ~40 s of compilation, and it has no CPU backward
(NotImplementedError), so it cannot train here; SDPA with a boolean mask is used everywhere.

Glossary: b batch, l new tokens, C cache slots, n = C + l keys, D d_model, H heads, dh = D / H.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import AHMConfigError
from ..mamba import RMSNorm
from .base import fit_width, register

__all__ = ["AttentionConfig", "TransformerConfig", "LongformerConfig", "BigBirdConfig", "KVCache",
           "AttentionState", "rotary_embedding", "bigbird_block_hash", "MaskedSelfAttention", "AttentionBlock",
           "AttentionLM", "build_transformer", "build_longformer", "build_bigbird"]


def _require_int(owner: str, name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise AHMConfigError(f"{owner}.{name} must be an int >= {minimum}, got {value!r}")


@dataclass(frozen=True)
class AttentionConfig:
    """Sizes shared by the attention LMs; a subclass adds the attention pattern (module doc)."""

    vocab_size: int = 256
    """Number of token ids; inputs must lie in ``[0, vocab_size)``."""
    d_model: int = 64
    """Width D of the residual stream; a multiple of ``2 * n_head`` (RoPE rotates pairs of channels)."""
    n_layer: int = 2
    """Number of blocks (attention + MLP); 2 as :class:`~ahm.backbone.MambaConfig`, for equal depth."""
    n_head: int = 4
    """Attention heads H; each has ``d_model / n_head`` channels."""
    d_ff: int | None = None
    """Hidden width of the SwiGLU MLP; None: ``8 D / 3`` rounded up to a multiple of 8, which gives the
    parameters of a ``4 D`` GELU MLP (Shazeer, 2020, Sec. 2)."""
    rope_base: float = 10000.0
    """Base of the rotary frequencies ``base ** (-2 i / dh)`` (Su et al., 2021, Sec. 3.2.2)."""
    norm_eps: float = 1e-5
    """Epsilon of RMSNorm."""

    def __post_init__(self) -> None:
        owner = type(self).__name__
        _require_int(owner, "vocab_size", self.vocab_size, 2)
        for name in ("d_model", "n_layer", "n_head"):
            _require_int(owner, name, getattr(self, name), 1)
        if self.d_model % (2 * self.n_head):
            raise AHMConfigError(f"{owner}.d_model must be a multiple of 2 * n_head = {2 * self.n_head} (each head "
                                 f"rotates pairs of channels), got d_model={self.d_model}, n_head={self.n_head}")
        if self.d_ff is not None:
            _require_int(owner, "d_ff", self.d_ff, 1)
        if not self.rope_base > 1:
            raise AHMConfigError(f"{owner}.rope_base must be > 1, got {self.rope_base!r}")
        if not self.norm_eps > 0:
            raise AHMConfigError(f"{owner}.norm_eps must be > 0, got {self.norm_eps!r}")

    @property
    def head_dim(self) -> int:
        """Channels per head, dh."""
        return self.d_model // self.n_head

    @property
    def resolved_d_ff(self) -> int:
        """``d_ff``, with None resolved to ``8 D / 3`` rounded up to a multiple of 8."""
        return self.d_ff if self.d_ff is not None else 8 * math.ceil(8 * self.d_model / 3 / 8)

    # The pattern: each subclass says which keys a query sees and which keys a stream must keep.

    @property
    def cache_size(self) -> int:
        """C: the most keys a later query may still see, hence the slots of the KV cache."""
        raise NotImplementedError

    @property
    def varies_by_layer(self) -> bool:
        """Whether :meth:`visible` depends on the layer (then the mask is built per layer)."""
        return False

    def visible(self, q_pos: Tensor, k_pos: Tensor, layer: int) -> Tensor:
        """q_pos (l,), k_pos (n,) absolute positions -> (l, n) bool: may query q see key k, given k <= q."""
        raise NotImplementedError

    def retained(self, k_pos: Tensor, next_position: Tensor) -> Tensor:
        """k_pos (n,) -> (n,) bool: may a query at ``next_position`` or later still see key k."""
        raise NotImplementedError


@dataclass(frozen=True)
class TransformerConfig(AttentionConfig):
    """A causal Transformer limited to a context of ``window`` tokens."""

    window: int = 128
    """W: each query sees itself and the W - 1 tokens before it (the cache holds W - 1 tokens per layer)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        _require_int(type(self).__name__, "window", self.window, 1)

    @property
    def cache_size(self) -> int:
        return self.window - 1

    def visible(self, q_pos: Tensor, k_pos: Tensor, layer: int) -> Tensor:
        return q_pos[:, None] - k_pos[None, :] < self.window

    def retained(self, k_pos: Tensor, next_position: Tensor) -> Tensor:
        return k_pos > next_position - self.window


@dataclass(frozen=True)
class LongformerConfig(AttentionConfig):
    """Longformer made causal: a sliding window plus the first ``n_global`` tokens, seen by every query."""

    window: int = 128
    """w: each query sees itself and the w - 1 tokens before it."""
    n_global: int = 16
    """G: the first G tokens of the sequence are global; every later query sees them (0: window only)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        owner = type(self).__name__
        _require_int(owner, "window", self.window, 1)
        _require_int(owner, "n_global", self.n_global, 0)

    @property
    def cache_size(self) -> int:
        return self.n_global + self.window - 1

    def visible(self, q_pos: Tensor, k_pos: Tensor, layer: int) -> Tensor:
        return (q_pos[:, None] - k_pos[None, :] < self.window) | (k_pos[None, :] < self.n_global)

    def retained(self, k_pos: Tensor, next_position: Tensor) -> Tensor:
        return (k_pos > next_position - self.window) | (k_pos < self.n_global)


_MASK32 = 0xFFFFFFFF


def _mix32(x: Tensor) -> Tensor:
    """An integer hash of x in [0, 2**32) (two multiply-xorshift rounds); products stay below 2**59."""
    x = (((x >> 16) ^ x) * 0x45D9F3B) & _MASK32
    x = (((x >> 16) ^ x) * 0x45D9F3B) & _MASK32
    return (x >> 16) ^ x


def bigbird_block_hash(seed: int, layer: int, query_block: Tensor, key_block: Tensor) -> Tensor:
    """h(seed, layer, qb, kb) in [0, 2**32) (module doc), elementwise over broadcast int64 block indices."""
    h = _mix32(torch.full_like(query_block, seed & _MASK32))
    for part in (layer, query_block, key_block):
        h = _mix32((h + part) & _MASK32)
    return h


@dataclass(frozen=True)
class BigBirdConfig(AttentionConfig):
    """BigBird made causal: window, global and random blocks (module doc)."""

    block_size: int = 16
    """B: tokens per block; positions p fall in block ``p // B``."""
    window_blocks: int = 2
    """w_blocks: a query block sees its own block (causally) and the w_blocks blocks before it."""
    n_global_blocks: int = 1
    """G: the first G blocks are global; every later query sees them."""
    n_random_blocks: int = 2
    """r: random earlier blocks each query block sees, drawn from the pool (0: none)."""
    random_pool_blocks: int | None = None
    """P: the random blocks come from the P blocks just before the window, which bounds the cache (module
    doc); None: ``4 * max(window_blocks, 1)``. At least ``n_random_blocks``."""
    seed: int = 0
    """Seed of the random-block hash (the same seed draws the same blocks in every run)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        owner = type(self).__name__
        _require_int(owner, "block_size", self.block_size, 1)
        for name in ("window_blocks", "n_global_blocks", "n_random_blocks", "seed"):
            _require_int(owner, name, getattr(self, name), 0)
        if self.random_pool_blocks is not None:
            _require_int(owner, "random_pool_blocks", self.random_pool_blocks, 1)
        if self.n_random_blocks > self.pool_blocks:
            raise AHMConfigError(f"{owner}.n_random_blocks = {self.n_random_blocks} cannot be drawn from a pool "
                                 f"of random_pool_blocks = {self.pool_blocks} blocks; lower n_random_blocks or "
                                 "raise random_pool_blocks")

    @property
    def pool_blocks(self) -> int:
        """P, with None resolved to ``4 * max(window_blocks, 1)``."""
        if self.random_pool_blocks is not None:
            return self.random_pool_blocks
        return 4 * max(self.window_blocks, 1)

    @property
    def _reach_blocks(self) -> int:
        """How many blocks before its own a query block may see, globals aside: window, plus pool if drawn from."""
        return self.window_blocks + (self.pool_blocks if self.n_random_blocks else 0)

    @property
    def cache_size(self) -> int:
        # Global blocks, the reach before the current block, and the current block but its last token.
        return self.block_size * (self.n_global_blocks + self._reach_blocks + 1) - 1

    @property
    def varies_by_layer(self) -> bool:
        return self.n_random_blocks > 0

    def random_blocks(self, query_block: Tensor, layer: int) -> tuple[Tensor, Tensor]:
        """query_block (l,) -> the r picked blocks (l, r) and whether each pick exists (l, r) bool.

        A pick does not exist when the pool holds fewer than r blocks (the start of a sequence).
        """
        P, r = self.pool_blocks, self.n_random_blocks
        offsets = torch.arange(P, device=query_block.device)
        candidates = query_block[:, None] - self.window_blocks - P + offsets  # (l, P), ascending
        exists = candidates >= self.n_global_blocks  # global blocks are seen anyway; negative ones do not exist
        h = bigbird_block_hash(self.seed, layer, query_block[:, None], candidates.clamp(min=0))
        h = torch.where(exists, h, _MASK32 + 1)  # absent candidates rank last
        order = torch.sort(h, dim=1, stable=True).indices[:, :r]  # stable: equal hashes pick the earlier block
        return candidates.gather(1, order), exists.gather(1, order)

    def visible(self, q_pos: Tensor, k_pos: Tensor, layer: int) -> Tensor:
        qb, kb = q_pos // self.block_size, k_pos // self.block_size
        seen = (qb[:, None] - kb[None, :] <= self.window_blocks) | (kb[None, :] < self.n_global_blocks)
        if self.n_random_blocks:
            picks, exists = self.random_blocks(qb, layer)  # (l, r) each
            seen = seen | ((kb[None, :, None] == picks[:, None, :]) & exists[:, None, :]).any(-1)
        return seen

    def retained(self, k_pos: Tensor, next_position: Tensor) -> Tensor:
        kb = k_pos // self.block_size
        return (kb >= next_position // self.block_size - self._reach_blocks) | (kb < self.n_global_blocks)


class KVCache(NamedTuple):
    """Keys and values one layer keeps for later queries (fixed slots; empty ones are zero)."""

    keys: Tensor
    """(b, H, C, dh): keys already rotated by their absolute positions."""
    values: Tensor
    """(b, H, C, dh)."""


class AttentionState(NamedTuple):
    """Streaming state of an :class:`AttentionLM`: the KV cache of each layer and the positions."""

    layers: tuple[KVCache, ...]
    positions: Tensor
    """(C,) int64: the absolute position of each cache slot (the same in every layer and sequence), -1 if empty."""
    next_position: Tensor
    """() int64: tokens seen so far, the position of the next token."""

    @property
    def batch_size(self) -> int:
        return self.layers[0].keys.shape[0]


def rotary_embedding(x: Tensor, positions: Tensor, base: float) -> Tensor:
    """RoPE (Su et al., 2021, eq. 34): x (..., l, dh) with each pair (x_2i, x_2i+1) rotated by ``p * base**(-2i/dh)``.

    positions (l,) int64 are absolute; the angles are computed in float64 so that positions near 10**6
    keep their precision in a float32 model.
    """
    dh = x.shape[-1]
    inv_freq = base ** (-torch.arange(0, dh, 2, device=x.device, dtype=torch.float64) / dh)  # (dh/2,)
    angle = positions.to(torch.float64)[:, None] * inv_freq  # (l, dh/2)
    cos, sin = angle.cos().to(x.dtype), angle.sin().to(x.dtype)
    even, odd = x[..., 0::2], x[..., 1::2]
    return torch.stack((even * cos - odd * sin, even * sin + odd * cos), dim=-1).flatten(-2)


class MaskedSelfAttention(nn.Module):
    """Multi-head self-attention over ``[cache ++ new]`` keys with a boolean mask (who sees whom is the caller's)."""

    def __init__(self, config: AttentionConfig) -> None:
        super().__init__()
        self.config = config
        self.qkv = nn.Linear(config.d_model, 3 * config.d_model, bias=False)
        self.out_proj = nn.Linear(config.d_model, config.d_model, bias=False)

    def forward(self, x: Tensor, cache: KVCache, q_pos: Tensor, mask: Tensor) -> tuple[Tensor, KVCache]:
        """x (b, l, D), cache of C keys, q_pos (l,), mask (l, C + l) -> output (b, l, D), the C + l keys and values."""
        b, length, d = x.shape
        c = self.config
        q, k, v = self.qkv(x).view(b, length, 3, c.n_head, c.head_dim).permute(2, 0, 3, 1, 4)  # (b, H, l, dh) each
        q, k = rotary_embedding(q, q_pos, c.rope_base), rotary_embedding(k, q_pos, c.rope_base)
        keys = torch.cat([cache.keys, k], dim=2)  # (b, H, C + l, dh)
        values = torch.cat([cache.values, v], dim=2)
        y = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask)  # (b, H, l, dh)
        return self.out_proj(y.transpose(1, 2).reshape(b, length, d)), KVCache(keys, values)


class SwiGLU(nn.Module):
    """The gated MLP ``down(silu(x W_gate) * (x W_up))`` (Shazeer, 2020, Sec. 2)."""

    def __init__(self, d_model: int, d_ff: int) -> None:
        super().__init__()
        self.gate_up = nn.Linear(d_model, 2 * d_ff, bias=False)
        self.down = nn.Linear(d_ff, d_model, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        return self.down(F.silu(gate) * up)


class AttentionBlock(nn.Module):
    """Pre-norm block: ``h + attn(norm(h))``, then ``h + mlp(norm(h))``."""

    def __init__(self, config: AttentionConfig) -> None:
        super().__init__()
        self.attn_norm = RMSNorm(config.d_model, config.norm_eps)
        self.attn = MaskedSelfAttention(config)
        self.mlp_norm = RMSNorm(config.d_model, config.norm_eps)
        self.mlp = SwiGLU(config.d_model, config.resolved_d_ff)

    def forward(self, hidden: Tensor, cache: KVCache, q_pos: Tensor, mask: Tensor) -> tuple[Tensor, KVCache]:
        """hidden (b, l, D) -> (b, l, D) and this layer's C + l keys and values."""
        out, kv = self.attn(self.attn_norm(hidden), cache, q_pos, mask)
        hidden = hidden + out
        return hidden + self.mlp(self.mlp_norm(hidden)), kv


class AttentionLM(nn.Module):
    """Embedding, :class:`AttentionBlock` stack, final norm and tied head; the config picks the pattern.

    Example (streaming and one-shot processing agree)::

        >>> import torch
        >>> lm = AttentionLM(LongformerConfig(vocab_size=16, d_model=16, window=4, n_global=2))
        >>> tokens = torch.randint(0, 16, (2, 20))
        >>> full, _ = lm(tokens)
        >>> first, state = lm(tokens[:, :7])
        >>> rest, _ = lm(tokens[:, 7:], state)
        >>> torch.allclose(full, torch.cat([first, rest], 1), atol=1e-5)
        True
    """

    def __init__(self, config: AttentionConfig) -> None:
        super().__init__()
        self.config = config
        self.embedding = nn.Embedding(config.vocab_size, config.d_model)
        self.layers = nn.ModuleList(AttentionBlock(config) for _ in range(config.n_layer))
        self.norm_f = RMSNorm(config.d_model, config.norm_eps)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self.lm_head.weight = self.embedding.weight
        self._init_weights()

    def _init_weights(self) -> None:
        nn.init.normal_(self.embedding.weight, std=0.02)
        # GPT-2 (Radford et al., 2019, Sec. 2.3): residual-branch outputs scaled by 1/sqrt(2 n_layer).
        with torch.no_grad():
            for block in self.layers:
                block.attn.out_proj.weight /= math.sqrt(2 * self.config.n_layer)
                block.mlp.down.weight /= math.sqrt(2 * self.config.n_layer)

    def init_state(self, batch: int, device: torch.device | str | None = None) -> AttentionState:
        """The empty cache (every slot at position -1) for ``batch`` sequences."""
        if batch < 1:
            raise ValueError(f"init_state: batch must be >= 1, got {batch}")
        c = self.config
        device = torch.device(device) if device is not None else self.embedding.weight.device
        shape = (batch, c.n_head, c.cache_size, c.head_dim)
        dtype = self.embedding.weight.dtype
        layers = tuple(KVCache(torch.zeros(shape, device=device, dtype=dtype),
                               torch.zeros(shape, device=device, dtype=dtype)) for _ in self.layers)
        positions = torch.full((c.cache_size,), -1, device=device, dtype=torch.int64)
        return AttentionState(layers, positions, torch.zeros((), device=device, dtype=torch.int64))

    def attention_mask(self, q_pos: Tensor, k_pos: Tensor, layer: int) -> Tensor:
        """q_pos (l,), k_pos (n,) absolute positions (-1: empty slot) -> (l, n) bool, True where q attends to k.

        Causality and empty slots are handled here, once; the config's ``visible`` adds the pattern.
        Every query sees itself, so no row is empty.
        """
        causal = (k_pos[None, :] <= q_pos[:, None]) & (k_pos[None, :] >= 0)
        return causal & self.config.visible(q_pos, k_pos, layer)

    def _check(self, tokens: Tensor, state: AttentionState | None) -> None:
        if tokens.dim() != 2 or tokens.shape[1] < 1:
            raise ValueError(f"tokens must have shape (batch, length >= 1), got {tuple(tokens.shape)}")
        if tokens.is_floating_point() or tokens.is_complex() or tokens.dtype == torch.bool:
            raise ValueError(f"tokens must be an integer tensor, got {tokens.dtype}")
        lo, hi = int(tokens.min()), int(tokens.max())
        if lo < 0 or hi >= self.config.vocab_size:
            raise ValueError(f"token ids must lie in [0, {self.config.vocab_size}); got values in [{lo}, {hi}]")
        if state is not None:
            if len(state.layers) != len(self.layers):
                raise ValueError(f"state has {len(state.layers)} layers, the model has {len(self.layers)}")
            if state.batch_size != tokens.shape[0]:
                raise ValueError(f"state is for batch {state.batch_size}, tokens have batch {tokens.shape[0]}")

    def forward(self, tokens: Tensor, state: AttentionState | None = None) -> tuple[Tensor, AttentionState]:
        """tokens (b, l) -> logits (b, l, vocab_size) and the state after the last token."""
        self._check(tokens, state)
        if state is None:
            state = self.init_state(tokens.shape[0], tokens.device)
        length = tokens.shape[1]
        q_pos = state.next_position + torch.arange(length, device=tokens.device)  # (l,)
        k_pos = torch.cat([state.positions, q_pos])  # (n,) = (C + l,)
        hidden = self.embedding(tokens.long())
        mask = None if self.config.varies_by_layer else self.attention_mask(q_pos, k_pos, 0)
        kvs = []
        for i, (block, cache) in enumerate(zip(self.layers, state.layers)):
            layer_mask = mask if mask is not None else self.attention_mask(q_pos, k_pos, i)
            hidden, kv = block(hidden, cache, q_pos, layer_mask)
            kvs.append(kv)
        logits = self.lm_head(self.norm_f(hidden))

        # Keep the keys a later query may still see, in position order, in the C slots (they fit: cache_size).
        next_position = state.next_position + length
        keep = (k_pos >= 0) & self.config.retained(k_pos, next_position)
        last = torch.iinfo(torch.int64).max
        slots = torch.sort(torch.where(keep, k_pos, last)).indices[: self.config.cache_size]  # (C,)
        kept = keep[slots]
        positions = torch.where(kept, k_pos[slots], -1)
        zero = kept[:, None]  # (C, 1): empty slots hold zeros, whatever the chunking was
        layers = tuple(KVCache(torch.where(zero, kv.keys[:, :, slots], 0), torch.where(zero, kv.values[:, :, slots], 0))
                       for kv in kvs)
        return logits, AttentionState(layers, positions, next_position)

    def step(self, tokens: Tensor, state: AttentionState) -> tuple[Tensor, AttentionState]:
        """One token per sequence: tokens (b,) -> logits (b, vocab_size), next state."""
        if tokens.dim() != 1:
            raise ValueError(f"step takes tokens of shape (batch,), got {tuple(tokens.shape)}")
        logits, state = self(tokens[:, None], state)
        return logits[:, 0], state


def _build(name: str, config_cls: type[AttentionConfig], vocab_size: int, budget: int,
           overrides: dict[str, Any]) -> AttentionLM:
    """The model of ``config_cls`` with ``overrides`` set, its width fitted to ``budget`` unless d_model is given."""
    known = {f.name for f in fields(config_cls)} - {"vocab_size"}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise AHMConfigError(f"{name}: unknown option(s) {unknown}; known: {sorted(known)}")
    n_head = overrides.get("n_head", config_cls.n_head)
    # Without a given width, validate at the smallest width the heads allow, then fit it.
    width = {} if "d_model" in overrides or not isinstance(n_head, int) else {"d_model": 2 * max(n_head, 1)}
    config = config_cls(vocab_size=vocab_size, **{**width, **overrides})
    if "d_model" in overrides:
        return AttentionLM(config)
    model = fit_width(lambda d: AttentionLM(replace(config, d_model=d)), budget, multiple=2 * config.n_head)
    assert isinstance(model, AttentionLM)
    return model


@register("transformer", "Transformer (Vaswani et al., 2017): causal pre-norm decoder, RoPE, limited context window")
def build_transformer(vocab_size: int, budget: int, overrides: dict[str, Any]) -> nn.Module:
    return _build("transformer", TransformerConfig, vocab_size, budget, overrides)


@register("longformer", "Longformer (Beltagy et al., 2020) made causal: sliding window plus the first tokens as global")
def build_longformer(vocab_size: int, budget: int, overrides: dict[str, Any]) -> nn.Module:
    return _build("longformer", LongformerConfig, vocab_size, budget, overrides)


@register("bigbird", "BigBird (Zaheer et al., 2020) made causal: window, global and hashed random blocks")
def build_bigbird(vocab_size: int, budget: int, overrides: dict[str, Any]) -> nn.Module:
    return _build("bigbird", BigBirdConfig, vocab_size, budget, overrides)
