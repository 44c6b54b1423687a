"""Typed configuration of the Mamba-style backbone."""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import asdict, dataclass
from typing import Any, TypeVar

T = TypeVar("T")


def dataclass_from_dict(cls: type[T], data: dict[str, Any]) -> T:
    """Build the config dataclass ``cls`` from a dict (e.g. a checkpoint's JSON).

    Unknown keys are an error that lists the known ones; a field whose type is itself a
    dataclass and whose value is a dict is built the same way, so nested configs round-trip
    through :func:`dataclasses.asdict`.
    """
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown fields {unknown}; known fields are {sorted(known)}")
    hints = typing.get_type_hints(cls)
    data = {
        name: dataclass_from_dict(hints[name], value)
        if isinstance(value, dict) and dataclasses.is_dataclass(hints.get(name))
        else value
        for name, value in data.items()
    }
    return cls(**data)


@dataclass(frozen=True)
class MambaConfig:
    """Sizes and initialisation of a Mamba language model (Gu & Dao, 2023, Sec. 3.4).

    Defaults are the small model of the paper's synthetic tasks (2 layers, width 64)
    over a byte vocabulary.
    """

    vocab_size: int = 256
    """Number of token ids; inputs must lie in ``[0, vocab_size)``."""
    d_model: int = 64
    """Width D of the residual stream."""
    n_layer: int = 2
    """Number of Mamba blocks."""
    d_state: int = 16
    """SSM state size N per channel (the paper's default, Sec. 4)."""
    d_conv: int = 4
    """Kernel width of the causal depthwise convolution (the paper's default)."""
    expand: int = 2
    """Inner width E: each block works at ``d_inner = expand * d_model`` channels."""
    dt_rank: int | None = None
    """Rank R of the delta projection; None means ``ceil(d_model / 16)`` as in the paper."""
    dt_min: float = 1e-3
    """Lower end of the delta initialisation range (log-uniform, paper Sec. 3.6)."""
    dt_max: float = 1e-1
    """Upper end of the delta initialisation range."""
    dt_init_floor: float = 1e-4
    """Smallest delta the initialisation produces."""
    conv_bias: bool = True
    """Bias in the causal convolution."""
    bias: bool = False
    """Bias in the input / output projections."""
    norm_eps: float = 1e-5
    """Epsilon of RMSNorm."""
    tie_embeddings: bool = True
    """Share the token embedding with the LM head."""
    scan_backend: str = "auto"
    """Selective-scan backend (see ``ahm.kernels.available_backends``)."""

    def __post_init__(self) -> None:
        positive = ("vocab_size", "d_model", "n_layer", "d_state", "d_conv", "expand")
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"MambaConfig.{name} must be a positive int, got {value!r}")
        if self.dt_rank is not None and (not isinstance(self.dt_rank, int) or self.dt_rank < 1):
            raise ValueError(f"MambaConfig.dt_rank must be None or a positive int, got {self.dt_rank!r}")
        if not 0 < self.dt_min <= self.dt_max:
            raise ValueError(
                f"MambaConfig needs 0 < dt_min <= dt_max, got dt_min={self.dt_min}, dt_max={self.dt_max}"
            )

    @property
    def d_inner(self) -> int:
        """Channels inside a block: ``expand * d_model``."""
        return self.expand * self.d_model

    @property
    def resolved_dt_rank(self) -> int:
        """``dt_rank``, with None resolved to ``ceil(d_model / 16)``."""
        return self.dt_rank if self.dt_rank is not None else math.ceil(self.d_model / 16)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MambaConfig:
        """Build from a dict (e.g. a checkpoint's JSON); unknown keys are an error."""
        return dataclass_from_dict(cls, data)


_BINARY_SUFFIXES = {"K": 2**10, "M": 2**20, "G": 2**30}
"""Suffixes an int may carry on the command line (token counts are powers of two in this field: 4K = 4096)."""


def parse_int(text: str) -> int:
    """An int, with an optional binary suffix: ``"4096"``, ``"4K"`` (4096), ``"1M"`` (1048576)."""
    s = text.strip()
    scale = _BINARY_SUFFIXES.get(s[-1:].upper(), 1)
    digits = s[:-1] if scale > 1 else s
    try:
        return int(digits) * scale
    except ValueError as err:
        raise ValueError(f"not an int (an optional K, M or G suffix allowed): {text!r}") from err
