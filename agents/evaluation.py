"""Evaluating a controller: whole ``AHMMemory-v0`` episodes on the native vector env, with per-episode metrics.

:func:`evaluate` runs ``episodes`` complete episodes of one environment
configuration with a :class:`~ahm.agents.base.Controller` and reports, per
episode (:class:`EpisodeResult`), the task accuracy (correct / total targets of
the episode's final ``info["targets"]``), success (every target correct), memory
operations per 1K tokens and bytes held at the end, and for the whole run
(:class:`EvalResult`) the throughput in tokens per second, with and without the
resets. The episodes are played by :func:`ahm.agents.rollout.rollout`, the one
controller loop.

Same episodes for every controller. The stream of episode i is
:func:`evaluation_stream_seeds` ``(seed, episodes)[i]``, a pure function of
``seed``; episodes run in rounds of ``num_envs`` (one per sub-environment, chosen
with the vector env's ``options={"stream_seeds": ...}``), and a round ends when
each of its sub-environments has finished its episode once. Episode ends do not
depend on the actions (termination after the last query's chunk, truncation after
``max_steps``), so two controllers evaluated with the same ``seed`` see the same
streams and the same rounds. Sub-environments that finish early auto-reset
(``SAME_STEP``) and keep stepping until the round ends; those extra episodes are
not counted.

Cost. A reset with a new stream runs the backbone over it (the expensive part, in
readout integration once per stream); a step runs memory operations only. The
env built here sets ``stream_seeds`` to the evaluation's streams, so every
stream's features are computed once, up front (:func:`prepare_features`, timed as
``reset_seconds``), and cached: the rounds and the auto-resets then cost no
backbone pass. Pass an already built :class:`~ahm.envs.AHMMemoryVectorEnv`
(:func:`make_eval_env`) to evaluate several controllers on it: the second one
finds every feature cached. With an env whose ``stream_seeds`` do not contain the
evaluation's, auto-resets draw other streams and their backbone passes count in
the step time.

Glossary: n sub-environments (``num_envs``), K working-memory slots, T steps of
an episode, C tokens per chunk, L tokens per episode (``seq_len``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from ahm.agents.base import Controller, as_controller
from ahm.envs.registry import ENV_SPECS

__all__ = ["EpisodeResult", "MemoryAccesses", "EvalResult", "evaluate", "evaluate_seeds", "evaluation_stream_seeds",
           "make_eval_env", "env_arguments", "prepare_features", "OP_NAMES"]

OP_NAMES = ("writes", "moves_to_ltm", "drops", "retrievals_wm", "retrievals_ltm", "forgets_wm", "forgets_ltm")
"""The per-episode operation counters of ``info["memory"]`` (``ahm.envs.memory_env.OP_COUNTERS``) that count as
memory operations in ``ops_per_1k_tokens``."""

_STREAM_SEED_TAG = 0x5EED_E7A1
"""Mixed into the evaluation's SeedSequence so its streams differ from those a training run draws with the same
integer seed. The value is arbitrary ("seed eval" in hex-speak); what matters is that no other SeedSequence of the
project uses it and that it never changes: every recorded evaluation and benchmark result depends on it."""


class EpisodeResult(NamedTuple):
    """One evaluated episode, from its final ``info``."""

    stream_seed: int
    """The task stream's seed (the episode is reproducible from it)."""
    accuracy: float
    """``correct / total`` targets of the episode, in [0, 1]."""
    correct: int
    answered: int
    total: int
    is_success: bool
    """Every target answered correctly."""
    steps: int
    """Chunks stepped (T)."""
    tokens: int
    """Tokens the episode covered: ``min(T * C, L)``."""
    ops: dict[str, int]
    """Operation counts (:data:`OP_NAMES`)."""
    ops_per_1k_tokens: float
    """``sum(ops) / tokens * 1000``."""
    bytes_held: int
    """Bytes of memory (working + long-term) held at the end of the episode."""


class MemoryAccesses(NamedTuple):
    """What one episode did to memory, per step (chunk) and working-memory slot: the data of the access plot.

    Arrays are ``(T, K)`` bool per slot or ``(T,)`` bool for the long-term memory.
    ``wm_reads`` marks the top-1 slot of a working-memory read (the slot whose use count
    rose; when that slot was overwritten in the same step, the occupied slot most similar
    to the query).
    """

    writes: np.ndarray
    wm_reads: np.ndarray
    ltm_reads: np.ndarray
    moved_to_ltm: np.ndarray
    """The slot's previous entry was displaced by a write and moved to long-term memory."""
    dropped: np.ndarray
    """The slot's previous entry was displaced by a write and dropped."""
    forgets: np.ndarray
    ltm_forgets: np.ndarray
    stream_seed: int


