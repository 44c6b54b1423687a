"""The supervised phase: train an :class:`~ahm.backbone.AHMModel` with truncated backpropagation through time.

One optimisation step is one window of W tokens of b sequences (:class:`~ahm.training.data.SequenceBatch`):
the window is processed chunk by chunk with :meth:`AHMModel.process_chunk`, the SSM
state and the memory carried from the previous window of the same sequences but
detached (truncated BPTT), and gradient flows through everything the window wrote
and read. The loss is

    lm_weight * (mean next-token cross-entropy over the window's tokens)
    + answer_weight * (mean cross-entropy of the answers at query boundaries)

where an answer is scored exactly as the environment scores it: the next-token
logits at the boundary of the query's chunk from its last hidden state plus the
memory retrieved at that boundary (``model.readout(h_last_t, r_t)``).

Memory operations come from a controller (:mod:`ahm.agents`: a heuristic, the
oracle, a learned checkpoint, or ``none``):

* **task streams**: the controller acts in the environment itself
  (:func:`controller_actions` runs an :class:`~ahm.envs.memory_env.EpisodeBatch` over the
  batch's streams with the current weights, without gradient), so it sees exactly the
  observations and, for the oracle, the ground truth it would see in ``AHMMemory-v0``;
  the training pass then replays those operations. With the same weights the replay
  reproduces the environment's memory exactly (readout integration: the backbone does
  not depend on memory; state integration: the same retrieved vectors enter the same chunks);
* **text**: the controller acts online inside the training pass on the env's observation
  format (:func:`ahm.envs.memory_env.observation_arrays`); the oracle needs ground truth
  and is refused.

Distributed: under ``torchrun`` the window loss is computed through a
``DistributedDataParallel`` module (gloo on CPU, NCCL on GPU), every rank on its own
batches; ranks start from rank 0's weights, so replicas stay identical.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shlex
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ahm.agents import Controller, make_controller
from ahm.backbone import AHMConfig, AHMModel, AHMState, MambaConfig, MemoryObservation, MemoryOps, NullController
from ahm.envs.memory_env import (
    AHMMemoryConfig,
    EpisodeBatch,
    load_ahm_checkpoint,
    load_ahm_config,
    observation_arrays,
    save_ahm_checkpoint,
)
from ahm.training.checkpoint import (
    current_model_dir,
    has_training_checkpoint,
    load_training_checkpoint,
    save_training_checkpoint,
)
from ahm.training.data import Curriculum, SequenceBatch, TaskSource, TextSource

__all__ = ["TrainLMConfig", "train", "controller_actions", "ReplayController", "ObservationBridge",
           "text_bits_per_byte", "task_accuracy", "build_model", "TrainResult"]


# ====================================================================== configuration
@dataclass
class TrainLMConfig:
    """Train an AHM model (backbone + memory projections + codec + readout) on text or task streams."""

    source: str = "text"
    """'text' (byte-level language modelling) or 'tasks' (the streams of ahm.envs, with answers)."""
    corpus: str = "stdlib"
    """Text corpus: 'stdlib' (the Python standard library's sources, built in) or a path (see ahm.envs.text_corpus)."""
    max_documents: int = 0
    """Use only the first N documents of the corpus (0: all)."""
    tasks: str = "passkey"
    """Task families for --source tasks, comma-separated (passkey, mqar, forget, copy, decoy)."""
    task_kwargs: str = ""
    """JSON object of keyword arguments for every task stream, e.g. '{"variant": "repeated"}'."""
    lengths: str = "1024,2048,4096"
    """Task sequence lengths (tokens) of the curriculum, comma-separated."""
    curriculum: str = "grow"
    """'grow' (start short, add the next length once answers are right) or 'mixed' (all lengths from the start)."""
    controller: str = "write_all"
    """Who decides memory operations: a heuristic (none, random, write_all, lru, surprise, dedupe), 'oracle'
    (task streams only), or the path of a learned controller."""
    seq_len: int = 8192
    """Text: tokens per training sequence (state and memory carried across its windows)."""
    window: int = 2048
    """Tokens per truncated-backpropagation window (one optimisation step); a multiple of chunk_size."""
    chunk_size: int = 256
    """Tokens per chunk (memory operations happen at chunk boundaries)."""
    d_model: int = 64
    """Width of the backbone."""
    n_layer: int = 2
    """Number of Mamba blocks."""
    d_state: int = 16
    """SSM state size per channel."""
    key_dim: int = 32
    """Memory key / query width."""
    value_dim: int = 0
    """Memory value width (0: d_model)."""
    wm_slots: int = 8
    """Working-memory slots."""
    ltm_capacity: int = 512
    """Long-term memory entries."""
    ltm_codec: str = "int8"
    """Long-term memory codec: none, int8, pq, autoencoder, hash."""
    integration: str = "readout"
    """'readout' (memory enters the answer / logits) or 'state' (gated into the SSM input)."""
    level_readout: str = ""
    """How the integration reads the two memory levels: 'shared' (one projection of the WM read + the LTM read) or
    'separate' (columns of its own per level); '': 'shared' for a fresh model, the checkpoint's own with
    --init-from. Given with --init-from, the loaded model is converted (separate -> shared keeps the WM's columns)."""
    integration_init: float = 1.0
    """Scale of the random initialisation of the memory integration projection (0: zero, AHMModel's default)."""
    write_recency_init: float = 0.1
    """Initial recency decay (per token) of the write pooling (AHMModel's default 0.1: the last ~10 tokens share
    the write). The recall tasks' facts are their chunk's last 2-3 tokens among random value tokens: 1.0 puts
    58% of the write on the last token and 21% on the one before from the start."""
    embedding_init: float = 0.02
    """Std of the token embeddings' normal initialisation (tied with the LM head; 0.02 is Mamba's). The
    8,192-token recall tasks need a larger one (0.125 for the shipped recall backbone): their answer is copied from
    memory through the tied head, whose logit margin scales with the embeddings' squared norm."""
    batch: int = 8
    """Sequences per step (per process under torchrun)."""
    lr: float = 3e-3
    """Peak AdamW learning rate (linear warm-up over the first 5% of steps, cosine after)."""
    weight_decay: float = 0.1
    """AdamW weight decay."""
    lm_weight: float = 1.0
    """Weight of the next-token loss."""
    answer_weight: float = 1.0
    """Weight of the answer loss at query boundaries (task streams)."""
    max_steps: int = 300
    """Optimisation steps (windows)."""
    minutes: float = 0.0
    """Wall-clock budget (0: none); a run stopped by it cannot be resumed bit-exactly (use max_steps for that)."""
    seed: int = 0
    """Seed of the initialisation (torch) and of the data (numpy; rank r uses seed + r)."""
    threads: int = 0
    """torch intra-op threads (0: torch's default)."""
    out_dir: str = "checkpoints/lm"
    """Where checkpoints (model.safetensors, ahm_model.json, optimizer.safetensors, trainer.json) and logs go."""
    init_from: str = ""
    """Start from the weights of this AHM checkpoint (save_ahm_checkpoint folder, e.g. an earlier run's export or
    step_<N>/, or an earlier run's out_dir: its latest checkpoint) instead of a fresh initialisation; its model
    settings replace the ones above."""
    export_dir: str = ""
    """Also write the final model alone (model.safetensors + ahm_model.json, with this command recorded) here,
    e.g. envs/checkpoints/<task> to ship it as the env's default backbone."""
    checkpoint_every: int = 50
    """Save a checkpoint after the first sequence batch that ends at or after every N steps (and at the end)."""
    resume: bool = False
    """Continue the run saved in out_dir exactly where it stopped."""
    eval: bool = False
    """Only evaluate the checkpoint in out_dir (no training)."""
    eval_contexts: str = "8192,65536,0"
    """Text evaluation: context lengths in bytes (0: the whole document), comma-separated."""
    eval_bytes: int = 100_000
    """Text evaluation: held-out bytes per context length."""
    eval_lengths: str = ""
    """Task evaluation: sequence lengths, comma-separated ('' : the curriculum's lengths)."""
    eval_episodes: int = 16
    """Task evaluation: episodes per length."""
    tensorboard: bool = True
    """Write TensorBoard logs to out_dir/tb."""
    progress: bool = True
    """Show a progress bar."""

    def __post_init__(self) -> None:
        for name in ("seq_len", "window", "chunk_size", "d_model", "n_layer", "d_state", "key_dim", "wm_slots",
                     "ltm_capacity", "batch", "max_steps", "checkpoint_every", "eval_bytes", "eval_episodes"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be an int >= 1, got {getattr(self, name)!r}")
        for name in ("value_dim", "max_documents", "threads"):
            if getattr(self, name) < 0:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(self, name)!r}")
        if self.level_readout not in ("", "shared", "separate"):
            raise ValueError(f"--level-readout must be '', 'shared' or 'separate', got {self.level_readout!r}")
        if self.source not in ("text", "tasks"):
            raise ValueError(f"--source must be 'text' or 'tasks', got {self.source!r}")
        if not (self.embedding_init > 0 and self.write_recency_init > 0):
            raise ValueError(f"--embedding-init and --write-recency-init must be > 0, got {self.embedding_init!r} "
                             f"and {self.write_recency_init!r}")
        if not (self.lr > 0 and self.weight_decay >= 0 and self.lm_weight >= 0 and self.answer_weight >= 0
                and self.minutes >= 0):
            raise ValueError("--lr must be > 0; --weight-decay, --lm-weight, --answer-weight, --minutes >= 0")
        if self.window % self.chunk_size:
            raise ValueError(f"--window ({self.window}) must be a multiple of --chunk-size ({self.chunk_size})")
        if self.source == "text" and self.controller == "oracle":
            raise ValueError("--controller oracle reads task ground truth; text has none: pick a heuristic")
        self.length_list(self.lengths, "lengths")
        self.length_list(self.eval_contexts, "eval-contexts", allow_zero=True)
        if self.eval_lengths:
            self.length_list(self.eval_lengths, "eval-lengths")
        self.task_kwargs_dict()

    @staticmethod
    def length_list(text: str, name: str, allow_zero: bool = False) -> tuple[int, ...]:
        try:
            values = tuple(int(x) for x in text.split(",") if x.strip())
        except ValueError as err:
            raise ValueError(f"--{name} must be comma-separated integers, got {text!r}") from err
        if not values or any(v < (0 if allow_zero else 1) for v in values):
            raise ValueError(f"--{name} must be comma-separated integers >= {0 if allow_zero else 1}, got {text!r}")
        return values

    def task_kwargs_dict(self) -> dict[str, Any]:
        if not self.task_kwargs:
            return {}
        try:
            value = json.loads(self.task_kwargs)
        except json.JSONDecodeError as err:
            raise ValueError(f"--task-kwargs must be a JSON object, got {self.task_kwargs!r} ({err})") from err
        if not isinstance(value, dict):
            raise ValueError(f"--task-kwargs must be a JSON object, got {self.task_kwargs!r}")
        return value

    def task_list(self) -> tuple[str, ...]:
        return tuple(t.strip() for t in self.tasks.split(",") if t.strip())

    # The settings that define the model; a resumed run must match them.
    MODEL_FIELDS = ("d_model", "n_layer", "d_state", "key_dim", "value_dim", "chunk_size", "wm_slots",
                    "ltm_capacity", "ltm_codec", "integration", "level_readout", "integration_init", "embedding_init",
                    "write_recency_init")


_DEFAULTS = {f.name: f.default for f in dataclasses.fields(TrainLMConfig)}


def build_model(cfg: TrainLMConfig, vocab_size: int, level_readout: str | None = None) -> AHMModel:
    """A fresh AHM model for ``cfg`` (initialised from torch's global generator); ``level_readout`` overrides
    ``cfg.level_readout`` (default ``shared``)."""
    backbone = MambaConfig(vocab_size=vocab_size, d_model=cfg.d_model, n_layer=cfg.n_layer, d_state=cfg.d_state)
    model = AHMModel(AHMConfig(backbone, chunk_size=cfg.chunk_size, wm_slots=cfg.wm_slots,
                               ltm_capacity=cfg.ltm_capacity, key_dim=cfg.key_dim, value_dim=cfg.value_dim or None,
                               ltm_codec=cfg.ltm_codec, integration=cfg.integration,
                               level_readout=level_readout or cfg.level_readout or "shared"))
    # AHMModel starts its integration projection at zero (an untrained AHM model is its backbone LM). Trained
    # from scratch, that zero is a saddle: the projection learns only once the stored values carry the answer,
    # and the backbone learns to store it only through the projection. A small random start breaks the tie
    # (measured on passkey: with the zero start the answer stayed at chance for 300 steps).
    with torch.no_grad():
        proj = model.integration.proj.weight
        proj.normal_(0.0, cfg.integration_init / math.sqrt(proj.shape[1]))
        if cfg.embedding_init != 0.02:  # keep torch's generator stream (and so every earlier run) unchanged at 0.02
            model.backbone.embedding.weight.normal_(0.0, cfg.embedding_init)
    model.set_write_recency(cfg.write_recency_init)
    return model


# ====================================================================== controllers during training
class ReplayController:
    """A backbone-level controller that returns given operations: ``actions`` (b, 5) env actions of one chunk."""

    def __init__(self, actions: np.ndarray, device: torch.device) -> None:
        a = torch.as_tensor(actions, dtype=torch.int64, device=device)
        self.ops = MemoryOps(a[:, 0] - 1, a[:, 1], a[:, 2], a[:, 3] - 1, a[:, 4])

    def __call__(self, obs: MemoryObservation) -> MemoryOps:
        return self.ops


def _flat_masks(memory: Any) -> Callable[[], Tensor]:
    """A function returning the memory's valid-operation mask in the env's flat layout (b, 2 K + 12)."""
    return lambda: torch.cat(list(memory.op_masks()), dim=1)


class ObservationBridge:
    """An :class:`ahm.agents.Controller` as a backbone-level controller (``MemoryObservation -> MemoryOps``).

    It shows the controller the env's observation format (:func:`observation_arrays`) and
    action masks, without ground truth (``info=None``); used on text streams.
    """

    def __init__(self, controller: Controller, n_chunks: int, memory_masks: Callable[[], Tensor]) -> None:
        self.controller, self.n_chunks, self.memory_masks = controller, n_chunks, memory_masks
        self.chunk = 0

    def __call__(self, obs: MemoryObservation) -> MemoryOps:
        b = obs.ltm_fill.shape[0]
        arrays = observation_arrays(obs, np.full(b, self.chunk), self.n_chunks)
        start = np.full(b, self.chunk == 0)
        actions = self.controller.act(arrays, self.memory_masks().cpu().numpy(), None, start)
        self.chunk += 1
        return ReplayController(actions, obs.ltm_fill.device).ops


@torch.no_grad()
def controller_actions(model: AHMModel, batch: SequenceBatch, controller: Controller, wm_slots: int,
                       ltm_capacity: int, task_kwargs: dict[str, Any] | None = None
                       ) -> tuple[np.ndarray, np.ndarray]:
    """Run ``controller`` in the environment on the batch's task streams with the model's current weights.

    Returns the actions (b, n, 5) int64 (no-ops after a row's episode ended) and the
    per-row answer accuracy (b,) the environment scored.
    """
    if batch.task is None:
        raise ValueError("controller_actions needs a task batch")
    b, length = batch.tokens.shape
    was_training = model.training
    model.eval()
    try:
        config = AHMMemoryConfig(task=batch.task, seq_len=length, chunk_size=model.config.chunk_size,
                                 wm_slots=wm_slots, ltm_capacity=ltm_capacity, backbone=model,
                                 task_kwargs=dict(task_kwargs or {}), feature_cache_size=0)
        episodes = EpisodeBatch(config, batch=b)
        episodes.reset_rows(np.arange(b), list(batch.stream_seeds))
        n = episodes.n_chunks
        actions = np.zeros((b, n, 5), dtype=np.int64)
        done = np.zeros(b, dtype=bool)
        correct, total = np.zeros(b), np.ones(b)
        controller.reset(b)
        obs, info = episodes.observe(), episodes.info()
        start = np.ones(b, dtype=bool)
        for t in range(n):
            a = np.asarray(controller.act(obs, episodes.masks, info, start), dtype=np.int64)
            a[done] = 0
            actions[:, t] = a
            out = episodes.step(a)
            start = np.zeros(b, dtype=bool)
            ended = (out.terminated | out.truncated) & ~done
            if ended.any():
                correct[ended] = out.info["targets"]["correct"][ended]
                total[ended] = out.info["targets"]["total"][ended]
                done |= ended
            if done.all():
                break
            if ended.any():  # keep the batch steppable: restart ended rows; their later actions are no-ops
                rows = np.nonzero(ended)[0]
                episodes.reset_rows(rows, [batch.stream_seeds[r] for r in rows])
                episodes.observe()
            obs, info = episodes.observation, out.info
    finally:
        model.train(was_training)
    return actions, correct / total


# ====================================================================== the window loss
class WindowOutput(NamedTuple):
    loss: Tensor
    lm_loss: Tensor
    answer_loss: Tensor
    answers: Tensor
    """Scored answers in the window."""
    answers_correct: Tensor
    ops: Tensor
    """(5,) operation counts: writes, moves to LTM, WM retrievals, LTM retrievals, forgets."""


class WindowLoss(nn.Module):
    """The loss of one TBPTT window as a module (so DistributedDataParallel can wrap it)."""

    def __init__(self, model: AHMModel, lm_weight: float, answer_weight: float) -> None:
        super().__init__()
        self.model, self.lm_weight, self.answer_weight = model, lm_weight, answer_weight

    def forward(self, tokens: Tensor, next_token: Tensor, state: AHMState, controllers: Sequence[Any],
                answer_targets: Tensor | None) -> tuple[WindowOutput, AHMState]:
        """tokens (b, W), next_token (b,) the token after the window (-1: none), one controller per chunk,
        answer_targets (b, W / C) or None -> the losses and the state after the window."""
        model, c = self.model, self.model.config.chunk_size
        lm_sum = tokens.new_zeros((), dtype=torch.float32)
        lm_count = 0
        ans_sum = lm_sum.clone()
        answers = correct = torch.zeros((), dtype=torch.int64)
        ops = torch.zeros(5, dtype=torch.int64)
        width = tokens.shape[1]
        for i, s in enumerate(range(0, width, c)):
            chunk = tokens[:, s : s + c]
            follow = tokens[:, s + c] if s + c < width else next_token
            if self.lm_weight > 0:
                out = model.process_chunk(chunk, state, controllers[i])
                state, hidden, o = out.state, out.features.hidden, out.ops
                logits = out.logits.float()
                lm_sum = lm_sum + F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]),
                                                  chunk[:, 1:].reshape(-1), reduction="sum")
                lm_count += chunk.shape[0] * (chunk.shape[1] - 1)
                has_next = follow >= 0
                if bool(has_next.any()):
                    lm_sum = lm_sum + F.cross_entropy(logits[has_next, -1], follow[has_next], reduction="sum")
                    lm_count += int(has_next.sum())
            else:  # no next-token loss: skip the (b, C, V) logits, the costly part at large vocabularies
                features, backbone = model.chunk_features(chunk, state.backbone, model.input_offset(state.retrieved))
                step = model.memory_step(features.boundary, state.memory, controllers[i])
                state, hidden, o = AHMState(backbone, state.memory, step.retrieved), features.hidden, step.ops
            if answer_targets is not None:
                target = answer_targets[:, i]
                scored = target >= 0
                if bool(scored.any()):
                    answer = model.readout(hidden[scored, -1:], state.retrieved[scored])[:, 0].float()
                    ans_sum = ans_sum + F.cross_entropy(answer, target[scored], reduction="sum")
                    answers = answers + int(scored.sum())
                    correct = correct + int((answer.argmax(-1) == target[scored]).sum())
            ops += torch.stack([(o.write_slot >= 0).sum(), ((o.write_slot >= 0) & (o.evict_to_ltm == 1)).sum(),
                                ((o.retrieve == 1) | (o.retrieve == 3)).sum(), (o.retrieve >= 2).sum(),
                                (o.forget_slot >= 0).sum() + (o.ltm_forget > 0).sum()]).cpu()
        lm_loss = lm_sum / max(lm_count, 1)
        answer_loss = ans_sum / answers.clamp(min=1)
        loss = self.lm_weight * lm_loss + self.answer_weight * answer_loss
        if not loss.requires_grad:  # no term in this window (no answer, no LM loss): a zero that keeps the graph,
            loss = loss + 0.0 * sum(p.sum() for p in model.parameters())  # so backward (and DDP) still run
        return WindowOutput(loss, lm_loss.detach(), answer_loss.detach(), answers, correct, ops), state


