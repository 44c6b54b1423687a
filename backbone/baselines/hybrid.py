"""``moe_mamba`` and ``jamba``: Mamba stacks with mixture-of-experts feed-forward layers, and attention.

Both are stacks of :class:`HybridBlock` (pre-norm mixer + residual, then pre-norm feed-forward +
residual) over a token embedding, with a final RMSNorm and an LM head:

* ``moe_mamba``, MoE-Mamba (Pióro et al., 2024, "MoE-Mamba: Efficient selective state space
  models with mixture of experts"): [Mamba, MoE, Mamba, MoE, ...]. The MoE is a Switch layer
  (Fedus et al., 2022): softmax router over E experts, each token sent to its top-1 expert,
  whose output is scaled by the gate probability.
* ``jamba``, Jamba (Lieber et al., AI21, 2024, "Jamba: A hybrid Transformer-Mamba language
  model"): Mamba layers with one attention layer in every ``attn_period`` (8), at
  ``i % attn_period == attn_offset``; a top-k MoE feed-forward in every ``moe_period``-th
  layer (2) and a dense MLP elsewhere. Jamba's Mamba layers RMS-normalise dt, B and C
  (:class:`NormedSelection`); its attention has no positional encoding (the Mamba layers
  carry position).

The Mamba mixer is :class:`~ahm.backbone.mamba.MambaMixer` itself. Experts and the dense MLP
are SwiGLU feed-forwards (Jamba's; MoE-Mamba's experts are the Transformer feed-forward, here
the same SwiGLU form so that the two baselines differ only in the layer plan).

Streaming state: each Mamba layer's :class:`~ahm.backbone.mamba.LayerState`, and each attention
layer's rolling cache of the last ``window - 1`` keys and values (:class:`AttentionState`), so
attention at step t sees steps (t - window, t]: with a window at least the sequence length it is
full causal attention. MoE and MLP layers are per token and hold no state.

Load balancing: each forward sets ``model.aux_loss``, the Switch Transformer loss
E * sum_i f_i P_i (f_i the fraction of routing choices sent to expert i, P_i the mean router
probability of expert i; 1.0 for perfectly uniform routing) averaged over the MoE layers. A
trainer adds it as ``loss = cross_entropy + model.config.aux_loss_coef * model.aux_loss``.

Simplified against the papers: no expert capacity (no token is dropped: every token reaches its
chosen experts, as in Hugging Face's Jamba), no router z-loss, no expert parallelism, no
dropout; attention is windowed in every mode (Jamba's is full), so its state stays bounded.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import MambaConfig
from ..errors import AHMConfigError
from ..mamba import LayerState, MambaMixer, RMSNorm
from .base import fit_width, register

__all__ = ["MoEMambaConfig", "JambaConfig", "Routing", "load_balancing_loss", "SwiGLU", "SparseMoE",
           "AttentionState", "WindowAttention", "NormedSelection", "HybridBlock", "HybridState", "HybridLM",
           "build_moe_mamba", "build_jamba"]

MAX_WINDOW = 65_536
"""Largest attention window: the state holds window - 1 keys and values per attention layer, and a longer
window than any sequence the project streams in one go only costs memory."""


def _require_positive_ints(config: object, names: tuple[str, ...]) -> None:
    for name in names:
        value = getattr(config, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise AHMConfigError(f"{type(config).__name__}.{name} must be a positive int, got {value!r}")


def _mamba_config(config: MoEMambaConfig | JambaConfig) -> MambaConfig:
    """The :class:`MambaConfig` of the Mamba mixers of a hybrid (its own errors become AHMConfigError)."""
    try:
        return MambaConfig(vocab_size=config.vocab_size, d_model=config.d_model, n_layer=config.n_layer,
                           d_state=config.d_state, d_conv=config.d_conv, expand=config.expand,
                           norm_eps=config.norm_eps, scan_backend=config.scan_backend)
    except ValueError as err:
        raise AHMConfigError(f"{type(config).__name__}: {err}") from err


@dataclass(frozen=True)
class MoEMambaConfig:
    """Sizes of a MoE-Mamba language model (Pióro et al., 2024): Mamba layers, each followed by a Switch MoE."""

    vocab_size: int = 256
    """Number of token ids; inputs must lie in ``[0, vocab_size)``."""
    d_model: int = 64
    """Width D of the residual stream."""
    n_layer: int = 2
    """Number of Mamba layers; each is followed by an MoE layer (2 n_layer residual sublayers)."""
    d_state: int = 16
    """SSM state size N per channel of the Mamba layers."""
    d_conv: int = 4
    """Kernel width of the Mamba layers' causal convolution."""
    expand: int = 2
    """Inner width of the Mamba layers: ``expand * d_model`` channels."""
    n_experts: int = 4
    """Experts E per MoE layer (the paper uses up to 32; 4 keeps the 0.1M model's experts wider than 8)."""
    ff_mult: float = 2.0
    """Hidden width of each expert: ``round(ff_mult * d_model)``."""
    aux_loss_coef: float = 0.01
    """Weight a trainer gives ``model.aux_loss`` (the Switch Transformer's alpha = 0.01)."""
    norm_eps: float = 1e-5
    """Epsilon of RMSNorm."""
    tie_embeddings: bool = True
    """Share the token embedding with the LM head."""
    scan_backend: str = "auto"
    """Selective-scan backend of the Mamba layers (see ``ahm.kernels.available_backends``)."""

    def __post_init__(self) -> None:
        _require_positive_ints(self, ("vocab_size", "d_model", "n_layer", "d_state", "d_conv", "expand",
                                      "n_experts"))
        if not self.ff_mult > 0:
            raise AHMConfigError(f"MoEMambaConfig.ff_mult must be > 0, got {self.ff_mult!r}")
        if not self.aux_loss_coef >= 0:
            raise AHMConfigError(f"MoEMambaConfig.aux_loss_coef must be >= 0, got {self.aux_loss_coef!r}")
        _mamba_config(self)

    @property
    def d_ff(self) -> int:
        """Hidden width of an expert."""
        return max(1, round(self.ff_mult * self.d_model))

    @property
    def top_k(self) -> int:
        """Experts per token: 1 (Switch routing)."""
        return 1

    def layer_plan(self) -> tuple[tuple[str, str], ...]:
        """(mixer, feed-forward) of each block: ``("mamba", "moe")`` throughout."""
        return (("mamba", "moe"),) * self.n_layer


