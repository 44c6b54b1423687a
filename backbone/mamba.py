"""A Mamba-style selective SSM language model with explicit, streamable state.

Follows Gu & Dao (2023), Sec. 3.4 / Fig. 3: each block is

    x, z   = in_proj(norm(h))                         (b, l, 2 E D) -> two (b, E D, l)
    x      = silu(causal_depthwise_conv1d(x))         kernel d_conv, carried state
    delta, B, C = x_proj(x)                           input-dependent (the selection)
    y      = selective_scan(x, dt_proj(delta), A, B, C, D, z)
    h      = h + out_proj(y)                          residual

Glossary: b batch, l length, D d_model, E expand, N d_state, K d_conv.

The state of a layer is explicit (:class:`LayerState`): the last ``K - 1`` conv
inputs and the SSM state (b, E D, N). Every forward takes a state and returns the
next one, so a sequence processed in one call, in chunks of any size, or token by
token gives the same outputs; this is what lets the memory system stream 1M-token
sequences in constant memory.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..kernels import selective_scan
from .config import MambaConfig
from .optim import mark_no_weight_decay

__all__ = ["LayerState", "MambaState", "RMSNorm", "MambaMixer", "MambaBackbone", "MambaLM"]


class LayerState(NamedTuple):
    """Recurrent state of one Mamba block."""

    conv: Tensor
    """(b, E D, K - 1): the last K - 1 inputs of the causal convolution."""
    ssm: Tensor
    """(b, E D, N): the selective-SSM state h, in float32 (float64 for a float64 model)."""


class MambaState(NamedTuple):
    """Recurrent state of the whole stack: one :class:`LayerState` per layer."""

    layers: tuple[LayerState, ...]

    @property
    def batch_size(self) -> int:
        return self.layers[0].ssm.shape[0]

    def detach(self) -> MambaState:
        """The same state cut from the autograd graph (for truncated BPTT)."""
        return MambaState(tuple(LayerState(s.conv.detach(), s.ssm.detach()) for s in self.layers))

    def nbytes(self) -> int:
        """Bytes held by the state (the SSM's fixed-size memory)."""
        return sum(s.conv.nbytes + s.ssm.nbytes for s in self.layers)


class RMSNorm(nn.Module):
    """Root-mean-square layer norm (Zhang & Sennrich, 2019), as used by Mamba."""

    def __init__(self, d: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d))

    def forward(self, x: Tensor) -> Tensor:
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return x32.to(x.dtype) * self.weight


