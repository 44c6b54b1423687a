"""Which optional kernel technologies can run where (shared by every kernel module)."""

from __future__ import annotations

import importlib.util
import os


def triton_usable(device_type: str) -> bool:
    """Triton runs on CUDA, and on CPU tensors only under ``TRITON_INTERPRET=1``."""
    if importlib.util.find_spec("triton") is None:
        return False
    return device_type == "cuda" or (device_type == "cpu" and os.environ.get("TRITON_INTERPRET") == "1")
