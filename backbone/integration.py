"""The integration of retrieved memory into the model (proposal Sec. 2.1, item 5).

Glossary: b sequences, D d_model, dv value dim; r = [m_wm, m_ltm] (b, 2 dv) the memory retrieved at a chunk
boundary (:meth:`~ahm.backbone.hierarchical_memory.MemoryReadout.vector`).

Two modes (:attr:`AHMConfig.integration <ahm.backbone.ahm_model.AHMConfig.integration>`):

* ``readout`` (:class:`ReadoutIntegration`): ``W_r r`` is added to every hidden state of the next chunk before
  the LM head; the backbone never sees memory, so its per-chunk features can be cached.
* ``state`` (:class:`StateIntegration`): ``sigmoid(W_g r + b_g) * W_s r`` offsets the next chunk's token
  embeddings, the SSM input ("integrated back into the main SSM computation").

``W_r`` and ``W_s`` start at zero, so an untrained AHM model is exactly its backbone LM. How the two levels
enter (:data:`LEVEL_READOUTS`, :attr:`AHMConfig.level_readout <ahm.backbone.ahm_model.AHMConfig.level_readout>`):
``shared`` projects ``m_wm + m_ltm`` with one matrix, ``separate`` projects ``[m_wm; m_ltm]``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["INTEGRATIONS", "LEVEL_READOUTS", "ReadoutIntegration", "StateIntegration", "make_integration"]

INTEGRATIONS = ("readout", "state")
"""Values of ``AHMConfig.integration``: where retrieved memory enters the model."""
LEVEL_READOUTS = ("shared", "separate")
"""Values of ``AHMConfig.level_readout``: how the reads of the two levels enter the integration."""


def _levels(retrieved: Tensor, shared: bool) -> Tensor:
    """retrieved (b, 2 dv) = [m_wm, m_ltm] -> what the integration projects: m_wm + m_ltm (b, dv) if ``shared``."""
    if not shared:
        return retrieved
    m_wm, m_ltm = retrieved.chunk(2, dim=-1)
    return m_wm + m_ltm


class ReadoutIntegration(nn.Module):
    """``readout``: hidden + W_r r, with W_r zero at init (r: the levels as :attr:`AHMConfig.level_readout` says)."""

    def __init__(self, value_dim: int, d_model: int, shared: bool) -> None:
        super().__init__()
        self.shared = shared
        self.proj = nn.Linear(value_dim if shared else 2 * value_dim, d_model, bias=False)
        nn.init.zeros_(self.proj.weight)

    def forward(self, retrieved: Tensor) -> Tensor:
        """retrieved (b, 2 dv) -> (b, D), added to every hidden state of the next chunk."""
        return self.proj(_levels(retrieved, self.shared))


class StateIntegration(nn.Module):
    """``state``: input offset sigmoid(W_g r + b_g) * W_s r, with W_s zero at init."""

    def __init__(self, value_dim: int, d_model: int, shared: bool) -> None:
        super().__init__()
        self.shared = shared
        width = value_dim if shared else 2 * value_dim
        self.gate = nn.Linear(width, d_model)
        self.proj = nn.Linear(width, d_model, bias=False)
        nn.init.zeros_(self.proj.weight)

    def forward(self, retrieved: Tensor) -> Tensor:
        """retrieved (b, 2 dv) -> input offset (b, D) for the next chunk's embeddings."""
        r = _levels(retrieved, self.shared)
        return torch.sigmoid(self.gate(r)) * self.proj(r)


def make_integration(integration: str, value_dim: int, d_model: int, level_readout: str) -> nn.Module:
    """The integration module of ``integration`` (:data:`INTEGRATIONS`): maps r (b, 2 dv) to (b, D)."""
    if integration not in INTEGRATIONS:
        raise ValueError(f"make_integration: integration must be one of {INTEGRATIONS}, got {integration!r}")
    if level_readout not in LEVEL_READOUTS:
        raise ValueError(f"make_integration: level_readout must be one of {LEVEL_READOUTS}, got {level_readout!r}")
    module = ReadoutIntegration if integration == "readout" else StateIntegration
    return module(value_dim, d_model, level_readout == "shared")