# ====================================================================== evaluation
@torch.no_grad()
def text_bits_per_byte(model: AHMModel, documents: Sequence[np.ndarray], context: int,
                       controller: Controller | None, max_bytes: int) -> tuple[float, int]:
    """Bits per byte of held-out ``documents`` with the state and memory reset every ``context`` bytes (0: never).

    ``controller`` decides memory operations (None: no memory at all). Returns (bits per byte, bytes predicted).
    """
    model.eval()
    device = model.lm_head.weight.device
    c = model.config.chunk_size
    nats, count = 0.0, 0
    for doc in documents:
        if len(doc) < 2:
            continue
        tokens = torch.as_tensor(doc.astype(np.int64), device=device)
        n_pred = len(doc) - 1
        segment = context or n_pred
        for a in range(0, n_pred, segment):
            b = min(a + segment, n_pred)
            state = model.init_state(1, device)
            n_chunks = math.ceil((b - a) / c)
            if controller is None:
                backbone_controller: Any = NullController()
            else:
                controller.reset(1)
                backbone_controller = ObservationBridge(controller, n_chunks, _flat_masks(state.memory))
            for s in range(a, b, c):
                e = min(s + c, b)
                out = model.process_chunk(tokens[None, s:e], state, backbone_controller)
                state = out.state
                nats += F.cross_entropy(out.logits[0].float(), tokens[s + 1 : e + 1], reduction="sum").item()
                count += e - s
                if count >= max_bytes:
                    return nats / count / math.log(2), count
    if count == 0:
        raise ValueError("text_bits_per_byte: no held-out document has two or more bytes")
    return nats / count / math.log(2), count