@dataclass(frozen=True)
class JambaConfig:
    """Sizes and layer plan of a Jamba language model (Lieber et al., 2024)."""

    vocab_size: int = 256
    """Number of token ids; inputs must lie in ``[0, vocab_size)``."""
    d_model: int = 64
    """Width D of the residual stream."""
    n_layer: int = 4
    """Number of layers (each a mixer, Mamba or attention, and a feed-forward, MoE or dense)."""
    attn_period: int = 8
    """One attention layer in every ``attn_period`` layers (Jamba's a:m = 1:7)."""
    attn_offset: int | None = None
    """Layer i is attention when ``i % attn_period == attn_offset``; None: ``min(attn_period, n_layer) // 2``
    (Jamba's 4 for 8 layers or more; the middle layer of a smaller model)."""
    moe_period: int = 2
    """An MoE feed-forward in every ``moe_period`` layers (Jamba's e = 2), a dense MLP elsewhere."""
    moe_offset: int = 1
    """Layer i has an MoE when ``i % moe_period == moe_offset`` (Jamba's 1)."""
    n_experts: int = 4
    """Experts per MoE layer (Jamba's 16; 4 keeps the small models' experts wide enough)."""
    top_k: int = 2
    """Experts each token is sent to (Jamba's 2); their outputs are weighted by the (unnormalised) gates."""
    ff_mult: float = 2.0
    """Hidden width of the MLP and of each expert: ``round(ff_mult * d_model)`` (Jamba's 3.5)."""
    n_heads: int = 4
    """Attention heads; must divide d_model."""
    n_kv_heads: int | None = None
    """Key/value heads (grouped-query attention, Jamba's 8 of 32); None: n_heads. Must divide n_heads."""
    window: int = 256
    """Attention at step t sees steps (t - window, t]; the state keeps window - 1 keys and values."""
    d_state: int = 16
    """SSM state size N per channel of the Mamba layers."""
    d_conv: int = 4
    """Kernel width of the Mamba layers' causal convolution."""
    expand: int = 2
    """Inner width of the Mamba layers: ``expand * d_model`` channels."""
    inner_norms: bool = True
    """RMS-normalise dt, B and C inside the Mamba layers (Jamba: it stabilises training at scale)."""
    aux_loss_coef: float = 0.001
    """Weight a trainer gives ``model.aux_loss`` (Hugging Face Jamba's router_aux_loss_coef)."""
    norm_eps: float = 1e-5
    """Epsilon of RMSNorm."""
    tie_embeddings: bool = True
    """Share the token embedding with the LM head (Jamba unties them; tying saves the small budgets)."""
    scan_backend: str = "auto"
    """Selective-scan backend of the Mamba layers (see ``ahm.kernels.available_backends``)."""

    def __post_init__(self) -> None:
        _require_positive_ints(self, ("vocab_size", "d_model", "n_layer", "attn_period", "moe_period", "n_experts",
                                      "top_k", "n_heads", "window", "d_state", "d_conv", "expand"))
        offset = self.resolved_attn_offset
        if not isinstance(offset, int) or isinstance(offset, bool) or not 0 <= offset < self.attn_period:
            raise AHMConfigError(f"JambaConfig.attn_offset must be an int in [0, attn_period = {self.attn_period}), "
                                 f"got {self.attn_offset!r}")
        if offset >= self.n_layer:
            raise AHMConfigError(f"JambaConfig.attn_offset = {offset} places no attention layer among "
                                 f"n_layer = {self.n_layer} layers; give an offset below {self.n_layer}")
        if not isinstance(self.moe_offset, int) or not 0 <= self.moe_offset < self.moe_period:
            raise AHMConfigError(f"JambaConfig.moe_offset must be an int in [0, moe_period = {self.moe_period}), "
                                 f"got {self.moe_offset!r}")
        if self.top_k > self.n_experts:
            raise AHMConfigError(f"JambaConfig.top_k = {self.top_k} exceeds n_experts = {self.n_experts}")
        if self.d_model % self.n_heads:
            raise AHMConfigError(f"JambaConfig.n_heads = {self.n_heads} must divide d_model = {self.d_model}")
        kv = self.resolved_kv_heads
        if not isinstance(kv, int) or kv < 1 or self.n_heads % kv:
            raise AHMConfigError(f"JambaConfig.n_kv_heads must divide n_heads = {self.n_heads}, "
                                 f"got {self.n_kv_heads!r}")
        if self.window > MAX_WINDOW:
            raise AHMConfigError(f"JambaConfig.window = {self.window} is larger than {MAX_WINDOW}; the state "
                                 f"holds window - 1 keys and values per attention layer")
        if not self.ff_mult > 0:
            raise AHMConfigError(f"JambaConfig.ff_mult must be > 0, got {self.ff_mult!r}")
        if not self.aux_loss_coef >= 0:
            raise AHMConfigError(f"JambaConfig.aux_loss_coef must be >= 0, got {self.aux_loss_coef!r}")
        _mamba_config(self)

    @property
    def resolved_attn_offset(self) -> int:
        """``attn_offset``, with None resolved to ``min(attn_period, n_layer) // 2``."""
        if self.attn_offset is None:
            return min(self.attn_period, self.n_layer) // 2
        return self.attn_offset

    @property
    def resolved_kv_heads(self) -> int:
        """``n_kv_heads``, with None resolved to ``n_heads``."""
        return self.n_heads if self.n_kv_heads is None else self.n_kv_heads

    @property
    def d_ff(self) -> int:
        """Hidden width of the MLP and of each expert."""
        return max(1, round(self.ff_mult * self.d_model))

    def layer_plan(self) -> tuple[tuple[str, str], ...]:
        """(mixer, feed-forward) of each layer: ``"mamba"`` / ``"attention"``, ``"moe"`` / ``"mlp"``."""
        offset = self.resolved_attn_offset
        return tuple(("attention" if i % self.attn_period == offset else "mamba",
                      "moe" if i % self.moe_period == self.moe_offset else "mlp") for i in range(self.n_layer))


