"""Compute kernels: the selective scan and memory retrieval.

Every kernel has a plain-PyTorch reference beside it (``backend="ref"``) and the
tests hold the fast paths to it. Nothing here knows about memory, Gymnasium or RL.
"""

from .retrieval import (
    dequantize_int8,
    quantize_int8,
    retrieval_backends,
    select_retrieval_backend,
    topk_similarity,
    topk_similarity_int8,
)
from .selective_scan import (
    available_backends,
    select_backend,
    selective_scan,
    selective_scan_ref,
)

__all__ = [
    "available_backends",
    "dequantize_int8",
    "quantize_int8",
    "retrieval_backends",
    "select_backend",
    "select_retrieval_backend",
    "selective_scan",
    "selective_scan_ref",
    "topk_similarity",
    "topk_similarity_int8",
]
