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
memory retrieved at that boundary (``model.readout(h_last_t, r_t)``); the loss of one window is
:class:`~ahm.training.window_loss.WindowLoss`, the config :class:`~ahm.training.config.TrainLMConfig`,
``--eval`` :func:`ahm.training.evaluation.evaluate`, and this module the loop.

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

import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn

from ahm.agents import Controller, make_controller
from ahm.agents.rollout import (
    ObservationBridge,  # noqa: F401  (re-export: its home is ahm.agents.rollout)
    ReplayController,
    controller_actions,
)
from ahm.backbone import AHMModel, weight_decay_groups
from ahm.backbone.checkpoint import (
    estimate_model_bytes,
    load_ahm_checkpoint,
    load_ahm_config,
    remove_stale_temporaries,
    save_ahm_checkpoint,
)
from ahm.backbone.errors import AHMConfigError, NonFiniteError, first_non_finite, require_memory
from ahm.training.checkpoint import (
    current_model_dir,
    has_training_checkpoint,
    load_training_checkpoint,
    save_training_checkpoint,
)
from ahm.training.config import (
    TrainLMConfig,
    build_model,
    command_line,
    saved_field,
)
from ahm.training.data import Curriculum, TaskSource, TextSource
from ahm.training.evaluation import (
    evaluate,
    flat_action_masks,
    task_accuracy,  # noqa: F401  (re-export: its home is ahm.training.evaluation)
    text_bits_per_byte,  # noqa: F401  (re-export: its home is ahm.training.evaluation)
)
from ahm.training.window_loss import (
    WindowLoss,
    WindowOutput,  # noqa: F401  (re-export: its home is ahm.training.window_loss)
    window_inputs,
)

__all__ = ["TrainLMConfig", "train", "controller_actions", "ReplayController", "ObservationBridge",
           "text_bits_per_byte", "task_accuracy", "build_model", "TrainResult"]

_LENGTH_STREAM = 7
"""Second word of the seed of the curriculum's length generator, ``[seed, 7]``: a stream apart from the data's
(``seed + rank``) and the same on every rank, since DDP ranks need equal windows."""


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
    if not cfg.eval:  # before the first step: a run that cannot save would lose its steps at the first checkpoint
        check_writable(out_dir, "--out-dir")
        if rank == 0:  # a run killed while writing a checkpoint left half-written temporaries; nothing writes yet
            remove_stale_temporaries(out_dir)
        if cfg.export_dir:
            check_writable(Path(cfg.export_dir), "--export-dir")

    # Seeding, in one place: the initialisation from torch's global seed (identical on every rank),
    # the data from a numpy generator per rank (its state is checkpointed).
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed + rank)
    length_rng = np.random.default_rng([cfg.seed, _LENGTH_STREAM])  # the same on every rank: DDP needs equal windows
    if cfg.source == "text":
        source: TextSource | TaskSource = TextSource(cfg.corpus, cfg.max_documents)
        curriculum = None
    else:
        curriculum = Curriculum(cfg.lengths, cfg.curriculum)
        source = TaskSource(cfg.tasks, cfg.chunk_size, curriculum, cfg.task_kwargs_dict)
    if model is None and cfg.init_from:
        init = cfg.init_from  # an exported model, or a training run's folder (its current step_<N>/)
        model, _ = load_ahm_checkpoint(current_model_dir(init) if has_training_checkpoint(init) else init)
        model.train().requires_grad_(True)
        if model.config.chunk_size != cfg.chunk_size:
            raise ValueError(f"--init-from model has chunk_size {model.config.chunk_size}, --chunk-size is "
                             f"{cfg.chunk_size}; make them equal")
        if cfg.level_readout:
            model = model.with_level_readout(cfg.level_readout)
        model = model.with_heads(keep=cfg.keep_weight > 0, ask=cfg.ask_weight > 0)
    check_training_memory(cfg, source.vocab_size, model)
    model = model if model is not None else build_model(cfg, source.vocab_size, _saved_level_readout(cfg, out_dir))
    controller = controller if controller is not None else make_controller(cfg.controller)
    opt = torch.optim.AdamW(_param_groups(model, cfg.lr, cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.95))
    schedule = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(cfg.max_steps))
    step, losses, tokens_seen, seconds = 0, [], 0, 0.0
    if cfg.resume or cfg.eval:
        state = load_training_checkpoint(out_dir, model, opt, _TRAINER_STATE_FIELDS)
        saved = state["config"]
        changed = [f for f in TrainLMConfig.MODEL_FIELDS + ("source", "tasks", "seed", "max_steps")
                   if saved_field(f, saved) != getattr(cfg, f)]  # a field added later: its default
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
    loss_module: nn.Module = WindowLoss(model, cfg.lm_weight, cfg.answer_weight, cfg.keep_weight, cfg.ask_weight)
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
        actions = None
        if batch.task is not None:
            actions, env_acc = controller_actions(model, batch, controller, cfg.wm_slots, cfg.ltm_capacity,
                                                  cfg.task_kwargs_dict)
            if writer is not None:  # the env's own score of these episodes, before this batch's updates
                writer.add_scalar(f"eval/env_accuracy_len{length}", float(env_acc.mean()), step)
        state_ = model.init_state(cfg.batch)
        bridge = None if actions is not None else ObservationBridge(
            controller, math.ceil(length / cfg.chunk_size), flat_action_masks(state_.memory))
        if bridge is not None:
            controller.reset(cfg.batch)
        batch_answers = batch_correct = 0
        for w0 in range(0, length, cfg.window):
            w1 = min(w0 + cfg.window, length)
            t0, t1 = w0 // cfg.chunk_size, math.ceil(w1 / cfg.chunk_size)
            inputs = window_inputs(batch, w0, w1, cfg.chunk_size, actions, bridge, cfg.keep_weight > 0,
                                   cfg.ask_weight > 0)
            keep, ask = inputs.keep_targets, inputs.ask_targets
            out, state_ = loss_module(inputs.tokens, inputs.next_token, state_, inputs.controllers,
                                      inputs.answer_targets, keep, ask)
            opt.zero_grad(set_to_none=True)
            out.loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            _check_step(cfg, step + 1, last_saved, out_dir, float(out.loss.detach()), float(grad_norm))
            opt.step()
            _check_weights(model, cfg, step + 1, last_saved, out_dir)
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
                if keep is not None:
                    writer.add_scalar("train/keep_loss", float(out.keep_loss), step)
                if ask is not None:
                    writer.add_scalar("train/ask_loss", float(out.ask_loss), step)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{float(out.loss.detach()):.3f}", len=length,
                                **({"keep": f"{float(out.keep_loss):.3f}"} if keep is not None else {}),
                                **({"ask": f"{float(out.ask_loss):.3f}"} if ask is not None else {}))
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


