"""Which optional kernel technologies can run where (shared by every kernel module)."""

from __future__ import annotations

import functools
import importlib.util
import os


@functools.cache
def _triton_installed() -> bool:
    # find_spec walks sys.path: once per process, not on every memory search.
    return importlib.util.find_spec("triton") is not None


def triton_usable(device_type: str) -> bool:
    """Triton runs on CUDA, and on CPU tensors only under ``TRITON_INTERPRET=1``."""
    if not _triton_installed():
        return False
    return device_type == "cuda" or (device_type == "cpu" and os.environ.get("TRITON_INTERPRET") == "1")