class Routing(NamedTuple):
    """Where a router sends T tokens."""

    probs: Tensor
    """(T, E): softmax of the router logits."""
    expert_index: Tensor
    """(T, k) int64: the k experts of each token, most probable first."""
    gates: Tensor
    """(T, k): their probabilities, the weights of the experts' outputs (not renormalised)."""


def load_balancing_loss(probs: Tensor, expert_index: Tensor, n_experts: int) -> Tensor:
    """Switch Transformer auxiliary loss (Fedus et al., 2022, Eq. 4): E * sum_i f_i P_i.

    probs (T, E), expert_index (T, k) -> a scalar. f_i is the fraction of the T k routing choices
    that go to expert i (for k = 1, the fraction of tokens), P_i the mean probability of expert i.
    Perfectly uniform routing gives 1.0; all tokens on one confident expert gives E.
    """
    choices = F.one_hot(expert_index, n_experts).to(probs.dtype)  # (T, k, E)
    fraction = choices.sum(1).mean(0) / expert_index.shape[1]  # (E,)
    return n_experts * torch.sum(fraction * probs.mean(0))


class SwiGLU(nn.Module):
    """Feed-forward ``down(silu(gate(x)) * up(x))`` (Shazeer, 2020; Jamba's MLP and experts)."""

    def __init__(self, d_model: int, d_ff: int) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(d_model, d_ff, bias=False)
        self.up_proj = nn.Linear(d_model, d_ff, bias=False)
        self.down_proj = nn.Linear(d_ff, d_model, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        """x (..., D) -> (..., D)."""
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class SparseMoE(nn.Module):
    """Top-k mixture of SwiGLU experts; k = 1 is the Switch layer. No capacity limit: no token is dropped."""

    def __init__(self, d_model: int, d_ff: int, n_experts: int, top_k: int) -> None:
        super().__init__()
        self.top_k = top_k
        self.router = nn.Linear(d_model, n_experts, bias=False)
        self.experts = nn.ModuleList(SwiGLU(d_model, d_ff) for _ in range(n_experts))

    def route(self, x: Tensor) -> Routing:
        """x (T, D) -> the routing of its T tokens."""
        probs = torch.softmax(self.router(x), dim=-1)
        gates, expert_index = probs.topk(self.top_k, dim=-1)
        return Routing(probs, expert_index, gates)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x (b, l, D) -> output (b, l, D), the load-balancing loss of these tokens (a scalar)."""
        flat = x.reshape(-1, x.shape[-1])  # (T, D)
        routing = self.route(flat)
        out = torch.zeros_like(flat)
        for e, expert in enumerate(self.experts):
            token, slot = torch.where(routing.expert_index == e)
            out = out.index_add(0, token, expert(flat[token]) * routing.gates[token, slot, None])
        return out.view_as(x), load_balancing_loss(routing.probs, routing.expert_index, len(self.experts))


class AttentionState(NamedTuple):
    """Rolling key/value cache of one windowed attention layer (fixed size)."""

    keys: Tensor
    """(b, H_kv, window - 1, d_head): keys of the last window - 1 steps, oldest first."""
    values: Tensor
    """(b, H_kv, window - 1, d_head): their values."""
    filled: Tensor
    """(b,) int64: how many of the window - 1 slots hold real steps (the rest are zeros before the start)."""


class WindowAttention(nn.Module):
    """Causal multi-head attention over the last ``window`` steps, no positional encoding, streaming KV cache."""

    def __init__(self, d_model: int, n_heads: int, n_kv_heads: int, window: int) -> None:
        super().__init__()
        self.n_heads, self.n_kv_heads, self.window = n_heads, n_kv_heads, window
        self.d_head = d_model // n_heads
        self.q_proj = nn.Linear(d_model, n_heads * self.d_head, bias=False)
        self.k_proj = nn.Linear(d_model, n_kv_heads * self.d_head, bias=False)
        self.v_proj = nn.Linear(d_model, n_kv_heads * self.d_head, bias=False)
        self.o_proj = nn.Linear(n_heads * self.d_head, d_model, bias=False)

    def init_state(self, batch: int, device: torch.device | str | None = None) -> AttentionState:
        """An empty cache for ``batch`` sequences."""
        shape = (batch, self.n_kv_heads, self.window - 1, self.d_head)
        dtype = self.q_proj.weight.dtype
        empty = torch.zeros(shape, device=device, dtype=dtype)
        return AttentionState(empty, empty.clone(), torch.zeros(batch, device=device, dtype=torch.long))

    def forward(self, x: Tensor, state: AttentionState) -> tuple[Tensor, AttentionState]:
        """x (b, l, D) -> (b, l, D), the cache after the last step."""
        b, length, _ = x.shape
        q = self.q_proj(x).view(b, length, self.n_heads, self.d_head).transpose(1, 2)  # (b, H, l, d)
        k = self.k_proj(x).view(b, length, self.n_kv_heads, self.d_head).transpose(1, 2)  # (b, H_kv, l, d)
        v = self.v_proj(x).view(b, length, self.n_kv_heads, self.d_head).transpose(1, 2)
        keys = torch.cat([state.keys, k], dim=2)  # (b, H_kv, c + l, d), c = window - 1 cached steps
        values = torch.cat([state.values, v], dim=2)
        cached = self.window - 1
        # Positions relative to the chunk's first step: cache slot j is step j - c, new step i is step i.
        query_pos = torch.arange(length, device=x.device)[:, None]
        key_pos = torch.arange(cached + length, device=x.device)[None, :] - cached
        causal_window = (key_pos <= query_pos) & (query_pos - key_pos < self.window)  # (l, c + l)
        real = key_pos[None, :, :] >= -state.filled[:, None, None]  # (b, 1, c + l): not before the start
        mask = (causal_window[None] & real)[:, None]  # (b, 1, l, c + l); every row allows its own step
        out = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask,
                                             enable_gqa=self.n_heads != self.n_kv_heads)
        start = keys.shape[2] - cached
        new_state = AttentionState(keys[:, :, start:], values[:, :, start:],
                                   torch.clamp(state.filled + length, max=cached))
        return self.o_proj(out.transpose(1, 2).reshape(b, length, -1)), new_state


class NormedSelection(nn.Module):
    """Jamba's selection projection: ``x_proj`` of a Mamba layer, then RMSNorm on each of dt, B and C.

    It replaces :attr:`MambaMixer.x_proj`, whose forward splits the output into (dt, B, C), so the
    mixer's own forward runs unchanged (Jamba; Hugging Face's dt/b/c_layernorm).
    """

    def __init__(self, linear: nn.Linear, dt_rank: int, d_state: int, eps: float) -> None:
        super().__init__()
        self.linear = linear
        self.sizes = [dt_rank, d_state, d_state]
        self.dt_norm = RMSNorm(dt_rank, eps)
        self.b_norm = RMSNorm(d_state, eps)
        self.c_norm = RMSNorm(d_state, eps)

    def forward(self, x: Tensor) -> Tensor:
        """x (b, l, E D) -> (b, l, R + 2N): normalised dt, B, C side by side."""
        dt, B, C = torch.split(self.linear(x), self.sizes, dim=-1)
        return torch.cat([self.dt_norm(dt), self.b_norm(B), self.c_norm(C)], dim=-1)


class HybridBlock(nn.Module):
    """``h + mixer(norm(h))``, then ``h + ffn(norm(h))``; the mixer holds the block's state."""

    def __init__(self, mixer: nn.Module, ffn: nn.Module, d_model: int, eps: float) -> None:
        super().__init__()
        self.input_norm = RMSNorm(d_model, eps)
        self.mixer = mixer
        self.ffn_norm = RMSNorm(d_model, eps)
        self.ffn = ffn

    def forward(self, hidden: Tensor, state: Any) -> tuple[Tensor, Any, Tensor | None]:
        """hidden (b, l, D) -> (b, l, D), the mixer's state after, the MoE's load-balancing loss (None: no MoE)."""
        out, state = self.mixer(self.input_norm(hidden), state)
        hidden = hidden + out
        out = self.ffn(self.ffn_norm(hidden))
        aux = None
        if isinstance(out, tuple):
            out, aux = out
        return hidden + out, state, aux