_TRAINER_STATE_FIELDS: dict[str, type | tuple[type, ...]] = {
    "step": int, "losses": list, "tokens": int, "seconds": (int, float), "rng": list, "config": dict,
    "length_rng": (dict, type(None)), "curriculum": (dict, type(None))}
"""What :func:`train` reads from a saved trainer state; a trainer.json without one of them is refused up front."""

_DIVERGED = ("likely cause: the learning rate (--lr {lr}), the loss weights (--lm-weight {lm}, --answer-weight {ans}) "
             "or the initialisation scale (--embedding-init {init}) is too large; lower it and start again{resume}")


def _divergence_hint(cfg: TrainLMConfig, last_saved: int, out_dir: Path) -> str:
    resume = (f", or --resume from the checkpoint of step {last_saved} in {str(out_dir)!r} with a lower --lr"
              if last_saved else "")
    return _DIVERGED.format(lr=cfg.lr, lm=cfg.lm_weight, ans=cfg.answer_weight, init=cfg.embedding_init,
                            resume=resume)


def _check_step(cfg: TrainLMConfig, step: int, last_saved: int, out_dir: Path, loss: float, grad_norm: float) -> None:
    """Stop at a non-finite loss or gradient norm (before the optimizer applies it): nothing of it is saved."""
    if not (math.isfinite(loss) and math.isfinite(grad_norm)):
        raise NonFiniteError(f"step {step}: the {'loss' if not math.isfinite(loss) else 'gradient norm'} is "
                             f"{loss if not math.isfinite(loss) else grad_norm} (training diverged; nothing of this "
                             f"step was saved); {_divergence_hint(cfg, last_saved, out_dir)}")


