"""The backbone: a Mamba-style selective SSM with streaming state, and the hierarchical memory.

Owns (ARCHITECTURE.md): the SSM blocks and their explicit recurrent state; the
working memory, the compressed long-term memory and its codecs, the integration
of retrieved memory, and ``AHMModel``. Depends on :mod:`ahm.kernels` only;
nothing here knows about Gymnasium or RL.
"""

from .ahm_model import (
    AHMConfig,
    AHMModel,
    AHMState,
    BoundaryFeatures,
    ChunkFeatures,
    ChunkOutput,
    Controller,  # noqa: F401  (deprecated alias of MemoryPolicy, kept importable; not in __all__)
    HierarchicalMemory,
    MemoryConfig,
    MemoryReadout,
    MemoryStep,
)
from .codecs import CODECS, CodecOptions, VectorCodec, faiss_available, make_codec
from .config import MambaConfig
from .long_term_memory import LongTermMemory, LTMConfig, LTMHits, LTMRead, LTMWrite
from .mamba import LayerState, MambaBackbone, MambaLM, MambaMixer, MambaState, RMSNorm
from .memory_io import load_memory, save_memory
from .memory_ops import (
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
from .working_memory import WMEntry, WMRead, WorkingMemory

__all__ = [
    "LayerState", "MambaBackbone", "MambaConfig", "MambaLM", "MambaMixer", "MambaState", "RMSNorm",
    "WorkingMemory", "WMEntry", "WMRead",
    "LongTermMemory", "LTMConfig", "LTMHits", "LTMRead", "LTMWrite",
    "CODECS", "CodecOptions", "VectorCodec", "faiss_available", "make_codec",
    "AHMConfig", "AHMModel", "AHMState", "BoundaryFeatures", "ChunkFeatures", "ChunkOutput", "MemoryStep",
    "MemoryPolicy", "DefaultController", "NullController",
    "HierarchicalMemory", "MemoryConfig", "MemoryObservation", "MemoryOps", "MemoryReadout", "OpMasks",
    "RETRIEVE_NONE", "RETRIEVE_WM", "RETRIEVE_LTM", "RETRIEVE_BOTH",
    "LTM_FORGET_NONE", "LTM_FORGET_OLDEST", "LTM_FORGET_LEAST_USED", "LTM_FORGET_NEAREST",
    "save_memory", "load_memory",
]
