"""``s4d``: the diagonal state space model S4D, a linear time-invariant SSM language model.

Gu, Gupta, Goel & Ré (2022), "On the parameterization and initialization of diagonal state
space models". Each of the H channels of a layer runs its own SSM with N/2 complex diagonal
modes (the other N/2 are their conjugates, so a real input gives a real output):

    s_t = dA * s_{t-1} + dB * u_t          dA = exp(dt A),  dB = (exp(dt A) - 1) / A * B   (ZOH)
    y_t = 2 Re(sum_n C_n s_t,n) + D u_t

Glossary: b batch, l length, H d_model (channels), M = N/2 complex modes, s the (b, H, M)
complex state. A_n = -exp(log_A_real) + i A_imag starts at S4D-Lin (A_n = -1/2 + i pi n) or
S4D-Inv (A_n = -1/2 + i N/pi (N/(2n+1) - 1)); B starts at 1, C ~ complex normal, D ~ normal,
log dt ~ uniform in [log dt_min, log dt_max] (the paper's Sec. 4 defaults, dt in [0.001, 0.1]).

Two ways to run a layer, equal up to rounding (the tests hold them together in float64):

* ``kernel`` (training, one call): the convolution kernel K_k = 2 Re(sum_n C_n dB_n dA_n^k),
  k < l, from the Vandermonde matrix of dA (:func:`vandermonde`), applied by FFT convolution; the carried-in state adds
  2 Re(sum_n C_n dA_n^(t+1) s_n) at step t, and the state after the chunk is the closed form
  dA^l s + sum_k dA^(l-1-k) dB u_k.
* ``recurrence`` (:func:`s4d_recurrence_ref`): the loop above, one step at a time.

A block is pre-norm (RMSNorm), the S4D layer, GELU, an output linear H -> 2H with a GLU
(the S4 repository's default output), and a residual. The streaming state is the complex
(b, H, M) SSM state of each layer, nothing that grows with the sequence.

Simplified against the paper's code: no dropout, no separate learning rate or weight-decay
exemption for A, B and dt (one optimiser setting for all), no bidirectional variant; B and C are
both kept (the reference code may fold B into C).
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
from ..optim import mark_no_weight_decay
from .base import fit_width, register

__all__ = ["S4DConfig", "S4DState", "S4DLayer", "S4DLM", "vandermonde", "s4d_recurrence_ref", "build_s4d"]

_INITS = ("lin", "inv")
_MODES = ("kernel", "recurrence")


@dataclass(frozen=True)
class S4DConfig:
    """Sizes and initialisation of an S4D language model (Gu et al., 2022)."""

    vocab_size: int = 256
    """Number of token ids; inputs must lie in ``[0, vocab_size)``."""
    d_model: int = 64
    """Width H of the residual stream: the number of independent SSM channels per layer."""
    n_layer: int = 4
    """Number of S4D blocks."""
    d_state: int = 64
    """State size N per channel (the paper's default 64); even: N/2 complex modes plus their conjugates."""
    init: str = "lin"
    """Initialisation of A: ``"lin"`` (S4D-Lin, A_n = -1/2 + i pi n) or ``"inv"`` (S4D-Inv)."""
    dt_min: float = 1e-3
    """Lower end of the log-uniform initialisation of the step size dt (the paper's 0.001)."""
    dt_max: float = 1e-1
    """Upper end of the dt initialisation range (the paper's 0.1)."""
    glu: bool = True
    """Output linear H -> 2H followed by a GLU (the S4 default); False: a plain H -> H linear."""
    mode: str = "kernel"
    """How a call computes the SSM: ``"kernel"`` (FFT convolution, for training) or ``"recurrence"`` (a loop)."""
    norm_eps: float = 1e-5
    """Epsilon of RMSNorm."""
    tie_embeddings: bool = True
    """Share the token embedding with the LM head."""

    def __post_init__(self) -> None:
        for name in ("vocab_size", "d_model", "n_layer", "d_state"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise AHMConfigError(f"S4DConfig.{name} must be a positive int, got {value!r}")
        if self.d_state % 2:
            raise AHMConfigError(
                f"S4DConfig.d_state must be even (N/2 complex modes and their conjugates), got {self.d_state}"
            )
        if self.init not in _INITS:
            raise AHMConfigError(f"S4DConfig.init must be one of {_INITS}, got {self.init!r}")
        if self.mode not in _MODES:
            raise AHMConfigError(f"S4DConfig.mode must be one of {_MODES}, got {self.mode!r}")
        if not 0 < self.dt_min <= self.dt_max:
            raise AHMConfigError(
                f"S4DConfig needs 0 < dt_min <= dt_max, got dt_min={self.dt_min}, dt_max={self.dt_max}"
            )


class S4DState(NamedTuple):
    """Streaming state of an :class:`S4DLM`: one complex (b, H, N/2) SSM state per layer."""

    layers: tuple[Tensor, ...]


def vandermonde(dtA: Tensor, length: int) -> Tensor:
    """dA^k = exp(k dtA) for k < length: dtA (H, M) complex -> (H, M, length).

    Computed from the exponent, not by repeated products, so it stays accurate for long chunks, and
    as ``exp(re) (cos(im) + i sin(im))`` in real arithmetic: PyTorch's complex ``exp`` is not
    vectorised on CPU (6x slower here, and most of a streamed chunk's time).
    """
    steps = torch.arange(length, device=dtA.device, dtype=dtA.real.dtype)
    angle = dtA.imag[..., None] * steps
    magnitude = torch.exp(dtA.real[..., None] * steps)
    return torch.complex(magnitude * torch.cos(angle), magnitude * torch.sin(angle))


def s4d_recurrence_ref(u: Tensor, state: Tensor, dA: Tensor, dB: Tensor, C: Tensor, D: Tensor) -> tuple[Tensor, Tensor]:
    """The S4D recurrence, step by step: u (b, H, l) real, state (b, H, M) complex -> y (b, H, l), state after.

    s_t = dA s_{t-1} + dB u_t,  y_t = 2 Re(sum_n C_n s_t,n) + D u_t. The reference the FFT path is held to.
    """
    ys = []
    for t in range(u.shape[-1]):
        state = dA * state + dB * u[:, :, t, None]
        ys.append(2 * torch.einsum("hm,bhm->bh", C, state).real + D * u[:, :, t])
    return torch.stack(ys, -1), state


def _fft_causal_conv(u: Tensor, kernel: Tensor) -> Tensor:
    """y_t = sum_{k <= t} kernel_k u_{t-k}: u (b, H, l), kernel (H, l) -> (b, H, l), by FFT (zero-padded to 2l)."""
    length = u.shape[-1]
    n = 2 * length
    y = torch.fft.irfft(torch.fft.rfft(u, n=n) * torch.fft.rfft(kernel, n=n), n=n)
    return y[..., :length]


class S4DLayer(nn.Module):
    """One S4D layer: H channels, each an SSM with N/2 complex diagonal modes (module doc)."""

    def __init__(self, config: S4DConfig) -> None:
        super().__init__()
        self.config = config
        h, m = config.d_model, config.d_state // 2
        log_dt = torch.rand(h) * (math.log(config.dt_max) - math.log(config.dt_min)) + math.log(config.dt_min)
        self.log_dt = nn.Parameter(log_dt)
        # Re A = -exp(log_A_real) stays negative (a stable SSM) whatever the optimiser does.
        self.log_A_real = nn.Parameter(torch.full((h, m), math.log(0.5)))
        n = torch.arange(m, dtype=torch.float32)
        if config.init == "lin":
            imag = math.pi * n  # S4D-Lin (paper Sec. 4.1)
        else:
            big_n = config.d_state
            imag = big_n / math.pi * (big_n / (2 * n + 1) - 1)  # S4D-Inv (paper Sec. 4.1)
        self.A_imag = nn.Parameter(imag.repeat(h, 1))
        # Complex B and C are stored as (real, imag) pairs so parameter counts and optimisers see real numbers.
        self.B = nn.Parameter(torch.stack([torch.ones(h, m), torch.zeros(h, m)], -1))  # B = 1
        self.C = nn.Parameter(torch.randn(h, m, 2) * math.sqrt(0.5))  # C ~ complex normal, variance 1
        self.D = nn.Parameter(torch.randn(h))
        # The kernel's parameters stay out of weight decay, as in the S4D reference code (backbone/optim.py).
        mark_no_weight_decay(self.log_dt, self.log_A_real, self.A_imag)

    def init_state(self, batch: int, device: torch.device | str | None = None) -> Tensor:
        """The zero SSM state (b, H, N/2), complex (complex128 for a float64 layer)."""
        dtype = torch.complex128 if self.D.dtype == torch.float64 else torch.complex64
        return torch.zeros(batch, self.config.d_model, self.config.d_state // 2, device=device, dtype=dtype)

    def discretize(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """dt A, dA = exp(dt A), dB = (dA - 1) / A * B (zero-order hold), C: each (H, N/2) complex."""
        A = torch.complex(-torch.exp(self.log_A_real), self.A_imag)
        dtA = torch.exp(self.log_dt)[:, None] * A
        dA = torch.exp(dtA)
        dB = (dA - 1) / A * torch.view_as_complex(self.B)
        return dtA, dA, dB, torch.view_as_complex(self.C)

    def forward(self, u: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
        """u (b, H, l) real, state (b, H, N/2) complex -> y (b, H, l), the state after the last step."""
        dtA, dA, dB, C = self.discretize()
        if self.config.mode == "recurrence":
            return s4d_recurrence_ref(u, state, dA, dB, C, self.D)
        length = u.shape[-1]
        powers = vandermonde(dtA, length)  # (H, M, l): dA^k
        # The convolution kernel K_k = 2 Re(sum_n C_n dB_n dA_n^k) (the factor 2 and Re: the conjugate modes).
        kernel = 2 * torch.einsum("hm,hml->hl", C * dB, powers).real
        y = _fft_causal_conv(u, kernel) + self.D[:, None] * u
        # The carried-in state s reaches step t as dA^(t+1) s.
        y = y + 2 * torch.einsum("hm,bhm,hml->bhl", C * dA, state, powers).real
        # Closed form of the last state: dA^l s + sum_k dA^(l-1-k) dB u_k.
        inputs = torch.einsum("hml,bhl->bhm", powers.flip(-1), u.to(powers.dtype))
        last = torch.exp(dtA * length) * state + dB * inputs
        return y, last


class _S4DBlock(nn.Module):
    """Pre-norm, S4D layer, GELU, output linear (GLU), residual."""

    def __init__(self, config: S4DConfig) -> None:
        super().__init__()
        self.norm = RMSNorm(config.d_model, config.norm_eps)
        self.ssm = S4DLayer(config)
        width = 2 * config.d_model if config.glu else config.d_model
        self.out_proj = nn.Linear(config.d_model, width)
        self.glu = config.glu

    def forward(self, hidden: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
        """hidden (b, l, H) -> (b, l, H), the layer's state after."""
        y, state = self.ssm(self.norm(hidden).transpose(1, 2), state)  # (b, H, l)
        out = self.out_proj(F.gelu(y.transpose(1, 2)))
        if self.glu:
            out = F.glu(out, dim=-1)
        return hidden + out, state


def _check_tokens(tokens: Tensor, vocab_size: int) -> None:
    if tokens.dim() != 2 or tokens.shape[1] < 1:
        raise ValueError(f"tokens must have shape (batch, length >= 1), got {tuple(tokens.shape)}")
    if tokens.is_floating_point() or tokens.is_complex():
        raise ValueError(f"tokens must be an integer tensor, got {tokens.dtype}")
    lo, hi = int(tokens.min()), int(tokens.max())
    if lo < 0 or hi >= vocab_size:
        raise ValueError(f"token ids must lie in [0, {vocab_size}); got values in [{lo}, {hi}]")


class S4DLM(nn.Module):
    """Token embedding, S4D blocks, final norm and an LM head, with explicit streaming state.

    Example (one call and chunks agree)::

        >>> import torch
        >>> lm = S4DLM(S4DConfig(vocab_size=16, d_model=8, n_layer=2, d_state=4))
        >>> tokens = torch.randint(0, 16, (2, 10))
        >>> full, _ = lm(tokens)
        >>> first, state = lm(tokens[:, :4])
        >>> rest, _ = lm(tokens[:, 4:], state)
        >>> torch.allclose(full, torch.cat([first, rest], 1), atol=1e-5)
        True
    """

    def __init__(self, config: S4DConfig) -> None:
        super().__init__()
        self.config = config
        self.embedding = nn.Embedding(config.vocab_size, config.d_model)
        nn.init.normal_(self.embedding.weight, std=0.02)
        self.layers = nn.ModuleList(_S4DBlock(config) for _ in range(config.n_layer))
        self.norm_f = RMSNorm(config.d_model, config.norm_eps)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.embedding.weight

    def init_state(self, batch: int, device: torch.device | str | None = None) -> S4DState:
        """The zero state for ``batch`` sequences: a complex (b, H, N/2) tensor per layer."""
        if batch < 1:
            raise ValueError(f"init_state: batch must be >= 1, got {batch}")
        device = torch.device(device) if device is not None else self.embedding.weight.device
        return S4DState(tuple(block.ssm.init_state(batch, device) for block in self.layers))

    def forward(self, tokens: Tensor, state: S4DState | None = None) -> tuple[Tensor, S4DState]:
        """tokens (b, l) -> logits (b, l, vocab_size) and the state after step l."""
        _check_tokens(tokens, self.config.vocab_size)
        if state is None:
            state = self.init_state(tokens.shape[0], tokens.device)
        if len(state.layers) != len(self.layers) or state.layers[0].shape[0] != tokens.shape[0]:
            raise ValueError(f"state does not fit: {len(state.layers)} layers of batch {state.layers[0].shape[0]} "
                             f"for a model of {len(self.layers)} layers and tokens of batch {tokens.shape[0]}")
        hidden = self.embedding(tokens.long())
        new_layers = []
        for block, layer_state in zip(self.layers, state.layers):
            hidden, layer_state = block(hidden, layer_state)
            new_layers.append(layer_state)
        return self.lm_head(self.norm_f(hidden)), S4DState(tuple(new_layers))


@register("s4d", "S4D (Gu et al., 2022): diagonal linear time-invariant SSM blocks, FFT kernel for training")
def build_s4d(vocab_size: int, budget: int, overrides: dict[str, Any]) -> nn.Module:
    known = {f.name for f in fields(S4DConfig)} - {"vocab_size"}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise AHMConfigError(f"s4d: unknown option(s) {unknown}; known: {sorted(known)}")
    try:
        base = S4DConfig(vocab_size=vocab_size, **overrides)
    except TypeError as err:
        raise AHMConfigError(f"s4d: {err}") from err
    if "d_model" in overrides:
        return S4DLM(base)
    return fit_width(lambda d: S4DLM(replace(base, d_model=d)), budget)
