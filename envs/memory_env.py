"""``AHMMemoryEnv``: memory management over a task stream as a Gymnasium environment (proposal Sec. 2.2).

One step is one chunk of C tokens; the class docstring below is the environment's
user documentation. The machinery is :class:`~ahm.envs.episode_batch.EpisodeBatch`
(``AHMMemoryEnv`` is it with b = 1, :class:`~ahm.envs.vector_env.AHMMemoryVectorEnv`
with b = ``num_envs``); its module documents what a step computes.

Where the parts live: the arguments in :mod:`ahm.envs.config`, the default backbones in
:mod:`ahm.envs.default_backbones`, the spaces and action layout in :mod:`ahm.envs.spaces`,
rewards' inputs in :mod:`ahm.envs.episode_scoring`, checkpoint I/O in
:mod:`ahm.backbone.checkpoint`. Their public names are re-exported here, where they used to live.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from ahm.backbone import AHMModel
from ahm.backbone.checkpoint import (  # noqa: F401  (checkpoint I/O re-exported from its old home)
    AHM_META,
    AHM_WEIGHTS,
    load_ahm_checkpoint,
    load_ahm_config,
    save_ahm_checkpoint,
)
from ahm.envs.config import AHMMemoryConfig, check_stream_seed, reset_option
from ahm.envs.default_backbones import (  # noqa: F401  (re-exported: the default backbones, from their one home)
    DEFAULT_BACKBONE,
    SHIPPED_BACKBONES,
    SHIPPED_FOLDER,
    BackboneShape,
    random_backbone,
    resolve_backbone,
    shipped_backbone_path,
)
from ahm.envs.episode_batch import (  # noqa: F401  (re-exported: the episode machinery, from its one home)
    OP_COUNTERS,
    EpisodeBatch,
    EpisodeFeatures,
    StepResult,
)
from ahm.envs.spaces import (  # noqa: F401  (re-exported: the spaces' names, from their one home)
    ACTION_COMPONENTS,
    OBSERVATION_KEYS,
    ActionLayout,
    MemoryOpsSpace,
    action_nvec,
    observation_arrays,
    observation_space,
)
from ahm.envs.streams import TaskStream
from ahm.rewards import RewardTerm, RewardWeights

__all__ = [
    "AHMMemoryEnv", "AHMMemoryConfig", "EpisodeBatch", "MemoryOpsSpace", "ACTION_COMPONENTS", "OBSERVATION_KEYS",
    "DEFAULT_BACKBONE", "action_nvec", "random_backbone", "save_ahm_checkpoint", "load_ahm_checkpoint",
    "load_ahm_config", "observation_arrays",
]


def row_info(info: dict[str, Any], row: int) -> dict[str, Any]:
    """Row ``row`` of a nested dict of (b, ...) arrays: Python scalars and (...) arrays."""
    out: dict[str, Any] = {}
    for key, value in info.items():
        if isinstance(value, dict):
            out[key] = row_info(value, row)
        else:
            x = value[row]
            out[key] = x.item() if np.ndim(x) == 0 else np.array(x)
    return out


class AHMMemoryEnv(gym.Env[dict[str, np.ndarray], np.ndarray]):
    """Managing a working memory and a long-term memory for an SSM reading a long task stream.

    ## Description

    An :class:`~ahm.backbone.AHMModel` (a Mamba-style SSM with a hierarchical memory,
    frozen) reads a task stream of ``seq_len`` tokens (:mod:`ahm.envs.streams`:
    passkey, MQAR, forget, selective copy, decoy, text), one chunk of
    ``chunk_size`` tokens per step. At each chunk boundary the agent decides the
    memory operations: which working-memory (WM) slot to write this chunk's
    (key, value) into, whether a displaced entry moves to the compressed long-term
    memory (LTM) or is dropped, whether to retrieve (none / WM / LTM / both) with
    this chunk's query, which WM slot to forget, and which LTM entry to forget. When
    a query's cue ends at a chunk, the model answers from its last hidden state
    plus the memory retrieved at that boundary; facts end exactly at chunk
    boundaries, so writing at the right chunk stores them.

    The default backbone is the task-trained checkpoint the package ships for the task
    (``ahm/envs/checkpoints/<task>/``, made by the ``train_lm.py`` command recorded in it and
    in the README); for a task without one, or with ``backbone="random"``, a small
    **random-initialised** model (:data:`DEFAULT_BACKBONE`) whose answers are at chance level,
    so only the mechanics are meaningful. Pass ``backbone=`` a trained :class:`AHMModel`
    or a checkpoint directory (:func:`save_ahm_checkpoint`) for your own.

    ## Observation Space

    A flat ``Dict`` of float32 ``Box`` es with finite bounds (K = ``wm_slots``,
    F = the backbone's ``d_model + n_layer * d_state``, k = its ``obs_topk``), all
    describing the memory *before* this chunk's operations:

    | key | shape | bounds | meaning |
    | --- | --- | --- | --- |
    | ``ssm_features`` | (F,) | [-1, 1] | ``tanh`` of the state features: last hidden state, per-layer SSM state RMS |
    | ``wm_occupied`` | (K,) | [0, 1] | 1 where a slot holds an entry |
    | ``wm_age`` | (K,) | [0, 1] | chunks since the slot was written / n_chunks (0 if empty) |
    | ``wm_uses`` | (K,) | [0, 1] | ``u / (1 + u)`` for u reads whose top-1 was the slot |
    | ``wm_similarity`` | (K,) | [-1, 1] | cosine of each slot's key with this chunk's query (0 if empty) |
    | ``wm_key_similarity`` | (K,) | [-1, 1] | cosine of each slot's key with this chunk's key, the write candidate's |
    | ``ltm_fill`` | (1,) | [0, 1] | LTM entries / capacity |
    | ``ltm_topk_similarity`` | (k,) | [-1, 1] | top-k LTM similarities to the query, clipped (0 if fewer entries) |
    | ``ltm_key_similarity`` | (1,) | [-1, 1] | top-1 LTM similarity to this chunk's key (0 if the LTM is empty) |
    | ``progress`` | (1,) | [0, 1] | (t + 1) / n_chunks |
    | ``keep_score`` | (1,) | [0, 1] | the keep head's P(a later query needs this chunk); only if the backbone has one |

    Ground truth (where facts are, what is asked, answers) never enters it: the keep head was trained on
    hindsight labels, but what it outputs is computed from the tokens read so far.

    ## Action Space

    ``MultiDiscrete([K + 1, 2, 4, K + 1, 4])``, the :class:`~ahm.backbone.MemoryOps` of the chunk:

    | index | component | values |
    | --- | --- | --- |
    | 0 | ``write_slot`` | 0 no write; s + 1: write this chunk's entry into WM slot s |
    | 1 | ``evict_to_ltm`` | 0 drop the entry the write displaces; 1 move it to LTM (compressed) |
    | 2 | ``retrieve`` | 0 none, 1 WM, 2 LTM, 3 both |
    | 3 | ``forget_slot`` | 0 none; s + 1: empty WM slot s |
    | 4 | ``ltm_forget`` | 0 none; forget the LTM's 1 oldest entry, 2 least used one, 3 nearest to the chunk's key |

    Order within a step: retrieve (from the memory as observed), forget, evict-and-write.

    **Every element of the space is a legal action.** Some component values do nothing
    useful in some states: retrieving from an empty level, forgetting an empty slot, an
    LTM forget on an empty LTM. By default (``invalid_actions="noop"``) such a component
    runs as its no-op 0 while the others run as given; each one is counted in
    ``info["memory"]["invalid_noops"]`` (per episode) and flagged in
    ``info["invalid_components"]`` ((5,) bool, this step). ``invalid_actions="penalty"``
    does the same and adds :data:`~ahm.envs.config.INVALID_ACTION_PENALTY` (-0.1) per
    invalid component to the reward, logged as the ``invalid_action`` term of
    ``info["reward_terms"]`` (raw: the count). ``invalid_actions="raise"`` (strict) raises
    ``ValueError`` naming the component, the value and why, and changes nothing. A value
    outside ``[0, nvec)`` or an action of another shape is not in the space and raises in
    every mode.

    Masks stay, for algorithms that use them: :meth:`action_masks` gives the valid values
    as one flat boolean vector of ``2 K + 12`` entries (the per-component masks
    concatenated, as sb3-contrib's ``MaskablePPO`` expects), :meth:`action_mask_tuple` the
    same split per component. Through wrappers (``gymnasium.make`` adds some, and Gymnasium
    1.x wrappers do not forward attributes) reach them with
    ``env.get_wrapper_attr("action_masks")()``, or wrap with sb3-contrib's
    ``ActionMasker(env, lambda e: e.get_wrapper_attr("action_masks")())``. The space is a
    :class:`MemoryOpsSpace`: its unmasked ``sample()`` draws only operations valid in every
    state (write / evict at random, no retrieve or forget);
    ``action_space.sample(mask=env.get_wrapper_attr("action_mask_tuple")())`` samples
    uniformly among the valid ones.

    ## Rewards

    The weighted sum of :mod:`ahm.rewards` terms, each also in ``info["reward_terms"]``
    (weighted) and ``info["reward_terms_raw"]``. Defaults (:class:`~ahm.rewards.RewardWeights`):
    task outcome 1.0 (episode sum = accuracy), retrieval gain 0.1, store-then-use 0.5,
    memory cost 0.01, information gain 0.05, discard 0 (off). Targets: a query's first answer token at
    the chunk where its cue ends; for ``text`` (no queries) the next token at every
    boundary. The readout is ``model.readout(h_last, r_t)``; retrieval gain and
    information gain compare it with ``r_t = 0``. In ``state`` integration r_t only
    reaches the next chunk, so those two terms are 0 there. Discard follows the entries by
    the chunk that wrote them: it pays for an entry holding a never-asked fact (stale,
    decoy) when it leaves the memory (forgotten, dropped by an overwrite, or replaced in a
    full LTM), charges the same when one is written, and charges for one a later query asks.

    ## Starting State

    Empty memory; the backbone has read chunk 0. The stream's seed is drawn from
    ``np_random`` (``reset(seed=s)`` fixes it; from ``stream_seeds`` if given), or given as
    ``options={"stream_seed": s}``.

    ## Episode End

    Terminated after the step of the last query's chunk (``stream.last_query_chunk``),
    so an episode lasts ``last_query_chunk + 1`` steps (``text``: ``n_chunks``);
    truncated after ``max_steps`` steps if given. ``info["episode_steps"]`` is the
    length. ``info["is_success"]``: every target answered correctly.

    ## Arguments

    * ``task`` (``"passkey"``): a key of ``ahm.envs.TASKS``.
    * ``seq_len`` (100_000): tokens per episode.
    * ``chunk_size`` (256): tokens per step; episodes have ``ceil(seq_len / chunk_size)`` chunks.
    * ``wm_slots`` (8): working-memory slots K.
    * ``ltm_capacity`` (512): long-term entries M (a write into a full LTM replaces by the backbone's eviction rule).
    * ``ltm_codec`` (None): LTM codec (``none``, ``int8``, ``pq``, ``autoencoder``, ``hash``); None: the
      backbone's (``int8`` for the default one).
    * ``integration`` (None): ``readout`` (features cached per episode; fast) or ``state`` (the backbone
      runs every step); None: the backbone's (``readout`` for the default one).
    * ``backbone`` (None): None (the task's shipped checkpoint, else the random default; see Description),
      ``"random"``, an ``AHMModel``, or a checkpoint directory written by :func:`save_ahm_checkpoint`.
    * ``reward_weights`` (None): :class:`~ahm.rewards.RewardWeights` or a mapping of term name to weight.
    * ``extra_reward_terms`` (()): custom :class:`~ahm.rewards.RewardTerm` instances added to the sum.
    * ``task_kwargs`` (None): arguments of the task stream (see its class).
    * ``max_steps`` (None): truncate after this many steps.
    * ``feature_cache_size`` (1): episodes whose cached features are kept (per environment), keyed by stream
      seed, so resetting with the same seed skips the backbone.
    * ``stream_seeds`` (None): **a pool** of streams: every episode's stream is drawn from this fixed set of
      stream seeds (a training or evaluation set). The pool's features are all kept (on top of
      ``feature_cache_size``) after first use, so a reset into a seen stream skips the backbone and costs about a
      millisecond. None: a fresh stream every episode (a backbone pass per reset; see Performance).
    * ``invalid_actions`` (``"noop"``): what a masked-invalid component does: ``"noop"``, ``"penalty"`` or
      ``"raise"`` (see Action Space).
    * ``render_mode`` (None): ``"ansi"`` (text view of memory) or ``"rgb_array"`` (slots, ages and reads over time).

    ## Info

    ``chunk``, ``steps``, ``episode_steps``; ``reward_terms`` / ``reward_terms_raw``; ``scored`` and
    ``correct`` (this step's target); ``invalid_components`` ((5,) bool: which of this step's components
    were masked-invalid and ran as no-ops); ``targets`` (answered, correct, total); ``memory`` (per-episode
    operation counts, ``invalid_noops``, ``bytes`` held, ``wm_entries``, ``ltm_entries``); ``ground_truth`` of the
    observed chunk (``fact_id`` / ``fact_kind`` ending at it, ``query_fact_id`` and ``answer`` of a
    query ending at it, ``wm_fact_id`` per slot, ``query_fact_in_wm`` / ``_in_ltm``,
    ``stream_seed``) for the oracle and metrics; ``is_success`` after each step.

    ## Performance

    On a CPU, run the process with ``torch.set_num_threads(1)``: memory operations are
    tiny tensor ops, and a second thread makes them 10-50x slower. The env keeps the
    caller's thread count across backbone calls. A reset with a new stream costs one
    backbone pass over it, usually more than the episode's steps (a fresh 100K-token stream
    of ``AHMMemory-v0``: about 1.4 s on an idle 2-core machine, half of it the selective scan,
    several seconds when the cores are shared; the backbone's forward bounds it): draw episodes
    from a pool with ``stream_seeds`` (a reset into a pooled stream costs about a millisecond;
    ``benchmarks/env_throughput.py`` reports both costs).
    Copies (``copy.deepcopy``, pickle) restore an identical env: the copy's seeded resets and
    rollouts equal the original's.

    ## Version History

    * v0: initial version. Masked-invalid components became counted no-ops by default
      (``invalid_actions``; they used to raise, now ``invalid_actions="raise"``).

    Example::

        >>> import gymnasium as gym
        >>> import ahm
        >>> env = gym.make("AHMMemory-v0", seq_len=2048, chunk_size=64)
        >>> obs, info = env.reset(seed=0)
        >>> sorted(obs) == sorted(ahm.envs.OBSERVATION_KEYS), env.action_space
        (True, MultiDiscrete([9 2 4 9 4]))
        >>> mask = env.get_wrapper_attr("action_masks")()
        >>> mask.shape, bool(mask[8 + 1 + 2 + 1])  # retrieve from WM: invalid while the WM is empty
        ((28,), False)
        >>> obs, reward, terminated, truncated, info = env.step([1, 0, 1, 0, 0])  # write into slot 0, retrieve
        >>> info["memory"]["wm_entries"], info["memory"]["writes"], info["memory"]["invalid_noops"]
        (1, 1, 1)
        >>> steps = 1
        >>> while not (terminated or truncated):
        ...     obs, reward, terminated, truncated, info = env.step([0, 0, 1, 0, 0])  # retrieve from WM
        ...     steps += 1
        >>> steps == info["episode_steps"], sorted(info["reward_terms"])[:2]
        (True, ['discard', 'information_gain'])
    """

    metadata = {"render_modes": ["ansi", "rgb_array"], "render_fps": 30}

    def __init__(self, task: str = "passkey", seq_len: int = 100_000, chunk_size: int = 256, wm_slots: int = 8,
                 ltm_capacity: int = 512, ltm_codec: str | None = None, integration: str | None = None,
                 backbone: AHMModel | str | Path | None = None,
                 reward_weights: RewardWeights | Mapping[str, float] | None = None,
                 extra_reward_terms: Sequence[RewardTerm] = (), task_kwargs: Mapping[str, Any] | None = None,
                 max_steps: int | None = None, feature_cache_size: int = 1, stream_seeds: Sequence[int] | None = None,
                 render_mode: str | None = None, invalid_actions: str = "noop") -> None:
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode must be None or one of {self.metadata['render_modes']}, got {render_mode!r}")
        self.config = AHMMemoryConfig(task, seq_len, chunk_size, wm_slots, ltm_capacity, ltm_codec, integration,
                                      backbone, reward_weights, tuple(extra_reward_terms), dict(task_kwargs or {}),
                                      max_steps, feature_cache_size, stream_seeds, invalid_actions)
        self.render_mode = render_mode
        self._episodes = EpisodeBatch(self.config, batch=1, record=render_mode == "rgb_array")
        self.observation_space = self._episodes.observation_space
        self.action_space = MemoryOpsSpace(self._episodes.nvec)
        self._started = False

    @property
    def model(self) -> AHMModel:
        """The (frozen) backbone."""
        return self._episodes.model

    @property
    def stream(self) -> TaskStream | None:
        """The current episode's task stream (ground truth lives in its annotations)."""
        return self._episodes._streams[0]

    def reset(self, *, seed: int | None = None,
              options: dict[str, Any] | None = None) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        stream_seed = reset_option(options, "stream_seed")  # checked before anything changes
        if stream_seed is not None:
            stream_seed = check_stream_seed(stream_seed, "reset: options['stream_seed']")
        super().reset(seed=seed)
        if stream_seed is None:
            stream_seed = self.config.draw_stream_seed(self.np_random)
        episodes = self._episodes
        episodes.reset_rows(np.zeros(1, dtype=np.int64), [stream_seed])
        obs = episodes.observe()
        self._started = True
        return {k: v[0] for k, v in obs.items()}, row_info(episodes.info(), 0)

    def step(self, action: Any) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any]]:
        if not self._started:
            raise RuntimeError("AHMMemoryEnv: call reset() before step()")
        action = np.asarray(action)
        if action.shape != (len(ACTION_COMPONENTS),):
            raise ValueError(f"an action must be 5 integers {ACTION_COMPONENTS} (shape (5,)), got shape {action.shape}")
        out = self._episodes.step(action[None])
        obs = {k: v[0] for k, v in out.observation.items()}
        return obs, float(out.reward[0]), bool(out.terminated[0]), bool(out.truncated[0]), row_info(out.info, 0)

    def action_masks(self) -> np.ndarray:
        """(2 K + 12,) bool: the valid values of each action component now, concatenated (for MaskablePPO)."""
        return self._episodes.masks[0].copy()

    def action_mask_tuple(self) -> tuple[np.ndarray, ...]:
        """The same mask split per component (int8), the form ``action_space.sample(mask=...)`` takes."""
        return self._episodes.mask_tuple(0)

    def render(self) -> str | np.ndarray | None:
        from ahm.envs.render import render_ansi, render_rgb

        if self.render_mode == "ansi":
            return render_ansi(self._episodes.snapshot(0))
        if self.render_mode == "rgb_array":
            return render_rgb(self._episodes.history[0], self.config.wm_slots)
        return None
