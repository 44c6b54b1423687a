"""The backbone: a Mamba-style selective SSM with streaming state, and the hierarchical memory.

Owns (ARCHITECTURE.md): the SSM blocks and their explicit recurrent state; the
working memory, the compressed long-term memory and its codecs, the integration
of retrieved memory, and ``AHMModel``. Depends on :mod:`ahm.kernels` only;
nothing here knows about Gymnasium or RL.

Modules, one job each:

* :mod:`~ahm.backbone.config`: ``MambaConfig`` and the typed-dataclass-from-dict helper.
* :mod:`~ahm.backbone.errors`: the error families (``AHMError``, ``CheckpointError``, ...) and the memory check.
* :mod:`~ahm.backbone.mamba`: the selective-SSM blocks, ``MambaBackbone``, ``MambaLM`` and their streaming state.
* :mod:`~ahm.backbone.optim`: which parameters weight decay applies to (the optimizer groups of every trainer).
* :mod:`~ahm.backbone.language_modeling`: the LM losses and metrics (bits per byte).
* :mod:`~ahm.backbone.working_memory`: ``WorkingMemory``, K full-precision slots.
* :mod:`~ahm.backbone.long_term_memory`: ``LongTermMemory``, compressed entries searched by key.
* :mod:`~ahm.backbone.codecs`: the LTM's vector codecs (``none``, ``int8``, ``pq``, ``autoencoder``, ``hash``).
* :mod:`~ahm.backbone.memory_ops`: the contract between a policy and the memory: op codes, ``MemoryOps``,
  ``MemoryObservation``, ``OpMasks``, ``MemoryPolicy``, the default and null policies.
* :mod:`~ahm.backbone.hierarchical_memory`: ``HierarchicalMemory`` (both levels, driven by ``MemoryOps``),
  ``MemoryConfig``, ``MemoryReadout``.
* :mod:`~ahm.backbone.memory_fast`: the compiled no-grad path of a memory step (numba, loaded on first use).
* :mod:`~ahm.backbone.integration`: how retrieved memory enters the model (``readout`` / ``state``).
* :mod:`~ahm.backbone.ahm_model`: ``AHMConfig``, ``AHMModel`` and the features and state it passes along.
* :mod:`~ahm.backbone.checkpoint`: safe checkpoints: the bundle header (one place), the LM's and the model's files.
* :mod:`~ahm.backbone.memory_io`: saving and loading a ``HierarchicalMemory``.
* :mod:`~ahm.backbone.baselines`: the comparison models (Transformer, Longformer, BigBird, S4D, MoE-Mamba, Jamba,
  SMR, LMN, Mamba without memory) behind one streaming interface, built by name at a parameter budget.
"""

from .ahm_model import (
    AHMConfig,
    AHMModel,
    AHMState,
    BoundaryFeatures,
    ChunkFeatures,
    ChunkOutput,
    Controller,  # noqa: F401  (deprecated alias of MemoryPolicy, kept importable; not in __all__)
    MemoryStep,
)
from .codecs import CODECS, CodecOptions, VectorCodec, faiss_available, make_codec
from .config import MambaConfig
from .errors import AHMConfigError, AHMError, CheckpointError, NonFiniteError, ResourceError
from .hierarchical_memory import HierarchicalMemory, MemoryConfig, MemoryReadout
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
from .optim import mark_no_weight_decay, weight_decay_groups
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
    "save_memory", "load_memory", "mark_no_weight_decay", "weight_decay_groups",
    "AHMError", "AHMConfigError", "CheckpointError", "NonFiniteError", "ResourceError",
]
