"""The backbone: a Mamba-style selective SSM with streaming state.

Owns (ARCHITECTURE.md): the SSM blocks and their explicit recurrent state, and,
with the hierarchical-memory issue, the working / long-term memory, the
integration of retrieved memory, ``AHMModel`` and the baseline sequence models.
Depends on :mod:`ahm.kernels` only; nothing here knows about Gymnasium or RL.
"""

from .config import MambaConfig
from .mamba import LayerState, MambaBackbone, MambaLM, MambaMixer, MambaState, RMSNorm

__all__ = ["LayerState", "MambaBackbone", "MambaConfig", "MambaLM", "MambaMixer", "MambaState", "RMSNorm"]