class HybridState(NamedTuple):
    """Streaming state of a :class:`HybridLM`: per layer a Mamba :class:`LayerState` or an :class:`AttentionState`."""

    layers: tuple[LayerState | AttentionState, ...]


class HybridLM(nn.Module):
    """Embedding, :class:`HybridBlock` stack of the config's ``layer_plan()``, final norm, LM head.

    ``forward`` also sets :attr:`aux_loss`, the mean load-balancing loss of the MoE layers (module doc).
    """

    def __init__(self, config: MoEMambaConfig | JambaConfig) -> None:
        super().__init__()
        self.config = config
        mamba = _mamba_config(config)
        self.embedding = nn.Embedding(config.vocab_size, config.d_model)
        nn.init.normal_(self.embedding.weight, std=0.02)
        blocks = []
        for mixer_kind, ffn_kind in config.layer_plan():
            if mixer_kind == "mamba":
                mixer = MambaMixer(mamba)
                # GPT-2 style rescaling of the residual-branch output, as MambaBackbone does.
                with torch.no_grad():
                    mixer.out_proj.weight /= math.sqrt(config.n_layer)
                if getattr(config, "inner_norms", False):
                    mixer.x_proj = NormedSelection(mixer.x_proj, mamba.resolved_dt_rank, mamba.d_state,
                                                   config.norm_eps)
            else:
                assert isinstance(config, JambaConfig)
                mixer = WindowAttention(config.d_model, config.n_heads, config.resolved_kv_heads, config.window)
            if ffn_kind == "moe":
                ffn: nn.Module = SparseMoE(config.d_model, config.d_ff, config.n_experts, config.top_k)
            else:
                ffn = SwiGLU(config.d_model, config.d_ff)
            blocks.append(HybridBlock(mixer, ffn, config.d_model, config.norm_eps))
        self.layers = nn.ModuleList(blocks)
        self.norm_f = RMSNorm(config.d_model, config.norm_eps)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.embedding.weight
        self.aux_loss: Tensor = torch.zeros(())
        """Mean load-balancing loss of the MoE layers over the tokens of the last forward (0 without MoE)."""

    def init_state(self, batch: int, device: torch.device | str | None = None) -> HybridState:
        """The zero state for ``batch`` sequences (empty attention caches)."""
        if batch < 1:
            raise ValueError(f"init_state: batch must be >= 1, got {batch}")
        device = torch.device(device) if device is not None else self.embedding.weight.device
        return HybridState(tuple(block.mixer.init_state(batch, device) for block in self.layers))

    def forward(self, tokens: Tensor, state: HybridState | None = None) -> tuple[Tensor, HybridState]:
        """tokens (b, l) -> logits (b, l, vocab_size) and the state after step l; sets :attr:`aux_loss`."""
        if tokens.dim() != 2 or tokens.shape[1] < 1 or tokens.is_floating_point():
            raise ValueError(f"tokens must be integer ids of shape (batch, length >= 1), got "
                             f"{tokens.dtype} {tuple(tokens.shape)}")
        lo, hi = int(tokens.min()), int(tokens.max())
        if lo < 0 or hi >= self.config.vocab_size:
            raise ValueError(f"token ids must lie in [0, {self.config.vocab_size}); got values in [{lo}, {hi}]")
        if state is None:
            state = self.init_state(tokens.shape[0], tokens.device)
        if len(state.layers) != len(self.layers):
            raise ValueError(f"state has {len(state.layers)} layers, the model has {len(self.layers)}")
        hidden = self.embedding(tokens.long())
        new_layers, losses = [], []
        for block, layer_state in zip(self.layers, state.layers):
            hidden, layer_state, aux = block(hidden, layer_state)
            new_layers.append(layer_state)
            if aux is not None:
                losses.append(aux)
        self.aux_loss = torch.stack(losses).mean() if losses else hidden.new_zeros(())
        return self.lm_head(self.norm_f(hidden)), HybridState(tuple(new_layers))


