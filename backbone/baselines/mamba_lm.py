"""``mamba``: the backbone without memory (:class:`~ahm.backbone.MambaLM`), at a parameter budget."""

from __future__ import annotations

from dataclasses import fields, replace
from typing import Any

from torch import nn

from ..config import MambaConfig
from ..errors import AHMConfigError
from ..mamba import MambaLM
from .base import fit_width, register

__all__ = ["build_mamba"]


@register("mamba", "Mamba (Gu & Dao, 2023): selective-SSM blocks, the AHM backbone with no external memory")
def build_mamba(vocab_size: int, budget: int, overrides: dict[str, Any]) -> nn.Module:
    known = {f.name for f in fields(MambaConfig)} - {"vocab_size"}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise AHMConfigError(f"mamba: unknown option(s) {unknown}; known: {sorted(known)}")
    try:
        base = replace(MambaConfig(vocab_size=vocab_size), **overrides)
    except (TypeError, ValueError) as err:
        raise AHMConfigError(f"mamba: {err}") from err
    if "d_model" in overrides:
        return MambaLM(base)
    return fit_width(lambda d: MambaLM(replace(base, d_model=d)), budget)
