"""The alternation behind ``train_rl.py`` (ARCHITECTURE.md, "Training: two phases that alternate").

For R rounds:

1. **backbone phase** (supervised, :func:`ahm.training.supervised.train`): the AHM model is
   trained on the task's streams with the current controller deciding the memory
   operations (round 0: the ``teacher``, by default the oracle, since no controller
   has been learned yet; later rounds: the learned controller);
2. **controller phase** (RL, :func:`ahm.agents.learned.fit_controller`): a frozen copy
   of the model is the env's backbone and the controller is trained with PPO (or
   A2C / RecurrentPPO / MaskablePPO), continuing the previous round's model (round 0 with
   ``--imitate``: a new policy first copies a heuristic, then RL fine-tunes it).

Each round ends with an atomic checkpoint in ``out_dir/round_<r>/``: ``backbone/`` (the
AHM model incl. its memory projections and LTM codec, :func:`ahm.backbone.checkpoint.save_ahm_checkpoint`)
and ``controller/`` (:func:`ahm.agents.learned.save_controller`; with ``--imitate`` also
``controller_imitation/``, the policy after imitation and before RL), then ``state.json``
(written last) names the completed round; ``--resume`` continues after it. The memory's
contents belong to an episode and are not carried between rounds (every episode starts
empty), so a round's checkpoint is complete without them.

Then the benchmark (:func:`ahm.agents.benchmark.run_benchmark`) compares the learned
controller with every heuristic and the oracle on the final backbone and prints its table.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from ahm.agents import CONTROLLER_NAMES, HEURISTICS, Controller, make_controller
from ahm.agents.benchmark import BenchmarkConfig, benchmark_table, run_benchmark
from ahm.agents.controller_checkpoint import load_controller, load_mlp_policy, save_controller
from ahm.agents.fast_ppo import ActorCritic, FastPPO, FastPPOConfig
from ahm.agents.learned import ControllerTrainConfig, fit_controller
from ahm.agents.policies import slot_policy_kwargs
from ahm.agents.sb3_controllers import ALGORITHMS, SB3Controller, TorchPolicyController
from ahm.backbone import AHMModel
from ahm.backbone.checkpoint import (
    atomic_write_bytes,
    load_ahm_checkpoint,
    remove_stale_temporaries,
    save_ahm_checkpoint,
)
from ahm.backbone.errors import ResourceError
from ahm.envs import ENV_SPECS
from ahm.envs.default_backbones import shipped_backbone_path
from ahm.rewards import RewardWeights
from ahm.training.config import TrainLMConfig, int_tuple, str_tuple
from ahm.training.evaluation import heldout_task_loss
from ahm.training.supervised import train

__all__ = ["TrainRLConfig", "run_alternation"]

FAST_PPO = "fast_ppo"
"""The --algo of :class:`ahm.agents.fast_ppo.FastPPO` (the others are Stable-Baselines3's, ALGORITHMS)."""
MAX_SEQ_LEN = 10 * 2**20
"""Longest training episode (tokens): 10M, the benchmark's longest length."""
MAX_TRAINING_TOKENS = 2**28
"""Most tokens of training streams (--train-streams x --seq-len): their features are read through the backbone (about
an hour at 60K tokens/s on 2 cores) and cached (about 5 bytes per token: 1.3 GB) before the first RL step."""
STATE = "state.json"
IMITATION = "controller_imitation"
"""With --imitate: round 0's controller after imitation, before RL."""
STREAM_SEED_STRIDE = 1_000_003
"""The controller phase's training streams of run seed s are s * STREAM_SEED_STRIDE + i (i < --train-streams): with
fewer streams than this (prime) stride, runs with different --seed values never share a stream."""


@dataclass
class TrainRLConfig:
    """Alternate supervised backbone phases and RL controller phases, then benchmark the controller."""

    env_id: str = "AHMMemory-v0"
    """The environment (ahm.envs.ENV_SPECS); its task family is also the backbone phase's task."""
    backbone: str = "shipped"
    """Starting backbone: 'shipped' (the env's task-trained default checkpoint), 'fresh' (a new model), or a
    checkpoint directory (save_ahm_checkpoint)."""
    rounds: int = 2
    """Rounds of (backbone phase, controller phase)."""
    teacher: str = "teacher"
    """Controller of the first backbone phase, before one is learned: 'teacher' (the oracle plus distractor writes,
    ahm.agents.heuristics.TeacherController), 'oracle', or another heuristic."""
    lm_steps: int = 20
    """Supervised steps per backbone phase."""
    lm_lengths: tuple[int, ...] = (1024, 2048, 4096)
    """Sequence lengths of the backbone phase (mixed), comma-separated (K = 1024)."""
    lm_lr: float = 1e-3
    """Peak learning rate of each backbone phase."""
    keep_weight: float = 0.0
    """> 0: each backbone phase also trains a keep head on the backbone (hindsight labels: 1 where a later query asks
    for the fact ending in the chunk; train_lm.py --keep-weight), and every controller observes its prediction as
    'keep_score' from round 0 on. 0: no head (the observation of the starting backbone)."""
    algo: str = "fast_ppo"
    """RL algorithm: fast_ppo (ahm.agents.fast_ppo: batched PPO over the native vector env, masked, with the
    hindsight write credit), or Stable-Baselines3's ppo, a2c, recurrent_ppo, maskable_ppo."""
    rl_timesteps: int = 409_600
    """Env steps (chunks) per controller phase (0 with --imitate: the first phase only imitates)."""
    net_arch: tuple[int, ...] = (64, 64)
    """Hidden layer widths of the new policy's actor and critic MLPs (SB3's default 64,64); with --features slots,
    its first width is the global MLP's (two layers) and the head is linear."""
    features: str = "flat"
    """Policy features: 'flat' (every observation key flattened into the MLP) or 'slots' (one network shared by
    the WM slots scores each for write and forget: ahm.agents.policies.SlotFeaturesExtractor)."""
    imitate: str = ""
    """Behaviour cloning before the first controller phase's RL: the new policy first copies this heuristic
    ('update', 'oracle', ...; ahm.agents.learned.imitate), then RL fine-tunes it. '': start from scratch."""
    init_controller: str = ""
    """With --algo fast_ppo: a FastPPO controller checkpoint (an earlier run's round_<r>/controller) whose actor and
    critic the first controller phase continues, instead of a new policy (so --write-prior and --forget-prior, which
    set a new policy's start, do not apply): e.g. a policy trained on 16K-token episodes, continued on 100K ones.
    '': a new policy."""
    imitation_steps: int = 65_536
    """Env steps the heuristic plays for imitation."""
    imitation_epochs: int = 10
    """Passes of imitation over those steps (the epoch with the lowest loss on held-out streams is kept)."""
    imitation_lr: float = 3e-4
    """Learning rate of imitation (--rl-lr is RL's)."""
    dagger_rounds: int = 0
    """With --imitate: rounds of DAgger after the cloning (the clone plays --imitation-steps more steps, the
    heuristic labels the states it reaches, imitation continues over all of them). 0: plain cloning."""
    num_envs: int = 64
    """Sub-environments of the controller phase's vector env."""
    n_steps: int = 64
    """Rollout steps per sub-env per PPO update."""
    rl_lr: float = 1e-3
    """Learning rate of the controller (fast_ppo's; 3e-4 is SB3 PPO's default)."""
    gamma: float = 0.99
    """Discount factor per chunk of the controller phase."""
    gae_lambda: float = 0.95
    """GAE's lambda of the controller phase (near 1: the answer's credit reaches writes many chunks earlier)."""
    forget_prior: float = 0.9
    """Initial probability of "forget nothing" in the controller's two forget components (0: the uniform start,
    where almost no early episode keeps a fact long enough to be rewarded; ahm.agents.fast_ppo)."""
    write_prior: float = 0.0
    """Initial probability of "write nothing" in the controller's write component (0: the uniform start, which
    writes at 8 steps in 9, so that skipping a chunk is rarely tried where memory binds; ahm.agents.fast_ppo)."""
    ent_coef: float = 0.003
    """Entropy bonus of fast_ppo (the sum of the five components' entropies is about 5 at the start)."""
    credit_coef: float = 1.0
    """fast_ppo's hindsight write credit: a correct answer's read weight on an entry is added to the reward of the
    step that wrote it (ahm.agents.fast_ppo). 0: off."""
    reward_weights: str = ""
    """Weights of the controller phase's reward terms, over ahm.rewards.RewardWeights' defaults, comma-separated
    name=value (e.g. discard=0.5: credit for dropping a stale entry, a penalty for dropping, or pushing out, a fact
    still to be asked). '': the defaults."""
    seq_len: int = 16_384
    """Tokens per RL training episode."""
    train_streams: int = 64
    """Fixed set of training streams (their backbone features are cached after first use)."""
    chunk_size: int = 256
    """Tokens per chunk (env step)."""
    wm_slots: int = 8
    """Working-memory slots."""
    rl_ltm_capacity: int = 4
    """LTM entries of the controller phase's training env (0: the id's own, 512 for most ids); the benchmark always
    uses the id's own. A small one makes the policy meet a full LTM on short (cheap) episodes: over 16K tokens (64
    chunks) a policy that writes every chunk loses a mid-depth fact from 8 WM slots and 4 LTM entries, as it does
    from 512 entries over 1M tokens, so what it learns in training is what holds at 1M."""
    eval_lengths: tuple[int, ...] = (16 * 1024, 100 * 1024, 1024 * 1024)
    """Benchmark lengths, comma-separated (K = 1024, M = 1024 K: 16K,100K,1M)."""
    eval_seeds: int = 3
    """Benchmark seeds (the confidence interval is over them)."""
    eval_controllers: tuple[str, ...] = tuple(CONTROLLER_NAMES)
    """Heuristics the learned controller is compared with, comma-separated."""
    seed: int = 0
    """Seed of everything (backbone phases, PPO, env streams)."""
    threads: int = 1
    """torch threads (one is fastest for the memory's tiny ops on a CPU)."""
    out_dir: str = "runs/train_rl"
    """Checkpoints (round_<r>/backbone, round_<r>/controller, state.json), TensorBoard (tb/) and the benchmark."""
    resume: bool = False
    """Continue after the last completed round in out_dir."""
    progress: bool = True
    """Progress bars."""

    def __post_init__(self) -> None:
        if self.env_id not in ENV_SPECS:
            raise ValueError(f"--env-id must be one of {list(ENV_SPECS)}, got {self.env_id!r}")
        if self.algo != FAST_PPO and self.algo not in ALGORITHMS:
            raise ValueError(f"--algo must be one of {[FAST_PPO, *ALGORITHMS]}, got {self.algo!r}")
        for name in ("rounds", "num_envs", "n_steps", "seq_len", "train_streams", "chunk_size",
                     "wm_slots", "eval_seeds", "threads", "imitation_steps", "imitation_epochs"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be an int >= 1, got {getattr(self, name)!r}")
        if not isinstance(self.rl_timesteps, int) or self.rl_timesteps < (0 if self.imitate else 1):
            raise ValueError(f"--rl-timesteps must be an int >= 1 (0 only with --imitate), got {self.rl_timesteps!r}")
        if self.imitate and self.imitate not in HEURISTICS:
            raise ValueError(f"--imitate must be one of {tuple(HEURISTICS)} (or empty), got {self.imitate!r}")
        if self.init_controller:
            if self.algo != FAST_PPO:
                raise ValueError("--init-controller continues a FastPPO checkpoint: it needs --algo fast_ppo")
            try:
                FastPPO.load_policy(self.init_controller)
            except (OSError, ValueError) as err:
                raise ValueError(f"--init-controller {self.init_controller!r}: {err}") from err
        if self.imitate and self.algo != FAST_PPO and ALGORITHMS[self.algo].recurrent:
            raise ValueError("--imitate is not available with --algo recurrent_ppo")
        bad_dagger = not isinstance(self.dagger_rounds, int) or self.dagger_rounds < 0
        if bad_dagger or (self.dagger_rounds and not self.imitate):
            raise ValueError(f"--dagger-rounds must be an int >= 0 and needs --imitate, got {self.dagger_rounds!r}")
        if not self.keep_weight >= 0 or (self.keep_weight > 0 and self.lm_steps < 1):
            raise ValueError(f"--keep-weight must be >= 0, and > 0 needs --lm-steps >= 1 (the backbone phase trains "
                             f"the head), got --keep-weight {self.keep_weight!r} --lm-steps {self.lm_steps!r}")
        # Sequence fields: typed tuples (a comma-separated str or a list, as earlier versions took, is converted).
        try:
            self.net_arch = int_tuple(self.net_arch, "net-arch")
        except ValueError as err:
            raise ValueError(f"--net-arch must be comma-separated positive widths like 64,64, got {self.net_arch!r}"
                             ) from err
        self.lm_lengths = int_tuple(self.lm_lengths, "lm-lengths")
        self.eval_lengths = int_tuple(self.eval_lengths, "eval-lengths")
        self.eval_controllers = str_tuple(self.eval_controllers)
        if self.features not in ("flat", "slots"):
            raise ValueError(f"--features must be 'flat' or 'slots', got {self.features!r}")
        if self.features == "slots" and self.algo != FAST_PPO and ALGORITHMS[self.algo].recurrent:
            raise ValueError("--features slots is not available with --algo recurrent_ppo")
        if self.algo == FAST_PPO and (self.imitate or self.features != "flat"):
            raise ValueError("--algo fast_ppo learns from scratch with flat features: leave --imitate empty and "
                             "--features flat, or choose an SB3 algorithm (--algo ppo)")
        if self.seq_len > MAX_SEQ_LEN:
            raise ResourceError(f"--seq-len {self.seq_len:,} is beyond the {MAX_SEQ_LEN:,} tokens a training episode "
                                "may have (the benchmark's longest length)")
        if self.train_streams * self.seq_len > MAX_TRAINING_TOKENS:
            raise ResourceError(
                f"--train-streams {self.train_streams:,} x --seq-len {self.seq_len:,} = "
                f"{self.train_streams * self.seq_len:,} tokens would be read through the backbone before the first "
                f"RL step and their features cached (about 5 bytes per token); at most {MAX_TRAINING_TOKENS:,}: "
                "use fewer or shorter training streams")
        if self.rl_ltm_capacity < 0:
            raise ValueError(f"--rl-ltm-capacity must be >= 0 (0: the env's default), got {self.rl_ltm_capacity!r}")
        if not (0.0 <= self.gamma <= 1.0 and 0.0 <= self.gae_lambda <= 1.0):
            raise ValueError(f"--gamma and --gae-lambda must be in [0, 1], got {self.gamma!r}, {self.gae_lambda!r}")
        for name in ("forget_prior", "write_prior"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"--{name.replace('_', '-')} must be in [0, 1), got {getattr(self, name)!r}")
        if not (0.0 <= self.ent_coef < math.inf and 0.0 <= self.credit_coef < math.inf):
            raise ValueError(f"--ent-coef and --credit-coef must be finite numbers >= 0, got {self.ent_coef!r}, "
                             f"{self.credit_coef!r}")
        self.reward_weight_overrides()  # a bad name or value is an error before any work
        if self.lm_steps < 0 or not self.lm_lr > 0 or not self.rl_lr > 0 or not self.imitation_lr > 0:
            raise ValueError("--lm-steps must be >= 0 and --lm-lr, --rl-lr, --imitation-lr > 0")
        if self.teacher not in HEURISTICS:
            raise ValueError(f"--teacher must be one of {tuple(HEURISTICS)}, got {self.teacher!r}")
        if self.task == "text":
            raise ValueError("train_rl.py needs a task with answers; AHMMemory-Text-v0 has none")
        self.benchmark_config(Path(self.out_dir) / "round_0")  # the final benchmark's options, checked before step 1

    def benchmark_config(self, final: Path, learned: Sequence[Controller] = ()) -> BenchmarkConfig:
        """The final benchmark of the controller(s) ``learned`` on the backbone of round directory ``final``."""
        return BenchmarkConfig(tasks=(self.env_id,), lengths=self.eval_lengths,
                               controllers=[*learned, *self.eval_controllers] or ["none"], seeds=self.eval_seeds,
                               chunk_size=self.chunk_size, backbone=str(final / "backbone"),
                               out_dir=str(Path(self.out_dir) / "benchmark"), threads=self.threads,
                               progress=self.progress)

    @property
    def task(self) -> str:
        return ENV_SPECS[self.env_id].task

    def reward_weight_overrides(self) -> dict[str, float]:
        """``--reward-weights`` as a mapping (empty: the defaults), checked against :class:`RewardWeights`."""
        overrides: dict[str, float] = {}
        for item in filter(None, (part.strip() for part in self.reward_weights.split(","))):
            name, sep, value = item.partition("=")
            try:
                weight = float(value) if sep else None
            except ValueError:
                weight = None
            if weight is None:
                raise ValueError(f"--reward-weights takes comma-separated name=number pairs like discard=0.5, got "
                                 f"{item!r}")
            overrides[name.strip()] = weight
        try:  # unknown names and non-finite values are refused, with the known names
            RewardWeights.from_mapping(overrides)
        except ValueError as err:
            raise ValueError(f"--reward-weights {self.reward_weights!r}: {err}") from err
        return overrides


def _initial_backbone(cfg: TrainRLConfig) -> AHMModel | None:
    if cfg.backbone == "fresh":
        return None  # train() builds one from lm_cfg
    path = shipped_backbone_path(cfg.task) if cfg.backbone == "shipped" else Path(cfg.backbone)
    if path is None:
        raise FileNotFoundError(f"no shipped backbone for task {cfg.task!r}; use --backbone fresh or a checkpoint")
    model, _ = load_ahm_checkpoint(path)
    return model.train().requires_grad_(True)


def _lm_config(rl: TrainRLConfig, round_dir: Path, model: AHMModel | None) -> TrainLMConfig:
    """The backbone phase's config: the task's streams, and the shape of the model it continues."""
    shape: dict[str, Any] = {"chunk_size": rl.chunk_size}
    if model is not None:  # the phase must describe the model it continues
        c = model.config
        shape = dict(d_model=c.backbone.d_model, n_layer=c.backbone.n_layer, d_state=c.backbone.d_state,
                     key_dim=c.key_dim, value_dim=c.value_dim or 0, ltm_capacity=c.ltm_capacity,
                     ltm_codec=c.ltm_codec, integration=c.integration, chunk_size=c.chunk_size)
    return TrainLMConfig(source="tasks", tasks=rl.task, lengths=rl.lm_lengths, curriculum="mixed",
                         controller=rl.teacher, window=max(rl.lm_lengths),
                         wm_slots=rl.wm_slots, lr=rl.lm_lr, lm_weight=0.2, max_steps=max(rl.lm_steps, 1),
                         seed=rl.seed, threads=rl.threads, out_dir=str(round_dir / "lm"), checkpoint_every=10**9,
                         progress=rl.progress, keep_weight=rl.keep_weight, **shape)


def _policy_kwargs(cfg: TrainRLConfig) -> dict[str, Any]:
    widths = list(cfg.net_arch)
    if cfg.features == "slots":
        return slot_policy_kwargs(hidden=widths[0])
    return {"net_arch": widths}


RESUMABLE_CHANGES = ("rounds", "resume", "progress", "out_dir", "eval_lengths", "eval_seeds", "eval_controllers")
"""Options that may differ between a run and its --resume (more rounds, another final benchmark); any other change
would continue a run with settings it was not trained with."""


def _check_same_run(cfg: TrainRLConfig, state: Mapping[str, Any], path: Path) -> None:
    """Refuse to --resume a run saved with other settings, naming each that differs (before any work is done)."""
    saved = state.get("config")
    if not isinstance(saved, Mapping):
        raise ValueError(f"--resume: {path} records no settings; it was not written by this version of train_rl.py")
    now = json.loads(json.dumps(asdict(cfg)))  # tuples as lists, as they were saved
    # A setting added after the run was saved (--write-prior) ran at its default, which kept the earlier behaviour.
    added = {f.name: f.default for f in dataclasses.fields(TrainRLConfig) if f.name not in saved}
    saved = {**json.loads(json.dumps(added)), **saved}
    differ = [f"--{k.replace('_', '-')} {saved.get(k)!r} -> {now[k]!r}" for k in now
              if k not in RESUMABLE_CHANGES and saved.get(k) != now[k]]
    if differ:
        raise ValueError(f"--resume: {path} was saved with other settings ({'; '.join(differ)}); resume with the "
                         "saved settings or start a new --out-dir")
    if not isinstance(state.get("completed_rounds"), int) or state["completed_rounds"] < 1:
        raise ValueError(f"--resume: {path} names no completed round ({state.get('completed_rounds')!r})")


def _complete_round(cfg: TrainRLConfig, out: Path, r: int, round_dir: Path, timings: list[dict[str, float]],
                    t0: float, t1: float, t2: float, log: Callable[[str], None],
                    heldout: Mapping[str, float]) -> None:
    """Name round ``r`` complete (``state.json``, written atomically after its checkpoints) and log its timing;
    ``heldout``: the backbone phase's held-out losses, recorded with the timings."""
    atomic_write_bytes(out / STATE, json.dumps({"completed_rounds": r + 1, "config": asdict(cfg)}).encode())
    timings.append({"round": r, "backbone_s": round(t1 - t0, 1), "controller_s": round(t2 - t1, 1),
                    **{k: round(v, 6) for k, v in heldout.items()}})
    log(f"round {r}: backbone phase {t1 - t0:.0f}s, controller phase {t2 - t1:.0f}s ({cfg.rl_timesteps} steps); "
        f"checkpoint {round_dir}/")


def run_alternation(cfg: TrainRLConfig, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the rounds and the final benchmark (module doc); returns timings, paths and the benchmark rows."""
    torch.set_num_threads(cfg.threads)
    out = Path(cfg.out_dir)
    start = time.perf_counter()
    first_round, model, sb3_model = 0, None, None
    policy: ActorCritic | None = None  # --algo fast_ppo's network (actor and critic), continued across rounds
    remove_stale_temporaries(out)  # a run killed while writing a checkpoint left them
    if cfg.resume:
        try:
            state = json.loads((out / STATE).read_text())
        except FileNotFoundError as err:
            raise FileNotFoundError(f"--resume: no {STATE} in {str(out)!r}; start without --resume") from err
        except json.JSONDecodeError as err:
            raise ValueError(f"--resume: {out / STATE} is corrupted ({err})") from err
        _check_same_run(cfg, state, out / STATE)
        done = int(state["completed_rounds"])
        last = out / f"round_{done - 1}"
        model, _ = load_ahm_checkpoint(last / "backbone")
        model.train().requires_grad_(True)
        if cfg.algo == FAST_PPO:
            policy = FastPPO.load_policy(last / "controller")
        else:
            sb3_model = load_controller(last / "controller", num_envs=cfg.num_envs).model
        first_round = done
        log(f"resumed after round {done - 1} from {out}")
    else:
        model = _initial_backbone(cfg)
        if model is not None and cfg.keep_weight > 0:  # the head exists before the first controller sees anything
            model = model.with_heads(keep=True)
        if cfg.init_controller:
            policy = FastPPO.load_policy(cfg.init_controller)
            log(f"the first controller phase continues {cfg.init_controller}")
    timings: list[dict[str, float]] = []
    for r in range(first_round, cfg.rounds):
        round_dir = out / f"round_{r}"
        # ---- backbone phase: supervised, memory ops from the current controller
        t0 = time.perf_counter()
        lm_cfg = _lm_config(cfg, round_dir, model)
        teacher: Controller = (make_controller(cfg.teacher) if sb3_model is None and policy is None else
                               SB3Controller(sb3_model) if sb3_model is not None else
                               TorchPolicyController(policy, name=FAST_PPO))
        heldout: dict[str, float] = {}
        if cfg.lm_steps > 0:
            if model is not None:  # the phase's objective on held-out streams, before and after, same operations
                heldout["heldout_loss_before"] = heldout_task_loss(model, lm_cfg, teacher)["loss"]
            result = train(lm_cfg, log=log, controller=teacher, model=model)
            model = result.model
            heldout["heldout_loss_after"] = heldout_task_loss(model, lm_cfg, teacher)["loss"]
            change = " -> ".join(f"{v:.4f}" for v in heldout.values())  # before (if any), then after
            log(f"round {r} backbone phase: {result.steps} steps, training-batch loss {result.losses[0]:.3f} -> "
                f"{result.losses[-1]:.3f}, held-out loss {change}, controller {teacher.name!r}")
        if model is None:  # --backbone fresh with --lm-steps 0
            raise ValueError("--backbone fresh needs --lm-steps > 0")
        t1 = time.perf_counter()
        # ---- controller phase: RL on the env with the backbone frozen
        frozen = copy.deepcopy(model).eval().requires_grad_(False)
        streams = [cfg.seed * STREAM_SEED_STRIDE + i for i in range(cfg.train_streams)]
        env_kwargs = {"backbone": frozen, "seq_len": cfg.seq_len, "chunk_size": cfg.chunk_size,
                      "wm_slots": cfg.wm_slots, "stream_seeds": streams}
        if cfg.rl_ltm_capacity:
            env_kwargs["ltm_capacity"] = cfg.rl_ltm_capacity
        if cfg.reward_weights:
            env_kwargs["reward_weights"] = cfg.reward_weight_overrides()
        trained_on = {k: v for k, v in env_kwargs.items() if k not in ("backbone", "stream_seeds")}
        spec = {"env_id": cfg.env_id, "env_kwargs": {**trained_on, "backbone": str(round_dir / "backbone")}}
        if cfg.algo == FAST_PPO:
            learner = FastPPO(FastPPOConfig(
                env_id=cfg.env_id, env_kwargs=env_kwargs, num_envs=cfg.num_envs, n_steps=cfg.n_steps,
                learning_rate=cfg.rl_lr, gamma=cfg.gamma, gae_lambda=cfg.gae_lambda, ent_coef=cfg.ent_coef,
                credit_coef=cfg.credit_coef, forget_prior=cfg.forget_prior, write_prior=cfg.write_prior,
                net_arch=cfg.net_arch,
                seed=cfg.seed + r), policy=policy)
            st = learner.learn(cfg.rl_timesteps, progress=cfg.progress)
            policy = learner.policy
            log(f"round {r} controller phase (fast_ppo): {st['timesteps']} steps, {st['steps_per_second']:.0f} "
                f"steps/s after {st['warmup_seconds']:.0f}s reading the training streams, training accuracy "
                f"{st['accuracy']:.3f} (last 64 episodes)")
            t2 = time.perf_counter()
            save_ahm_checkpoint(round_dir / "backbone", model, extra={"round": r, "train_rl_config": asdict(cfg)})
            learner.save(round_dir / "controller", spec, name=FAST_PPO)
            _complete_round(cfg, out, r, round_dir, timings, t0, t1, t2, log, heldout)
            continue
        rl_cfg = ControllerTrainConfig(
            algo=cfg.algo, env_id=cfg.env_id, num_envs=cfg.num_envs, total_timesteps=cfg.rl_timesteps,
            n_steps=cfg.n_steps, batch_size=min(256, cfg.n_steps * cfg.num_envs), learning_rate=cfg.rl_lr,
            gamma=cfg.gamma, gae_lambda=cfg.gae_lambda,
            seed=cfg.seed + r,  # each round's RL draws fresh rollouts (the streams stay the same)
            tensorboard_log=str(out / "tb"), forget_prior=cfg.forget_prior, write_prior=cfg.write_prior,
            imitate=cfg.imitate if sb3_model is None else "", imitation_steps=cfg.imitation_steps,
            imitation_epochs=cfg.imitation_epochs, imitation_lr=cfg.imitation_lr, dagger_rounds=cfg.dagger_rounds,
            env_kwargs=env_kwargs, progress=cfg.progress,
            features=cfg.features, policy_kwargs=_policy_kwargs(cfg))
        reuse_env = None
        if rl_cfg.imitate:  # imitation first, kept on its own (the benchmark scores it too), then RL continues it
            fit = fit_controller(dataclasses.replace(rl_cfg, total_timesteps=0))
            sb3_model, st = fit.model, fit.imitation_stats
            assert st is not None  # config.imitate: fit_controller returns the imitation's statistics
            reuse_env = sb3_model.get_env().venv  # the adapter over the env whose stream features are cached
            log(f"round {r} imitation of {cfg.imitate!r}: {int(st['demonstrations'])} steps (teacher accuracy "
                f"{st['teacher_accuracy']:.3f}), agreement on held-out streams "
                f"{st.get('holdout_agreement', float('nan')):.3f} after {int(st['epochs'])} epochs"
                + "".join(f"; DAgger round {d}: the clone's own accuracy {st[f'dagger_{d}_policy_accuracy']:.3f}"
                          for d in range(1, cfg.dagger_rounds + 1)))
            save_controller(round_dir / IMITATION, sb3_model, spec)
        if rl_cfg.total_timesteps:
            sb3_model = fit_controller(dataclasses.replace(rl_cfg, imitate=""), model=sb3_model, env=reuse_env).model
        t2 = time.perf_counter()
        # ---- checkpoint: backbone and controller, then the state that names the round (atomic, last)
        save_ahm_checkpoint(round_dir / "backbone", model, extra={"round": r, "train_rl_config": asdict(cfg)})
        save_controller(round_dir / "controller", sb3_model, spec)
        _complete_round(cfg, out, r, round_dir, timings, t0, t1, t2, log, heldout)
    final = out / f"round_{cfg.rounds - 1}"
    label = f"{cfg.algo} (imitation only)" if cfg.imitate and cfg.rl_timesteps == 0 else f"{cfg.algo} (learned)"
    learned: list[Controller] = [load_mlp_policy(final / "controller", name=label) if cfg.algo == FAST_PPO else
                                 load_controller(final / "controller", name=label)]
    if cfg.imitate and cfg.rl_timesteps and (out / "round_0" / IMITATION).exists():
        learned.append(load_controller(out / "round_0" / IMITATION, name=f"{cfg.algo} (imitation only)"))
    rows = run_benchmark(cfg.benchmark_config(final, learned), log=None)
    table = benchmark_table(rows)
    log(f"\ncontroller benchmark ({cfg.env_id}, backbone {final / 'backbone'}, {cfg.eval_seeds} seeds):\n")
    log(table)
    total = time.perf_counter() - start
    log(f"\ntrain_rl.py finished in {total:.0f}s; checkpoints in {out}/, TensorBoard in {out / 'tb'}/")
    return {"seconds": total, "rounds": timings, "rows": rows, "table": table}
