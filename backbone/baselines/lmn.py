"""``lmn``: Logarithmic Memory Networks (Taha, 2025), a binary tree of summaries read by single-vector attention.

The paper: M. A. Taha, "Logarithmic Memory Networks (LMNs): Efficient Long-Range Sequence
Modeling for Resource-Constrained Environments", arXiv:2501.07905; reference code (MIT):
github.com/AhmedBoin/LogarithmicMemory (read, not copied).

Each layer keeps a hierarchical memory of its (normalised) inputs in O(log n) slots and
lets every token read it with one query vector::

    leaf      s = h_t                                    (D,)  the token enters level 0
    merge     s' = W_sum [s_older ; s_newer] + b_sum     (2D -> D), "summarizer"
    read      o_t = SDPA(q(h_t), K, V)                   keys / values: the occupied summaries
                                                         + the last W tokens (local window)
    block     x = x + out(o_t);  x = x + FFN(norm(x))

Glossary: b batch, l length, D d_model, H heads, L max_levels, W window, S = L_used + W keys.

What follows the paper / reference code:

* the memory is a binary tree built by a learnt summariser over the concatenation of two
  summaries (the reference's ``Summarizer``: a linear map 2D -> D, older first);
* a level holds a summary of 2^i tokens, and it is filled like a binary counter: a new
  token is a level-0 summary; two summaries at one level merge into one at the next;
* single-vector attention: the current token is the one query; the memory slots are the
  keys and values (the reference's ``SingleVectorAttention``, with empty slots masked);
* pre-norm residual blocks with a feed-forward layer after the memory read (the reference's
  ``BaseLogarithmicMemory.forward``).

What is ours (choices the task or this codebase made):

* **which summaries are kept.** The reference keeps at every level the *latest complete*
  aligned block (overlapping blocks, ``bit_length(n)`` slots); here the levels form a
  *binary counter*: after n tokens level i is occupied iff bit i of n is set, and the
  occupied slots summarise disjoint aligned blocks that tile the whole prefix
  (``popcount(n) <= floor(log2 n) + 1`` slots; every token is in exactly one summary);
* a local window of the last W tokens (the current one included) is read together with
  the summaries, so recent tokens are seen exactly; positions are a learnt *level*
  embedding for summaries and a learnt *offset* embedding for window slots, added to the
  key/value inputs (the reference relies on the tree alone for position);
* the summariser starts as the mean ``(s_older + s_newer) / 2`` (the reference starts it
  at small random weights) so deep summaries keep their scale at initialisation;
* ``max_levels`` bounds the tree (default 32 levels: 2^32 - 1 tokens before it fills);
  after that the top level saturates (merges into itself), so the state stays constant;
* multi-head attention through ``F.scaled_dot_product_attention`` with a boolean mask.

Streaming (:class:`LMNLayerState`): the summaries (b, L, D) with their occupancy, and the
keys / values of the last W - 1 tokens; constant in the sequence length. Chunks of any size
give one call's outputs. Speed: the tree update runs as a Python loop over the tokens of a
chunk (about 2 summariser calls per token, amortised); projections and attention are batched
over the chunk (every distinct summary is projected once).
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

__all__ = ["LMNConfig", "LMNLayerState", "LMNState", "LogarithmicMemoryBlock", "LMNLM", "build_lmn",
           "MAX_WINDOW", "MAX_LEVELS"]

MAX_WINDOW = 4096
"""Largest local window accepted: beyond this the window, not the tree, is the memory (plain local attention)."""
MAX_LEVELS = 62
"""Largest tree depth accepted: a level-62 summary covers 2^62 tokens; occupancy is read back as an int64 counter."""


@dataclass(frozen=True)
class LMNConfig:
    """Sizes of a Logarithmic Memory Network language model."""

    vocab_size: int = 256
    """Number of token ids; inputs must lie in ``[0, vocab_size)``."""
    d_model: int = 64
    """Width D of the residual stream (and of every summary)."""
    n_layer: int = 2
    """Number of memory blocks (each has its own tree)."""
    n_heads: int = 2
    """Attention heads H of the memory read; must divide ``d_model``."""
    window: int = 16
    """W: tokens read exactly besides the summaries (the current one included), 1..MAX_WINDOW."""
    max_levels: int = 32
    """L: levels of the summary tree (level i summarises 2^i tokens), 1..MAX_LEVELS; fills after 2^L - 1 tokens."""
    ffn_mult: int = 4
    """Hidden width of the feed-forward layer, in multiples of ``d_model``."""
    norm_eps: float = 1e-5
    """Epsilon of RMSNorm."""

    def __post_init__(self) -> None:
        for name in ("vocab_size", "d_model", "n_layer", "n_heads", "window", "max_levels", "ffn_mult"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise AHMConfigError(f"LMNConfig.{name} must be a positive int, got {value!r}")
        if self.d_model % self.n_heads:
            raise AHMConfigError(
                f"LMNConfig.n_heads ({self.n_heads}) must divide LMNConfig.d_model ({self.d_model})"
            )
        if self.window > MAX_WINDOW:
            raise AHMConfigError(
                f"LMNConfig.window must be at most {MAX_WINDOW}, got {self.window}; the summaries, not the window, "
                "are the long memory"
            )
        if self.max_levels > MAX_LEVELS:
            raise AHMConfigError(f"LMNConfig.max_levels must be at most {MAX_LEVELS}, got {self.max_levels}")
        if not self.norm_eps > 0:
            raise AHMConfigError(f"LMNConfig.norm_eps must be > 0, got {self.norm_eps!r}")


class LMNLayerState(NamedTuple):
    """Streaming state of one :class:`LogarithmicMemoryBlock`."""

    summaries: Tensor
    """(b, L, D): level i holds a summary of 2^i consecutive tokens (zeros where empty)."""
    occupied: Tensor
    """(b, L) bool: level i is occupied iff bit i of the token count is set (binary counter)."""
    window_k: Tensor
    """(b, W - 1, D): keys of the last W - 1 tokens, oldest first (before the offset embedding)."""
    window_v: Tensor
    """(b, W - 1, D): their values."""
    window_valid: Tensor
    """(b, W - 1) bool: which window slots hold a token (False before the first W - 1 tokens)."""


class LMNState(NamedTuple):
    """Streaming state of :class:`LMNLM`: one :class:`LMNLayerState` per block."""

    layers: tuple[LMNLayerState, ...]


def _trailing_ones(value: int) -> int:
    """Number of low set bits: the carries a binary counter makes when it adds one."""
    return (value ^ (value + 1)).bit_length() - 1


def _increment(value: int, levels: int) -> int:
    """The counter after one more token; a full counter (all L bits) keeps only its top level."""
    return 1 << (levels - 1) if value == (1 << levels) - 1 else value + 1


class LogarithmicMemoryBlock(nn.Module):
    """One LMN layer: a summary tree of its inputs, read by single-vector attention, then a feed-forward layer."""

    def __init__(self, config: LMNConfig) -> None:
        super().__init__()
        self.config = config
        d = config.d_model
        self.norm_read = RMSNorm(d, config.norm_eps)
        self.summarizer = nn.Linear(2 * d, d)
        self.level_embedding = nn.Parameter(torch.randn(config.max_levels, d) * 0.02)
        self.offset_embedding = nn.Parameter(torch.randn(config.window, d) * 0.02)
        self.q_proj = nn.Linear(d, d)
        self.k_proj = nn.Linear(d, d)
        self.v_proj = nn.Linear(d, d)
        self.out_proj = nn.Linear(d, d)
        self.norm_ffn = RMSNorm(d, config.norm_eps)
        self.ffn = nn.Sequential(nn.Linear(d, config.ffn_mult * d), nn.GELU(), nn.Linear(config.ffn_mult * d, d))
        with torch.no_grad():  # the summary of two summaries starts as their mean (module doc)
            self.summarizer.weight.copy_(torch.cat([torch.eye(d), torch.eye(d)], dim=1) / 2)
            self.summarizer.bias.zero_()

    def init_state(self, batch: int, device: torch.device | None = None) -> LMNLayerState:
        c, dtype = self.config, self.q_proj.weight.dtype
        window = torch.zeros(batch, c.window - 1, c.d_model, device=device, dtype=dtype)
        return LMNLayerState(
            summaries=torch.zeros(batch, c.max_levels, c.d_model, device=device, dtype=dtype),
            occupied=torch.zeros(batch, c.max_levels, device=device, dtype=torch.bool),
            window_k=window,
            window_v=window.clone(),
            window_valid=torch.zeros(batch, c.window - 1, device=device, dtype=torch.bool),
        )

    def summarize(self, older: Tensor, newer: Tensor) -> Tensor:
        """Two summaries (b, D) of adjacent blocks, older first -> the summary of their union (b, D)."""
        return self.summarizer(torch.cat([older, newer], dim=-1))

    def grow_tree(self, h: Tensor, state: LMNLayerState) -> tuple[Tensor, Tensor, list[int], Tensor, Tensor, Tensor]:
        """Add the tokens h (b, l, D) to the tree one at a time (binary-counter carries).

        Returns ``bank`` (b, n, D), every distinct summary tensor seen (the state's and each new one),
        ``index`` (l, U) long, the bank entry at each level after each token, ``bank_level`` (n ints),
        ``valid`` (b, l, U) bool, the occupancy after each token (U levels can be occupied in this
        chunk), and the final ``summaries`` (b, L, D) and ``occupied`` (b, L).
        """
        b, length, _ = h.shape
        levels = self.config.max_levels
        bits = 1 << torch.arange(levels, device=h.device)
        counters = [int(c) for c in (state.occupied.long() * bits).sum(1).tolist()]  # one host sync
        used = min(levels, max(c + length for c in counters).bit_length())

        slots = list(state.summaries[:, :used].unbind(1))
        occupied = list(state.occupied[:, :used].unbind(1))
        bank, bank_level, slot_id = list(slots), list(range(used)), list(range(used))
        index_rows, valid_rows = [], []
        for t in range(length):
            carry, carrying = h[:, t], torch.ones(b, dtype=torch.bool, device=h.device)
            depth = min(levels, max(_trailing_ones(c) for c in counters) + 1)
            for i in range(depth):
                occ = occupied[i]
                merge = carrying & occ
                merged = self.summarize(slots[i], carry)
                if i == levels - 1:  # the top level saturates: it absorbs what reaches it
                    slots[i] = torch.where(carrying[:, None], torch.where(merge[:, None], merged, carry), slots[i])
                    occupied[i] = occ | carrying
                else:
                    place = carrying & ~occ
                    cleared = torch.where(merge[:, None], torch.zeros_like(carry), slots[i])
                    slots[i] = torch.where(place[:, None], carry, cleared)
                    occupied[i] = occ ^ carrying  # placed -> occupied, merged away -> empty
                    carry, carrying = merged, merge
                slot_id[i] = len(bank)
                bank.append(slots[i])
                bank_level.append(i)
            counters = [_increment(c, levels) for c in counters]
            index_rows.append(list(slot_id))
            valid_rows.append(torch.stack(occupied, dim=1))

        summaries = torch.cat([torch.stack(slots, 1), state.summaries[:, used:]], dim=1)
        final_occupied = torch.cat([torch.stack(occupied, 1), state.occupied[:, used:]], dim=1)
        index = torch.tensor(index_rows, dtype=torch.long, device=h.device)  # (l, U)
        return torch.stack(bank, 1), index, bank_level, torch.stack(valid_rows, 1), summaries, final_occupied

    def forward(self, x: Tensor, state: LMNLayerState) -> tuple[Tensor, LMNLayerState]:
        """x (b, l, D) -> (b, l, D) and the state after the last token."""
        b, length, d = x.shape
        heads, window = self.config.n_heads, self.config.window
        h = self.norm_read(x)

        # The tree after each token; every distinct summary is projected once, with its level embedding.
        bank, index, bank_level, mem_valid, summaries, occupied = self.grow_tree(h, state)
        bank = bank + self.level_embedding[bank_level]  # (b, n, D)
        mem_k = self.k_proj(bank)[:, index]  # (b, l, U, D)
        mem_v = self.v_proj(bank)[:, index]

        # The local window: keys / values of the last W tokens, plus the (linear) offset embedding.
        all_k = torch.cat([state.window_k, self.k_proj(h)], dim=1)  # (b, W - 1 + l, D)
        all_v = torch.cat([state.window_v, self.v_proj(h)], dim=1)
        all_valid = torch.cat([state.window_valid, torch.ones(b, length, dtype=torch.bool, device=x.device)], 1)
        win_k = all_k.unfold(1, window, 1).transpose(2, 3) + F.linear(self.offset_embedding, self.k_proj.weight)
        win_v = all_v.unfold(1, window, 1).transpose(2, 3) + F.linear(self.offset_embedding, self.v_proj.weight)
        win_valid = all_valid.unfold(1, window, 1)  # (b, l, W); the last slot is the token itself

        keys = torch.cat([mem_k, win_k], dim=2)  # (b, l, S, D)
        values = torch.cat([mem_v, win_v], dim=2)
        mask = torch.cat([mem_valid, win_valid], dim=2)  # (b, l, S)
        n_keys = keys.shape[2]

        def split(t: Tensor) -> Tensor:  # (b, l, S, D) -> (b l, H, S, D / H)
            return t.reshape(b * length, t.shape[2], heads, d // heads).transpose(1, 2)

        q = self.q_proj(h).reshape(b * length, 1, heads, d // heads).transpose(1, 2)  # (b l, H, 1, D / H)
        read = F.scaled_dot_product_attention(q, split(keys), split(values),
                                              attn_mask=mask.reshape(b * length, 1, 1, n_keys))
        x = x + self.out_proj(read.transpose(1, 2).reshape(b, length, d))
        x = x + self.ffn(self.norm_ffn(x))

        keep = window - 1
        new_state = LMNLayerState(
            summaries=summaries,
            occupied=occupied,
            window_k=all_k[:, all_k.shape[1] - keep :],
            window_v=all_v[:, all_v.shape[1] - keep :],
            window_valid=all_valid[:, all_valid.shape[1] - keep :],
        )
        return x, new_state


class LMNLM(nn.Module):
    """Token embedding, a stack of :class:`LogarithmicMemoryBlock`, a final norm and a tied LM head."""

    def __init__(self, config: LMNConfig) -> None:
        super().__init__()
        self.config = config
        self.embedding = nn.Embedding(config.vocab_size, config.d_model)
        nn.init.normal_(self.embedding.weight, std=0.02)
        self.layers = nn.ModuleList(LogarithmicMemoryBlock(config) for _ in range(config.n_layer))
        for block in self.layers:  # GPT-2 style rescaling of the residual-branch outputs
            with torch.no_grad():
                block.out_proj.weight /= math.sqrt(2 * config.n_layer)
                block.ffn[2].weight /= math.sqrt(2 * config.n_layer)
        self.norm_f = RMSNorm(config.d_model, config.norm_eps)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self.lm_head.weight = self.embedding.weight

    def init_state(self, batch: int, device: torch.device | str | None = None) -> LMNState:
        """The empty memory for ``batch`` sequences."""
        if batch < 1:
            raise ValueError(f"init_state: batch must be >= 1, got {batch}")
        device = torch.device(device) if device is not None else self.embedding.weight.device
        return LMNState(tuple(block.init_state(batch, device) for block in self.layers))

    def _check(self, tokens: Tensor, state: LMNState | None) -> None:
        if tokens.dim() != 2 or tokens.shape[1] < 1:
            raise ValueError(f"tokens must have shape (batch, length >= 1), got {tuple(tokens.shape)}")
        if tokens.dtype.is_floating_point or tokens.dtype.is_complex or tokens.dtype == torch.bool:
            raise ValueError(f"tokens must be an integer tensor, got {tokens.dtype}")
        lo, hi = int(tokens.min()), int(tokens.max())
        if lo < 0 or hi >= self.config.vocab_size:
            raise ValueError(f"token ids must lie in [0, {self.config.vocab_size}); got values in [{lo}, {hi}]")
        if state is not None:
            if len(state.layers) != len(self.layers):
                raise ValueError(f"state has {len(state.layers)} layers, the model has {len(self.layers)}")
            if state.layers[0].summaries.shape[0] != tokens.shape[0]:
                raise ValueError(
                    f"state is for batch {state.layers[0].summaries.shape[0]}, tokens have batch {tokens.shape[0]}"
                )

    def forward(self, tokens: Tensor, state: LMNState | None = None) -> tuple[Tensor, LMNState]:
        """tokens (b, l) int -> logits (b, l, vocab_size) and the state after step l."""
        self._check(tokens, state)
        if state is None:
            state = self.init_state(tokens.shape[0], tokens.device)
        x = self.embedding(tokens.long())
        new_layers = []
        for block, layer_state in zip(self.layers, state.layers):
            x, layer_state = block(x, layer_state)
            new_layers.append(layer_state)
        return self.lm_head(self.norm_f(x)), LMNState(tuple(new_layers))


@register("lmn", "LMN (Taha, 2025): a binary tree of learnt summaries plus a local window, read by one query per token")
def build_lmn(vocab_size: int, budget: int, overrides: dict[str, Any]) -> nn.Module:
    known = {f.name for f in fields(LMNConfig)} - {"vocab_size"}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise AHMConfigError(f"lmn: unknown option(s) {unknown}; known: {sorted(known)}")
    heads = overrides.get("n_heads", LMNConfig.n_heads)
    # Widths are searched in multiples of lcm(8, n_heads), so that every width splits into the heads.
    multiple = math.lcm(8, heads) if isinstance(heads, int) and not isinstance(heads, bool) and heads > 0 else 8
    # Validates every field (AHMConfigError naming it) before any model is built.
    base = LMNConfig(vocab_size=vocab_size, **{"d_model": multiple, **overrides})
    if "d_model" in overrides:
        return LMNLM(base)
    return fit_width(lambda d: LMNLM(replace(base, d_model=d)), budget, multiple=multiple)
