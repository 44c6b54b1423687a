"""The environments' spaces: one home for the action layout and the observation format.

Every module that turns integer actions into memory operations, splits a flat
action mask, or builds an observation imports this one (the env, the native vector
env, the heuristics, the learned controllers and their policies, the supervised
phase), so the layout cannot drift between them.

**Actions.** One action is five integers, :data:`ACTION_COMPONENTS` in order, with
``nvec = [K + 1, 2, 4, K + 1, 4]`` values (K working-memory slots). Value 0 of every
component is its no-op. A flat action mask is the five per-component masks
concatenated: ``2 K + 12`` booleans, component j at ``offsets[j] : offsets[j] + nvec[j]``.

=========  ==============  ==========================================================
component  values          :class:`~ahm.backbone.memory_ops.MemoryOps` field
=========  ==============  ==========================================================
0          K + 1           ``write_slot = a[0] - 1`` (0: no write, i: slot i - 1)
1          2               ``evict_to_ltm = a[1]``
2          4               ``retrieve = a[2]`` (none, WM, LTM, both)
3          K + 1           ``forget_slot = a[3] - 1`` (0: none, i: slot i - 1)
4          4               ``ltm_forget = a[4]`` (none, oldest, least used, nearest)
=========  ==============  ==========================================================

**Observations.** A Dict of float32 Boxes, :data:`OBSERVATION_KEYS` in order
(:func:`observation_space`), computed from a
:class:`~ahm.backbone.memory_ops.MemoryObservation` by :func:`observation_arrays`; and
:data:`KEEP_SCORE` where the backbone has a keep head (:func:`observation_keys`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import torch
from gymnasium import spaces
from torch import Tensor

from ahm.backbone.memory_ops import RETRIEVE_BOTH, RETRIEVE_LTM, RETRIEVE_WM, MemoryObservation, MemoryOps, OpMasks

if TYPE_CHECKING:
    from ahm.backbone.memory_fast import FastObservation

__all__ = ["ACTION_COMPONENTS", "OBSERVATION_KEYS", "KEEP_SCORE", "observation_keys", "ActionLayout", "CheckedActions",
           "MemoryOpsSpace",
           "action_nvec", "observation_space", "observation_arrays", "fast_observation_arrays"]

ACTION_COMPONENTS = ("write_slot", "evict_to_ltm", "retrieve", "forget_slot", "ltm_forget")
"""The five components of an action, in order (the :class:`~ahm.backbone.MemoryOps` fields)."""

OBSERVATION_KEYS = ("ssm_features", "wm_occupied", "wm_age", "wm_uses", "wm_similarity", "wm_key_similarity",
                    "ltm_fill", "ltm_topk_similarity", "ltm_key_similarity", "progress")
"""The keys of every observation, in the order of the Dict space."""

KEEP_SCORE = "keep_score"
"""The key of the backbone's keep head's prediction (in [0, 1]: this chunk's entry will be needed later), in the
observation only where the backbone has the head (``AHMConfig.keep_head``)."""


def observation_keys(space: spaces.Dict) -> tuple[str, ...]:
    """The keys of an observation space, in a fixed order: :data:`OBSERVATION_KEYS`, then :data:`KEEP_SCORE` where
    the space has it."""
    return OBSERVATION_KEYS + ((KEEP_SCORE,) if KEEP_SCORE in space.spaces else ())

_FIXED_VALUES = 2 + 4 + 4
"""Values of the three components whose size does not depend on K (evict_to_ltm, retrieve, ltm_forget)."""

_VALUE_SHIFT = np.array([1, 0, 0, 1, 0], dtype=np.int64)
"""Action value minus :class:`MemoryOps` field, per component: the slot components use 0 for "none" (field -1)."""


class CheckedActions(NamedTuple):
    """What :meth:`ActionLayout.check` makes of b actions."""

    actions: np.ndarray
    """(b, 5) int64: the actions to apply, every masked-invalid component replaced by its no-op 0."""
    invalid: np.ndarray
    """(b, 5) bool: the components the masks marked invalid (all False in ``"raise"`` mode, which raises instead)."""


@dataclass(frozen=True)
class ActionLayout:
    """The action layout for K = ``wm_slots`` working-memory slots (module docstring).

    >>> layout = ActionLayout(2)
    >>> layout.nvec.tolist(), layout.offsets.tolist(), layout.mask_width
    ([3, 2, 4, 3, 4], [0, 3, 5, 9, 12], 16)
    >>> ActionLayout.from_mask_width(16) == layout
    True
    """

    wm_slots: int
    _nvec: np.ndarray = field(init=False, repr=False, compare=False)
    _offsets: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if isinstance(self.wm_slots, bool) or not isinstance(self.wm_slots, (int, np.integer)) or self.wm_slots < 1:
            raise ValueError(f"wm_slots must be a positive int, got {self.wm_slots!r}")
        object.__setattr__(self, "wm_slots", int(self.wm_slots))
        k = self.wm_slots
        nvec = np.array([k + 1, 2, 4, k + 1, 4], dtype=np.int64)
        object.__setattr__(self, "_nvec", nvec)  # kept: check() reads them every env step
        object.__setattr__(self, "_offsets", np.concatenate(([0], np.cumsum(nvec)[:-1])).astype(np.int64))

    # ---------------------------------------------------------------- construction
    @classmethod
    def from_nvec(cls, nvec: Sequence[int] | np.ndarray) -> ActionLayout:
        """The layout whose ``nvec`` is ``nvec`` (a ValueError if it is not one of ours)."""
        nvec = np.asarray(nvec, dtype=np.int64).reshape(-1)
        if len(nvec) != len(ACTION_COMPONENTS) or nvec[0] < 2:
            raise ValueError(f"an action nvec has {len(ACTION_COMPONENTS)} entries [K + 1, 2, 4, K + 1, 4]; "
                             f"got {nvec.tolist()}")
        layout = cls(int(nvec[0]) - 1)
        if not np.array_equal(layout.nvec, nvec):
            raise ValueError(f"nvec {nvec.tolist()} is not an AHM action layout; expected {layout.nvec.tolist()}")
        return layout

    @classmethod
    def from_mask_width(cls, width: int) -> ActionLayout:
        """The layout whose flat action mask has ``width`` = 2 K + 12 entries."""
        k, odd = divmod(int(width) - _FIXED_VALUES - 2, 2)
        if odd or k < 1:
            raise ValueError(f"an action mask has 2 K + 12 entries (K >= 1 working-memory slots); got {width}")
        return cls(k)

    @classmethod
    def of_observation(cls, observation: dict[str, Any]) -> ActionLayout:
        """The layout of a batched observation (its ``wm_occupied`` is (b, K))."""
        return cls(int(np.shape(observation["wm_occupied"])[-1]))

    # ---------------------------------------------------------------- sizes
    @property
    def nvec(self) -> np.ndarray:
        """(5,) int64: ``[K + 1, 2, 4, K + 1, 4]``, the ``MultiDiscrete`` nvec."""
        return self._nvec.copy()

    @property
    def offsets(self) -> np.ndarray:
        """(5,) int64: where each component's values start in a flat mask."""
        return self._offsets.copy()

    @property
    def mask_width(self) -> int:
        """Entries of a flat action mask: ``2 K + 12``."""
        return 2 * self.wm_slots + 2 + _FIXED_VALUES

    # ---------------------------------------------------------------- masks
    def split_mask(self, mask: np.ndarray | Tensor) -> list:
        """A flat mask (..., 2 K + 12) as the five per-component masks (..., nvec[j]), numpy or torch alike."""
        if mask.shape[-1] != self.mask_width:
            raise ValueError(f"an action mask for K = {self.wm_slots} has {self.mask_width} entries per env, got "
                             f"shape {tuple(mask.shape)}; pass env.action_masks()")
        if isinstance(mask, Tensor):
            return list(torch.split(mask, self.nvec.tolist(), dim=-1))
        return np.split(mask, self.offsets[1:], axis=-1)

    def join_masks(self, parts: Sequence[np.ndarray] | OpMasks) -> np.ndarray | Tensor:
        """The flat mask (..., 2 K + 12) of five per-component masks (an :class:`OpMasks` included)."""
        parts = list(parts)
        if [p.shape[-1] for p in parts] != self.nvec.tolist():
            raise ValueError(f"per-component masks must have {self.nvec.tolist()} values; got "
                             f"{[p.shape[-1] for p in parts]}")
        if isinstance(parts[0], Tensor):
            return torch.cat(parts, dim=-1)
        return np.concatenate(parts, axis=-1)

    def valid(self, actions: np.ndarray, masks: np.ndarray) -> np.ndarray:
        """(b, 5) bool: which components of in-range ``actions`` (b, 5) the flat ``masks`` (b, 2 K + 12) allow;
        out-of-range values are reported invalid."""
        a = np.asarray(actions, dtype=np.int64)
        in_range = (a >= 0) & (a < self.nvec)
        allowed = np.take_along_axis(np.asarray(masks, dtype=bool), self.offsets + np.where(in_range, a, 0), axis=1)
        return in_range & allowed

    def noop_invalid(self, actions: Any, masks: np.ndarray) -> np.ndarray:
        """(b, 5) int64 ``actions`` with every in-range value that ``masks`` marks invalid replaced by 0.

        0 is every component's no-op (no write, drop, no retrieve, no forget, no LTM forget)
        and is valid in every state. Values outside ``[0, nvec)`` are left as they are, so
        the env still raises on malformed actions.
        """
        masks = np.asarray(masks, dtype=bool)
        a = np.asarray(actions, dtype=np.int64).reshape(masks.shape[0], len(ACTION_COMPONENTS))
        in_range = (a >= 0) & (a < self.nvec)
        return np.where(in_range & ~self.valid(a, masks), 0, a)

    def check(self, actions: Any, masks: np.ndarray, invalid_actions: str = "raise") -> CheckedActions:
        """``actions`` (b, 5) as int64 against the flat ``masks`` (b, 2 K + 12) of b environments.

        A component value the mask marks invalid becomes the component's no-op 0 and is flagged in
        :attr:`CheckedActions.invalid` (``invalid_actions`` ``"noop"`` or ``"penalty"``), or raises a
        ValueError naming the component, the value and why (``"raise"``). A wrong shape, a non-integer
        dtype or a value outside ``[0, nvec)`` is not in the action space and raises in every mode.
        Vectorised: one gather from the masks for all b x 5 components; the per-component loop runs only
        to word an error.
        """
        masks = np.asarray(masks)
        b = masks.shape[0]
        a = np.asarray(actions)
        if a.shape != (b, len(ACTION_COMPONENTS)):
            raise ValueError(f"an action must be 5 integers {ACTION_COMPONENTS} per environment, shape "
                             f"{(b, 5) if b > 1 else (5,)}; got shape {a.shape}")
        if not np.issubdtype(a.dtype, np.integer):
            if not (np.issubdtype(a.dtype, np.floating) and np.all(a == np.round(a))):
                raise ValueError(f"actions must be integers (MultiDiscrete), got dtype {a.dtype} values {a.tolist()}")
        raw = a  # errors report the value given (a float 1e30 or a uint64 2**64 - 1), not its int64 cast
        if a.dtype != np.int64 and not ((a >= 0) & (a < self._nvec)).all():
            self._raise_first_invalid(raw, masks, masked=False)
        a = a.astype(np.int64)
        if ((a >= 0) & (a < self._nvec)).all():
            allowed = masks[np.arange(b)[:, None], self._offsets + a]  # (b, 5)
            if allowed.all():
                return CheckedActions(a, np.zeros(a.shape, dtype=bool))
            if invalid_actions != "raise":
                return CheckedActions(np.where(allowed, a, 0), ~allowed)
        self._raise_first_invalid(a, masks, masked=invalid_actions == "raise", raw=raw)
        raise AssertionError("unreachable: ActionLayout._raise_first_invalid found nothing to refuse")

    def _raise_first_invalid(self, a: np.ndarray, masks: np.ndarray, masked: bool,
                             raw: np.ndarray | None = None) -> None:
        """The ValueError for the first component (in order) that is out of range or, if ``masked``, masked;
        values are reported as given in ``raw`` (default ``a``)."""
        raw = a if raw is None else raw
        where = (lambda r: f" (environment {r})") if len(a) > 1 else (lambda r: "")
        for j, name in enumerate(ACTION_COMPONENTS):
            bad = (a[:, j] < 0) | (a[:, j] >= self._nvec[j])
            if bad.any():
                r = int(np.nonzero(bad)[0][0])
                raise ValueError(f"action component {j} ({name}) = {raw[r, j].item()}{where(r)} is outside the action "
                                 f"space [0, {self._nvec[j]})")
            if not masked:
                continue
            ok = masks[np.arange(len(a)), self._offsets[j] + a[:, j]]
            if not ok.all():
                r = int(np.nonzero(~ok)[0][0])
                valid = np.nonzero(self.split_mask(masks[r])[j])[0]
                raise ValueError(f"action component {j} ({name}) = {raw[r, j].item()}{where(r)} is invalid now: "
                                 f"{_why_invalid(name, int(a[r, j]))}; valid values now are {valid.tolist()}. "
                                 "Mask actions with env.action_masks() (MaskablePPO does this), or make the env "
                                 "with invalid_actions='noop' (the default) to run them as no-ops.")

    # ---------------------------------------------------------------- actions <-> MemoryOps
    @staticmethod
    def to_ops(actions: np.ndarray | Tensor, device: torch.device | str | None = None) -> MemoryOps:
        """The :class:`MemoryOps` of (b, 5) integer actions (slot components shift by one: 0 means none)."""
        a = torch.as_tensor(np.asarray(actions) if not isinstance(actions, Tensor) else actions,
                            dtype=torch.int64, device=device)
        return MemoryOps(*(a - torch.as_tensor(_VALUE_SHIFT, device=a.device)).T)

    @staticmethod
    def to_op_arrays(actions: np.ndarray) -> MemoryOps:
        """:meth:`to_ops` without torch: the :class:`MemoryOps` fields of (b, 5) actions as numpy int64 (b,) arrays
        (what the compiled memory step takes)."""
        return MemoryOps(*(np.asarray(actions, dtype=np.int64) - _VALUE_SHIFT).T)

    @staticmethod
    def from_ops(ops: MemoryOps) -> np.ndarray:
        """(b, 5) int64 actions of :class:`MemoryOps` (the inverse of :meth:`to_ops`)."""
        return np.stack([t.detach().cpu().numpy().astype(np.int64) for t in ops], axis=1) + _VALUE_SHIFT


def _why_invalid(component: str, value: int) -> str:
    """Why ``value`` of the masked ``component`` is invalid now (retrieve, forget_slot or ltm_forget)."""
    if component == "retrieve":
        return {RETRIEVE_WM: "the working memory is empty", RETRIEVE_LTM: "the long-term memory is empty",
                RETRIEVE_BOTH: "the working or the long-term memory is empty"}[value]
    if component == "forget_slot":
        return f"working-memory slot {value - 1} is empty"
    return "the long-term memory is empty"


def action_nvec(wm_slots: int) -> np.ndarray:
    """The number of values of each action component for K = ``wm_slots``: ``ActionLayout(wm_slots).nvec``."""
    return ActionLayout(wm_slots).nvec


class MemoryOpsSpace(spaces.MultiDiscrete):
    """The action space: a ``MultiDiscrete`` of memory operations whose unmasked :meth:`sample` is always valid.

    Some operations are valid only in some states (retrieving from an empty level,
    forgetting an empty slot or from an empty LTM raise). Without a mask, ``sample()``
    therefore draws only operations that are valid in every state: a random
    ``write_slot`` and ``evict_to_ltm``, and 0 (none) for ``retrieve``,
    ``forget_slot`` and ``ltm_forget``. Generic tools that step with
    ``action_space.sample()`` (Gymnasium's and Stable-Baselines3's env checkers,
    random rollouts) then never send an invalid action. To sample uniformly among
    the operations valid now, pass the env's mask: ``sample(mask=env.action_mask_tuple())``.
    ``contains`` accepts every value of the ``MultiDiscrete``.
    """

    def sample(self, mask: Any = None, probability: Any = None) -> np.ndarray:
        x = super().sample(mask=mask, probability=probability)
        if mask is None and probability is None:
            x[..., 2:] = 0  # retrieve, forget_slot, ltm_forget: none
        return x


def observation_space(feature_dim: int, wm_slots: int, obs_topk: int, keep_score: bool = False) -> spaces.Dict:
    """The Dict observation space: F = ``feature_dim`` state features, K = ``wm_slots``, ``obs_topk`` LTM scores,
    and ``keep_score`` (the backbone's keep head's prediction) where the backbone has that head.

    Every value lies in its Box (:func:`observation_arrays` squashes or clips it there).
    """
    k = wm_slots
    keep = {KEEP_SCORE: spaces.Box(0.0, 1.0, (1,), np.float32)} if keep_score else {}
    return spaces.Dict({
        **keep,
        "ssm_features": spaces.Box(-1.0, 1.0, (feature_dim,), np.float32),
        "wm_occupied": spaces.Box(0.0, 1.0, (k,), np.float32),
        "wm_age": spaces.Box(0.0, 1.0, (k,), np.float32),
        "wm_uses": spaces.Box(0.0, 1.0, (k,), np.float32),
        "wm_similarity": spaces.Box(-1.0, 1.0, (k,), np.float32),
        "wm_key_similarity": spaces.Box(-1.0, 1.0, (k,), np.float32),
        "ltm_fill": spaces.Box(0.0, 1.0, (1,), np.float32),
        "ltm_topk_similarity": spaces.Box(-1.0, 1.0, (obs_topk,), np.float32),
        "ltm_key_similarity": spaces.Box(-1.0, 1.0, (1,), np.float32),
        "progress": spaces.Box(0.0, 1.0, (1,), np.float32),
    })


def observation_arrays(obs: MemoryObservation, chunk: np.ndarray, n_chunks: int) -> dict[str, np.ndarray]:
    """The env's Dict observation from a :class:`~ahm.backbone.MemoryObservation` of b sequences at chunk ``chunk``
    (b,) of ``n_chunks``: every value squashed or clipped into its Box (see :class:`AHMMemoryEnv`). Also what a
    controller sees outside the env (``ahm.training`` drives controllers on text streams with it)."""
    n = np.float32(n_chunks)
    uses = obs.wm_uses.cpu().numpy()
    keep = {} if obs.keep_score is None else {KEEP_SCORE: obs.keep_score.cpu().numpy()[:, None]}
    return {
        **keep,
        "ssm_features": np.tanh(obs.ssm_features.cpu().numpy()),
        "wm_occupied": obs.wm_occupied.cpu().numpy(),
        "wm_age": np.minimum(obs.wm_age.cpu().numpy() / n, np.float32(1.0)),
        "wm_uses": uses / (np.float32(1.0) + uses),
        "wm_similarity": np.clip(obs.wm_similarity.cpu().numpy(), -1.0, 1.0),
        "wm_key_similarity": np.clip(obs.wm_key_similarity.cpu().numpy(), -1.0, 1.0),
        "ltm_fill": np.clip(obs.ltm_fill.cpu().numpy()[:, None], 0.0, 1.0),
        "ltm_topk_similarity": np.clip(obs.ltm_topk_similarity.cpu().numpy(), -1.0, 1.0),
        "ltm_key_similarity": np.clip(obs.ltm_key_similarity.cpu().numpy()[:, None], -1.0, 1.0),
        "progress": np.minimum((np.asarray(chunk) + 1) / n, 1.0).astype(np.float32)[:, None],
    }


def fast_observation_arrays(obs: FastObservation, ssm_features: np.ndarray, chunk: np.ndarray, n_chunks: int,
                            ltm_capacity: int, obs_topk: int,
                            keep_score: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """:func:`observation_arrays` of the compiled fast path's :class:`~ahm.backbone.memory_fast.FastObservation`
    (numpy in, numpy out; no torch op): ``ssm_features`` (b, F) before ``tanh``, ``chunk`` (b,), ``obs_topk`` of the
    LTM hits shown, ``keep_score`` (b, 1) where the backbone has a keep head. ``tests/test_memory_fast.py`` holds
    the two together."""
    n, one = np.float32(n_chunks), np.float32(1.0)
    uses = obs.wm_uses.astype(np.float32)
    topk = obs.hit_scores[:, :obs_topk]
    keep = {} if keep_score is None else {KEEP_SCORE: keep_score.astype(np.float32)}
    return {
        **keep,
        "ssm_features": np.tanh(ssm_features),
        "wm_occupied": obs.wm_occupied.astype(np.float32),
        "wm_age": np.minimum(obs.wm_age.astype(np.float32) / n, one),
        "wm_uses": uses / (one + uses),
        "wm_similarity": np.clip(obs.wm_similarity, -1.0, 1.0),
        "wm_key_similarity": np.clip(obs.wm_key_similarity, -1.0, 1.0),
        "ltm_fill": np.clip(obs.ltm_count.astype(np.float32) / np.float32(ltm_capacity), 0.0, 1.0)[:, None],
        "ltm_topk_similarity": np.clip(np.where(np.isinf(topk), np.float32(0.0), topk), -1.0, 1.0),
        "ltm_key_similarity": np.clip(np.where(np.isinf(obs.key_score), np.float32(0.0), obs.key_score),
                                      -1.0, 1.0)[:, None],
        "progress": np.minimum((np.asarray(chunk) + 1) / n, 1.0).astype(np.float32)[:, None],
    }
