"""``smr``: Mamba with State Memory Replay before every SSM layer (Qi et al., 2024).

The paper: B. Qi, J. Gao, K. Zhang, D. Li, J. Liu, L. Wu, B. Zhou, "SMR: State Memory
Replay for Long Sequence Modeling", Findings of ACL 2024 (arXiv:2405.17534). Read through
the event-triggered-control lens, an SSM's hidden state diverges when the sampling points
of its input move away from those seen in training (the Non-Stable State problem); the
paper shows that adjusting the input sequence with *early memories* mitigates it
(Sampling Step Adaptation) and proposes SMR, a plug-and-play step before the SSM layer
that "utilizes learnable memories to adjust the current state with multi-step information".

What this module follows, and where it comes from:

* the abstract (arXiv, ACL Anthology): SMR is plug-and-play, sits in front of the SSM
  layer (S4, S5, S6 = Mamba, ...), uses *learnable* memories of *several earlier steps*
  to adjust the current input;
* the public OpenReview reviews of the paper's earlier, withdrawn version ("S4++"): SMR
  is "multiplying a convolution of the input sequence with the input", "a local
  convolution ... multiplied by the main inputs", "rescaling only the inputs u".

So each layer computes, per channel c (the glossary below)::

    u'_t = u_t * g(sum_{k=0}^{m-1} w_k u_{t-k} + b)        (b, l, D), causal, m taps

and feeds ``u'`` to an unchanged Mamba mixer (:class:`~ahm.backbone.mamba.MambaMixer`,
imported, with its own conv / scan state).

What is guessed (the equations of the paper's method section were not available to us):

* the squashing ``g``: we use ``g(a) = 2 sigmoid(a)`` (a gain in (0, 2)); the factor 2 makes
  zero replay weights the identity, so SMR with ``w = 0, b = 0`` *is* plain Mamba of the
  same weights (tested) and training starts from exactly Mamba (we initialise ``w, b`` to 0);
  with a plain ``sigmoid`` the same model is Mamba with ``in_proj`` halved;
* the convolution is depthwise (one kernel per channel, as H3/Hyena's short convolutions
  the reviewers compare it to) over ``m = replay_length`` steps including the current one;
* where it sits in a Mamba block: on the normalised block input, before ``in_proj``
  (the SSM layer's input ``u``); the residual stream is untouched.

Streaming state (:class:`SMRState`): the Mamba state of every layer plus the last
``m - 1`` normalised inputs of every layer (the replay memory), constant in the length.

Glossary: b batch, l length, D d_model, m replay_length (taps of the replay convolution).
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from ..config import MambaConfig
from ..errors import AHMConfigError
from ..mamba import MambaBackbone, MambaState
from .base import fit_width, register

__all__ = ["SMRConfig", "SMRState", "StateMemoryReplay", "SMRLM", "build_smr", "MAX_REPLAY_LENGTH"]

MAX_REPLAY_LENGTH = 256
"""Largest replay memory accepted: SMR is a *short* local memory (the paper's multi-step
information; the reviewers' "local convolution"); longer contexts are the SSM's job."""


@dataclass(frozen=True)
class SMRConfig:
    """Sizes of an SMR-Mamba language model. Defaults match :class:`~ahm.backbone.MambaConfig`'s."""

    vocab_size: int = 256
    """Number of token ids; inputs must lie in ``[0, vocab_size)``."""
    d_model: int = 64
    """Width D of the residual stream."""
    n_layer: int = 2
    """Number of SMR + Mamba blocks."""
    d_state: int = 16
    """SSM state size N per channel (Mamba's default)."""
    d_conv: int = 4
    """Kernel width of Mamba's own causal depthwise convolution."""
    expand: int = 2
    """Mamba's inner width factor E (``d_inner = expand * d_model``)."""
    replay_length: int = 4
    """m: steps the replay memory mixes (the current input and the m - 1 before it), 1..MAX_REPLAY_LENGTH."""
    scan_backend: str = "auto"
    """Selective-scan backend (see ``ahm.kernels.available_backends``)."""

    def __post_init__(self) -> None:
        for name in ("vocab_size", "d_model", "n_layer", "d_state", "d_conv", "expand", "replay_length"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise AHMConfigError(f"SMRConfig.{name} must be a positive int, got {value!r}")
        if self.replay_length > MAX_REPLAY_LENGTH:
            raise AHMConfigError(
                f"SMRConfig.replay_length must be at most {MAX_REPLAY_LENGTH} (a short local memory), "
                f"got {self.replay_length}; longer context is the SSM's job"
            )

    def mamba_config(self) -> MambaConfig:
        """The Mamba part of the model (the replay adds no field Mamba has)."""
        return MambaConfig(vocab_size=self.vocab_size, d_model=self.d_model, n_layer=self.n_layer,
                           d_state=self.d_state, d_conv=self.d_conv, expand=self.expand,
                           scan_backend=self.scan_backend)


class SMRState(NamedTuple):
    """Streaming state of :class:`SMRLM`."""

    mamba: MambaState
    """The Mamba state of every layer (conv inputs and SSM state)."""
    replay: tuple[Tensor, ...]
    """Per layer, (b, m - 1, D): the last m - 1 inputs of the replay convolution (oldest first)."""


class StateMemoryReplay(nn.Module):
    """u'_t = u_t * 2 sigmoid(sum_k w_k u_{t-k} + b): the input rescaled by a learnt causal memory (module doc)."""

    def __init__(self, d_model: int, replay_length: int) -> None:
        super().__init__()
        self.replay_length = replay_length
        # weight[:, k] multiplies u_{t - (m - 1) + k}: the last column is the current step.
        # Zero start: the gain is exactly 1, so the model starts as plain Mamba (module doc).
        self.weight = nn.Parameter(torch.zeros(d_model, replay_length))
        self.bias = nn.Parameter(torch.zeros(d_model))

    def init_state(self, batch: int, device: torch.device | None = None) -> Tensor:
        """(b, m - 1, D) zeros: no earlier inputs."""
        return torch.zeros(batch, self.replay_length - 1, self.weight.shape[0], device=device,
                           dtype=self.weight.dtype)

    def gain(self, u: Tensor, memory: Tensor) -> tuple[Tensor, Tensor]:
        """u (b, l, D), memory (b, m - 1, D) -> the gain 2 sigmoid(conv) (b, l, D) and the next memory."""
        length = u.shape[1]
        full = torch.cat([memory, u], dim=1)  # (b, m - 1 + l, D)
        # Causal depthwise convolution as m shifted multiply-adds (cheap both ways on CPU).
        mixed = self.bias + full[:, :length] * self.weight[:, 0]
        for k in range(1, self.replay_length):
            mixed = mixed + full[:, k : k + length] * self.weight[:, k]
        return 2.0 * torch.sigmoid(mixed), full[:, length:]

    def forward(self, u: Tensor, memory: Tensor) -> tuple[Tensor, Tensor]:
        """u (b, l, D), memory (b, m - 1, D) -> u' (b, l, D) and the memory after the last step."""
        gain, memory = self.gain(u, memory)
        return u * gain, memory


class SMRLM(nn.Module):
    """Mamba LM (:class:`~ahm.backbone.mamba.MambaBackbone`, reused) with a :class:`StateMemoryReplay` per block.

    Every block computes ``h + mixer(SMR(norm(h)))``; with zero replay weights it is the Mamba
    block ``h + mixer(norm(h))``. The parameters are MambaLM's (same names, ``backbone.*`` and
    ``lm_head``) plus ``replays.*``.
    """

    def __init__(self, config: SMRConfig) -> None:
        super().__init__()
        self.config = config
        self.backbone = MambaBackbone(config.mamba_config())
        self.replays = nn.ModuleList(StateMemoryReplay(config.d_model, config.replay_length)
                                     for _ in range(config.n_layer))
        # Tied with the embedding, as MambaLM's default.
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self.lm_head.weight = self.backbone.embedding.weight

    def init_state(self, batch: int, device: torch.device | str | None = None) -> SMRState:
        """The zero state for ``batch`` sequences."""
        mamba = self.backbone.init_state(batch, device)
        device = mamba.layers[0].ssm.device
        return SMRState(mamba, tuple(replay.init_state(batch, device) for replay in self.replays))

    def forward(self, tokens: Tensor, state: SMRState | None = None) -> tuple[Tensor, SMRState]:
        """tokens (b, l) int -> logits (b, l, vocab_size) and the state after step l."""
        # MambaBackbone's own token / state checks (shapes, id range, batch, layer count).
        self.backbone._check_tokens(tokens, None if state is None else state.mamba)
        if state is None:
            state = self.init_state(tokens.shape[0], tokens.device)
        if len(state.replay) != len(self.replays):
            raise ValueError(f"state has {len(state.replay)} replay memories, the model has {len(self.replays)}")
        hidden = self.backbone.embedding(tokens.long())  # (b, l, D)
        mamba_layers, memories = [], []
        for block, replay, layer_state, memory in zip(self.backbone.layers, self.replays,
                                                      state.mamba.layers, state.replay):
            u, memory = replay(block.norm(hidden), memory)
            out, layer_state = block.mixer(u, layer_state)
            hidden = hidden + out
            mamba_layers.append(layer_state)
            memories.append(memory)
        logits = self.lm_head(self.backbone.norm_f(hidden))
        return logits, SMRState(MambaState(tuple(mamba_layers)), tuple(memories))


@register("smr", "SMR (Qi et al., 2024): Mamba blocks whose input is rescaled by a learnt causal replay of past inputs")
def build_smr(vocab_size: int, budget: int, overrides: dict[str, Any]) -> nn.Module:
    known = {f.name for f in fields(SMRConfig)} - {"vocab_size"}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise AHMConfigError(f"smr: unknown option(s) {unknown}; known: {sorted(known)}")
    base = SMRConfig(vocab_size=vocab_size, **overrides)  # validates (AHMConfigError naming the field)
    if "d_model" in overrides:
        return SMRLM(base)
    return fit_width(lambda d: SMRLM(replace(base, d_model=d)), budget)