def _build(name: str, config_cls: type, vocab_size: int, budget: int, overrides: dict[str, Any],
           multiple: int = 4) -> nn.Module:
    known = {f.name for f in fields(config_cls)} - {"vocab_size"}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise AHMConfigError(f"{name}: unknown option(s) {unknown}; known: {sorted(known)}")
    try:
        # Without a d_model override, validate at the first width fit_width tries (n_heads must divide it).
        base = config_cls(vocab_size=vocab_size, **{"d_model": multiple, **overrides})
    except TypeError as err:
        raise AHMConfigError(f"{name}: {err}") from err
    if "d_model" in overrides:
        return HybridLM(base)
    return fit_width(lambda d: HybridLM(replace(base, d_model=d)), budget, multiple=multiple)


@register("moe_mamba", "MoE-Mamba (Pióro et al., 2024): Mamba layers interleaved with Switch (top-1) MoE layers")
def build_moe_mamba(vocab_size: int, budget: int, overrides: dict[str, Any]) -> nn.Module:
    return _build("moe_mamba", MoEMambaConfig, vocab_size, budget, overrides)


@register("jamba", "Jamba (AI21, 2024): Mamba layers with 1 windowed-attention layer in 8, MoE every other layer")
def build_jamba(vocab_size: int, budget: int, overrides: dict[str, Any]) -> nn.Module:
    heads = overrides.get("n_heads", JambaConfig.n_heads)
    multiple = heads if isinstance(heads, int) and heads > 0 else 4  # widths n_heads divides
    return _build("jamba", JambaConfig, vocab_size, budget, overrides, multiple)
