"""Helpers shared by the benchmark scripts: markdown tables and peak memory."""

from __future__ import annotations

import resource
import sys
from collections.abc import Sequence
from pathlib import Path

import torch


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub-markdown table, every cell rendered with ``str``."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far, in MiB.

    Linux: VmHWM from /proc/self/status, which starts afresh at exec; ru_maxrss does
    not (a child started by a large parent reports the parent's peak).
    """
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kib / 1024 if sys.platform != "darwin" else kib / 2**20


def adamw(model: torch.nn.Module, lr: float, weight_decay: float, decay_all: bool = False) -> torch.optim.AdamW:
    """AdamW as the Mamba benchmarks train: betas (0.9, 0.95), weight decay on matrices only (the reference
    recipe, ``ahm.backbone.optim``), or on every parameter with ``decay_all`` (this project's recipe before it)."""
    from ahm.backbone import weight_decay_groups

    groups = ([{"params": list(model.parameters()), "weight_decay": weight_decay}] if decay_all
              else weight_decay_groups(model.parameters(), weight_decay))
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95))
