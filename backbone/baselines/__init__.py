"""The comparison models of the proposal (section 2.4), behind one streaming interface (:mod:`.base`).

Every model is a causal LM with explicit state: ``init_state(batch)`` and
``model(tokens, state) -> (logits, state)``, chunks of any size giving the outputs of
one call. Build one by name with :func:`build_model` (``0.1M`` or ``1M`` parameters).
"""

from . import (
    attention,  # noqa: F401  (registers "transformer", "longformer", "bigbird")
    hybrid,  # noqa: F401  (registers "moe_mamba" and "jamba")
    lmn,  # noqa: F401  (registers "lmn")
    mamba_lm,  # noqa: F401  (registers "mamba")
    s4d,  # noqa: F401  (registers "s4d")
    smr,  # noqa: F401  (registers "smr")
)
from .base import (
    MODELS,
    SIZES,
    ModelSpec,
    SequenceModel,
    build_model,
    count_parameters,
    detach_state,
    fit_width,
    model_names,
    register,
    state_nbytes,
)

__all__ = ["MODELS", "SIZES", "ModelSpec", "SequenceModel", "build_model", "count_parameters", "detach_state",
           "fit_width", "model_names", "register", "state_nbytes"]