@dataclass(frozen=True)
class EvalResult:
    """Every counted episode of one :func:`evaluate` call, and the run's timing."""

    controller: str
    task: str
    seq_len: int
    chunk_size: int
    seed: int
    episodes: tuple[EpisodeResult, ...]
    step_seconds: float
    """Wall time of the controller's ``act`` plus the env's ``step_arrays``."""
    reset_seconds: float
    """Wall time of the resets (the backbone pass over every new stream, if not cached)."""
    step_tokens: int
    """Tokens stepped by all sub-environments, uncounted auto-reset episodes included (what the time was spent on)."""
    chance_accuracy: float | None = None
    """Accuracy of a uniform guess for the task (its stream's ``chance_accuracy``), None if it has none."""
    accesses: MemoryAccesses | None = field(default=None, repr=False)
    """The first episode's memory accesses if ``record_accesses`` was set."""

    @property
    def accuracy(self) -> float:
        """Mean accuracy over the episodes."""
        return float(np.mean([e.accuracy for e in self.episodes]))

    @property
    def success_rate(self) -> float:
        return float(np.mean([e.is_success for e in self.episodes]))

    @property
    def ops_per_1k_tokens(self) -> float:
        return float(np.mean([e.ops_per_1k_tokens for e in self.episodes]))

    @property
    def bytes_held(self) -> float:
        """Mean bytes held at the end of an episode."""
        return float(np.mean([e.bytes_held for e in self.episodes]))

    @property
    def tokens_per_s(self) -> float:
        """Env-step throughput: stepped tokens / (act + step time)."""
        return self.step_tokens / self.step_seconds if self.step_seconds > 0 else math.inf

    @property
    def tokens_per_s_with_resets(self) -> float:
        """Throughput including the resets (the backbone's pass over each stream, unless its features were cached)."""
        total = self.step_seconds + self.reset_seconds
        return self.step_tokens / total if total > 0 else math.inf


