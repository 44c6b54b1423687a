"""The project's error families, and the checks every layer shares before it trusts a size or a tensor.

Each family subclasses the built-in exception callers caught before it existed (``ValueError``,
``FloatingPointError``), so ``except ValueError`` keeps working; catch :class:`AHMError` to catch them all.
Every message says what was wrong (the file, the field, the value) and what to do.

This module lives in the lowest layer that raises them (``backbone``), so the environments, the agents and the
training loop raise the same types; ``ahm.errors`` re-exports it.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable

import torch

__all__ = ["AHMError", "AHMConfigError", "CheckpointError", "NonFiniteError", "ResourceError",
           "available_memory_bytes", "require_memory", "first_non_finite", "format_bytes"]


class AHMError(Exception):
    """Base of every error this project raises on purpose."""


class AHMConfigError(AHMError, ValueError):
    """A setting (a command-line option, a config field, a task keyword) is invalid; the message names it."""


class CheckpointError(AHMError, ValueError):
    """A checkpoint file is corrupted, does not fit the model, or holds non-finite weights; names the file."""


class NonFiniteError(AHMError, FloatingPointError):
    """A loss, a gradient or a feature became NaN or infinite; says where and the likely cause."""


class ResourceError(AHMError, ValueError):
    """A size would need more memory than the machine has; says what it would need and what there is."""


def format_bytes(n: float) -> str:
    """``1536`` -> ``'1.5 KiB'``: a byte count for a message."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} PiB"  # unreachable


def available_memory_bytes() -> int:
    """The memory this process may still allocate: the machine's available RAM (``/proc/meminfo``'s
    MemAvailable on Linux), else its physical RAM; a cgroup limit below it wins."""
    available = 0
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    available = int(line.split()[1]) * 1024
                    break
    except OSError:
        pass
    if not available:
        try:
            available = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (ValueError, OSError, AttributeError):
            available = 2**40  # unknown: no machine limit, the sane bounds still apply
    try:
        with open("/sys/fs/cgroup/memory.max") as f:
            limit = f.read().strip()
        if limit.isdigit():
            available = min(available, int(limit))
    except OSError:
        pass
    return available


def require_memory(nbytes: float, what: str, hint: str, available: int | None = None) -> None:
    """Raise :class:`ResourceError` if ``nbytes`` (an estimate, made before allocating) exceeds the memory
    available; ``what`` names the thing being built (``"--batch 1000000000"``), ``hint`` what to do."""
    available = available_memory_bytes() if available is None else available
    if not math.isfinite(nbytes) or nbytes > available:
        raise ResourceError(f"{what} would need about {format_bytes(nbytes)} of memory; this machine has "
                            f"{format_bytes(available)} available. {hint}")


def first_non_finite(tensors: Iterable[tuple[str, torch.Tensor]]) -> tuple[str, int, int] | None:
    """``(name, non-finite count, numel)`` of the first floating tensor holding NaN or inf, else None."""
    for name, tensor in tensors:
        if tensor.is_floating_point() or tensor.is_complex():
            bad = int((~torch.isfinite(tensor)).sum())
            if bad:
                return name, bad, tensor.numel()
    return None
