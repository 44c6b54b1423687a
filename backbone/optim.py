"""Which parameters weight decay applies to: the optimizer groups every trainer of the project builds.

The reference Mamba recipe (``mamba_ssm``; Gu & Dao, 2023) decays weight matrices only: the SSM's
``A_log`` and ``D`` are marked ``_no_weight_decay``, and biases (``dt_proj.bias`` among them) and norm
weights are vectors. Decaying them all, as a plain ``AdamW(model.parameters(), weight_decay=0.1)``
does, pulls ``dt_proj.bias`` towards 0, i.e. every channel's step towards softplus(0) = 0.69, so the
state forgets within a few tokens, and ``A_log`` towards 0 (every A towards -1). S4D's reference code
likewise keeps its kernel parameters (``log_dt``, A) out of weight decay.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from torch import nn

__all__ = ["NO_WEIGHT_DECAY", "decays", "mark_no_weight_decay", "weight_decay_groups"]

NO_WEIGHT_DECAY = "_no_weight_decay"
"""The attribute that marks a parameter weight decay must leave alone (the name ``mamba_ssm`` uses)."""


def mark_no_weight_decay(*params: nn.Parameter) -> None:
    """Keep ``params`` out of weight decay, whatever their shape."""
    for p in params:
        setattr(p, NO_WEIGHT_DECAY, True)


def decays(param: nn.Parameter) -> bool:
    """Whether weight decay applies to ``param``: a matrix (or higher) that is not marked."""
    return param.ndim >= 2 and not getattr(param, NO_WEIGHT_DECAY, False)


def weight_decay_groups(params: Iterable[nn.Parameter], weight_decay: float, **options: Any) -> list[dict[str, Any]]:
    """``params`` as optimizer groups: the decayed ones at ``weight_decay``, the others at 0.

    ``options`` (a group's ``lr``, say) go to both groups; a group with no parameter is left out.
    """
    if weight_decay < 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
    decayed, kept = [], []
    for p in params:
        (decayed if decays(p) else kept).append(p)
    groups = [{"params": decayed, "weight_decay": weight_decay, **options},
              {"params": kept, "weight_decay": 0.0, **options}]
    return [g for g in groups if g["params"]]