# ====================================================================== environments
def evaluation_stream_seeds(seed: int, episodes: int) -> tuple[int, ...]:
    """The stream seeds of an evaluation's ``episodes`` episodes: a pure function of ``seed``, each in [0, 2**63)."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be an int >= 0, got {seed!r}")
    if isinstance(episodes, bool) or not isinstance(episodes, (int, np.integer)) or episodes < 1:
        raise ValueError(f"episodes must be a positive int, got {episodes!r}")
    state = np.random.SeedSequence([int(seed), _STREAM_SEED_TAG]).generate_state(int(episodes), dtype=np.uint64)
    return tuple(int(s >> np.uint64(1)) for s in state)


def env_arguments(env_id_or_kwargs: str | Mapping[str, Any], **overrides: Any) -> dict[str, Any]:
    """The vector env's keyword arguments for a registered id (its registered kwargs) or a kwargs mapping,
    with ``overrides`` (those that are not None) on top."""
    if isinstance(env_id_or_kwargs, str):
        if env_id_or_kwargs not in ENV_SPECS:
            raise ValueError(f"unknown environment id {env_id_or_kwargs!r}; registered ids: {list(ENV_SPECS)}")
        kwargs = dict(ENV_SPECS[env_id_or_kwargs].kwargs)
    elif isinstance(env_id_or_kwargs, Mapping):
        kwargs = dict(env_id_or_kwargs)
    else:
        raise ValueError(f"expected an environment id (one of {list(ENV_SPECS)}), a mapping of AHMMemoryVectorEnv "
                         f"arguments, or an AHMMemoryVectorEnv; got {type(env_id_or_kwargs).__name__}")
    kwargs.update({k: v for k, v in overrides.items() if v is not None})
    return kwargs


def make_eval_env(env_id_or_kwargs: str | Mapping[str, Any], *, num_envs: int, stream_seeds: Sequence[int],
                  seq_len: int | None = None, backbone: Any = None, **env_kwargs: Any) -> Any:
    """An :class:`~ahm.envs.AHMMemoryVectorEnv` for evaluating on ``stream_seeds`` (module doc, "Cost").

    Its ``stream_seeds`` are the given ones, so their backbone features are computed
    once and stay cached for every controller evaluated on it; pass the seeds of every
    evaluation you will run on it (e.g. the union of :func:`evaluation_stream_seeds`
    over the seeds of a benchmark).
    """
    from ahm.envs.vector_env import AHMMemoryVectorEnv

    kwargs = env_arguments(env_id_or_kwargs, seq_len=seq_len, backbone=backbone, **env_kwargs)
    kwargs["stream_seeds"] = tuple(int(s) for s in stream_seeds)
    kwargs.pop("render_mode", None)
    return AHMMemoryVectorEnv(num_envs=int(num_envs), **kwargs)


def prepare_features(env: Any, stream_seeds: Sequence[int]) -> float:
    """Run the backbone over ``stream_seeds`` so their features are cached; seconds. An
    :class:`~ahm.envs.AHMMemoryVectorEnv` reads them in batches of max(``num_envs``, :data:`WARM_BATCH`) streams
    (``EpisodeBatch.warm``) and no episode changes; any other env is reset in groups of ``num_envs``.

    Only useful when the env's ``stream_seeds`` contain them (otherwise its cache keeps
    only the last group): :func:`make_eval_env` builds such an env.
    """
    n = env.num_envs
    start = time.perf_counter()
    warm = getattr(getattr(env, "episodes", None), "warm", None)
    if warm is not None:  # the backbone batched over up to WARM_BATCH streams, whatever num_envs is
        seeds, size = list(dict.fromkeys(int(s) for s in stream_seeds)), max(n, WARM_BATCH)
        for i in range(0, len(seeds), size):
            warm(seeds[i : i + size])
    else:
        for group in _rounds(list(stream_seeds), n):
            env.reset(options={"stream_seeds": group})
    return time.perf_counter() - start


WARM_BATCH = 16
"""Streams :func:`prepare_features` reads through the backbone together (at least the env's ``num_envs``)."""


def _rounds(seeds: list[int], n: int) -> list[list[int]]:
    """``seeds`` cut into groups of n; the last is padded with its own seeds (one backbone pass per distinct seed)."""
    out = []
    for i in range(0, len(seeds), n):
        group = seeds[i : i + n]
        out.append(group + [group[j % len(group)] for j in range(n - len(group))])
    return out


# ====================================================================== evaluation
def evaluate(controller: Controller | str | Path | Any, env_id_or_kwargs: str | Mapping[str, Any] | Any, *,
             seq_len: int | None = None, episodes: int = 1, num_envs: int = 1, seed: int = 0,
             backbone: Any = None, record_accesses: bool = False, **env_kwargs: Any) -> EvalResult:
    """Run ``episodes`` whole episodes with ``controller`` and measure them (module doc).

    Args:
        controller: a :class:`~ahm.agents.base.Controller`, a heuristic's name or a learned
            controller's checkpoint path (:func:`ahm.agents.make_controller`), or a callable
            ``f(observation, action_mask) -> (b, 5)`` actions.
        env_id_or_kwargs: a registered id (``ahm.envs.ENV_SPECS``), a mapping of
            :class:`~ahm.envs.AHMMemoryVectorEnv` arguments, or an already built
            ``AHMMemoryVectorEnv`` (reused as is; ``seq_len``, ``backbone`` and ``env_kwargs``
            must then be left out).
        seq_len: tokens per episode (None: the registered / given value, else the env's default).
        episodes: episodes to count.
        num_envs: sub-environments stepped together (a built env brings its own); at most ``episodes``
            are used when the env is built here.
        seed: fixes the episodes' streams (:func:`evaluation_stream_seeds`) and the auto-reset draws.
        backbone: the env's ``backbone`` argument (None: its default).
        record_accesses: also record the first episode's :class:`MemoryAccesses`.
        **env_kwargs: further ``AHMMemoryVectorEnv`` arguments (``chunk_size``, ``wm_slots``, ...).

    Returns:
        An :class:`EvalResult` with one :class:`EpisodeResult` per episode, in stream-seed order.
    """
    return evaluate_seeds(controller, env_id_or_kwargs, seeds=(seed,), seq_len=seq_len, episodes=episodes,
                          num_envs=num_envs, backbone=backbone, record_accesses=record_accesses, **env_kwargs)[0]


def evaluate_seeds(controller: Controller | str | Path | Any, env_id_or_kwargs: str | Mapping[str, Any] | Any, *,
                   seeds: Sequence[int], seq_len: int | None = None, episodes: int = 1, num_envs: int = 1,
                   backbone: Any = None, record_accesses: bool = False, **env_kwargs: Any) -> list[EvalResult]:
    """:func:`evaluate` for each of ``seeds``, their episodes stepped together: one :class:`EvalResult` per seed.

    Each seed's episodes are its :func:`evaluation_stream_seeds`, as in ``evaluate(seed=s)``; the rounds of
    ``num_envs`` sub-environments run over all seeds' episodes in order, so a benchmark's seeds share the
    vector env's steps instead of stepping one single-env episode after another. A controller that decides
    each sub-environment from its own observation (every heuristic, the oracle, a deterministic learned
    policy) scores each seed as ``evaluate(seed=s)`` does; a random one draws other actions. With one seed
    this *is* ``evaluate``. The run's step and reset time and stepped tokens are shared equally among the
    seeds' results; ``record_accesses`` records the first seed's first episode. Arguments as :func:`evaluate`.
    """
    from ahm.agents.rollout import rollout  # loads torch and the envs: not at import time
    from ahm.envs.vector_env import AHMMemoryVectorEnv

    controller = _controller(controller)
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ValueError("evaluate_seeds: seeds must name at least one seed")
    per_seed = [evaluation_stream_seeds(s, episodes) for s in seeds]
    stream_seeds = [x for streams in per_seed for x in streams]
    owner = [i for i, streams in enumerate(per_seed) for _ in streams]  # the seed index of each episode
    if isinstance(env_id_or_kwargs, AHMMemoryVectorEnv):
        if seq_len is not None or backbone is not None or env_kwargs:
            raise ValueError("evaluate: with a built AHMMemoryVectorEnv, leave seq_len, backbone and env arguments "
                             f"out (they are the env's); got seq_len={seq_len!r}, backbone={backbone!r}, "
                             f"{sorted(env_kwargs)}")
        env = env_id_or_kwargs
    else:
        if isinstance(num_envs, bool) or not isinstance(num_envs, int) or num_envs < 1:
            raise ValueError(f"num_envs must be a positive int, got {num_envs!r}")
        env = make_eval_env(env_id_or_kwargs, num_envs=min(num_envs, len(stream_seeds)),
                            stream_seeds=tuple(dict.fromkeys(stream_seeds)), seq_len=seq_len, backbone=backbone,
                            **env_kwargs)
    config, n = env.config, env.num_envs

    reset_seconds = 0.0
    if config.stream_seeds is not None and set(stream_seeds) <= set(config.stream_seeds):
        reset_seconds += prepare_features(env, stream_seeds)  # later resets and auto-resets hit the cache

    results: list[EpisodeResult] = []
    recorder = _AccessRecorder(config.wm_slots) if record_accesses else None
    step_seconds, step_tokens = 0.0, 0
    limit = env.episodes.n_chunks + 1  # an episode lasts at most n_chunks steps
    for round_index, group in enumerate(_rounds(stream_seeds, n)):
        # The round's reset seed (the auto-reset draws): a pure function of (seeds, round), distinct per round.
        round_seed = int(np.random.SeedSequence([*seeds, round_index]).generate_state(1)[0])
        pending = np.zeros(n, dtype=bool)
        pending[: min(n, len(stream_seeds) - round_index * n)] = True
        finished: dict[int, EpisodeResult] = {}
        for step in rollout(controller, env, seed=round_seed, stream_seeds=group, steps=limit):
            reset_seconds += step.reset_seconds
            step_seconds += step.seconds
            chunk = np.asarray(step.shown_info["chunk"])
            step_tokens += int(np.minimum(config.chunk_size, config.seq_len - chunk * config.chunk_size).sum())
            done = step.done
            if recorder is not None and round_index == 0 and pending[0]:
                recorder.add(step.observation, step.action[0], step.last_observation)
            for r in np.nonzero(done & pending)[0].tolist():
                finished[r] = _episode_result(step.info, r, int(group[r]), config.chunk_size, config.seq_len)
            if recorder is not None and round_index == 0 and done[0] and pending[0]:
                recorder.stream_seed = int(group[0])
            pending &= ~done
            if not pending.any():
                break
        if pending.any():
            raise RuntimeError(f"evaluate: episodes of sub-environments {np.nonzero(pending)[0].tolist()} did not "
                               f"end within {limit} steps; the env's episodes should end after n_chunks steps")
        results.extend(finished[r] for r in sorted(finished))

    share = 1 / len(seeds)
    return [EvalResult(controller=str(getattr(controller, "name", type(controller).__name__)), task=config.task,
                       seq_len=config.seq_len, chunk_size=config.chunk_size, seed=seed,
                       episodes=tuple(e for e, o in zip(results, owner) if o == i), step_seconds=step_seconds * share,
                       reset_seconds=reset_seconds * share, step_tokens=round(step_tokens * share),
                       chance_accuracy=_chance_accuracy(config),
                       accesses=recorder.result() if recorder is not None and i == 0 else None)
            for i, seed in enumerate(seeds)]


def _controller(spec: Any) -> Controller:
    if isinstance(spec, (str, Path)):
        from ahm.agents import make_controller

        return make_controller(spec)
    return as_controller(spec)


def _episode_result(final: Mapping[str, Any], row: int, stream_seed: int, chunk_size: int,
                    seq_len: int) -> EpisodeResult:
    """Row ``row`` of a final step info (nested (n, ...) arrays) as an :class:`EpisodeResult`."""
    targets, memory = final["targets"], final["memory"]
    correct, answered, total = (int(targets[k][row]) for k in ("correct", "answered", "total"))
    steps = int(final["steps"][row])
    tokens = min(steps * chunk_size, seq_len)
    ops = {name: int(memory[name][row]) for name in OP_NAMES}
    return EpisodeResult(stream_seed=stream_seed, accuracy=correct / total if total else 0.0, correct=correct,
                         answered=answered, total=total, is_success=bool(final["is_success"][row]), steps=steps,
                         tokens=tokens, ops=ops, ops_per_1k_tokens=1000.0 * sum(ops.values()) / tokens,
                         bytes_held=int(memory["bytes"][row]))


def _chance_accuracy(config: Any) -> float | None:
    """The task's ``chance_accuracy`` (a stream attribute; the same for every seed of a configuration)."""
    from ahm.envs.streams import make_task

    stream = make_task(config.task, config.seq_len, config.chunk_size, 0, **dict(config.task_kwargs))
    value = getattr(stream, "chance_accuracy", None)
    return None if value is None else float(value)


class _AccessRecorder:
    """Builds :class:`MemoryAccesses` of sub-environment 0 from its observations and actions, step by step."""

    def __init__(self, slots: int) -> None:
        self.slots = slots
        self.rows: list[tuple[np.ndarray, ...]] = []
        self.stream_seed = -1

    def add(self, before: Mapping[str, np.ndarray], action: np.ndarray, after: Mapping[str, np.ndarray]) -> None:
        """One step: ``before`` / ``after`` are the batched observations around it (row 0 is read), ``action`` (5,)."""
        k = self.slots
        occupied = before["wm_occupied"][0] > 0.5  # (K,) before this step's operations
        write, evict, retrieve, forget, ltm_forget = (int(x) for x in action)
        zeros = np.zeros(k, dtype=bool)
        writes, moved, dropped, forgets, reads = zeros.copy(), zeros.copy(), zeros.copy(), zeros.copy(), zeros.copy()
        if forget > 0:
            forgets[forget - 1] = True
        # Order within a step (AHMMemoryEnv, "Action Space"): retrieve, forget, then evict-and-write.
        still = occupied & ~forgets
        if write > 0:
            writes[write - 1] = True
            if still[write - 1]:
                (moved if evict == 1 else dropped)[write - 1] = True
        if retrieve in (1, 3) and occupied.any():
            rose = after["wm_uses"][0] > before["wm_uses"][0] + 1e-7
            if rose.any():
                reads[int(np.argmax(rose))] = True
            else:  # the top-1 slot was rewritten or forgotten this step: its count restarted
                sim = np.where(occupied, before["wm_similarity"][0], -np.inf)
                reads[int(np.argmax(sim))] = True
        self.rows.append((writes, reads, np.bool_(retrieve >= 2), moved, dropped, forgets, np.bool_(ltm_forget > 0)))

    def result(self) -> MemoryAccesses:
        k = self.slots
        if not self.rows:
            empty, line = np.zeros((0, k), dtype=bool), np.zeros(0, dtype=bool)
            return MemoryAccesses(empty, empty, line, empty, empty, empty, line, self.stream_seed)
        cols = [np.stack(c) for c in zip(*self.rows)]
        return MemoryAccesses(*cols, stream_seed=self.stream_seed)
