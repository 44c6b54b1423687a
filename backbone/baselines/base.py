"""The contract every comparison model keeps: a causal sequence model with explicit streaming state.

A model maps tokens (b, l) and a state to next-token logits (b, l, V) and the state
after the last token. Chunks of any size give the same outputs as one call (each
model's tests check it), so the LM evaluation (bits per byte), the task evaluation
(the answer at a query from the model's own logits) and ``train_lm.py --model NAME``
run every model the same way. :class:`~ahm.backbone.MambaLM` already has this
interface and is registered as ``mamba``.

A state is any nest of tensors in tuples, lists, dicts and NamedTuples:
:func:`detach_state` cuts it from the graph between truncated-backpropagation
windows, :func:`state_nbytes` measures it (constant in the sequence length for
every model here; an attention model's state is bounded by its window and globals).

Models register themselves with :func:`register`; :func:`build_model` makes one
by name at a parameter budget (``0.1M`` or ``1M``, :data:`SIZES`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor, nn
from torch.utils import _pytree

from ..errors import AHMConfigError

__all__ = ["SequenceModel", "ModelSpec", "SIZES", "MODELS", "register", "build_model", "model_names",
           "detach_state", "state_nbytes", "count_parameters", "fit_width"]

SIZES: dict[str, int] = {"0.1M": 100_000, "1M": 1_000_000}
"""The parameter budgets of the comparison (embeddings included), by name."""


@runtime_checkable
class SequenceModel(Protocol):
    """A causal LM with explicit streaming state (module doc)."""

    def init_state(self, batch: int, device: torch.device | str | None = None) -> Any:
        """The state before the first token, for ``batch`` sequences."""

    def __call__(self, tokens: Tensor, state: Any = None) -> tuple[Tensor, Any]:
        """tokens (b, l) int64 and a state (None: :meth:`init_state`) -> logits (b, l, V), the state after."""


@dataclass(frozen=True)
class ModelSpec:
    """How to build one registered model."""

    name: str
    summary: str
    """One line: what the model is and where it comes from."""
    build: Callable[[int, int, dict[str, Any]], nn.Module]
    """(vocab_size, parameter budget, overrides) -> the model; raises AHMConfigError for a config it cannot take."""


MODELS: dict[str, ModelSpec] = {}
"""Registered models by name (filled by the modules of :mod:`ahm.backbone.baselines`)."""


def register(name: str, summary: str) -> Callable[[Callable[[int, int, dict[str, Any]], nn.Module]],
                                                  Callable[[int, int, dict[str, Any]], nn.Module]]:
    """Decorator: register a builder ``(vocab_size, budget, overrides) -> model`` under ``name``."""

    def wrap(build: Callable[[int, int, dict[str, Any]], nn.Module]) -> Callable[[int, int, dict[str, Any]], nn.Module]:
        if name in MODELS:
            raise ValueError(f"a model named {name!r} is already registered")
        MODELS[name] = ModelSpec(name, summary, build)
        return build

    return wrap


def model_names() -> list[str]:
    """The registered names, sorted."""
    return sorted(MODELS)


def build_model(name: str, vocab_size: int, size: str | int = "0.1M", **overrides: Any) -> nn.Module:
    """The model ``name`` over ``vocab_size`` tokens at a parameter budget (a :data:`SIZES` name or a count).

    ``overrides`` set config fields (a window, a number of experts); a value the model cannot take is an
    :class:`~ahm.backbone.errors.AHMConfigError` raised here, before any training starts.
    """
    if name not in MODELS:
        raise AHMConfigError(f"unknown model {name!r}; choose from {model_names()}")
    if isinstance(size, str):
        if size not in SIZES:
            raise AHMConfigError(f"unknown size {size!r}; choose from {sorted(SIZES)} or give a parameter count")
        budget = SIZES[size]
    else:
        budget = int(size)
    if budget < 1000:
        raise AHMConfigError(f"a parameter budget of {budget} is too small for any model here (at least 1000)")
    if not isinstance(vocab_size, int) or vocab_size < 2:
        raise AHMConfigError(f"vocab_size must be an int >= 2, got {vocab_size!r}")
    return MODELS[name].build(vocab_size, budget, dict(overrides))


def detach_state(state: Any) -> Any:
    """The state with every tensor cut from the autograd graph (structure kept)."""
    return _pytree.tree_map(lambda x: x.detach() if isinstance(x, Tensor) else x, state)


def state_nbytes(state: Any) -> int:
    """Bytes held by the tensors of a state."""
    return sum(x.nbytes for x in _pytree.tree_leaves(state) if isinstance(x, Tensor))


def count_parameters(model: nn.Module) -> int:
    """Distinct parameters (tied weights counted once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def fit_width(make: Callable[[int], nn.Module], budget: int, multiple: int = 8, max_width: int = 2048) -> nn.Module:
    """The model ``make(d)`` whose parameter count is nearest ``budget``, d a multiple of ``multiple``.

    Counts grow with d, so the search stops at the first d past the budget.
    """
    best: tuple[int, nn.Module] | None = None
    for d in range(multiple, max_width + 1, multiple):
        model = make(d)
        gap = abs(count_parameters(model) - budget)
        if best is not None and gap > best[0]:
            break
        best = (gap, model)
    assert best is not None
    return best[1]