class MambaMixer(nn.Module):
    """One selective-SSM block (the mixer; normalisation and residual are outside)."""

    def __init__(self, config: MambaConfig) -> None:
        super().__init__()
        self.config = config
        d_inner, n, r = config.d_inner, config.d_state, config.resolved_dt_rank
        self.in_proj = nn.Linear(config.d_model, 2 * d_inner, bias=config.bias)
        self.conv1d = nn.Conv1d(
            d_inner, d_inner, kernel_size=config.d_conv, groups=d_inner, bias=config.conv_bias
        )
        self.x_proj = nn.Linear(d_inner, r + 2 * n, bias=False)
        self.dt_proj = nn.Linear(r, d_inner, bias=True)
        # S4D-real initialisation A = -(1, 2, ..., N) per channel (paper Sec. 3.6),
        # stored as log(-A) so that A stays negative.
        A = torch.arange(1, n + 1, dtype=torch.float32).repeat(d_inner, 1)
        self.A_log = nn.Parameter(torch.log(A))
        self.D = nn.Parameter(torch.ones(d_inner))
        mark_no_weight_decay(self.A_log, self.D)  # as the reference recipe (backbone/optim.py)
        self.out_proj = nn.Linear(d_inner, config.d_model, bias=config.bias)
        self._init_dt()

    def _init_dt(self) -> None:
        """delta = softplus(bias) starts log-uniform in [dt_min, dt_max] (paper Sec. 3.6)."""
        c = self.config
        std = c.resolved_dt_rank**-0.5
        nn.init.uniform_(self.dt_proj.weight, -std, std)
        dt = torch.exp(
            torch.rand(c.d_inner) * (math.log(c.dt_max) - math.log(c.dt_min)) + math.log(c.dt_min)
        ).clamp(min=c.dt_init_floor)
        inv_softplus = dt + torch.log(-torch.expm1(-dt))
        with torch.no_grad():
            self.dt_proj.bias.copy_(inv_softplus)

    def init_state(self, batch: int, device: torch.device | None = None) -> LayerState:
        c = self.config
        dtype = self.in_proj.weight.dtype
        conv = torch.zeros(batch, c.d_inner, c.d_conv - 1, device=device, dtype=dtype)
        # The SSM state is kept in at least float32, as the scan computes.
        ssm_dtype = torch.promote_types(dtype, torch.float32)
        ssm = torch.zeros(batch, c.d_inner, c.d_state, device=device, dtype=ssm_dtype)
        return LayerState(conv, ssm)

    def _depthwise_conv(self, x_full: Tensor, length: int) -> Tensor:
        """x_full (b, E D, K - 1 + l) -> (b, E D, l): out_t = bias + sum_k w_k x_{t + k}.

        Written as K shifted multiply-adds rather than ``F.conv1d(groups=E D)``: the
        same cross-correlation, but PyTorch's CPU backward of a depthwise conv over long
        sequences took 70% of a training step (benchmarks/mamba_selective_copying.py,
        measured with torch.profiler), while K elementwise ops are cheap both ways.
        """
        weight = self.conv1d.weight[:, 0, :]  # (E D, K)
        out = x_full[:, :, :length] * weight[:, :1]
        for k in range(1, weight.shape[1]):
            out = out + x_full[:, :, k : k + length] * weight[:, k : k + 1]
        if self.conv1d.bias is not None:
            out = out + self.conv1d.bias[:, None]
        return out

    def forward(self, hidden: Tensor, state: LayerState) -> tuple[Tensor, LayerState]:
        """hidden: (b, l, D) -> output (b, l, D) and the state after the last step."""
        length = hidden.shape[1]
        xz = self.in_proj(hidden).transpose(1, 2)  # (b, 2 E D, l)
        x, z = xz.chunk(2, dim=1)  # (b, E D, l) each

        # Causal depthwise conv with carried state: prepend the last K-1 inputs.
        x_full = torch.cat([state.conv, x], dim=2)  # (b, E D, K - 1 + l)
        conv_state = x_full[:, :, length:].contiguous()  # the last K - 1 inputs
        x = F.silu(self._depthwise_conv(x_full, length))

        # Selection: delta, B, C are functions of the input (paper Alg. 2).
        n, r = self.config.d_state, self.config.resolved_dt_rank
        x_dbl = self.x_proj(x.transpose(1, 2))  # (b, l, R + 2N)
        dt, B, C = torch.split(x_dbl, [r, n, n], dim=-1)
        delta = F.linear(dt, self.dt_proj.weight).transpose(1, 2)  # (b, E D, l)
        # Parameters of the SSM enter the scan in at least float32 (half models too).
        wide = torch.promote_types(self.A_log.dtype, torch.float32)
        A = -torch.exp(self.A_log.to(wide))  # (E D, N)
        y, ssm_state = selective_scan(
            x,
            delta,
            A,
            B.transpose(1, 2),  # (b, N, l)
            C.transpose(1, 2),
            D=self.D.to(wide),
            z=z,
            delta_bias=self.dt_proj.bias.to(wide),
            delta_softplus=True,
            return_last_state=True,
            initial_state=state.ssm,
            backend=self.config.scan_backend,
        )
        return self.out_proj(y.transpose(1, 2)), LayerState(conv_state, ssm_state)


class _ResidualBlock(nn.Module):
    def __init__(self, config: MambaConfig) -> None:
        super().__init__()
        self.norm = RMSNorm(config.d_model, config.norm_eps)
        self.mixer = MambaMixer(config)

    def forward(self, hidden: Tensor, state: LayerState) -> tuple[Tensor, LayerState]:
        out, state = self.mixer(self.norm(hidden), state)
        return hidden + out, state


