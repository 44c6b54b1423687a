"""Compute kernels: the selective scan (and, later, fused memory retrieval).

Every kernel has a plain-PyTorch reference beside it (``backend="ref"``) and the
tests hold the fast paths to it. Nothing here knows about memory, Gymnasium or RL.
"""

from .selective_scan import (
    available_backends,
    select_backend,
    selective_scan,
    selective_scan_ref,
)

__all__ = ["available_backends", "select_backend", "selective_scan", "selective_scan_ref"]