@torch.no_grad()
def task_accuracy(model: AHMModel, task: str, length: int, episodes: int, controller: Controller, wm_slots: int,
                  ltm_capacity: int, seed: int, task_kwargs: dict[str, Any] | None = None,
                  batch: int = 8) -> float:
    """Mean answer accuracy of ``controller`` on ``episodes`` streams of ``task`` at ``length`` tokens."""
    rng = np.random.default_rng([seed, length])
    source = TaskSource([task], model.config.chunk_size, Curriculum((length,), "mixed"), task_kwargs)
    accs = []
    for start in range(0, episodes, batch):
        sample = source.sample(min(batch, episodes - start), length, rng)
        _, acc = controller_actions(model, sample, controller, wm_slots, ltm_capacity, task_kwargs)
        accs.extend(acc.tolist())
    return float(np.mean(accs))


# ====================================================================== the training loop
class TrainResult(NamedTuple):
    steps: int
    seconds: float
    tokens_per_s: float
    losses: list[float]
    evaluation: dict[str, Any]
    model: Any = None
    """The trained :class:`AHMModel`."""


def _distributed() -> tuple[int, int]:
    """(rank, world size); initialises the process group under torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), world


def _saved_level_readout(cfg: TrainLMConfig, out_dir: Path) -> str | None:
    """With --resume / --eval and no --level-readout: the level readout of the checkpoint being continued (runs
    saved before the option existed were built with per-level columns, ``separate``); else None (the config's).
    An unreadable checkpoint gives None, and loading it then raises with the reason."""
    if not (cfg.resume or cfg.eval) or cfg.level_readout:
        return None
    try:
        return load_ahm_config(current_model_dir(out_dir)).level_readout
    except (OSError, ValueError, KeyError):
        return None


def _lr_lambda(max_steps: int) -> Callable[[int], float]:
    warmup = max(1, max_steps // 20)
    return lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / max_steps)))


def train(cfg: TrainLMConfig, log: Callable[[str], None] = print, controller: Controller | None = None,
          model: AHMModel | None = None) -> TrainResult:
    """Run the supervised phase described by ``cfg`` (module doc); returns what it measured.

    ``controller`` (default: ``make_controller(cfg.controller)``) and ``model`` (default: a fresh one, or the
    checkpoint's with ``--resume``) let ``train_rl.py`` continue with its current controller and backbone.
    """
    rank, world = _distributed()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out_dir = Path(cfg.out_dir)
    if cfg.resume and not has_training_checkpoint(out_dir):
        raise FileNotFoundError(f"--resume: no training checkpoint in {str(out_dir)!r} (its trainer.json is missing)")
    if cfg.eval and not has_training_checkpoint(out_dir):
        raise FileNotFoundError(f"--eval: no training checkpoint in {str(out_dir)!r}; train one first")

    # Seeding, in one place: the initialisation from torch's global seed (identical on every rank),
    # the data from a numpy generator per rank (its state is checkpointed).
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed + rank)
    length_rng = np.random.default_rng([cfg.seed, 7])  # the same on every rank: DDP ranks need equal windows
    if cfg.source == "text":
        source: TextSource | TaskSource = TextSource(cfg.corpus, cfg.max_documents)
        curriculum = None
    else:
        curriculum = Curriculum(cfg.length_list(cfg.lengths, "lengths"), cfg.curriculum)
        source = TaskSource(cfg.task_list(), cfg.chunk_size, curriculum, cfg.task_kwargs_dict())
    if model is None and cfg.init_from:
        init = cfg.init_from  # an exported model, or a training run's folder (its current step_<N>/)
        model, _ = load_ahm_checkpoint(current_model_dir(init) if has_training_checkpoint(init) else init)
        model.train().requires_grad_(True)
        if model.config.chunk_size != cfg.chunk_size:
            raise ValueError(f"--init-from model has chunk_size {model.config.chunk_size}, --chunk-size is "
                             f"{cfg.chunk_size}; make them equal")
        if cfg.level_readout:
            model = model.with_level_readout(cfg.level_readout)
    model = model if model is not None else build_model(cfg, source.vocab_size, _saved_level_readout(cfg, out_dir))
    controller = controller if controller is not None else make_controller(cfg.controller)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.95))
    schedule = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(cfg.max_steps))
    step, losses, tokens_seen, seconds = 0, [], 0, 0.0
    if cfg.resume or cfg.eval:
        state = load_training_checkpoint(out_dir, model, opt)
        saved = state["config"]
        changed = [f for f in TrainLMConfig.MODEL_FIELDS + ("source", "tasks", "seed", "max_steps")
                   if saved.get(f, _DEFAULTS.get(f)) != getattr(cfg, f)]  # a field added later: its default
        if changed and cfg.resume:
            raise ValueError(f"--resume: {changed} differ from the run saved in {str(out_dir)!r}; resume with the "
                             "same settings or use another --out-dir")
        step, losses, tokens_seen, seconds = state["step"], state["losses"], state["tokens"], state["seconds"]
        rng.bit_generator.state = state["rng"][rank] if rank < len(state["rng"]) else state["rng"][0]
        if state.get("length_rng"):
            length_rng.bit_generator.state = state["length_rng"]
        if curriculum is not None and state.get("curriculum"):
            curriculum.load_state(state["curriculum"])
        _restore_lr(opt, schedule, step)
        log(f"{'loaded' if cfg.eval else 'resumed from'} {out_dir} at step {step}")
    if cfg.eval:
        return TrainResult(step, seconds, 0.0, losses, evaluate(model, cfg, source, controller, log), model)

    n_params = sum(p.numel() for p in model.parameters())
    if rank == 0:
        name = getattr(controller, "name", cfg.controller)
        log(f"{cfg.source}: model {n_params:,} parameters, controller {name!r}, world size {world}")
    loss_module: nn.Module = WindowLoss(model, cfg.lm_weight, cfg.answer_weight)
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        loss_module = DistributedDataParallel(loss_module, find_unused_parameters=True)
    writer = _summary_writer(out_dir / "tb") if cfg.tensorboard and rank == 0 else None
    bar = _progress(cfg, step, rank)
    model.train()
    start_time = time.perf_counter() - seconds
    last_saved = step
    stop = False
    while step < cfg.max_steps and not stop:
        length = cfg.seq_len if curriculum is None else curriculum.draw(length_rng)
        batch = source.sample(cfg.batch, length, rng)
        tokens = torch.from_numpy(batch.tokens)
        actions = None
        if batch.task is not None:
            actions, env_acc = controller_actions(model, batch, controller, cfg.wm_slots, cfg.ltm_capacity,
                                                  cfg.task_kwargs_dict())
            if writer is not None:  # the env's own score of these episodes, before this batch's updates
                writer.add_scalar(f"eval/env_accuracy_len{length}", float(env_acc.mean()), step)
        state_ = model.init_state(cfg.batch)
        bridge = None if actions is not None else ObservationBridge(
            controller, math.ceil(length / cfg.chunk_size), _flat_masks(state_.memory))
        if bridge is not None:
            controller.reset(cfg.batch)
        batch_answers = batch_correct = 0
        for w0 in range(0, length, cfg.window):
            w1 = min(w0 + cfg.window, length)
            t0, t1 = w0 // cfg.chunk_size, math.ceil(w1 / cfg.chunk_size)
            if actions is not None:
                controllers = [ReplayController(actions[:, t], tokens.device) for t in range(t0, t1)]
                targets = torch.from_numpy(batch.answer_targets[:, t0:t1])
            else:
                controllers, targets = [bridge] * (t1 - t0), None
            next_token = tokens[:, w1] if w1 < length else torch.full((cfg.batch,), -1, dtype=torch.int64)
            out, state_ = loss_module(tokens[:, w0:w1], next_token, state_, controllers, targets)
            opt.zero_grad(set_to_none=True)
            out.loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            schedule.step()
            state_ = state_.detach()
            step += 1
            tokens_seen += cfg.batch * (w1 - w0) * world
            losses.append(round(float(out.loss.detach()), 6))
            batch_answers += int(out.answers)
            batch_correct += int(out.answers_correct)
            elapsed = time.perf_counter() - start_time
            if writer is not None:
                writer.add_scalar("train/loss", float(out.loss.detach()), step)
                writer.add_scalar("train/lm_loss", float(out.lm_loss), step)
                writer.add_scalar("train/bits_per_byte" if batch.task is None else "train/lm_bits_per_token",
                                  float(out.lm_loss) / math.log(2), step)
                writer.add_scalar("train/lr", schedule.get_last_lr()[0], step)
                writer.add_scalar("perf/tokens_per_s", tokens_seen / max(elapsed, 1e-9), step)
                for name, v in zip(("writes", "moves_to_ltm", "retrievals_wm", "retrievals_ltm", "forgets"), out.ops):
                    writer.add_scalar(f"memory/{name}_per_chunk", float(v) / (cfg.batch * (t1 - t0)), step)
                if int(out.answers):
                    writer.add_scalar("train/answer_loss", float(out.answer_loss), step)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{float(out.loss.detach()):.3f}", len=length)
            if step >= cfg.max_steps or (cfg.minutes and elapsed > cfg.minutes * 60):
                stop = True
                break
        if world > 1:  # every rank takes the same decisions: summed answers, stop if any rank stops
            import torch.distributed as dist

            shared = torch.tensor([batch_correct, batch_answers, int(stop)], dtype=torch.int64)
            dist.all_reduce(shared)
            batch_correct, batch_answers, stop = int(shared[0]), int(shared[1]), bool(shared[2])
        if curriculum is not None and batch_answers:
            acc = batch_correct / batch_answers
            grown = curriculum.update(length, acc)
            if writer is not None:
                writer.add_scalar(f"eval/train_answer_accuracy_len{length}", acc, step)
                writer.add_scalar("train/curriculum_max_length", curriculum.lengths[curriculum.active - 1], step)
            if grown and rank == 0:
                log(f"step {step}: curriculum adds length {curriculum.lengths[curriculum.active - 1]}")
        # Checkpoints only between sequence batches: the state to resume is then the weights, the
        # optimizer and the generators (no half-read sequence).
        if step - last_saved >= cfg.checkpoint_every or step >= cfg.max_steps or stop:  # every rank (gathers)
            seconds = time.perf_counter() - start_time
            _save(out_dir, model, opt, cfg, step, losses, tokens_seen, seconds, rng, length_rng, curriculum, rank,
                  world)
            last_saved = step
    if bar is not None:
        bar.close()
    seconds = time.perf_counter() - start_time
    tokens_per_s = tokens_seen / max(seconds, 1e-9)
    if world > 1:
        _check_replicas(model)
    evaluation: dict[str, Any] = {}
    if rank == 0:
        log(f"trained {step} steps in {seconds:.0f}s ({tokens_per_s:,.0f} tokens/s); checkpoint in {out_dir}/")
        if writer is not None:
            writer.close()
        if cfg.export_dir:
            save_ahm_checkpoint(cfg.export_dir, model, extra={
                "command": command_line(cfg), "steps": step, "train_seconds": round(seconds, 1),
                "train_tokens_per_s": round(tokens_per_s)})
            log(f"exported the model to {cfg.export_dir}/")
    return TrainResult(step, seconds, tokens_per_s, losses, evaluation, model)


def command_line(cfg: TrainLMConfig) -> str:
    """The ``train_lm.py`` command that reproduces ``cfg`` (its fields that differ from the defaults)."""
    default = TrainLMConfig()
    parts = ["python train_lm.py"]
    for name, value in asdict(cfg).items():
        if name in ("export_dir", "out_dir", "progress", "resume", "eval") or value == getattr(default, name):
            continue
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            parts.append(flag if value else "--no-" + name.replace("_", "-"))
        else:
            parts.append(f"{flag} {shlex.quote(str(value))}")
    return " ".join(parts)


def _restore_lr(opt: torch.optim.Optimizer, schedule: torch.optim.lr_scheduler.LambdaLR, step: int) -> None:
    """Set the learning rate a run that has taken ``step`` steps has (the schedule is a function of the step)."""
    for group, base, fn in zip(opt.param_groups, schedule.base_lrs, schedule.lr_lambdas):
        group["lr"] = base * fn(step)
    schedule.last_epoch = step
    schedule._last_lr = [g["lr"] for g in opt.param_groups]


def _save(out_dir: Path, model: AHMModel, opt: torch.optim.Optimizer, cfg: TrainLMConfig, step: int,
          losses: list[float], tokens: int, seconds: float, rng: np.random.Generator, length_rng: np.random.Generator,
          curriculum: Curriculum | None, rank: int, world: int) -> None:
    """Every rank calls this (the data generators are gathered); rank 0 writes."""
    rng_states = [rng.bit_generator.state]
    if world > 1:  # every rank's data generator, so each rank resumes its own stream
        import torch.distributed as dist

        gathered: list[Any] = [None] * world
        dist.all_gather_object(gathered, rng.bit_generator.state)
        rng_states = gathered
    if rank != 0:
        return
    state = {"step": step, "losses": losses, "tokens": tokens, "seconds": round(seconds, 3), "rng": rng_states,
             "length_rng": length_rng.bit_generator.state,
             "curriculum": curriculum.state() if curriculum is not None else None, "config": asdict(cfg)}
    save_training_checkpoint(out_dir, model, opt, state, extra={"train_config": asdict(cfg), "step": step})


def _check_replicas(model: AHMModel) -> None:
    """Raise if any rank's weights differ from rank 0's (DDP keeps them equal)."""
    import torch.distributed as dist

    flat = torch.cat([p.detach().flatten() for p in model.parameters()])
    reference = flat.clone()
    dist.broadcast(reference, 0)
    diff = (flat - reference).abs().max()
    dist.all_reduce(diff, op=dist.ReduceOp.MAX)
    if float(diff) != 0.0:
        raise RuntimeError(f"replicas diverged: max weight difference {float(diff)}")
    if dist.get_rank() == 0:
        print(f"replicas identical across {dist.get_world_size()} processes (max weight difference 0.0)")


def _summary_writer(path: Path) -> Any:
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(str(path))


def _progress(cfg: TrainLMConfig, step: int, rank: int) -> Any:
    if not cfg.progress or rank != 0:
        return None
    from tqdm import tqdm

    return tqdm(total=cfg.max_steps, initial=step, desc="train", unit="step")


def evaluate(model: AHMModel, cfg: TrainLMConfig, source: TextSource | TaskSource, controller: Controller,
             log: Callable[[str], None] = print) -> dict[str, Any]:
    """``--eval``: bits per byte at each context with and without memory (text), or accuracy per length (tasks)."""
    model.eval()
    results: dict[str, Any] = {}
    if isinstance(source, TextSource):
        log("| context (bytes) | with memory (bits/byte) | without memory (bits/byte) | bytes |\n|---|---|---|---|")
        for context in cfg.length_list(cfg.eval_contexts, "eval-contexts", allow_zero=True):
            with_mem, n = text_bits_per_byte(model, source.corpus.heldout, context, controller, cfg.eval_bytes)
            without, _ = text_bits_per_byte(model, source.corpus.heldout, context, None, cfg.eval_bytes)
            label = str(context) if context else "whole document"
            results[label] = {"with_memory": with_mem, "without_memory": without, "bytes": n}
            log(f"| {label} | {with_mem:.4f} | {without:.4f} | {n:,} |")
        return results
    lengths = (cfg.length_list(cfg.eval_lengths, "eval-lengths") if cfg.eval_lengths
               else cfg.length_list(cfg.lengths, "lengths"))
    none = make_controller("none")
    log(f"| task | length | {cfg.controller} | no memory |\n|---|---|---|---|")
    for task in source.tasks:
        for length in lengths:
            acc = task_accuracy(model, task, length, cfg.eval_episodes, controller, cfg.wm_slots, cfg.ltm_capacity,
                                cfg.seed + 1_000_000, source.task_kwargs)
            acc0 = task_accuracy(model, task, length, cfg.eval_episodes, none, cfg.wm_slots, cfg.ltm_capacity,
                                 cfg.seed + 1_000_000, source.task_kwargs)
            results[f"{task}@{length}"] = {"memory": acc, "no_memory": acc0}
            log(f"| {task} | {length} | {acc:.3f} | {acc0:.3f} |")
    return results