class MambaBackbone(nn.Module):
    """Token embedding, a stack of Mamba blocks with residuals, and a final norm.

    ``forward(tokens, state)`` returns the hidden states (b, l, D) and the new state;
    the memory system reads features from both.
    """

    def __init__(self, config: MambaConfig) -> None:
        super().__init__()
        self.config = config
        self.embedding = nn.Embedding(config.vocab_size, config.d_model)
        self.layers = nn.ModuleList(_ResidualBlock(config) for _ in range(config.n_layer))
        self.norm_f = RMSNorm(config.d_model, config.norm_eps)
        self._init_weights()

    def _init_weights(self) -> None:
        nn.init.normal_(self.embedding.weight, std=0.02)
        for block in self.layers:
            # GPT-2 style rescaling of the residual-branch output (as mamba_ssm does).
            nn.init.kaiming_uniform_(block.mixer.out_proj.weight, a=math.sqrt(5))
            with torch.no_grad():
                block.mixer.out_proj.weight /= math.sqrt(self.config.n_layer)

    def init_state(self, batch: int, device: torch.device | str | None = None) -> MambaState:
        """The zero state for ``batch`` sequences."""
        if batch < 1:
            raise ValueError(f"init_state: batch must be >= 1, got {batch}")
        device = torch.device(device) if device is not None else self.embedding.weight.device
        return MambaState(tuple(block.mixer.init_state(batch, device) for block in self.layers))

    def _check_tokens(self, tokens: Tensor, state: MambaState | None) -> None:
        if tokens.dim() != 2:
            raise ValueError(f"tokens must have shape (batch, length), got {tuple(tokens.shape)}")
        if tokens.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
            raise ValueError(f"tokens must be an integer tensor, got {tokens.dtype}")
        if tokens.shape[1] < 1:
            raise ValueError("tokens must hold at least one step (length >= 1)")
        lo, hi = int(tokens.min()), int(tokens.max())
        if lo < 0 or hi >= self.config.vocab_size:
            raise ValueError(
                f"token ids must lie in [0, {self.config.vocab_size}); got values in [{lo}, {hi}]"
            )
        if state is not None:
            if len(state.layers) != len(self.layers):
                raise ValueError(
                    f"state has {len(state.layers)} layers, the model has {len(self.layers)}"
                )
            if state.batch_size != tokens.shape[0]:
                raise ValueError(
                    f"state is for batch {state.batch_size}, tokens have batch {tokens.shape[0]}"
                )

    def forward(
        self, tokens: Tensor, state: MambaState | None = None, input_offset: Tensor | None = None
    ) -> tuple[Tensor, MambaState]:
        """tokens: (b, l) ids -> hidden states (b, l, D) and the state after step l.

        ``input_offset`` (b, D) or (b, l, D), optional, is added to the token embeddings
        before the first block (how ``state`` integration feeds retrieved memory into the SSM).
        """
        self._check_tokens(tokens, state)
        if state is None:
            state = self.init_state(tokens.shape[0], tokens.device)
        hidden = self.embedding(tokens.long())
        if input_offset is not None:
            b, length, d = hidden.shape
            if input_offset.shape not in ((b, d), (b, length, d)):
                raise ValueError(
                    f"input_offset must have shape (b, D) = ({b}, {d}) or (b, l, D) = ({b}, {length}, {d}); "
                    f"got {tuple(input_offset.shape)}"
                )
            hidden = hidden + (input_offset[:, None, :] if input_offset.dim() == 2 else input_offset)
        new_layers = []
        for block, layer_state in zip(self.layers, state.layers):
            hidden, layer_state = block(hidden, layer_state)
            new_layers.append(layer_state)
        return self.norm_f(hidden), MambaState(tuple(new_layers))


class MambaLM(nn.Module):
    """:class:`MambaBackbone` plus a language-modelling head.

    Example (streaming and one-shot processing agree)::

        >>> import torch
        >>> from ahm.backbone import MambaConfig, MambaLM
        >>> lm = MambaLM(MambaConfig(vocab_size=16, d_model=16, n_layer=1))
        >>> tokens = torch.randint(0, 16, (2, 10))
        >>> full, _ = lm(tokens)
        >>> first, state = lm(tokens[:, :4])
        >>> rest, _ = lm(tokens[:, 4:], state)
        >>> torch.allclose(full, torch.cat([first, rest], 1), atol=1e-5)
        True
    """

    def __init__(self, config: MambaConfig) -> None:
        super().__init__()
        self.config = config
        self.backbone = MambaBackbone(config)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.backbone.embedding.weight

    def init_state(self, batch: int, device: torch.device | str | None = None) -> MambaState:
        return self.backbone.init_state(batch, device)

    def forward(
        self, tokens: Tensor, state: MambaState | None = None, input_offset: Tensor | None = None
    ) -> tuple[Tensor, MambaState]:
        """tokens: (b, l) -> logits (b, l, vocab_size) and the state after step l.

        ``input_offset``: see :meth:`MambaBackbone.forward`.
        """
        hidden, state = self.backbone(tokens, state, input_offset)
        return self.lm_head(hidden), state

    def step(self, tokens: Tensor, state: MambaState) -> tuple[Tensor, MambaState]:
        """One token per sequence: tokens (b,) -> logits (b, vocab_size), next state."""
        if tokens.dim() != 1:
            raise ValueError(f"step takes tokens of shape (batch,), got {tuple(tokens.shape)}")
        logits, state = self(tokens[:, None], state)
        return logits[:, 0], state