def _check_weights(model: AHMModel, cfg: TrainLMConfig, step: int, last_saved: int, out_dir: Path) -> None:
    """Stop once an optimizer step made a weight non-finite (an infinite learning rate does, from finite gradients)."""
    if bool(torch.stack([torch.isfinite(p).all() for p in model.parameters()]).all()):  # one device sync per step
        return
    bad = first_non_finite(model.named_parameters())
    if bad is not None:
        raise NonFiniteError(f"step {step}: the update made weight {bad[0]!r} non-finite ({bad[1]} of {bad[2]} "
                             f"values; nothing of this step was saved); {_divergence_hint(cfg, last_saved, out_dir)}")


def check_writable(directory: Path, flag: str) -> None:
    """Raise :class:`AHMConfigError` unless ``directory`` exists as a writable folder or can be created (its
    nearest existing parent is a writable folder). Creates nothing."""
    path = directory.absolute()
    existing = path
    while not existing.exists() and existing.parent != existing:
        existing = existing.parent
    if not existing.is_dir():
        raise AHMConfigError(f"{flag} {str(directory)!r}: {str(existing)!r} is a file, not a folder; pick another "
                             f"{flag}")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise AHMConfigError(f"{flag} {str(directory)!r}: {str(existing)!r} is not writable; pick another {flag} "
                             "(checked before training, so no step is lost)")


def check_training_memory(cfg: TrainLMConfig, vocab_size: int, model: AHMModel | None = None) -> None:
    """Refuse a configuration whose first step would need more memory than the machine has, before allocating:
    the batch's tokens, the window's activations (the selective scan's (b, W, E D, N) states per layer, the
    logits), the memory of b sequences, and the weights with their gradients and AdamW moments."""
    from ahm.backbone import AHMConfig, MambaConfig

    length = cfg.seq_len if cfg.source == "text" else max(cfg.lengths)
    if model is not None:
        config = model.config
    else:
        try:
            backbone = MambaConfig(vocab_size=vocab_size, d_model=cfg.d_model, n_layer=cfg.n_layer,
                                   d_state=cfg.d_state)
            config = AHMConfig(backbone, chunk_size=cfg.chunk_size, wm_slots=cfg.wm_slots,
                               ltm_capacity=cfg.ltm_capacity, key_dim=cfg.key_dim, value_dim=cfg.value_dim or None,
                               ltm_codec=cfg.ltm_codec, integration=cfg.integration)
        except ValueError as err:
            raise AHMConfigError(str(err)) from err
    bb = config.backbone
    window = min(cfg.window, length)
    tokens = cfg.batch * length * 8 * 2  # int64, and the numpy copy it is made from
    activations = cfg.batch * window * (2 * bb.n_layer * bb.d_inner * (bb.d_state + 8) + 3 * bb.vocab_size) * 4
    memory = cfg.batch * (config.wm_slots + config.ltm_capacity) * (config.key_dim + config.resolved_value_dim) * 4
    weights = 4 * estimate_model_bytes(bb, config)
    sizes = (f"--batch {cfg.batch}, --seq-len {cfg.seq_len}" if cfg.source == "text"
             else f"--batch {cfg.batch}, --lengths up to {length}")
    require_memory(tokens + activations + memory + weights,
                   f"this run ({sizes}, --window {cfg.window}, --d-model {bb.d_model}, --wm-slots {config.wm_slots}, "
                   f"--ltm-capacity {config.ltm_capacity})", "Lower --batch, the lengths or the model sizes.")


KEEP_HEAD_LR_SCALE = 10.0
"""The heads' learning rate over the rest's: a fresh head on a trained backbone needs to move far, the backbone
little (measured on the keep head: at --lr 1e-3 for both, 60 steps moved its balanced loss from 0.693 to 0.665
only). The ask head trains at the same scale."""


def _param_groups(model: AHMModel, lr: float, weight_decay: float) -> list[dict[str, Any]]:
    """The optimizer groups: the model's parameters at ``lr``, and a keep or an ask head's at
    :data:`KEEP_HEAD_LR_SCALE` x ``lr`` (the schedule scales both); weight decay on matrices only
    (:func:`~ahm.backbone.weight_decay_groups`)."""
    heads = [p for name in ("keep_head", "ask_head") if getattr(model.config, name)
             for p in getattr(model, name).parameters()]
    ids = {id(p) for p in heads}
    body = weight_decay_groups((p for p in model.parameters() if id(p) not in ids), weight_decay)
    return body + (weight_decay_groups(heads, weight_decay, lr=lr * KEEP_HEAD_LR_SCALE) if heads else [])


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
