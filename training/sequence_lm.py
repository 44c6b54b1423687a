"""Train and evaluate a comparison model of :mod:`ahm.backbone.baselines` on the AHM trainer's data.

``train_lm.py --model NAME`` (NAME not ``ahm``) lands here: :func:`train_sequence_model` trains
``build_model(NAME, vocab, --model-size, **--model-options)`` on exactly the batches the AHM
trainer (:mod:`ahm.training.supervised`) draws (the same :class:`~ahm.training.data.TextSource` or
:class:`~ahm.training.data.TaskSource` + :class:`~ahm.training.data.Curriculum`, the same seeds,
batch, window, AdamW, learning-rate schedule, gradient clipping and budgets), with truncated
backpropagation through time: one step is one window of W tokens, the model's state carried from the
previous window of the same sequences but detached. The loss of a window is

    lm_weight * (mean next-token cross-entropy over the window's tokens)
    + answer_weight * (mean cross-entropy of the answers at query boundaries)
    + 0.01 * model.aux_loss                     (only for a model that sets one, e.g. MoE load balancing)

where the answer at chunk i (C = ``--chunk-size`` tokens) is the model's own next-token logits at the
last token of chunk i against ``answer_targets[:, i]`` (-1: no query there): the boundary at which
:class:`~ahm.training.window_loss.WindowLoss` scores the AHM model's answer, here without a memory read.

:func:`evaluate_sequence_model` (``--eval``) reports bits per byte on held-out text at each
``--eval-contexts`` (:func:`ahm.backbone.language_modeling.bits_per_byte`) or the answer accuracy at
each length on the held-out task streams :func:`ahm.training.evaluation.task_accuracy` scores the AHM
model on (the same seeds, so the same episodes).

Checkpoints (``--out-dir``): ``model.safetensors`` (the weights) and ``sequence_model.json`` (name,
size, options, vocabulary and the run's config), at the end and every ``--checkpoint-every`` steps.
Not supported here (refused with a message): ``--resume``, ``--init-from``, several processes.

Symbols: b sequences, W tokens per window, C tokens per chunk, n = ceil(W / C) chunks, V vocabulary size.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ahm.backbone.baselines import SIZES, build_model, count_parameters, detach_state
from ahm.backbone.checkpoint import (
    atomic_save_tensors,
    atomic_write_bytes,
    check_finite,
    read_tensors,
    state_dict_for_saving,
)
from ahm.backbone.config import parse_int
from ahm.backbone.errors import AHMConfigError, CheckpointError, NonFiniteError, first_non_finite
from ahm.backbone.language_modeling import bits_per_byte
from ahm.backbone.optim import weight_decay_groups
from ahm.training.config import TrainLMConfig, parse_task_kwargs
from ahm.training.data import Curriculum, TaskSource, TextSource
from ahm.training.evaluation import EVAL_SEED_OFFSET
from ahm.training.supervised import _LENGTH_STREAM, TrainResult, _lr_lambda, _progress, _summary_writer, check_writable

__all__ = ["train_sequence_model", "evaluate_sequence_model", "sequence_window_loss", "answer_logits",
           "sequence_task_accuracy", "save_sequence_checkpoint", "load_sequence_checkpoint", "model_options",
           "model_size", "SequenceWindowOutput", "AUX_LOSS_WEIGHT", "WEIGHTS", "META"]

AUX_LOSS_WEIGHT = 0.01
"""Weight of a model's auxiliary loss (``model.aux_loss``): the load-balancing coefficient of Switch
Transformers (Fedus et al., 2021, section 2.2), which MoE-Mamba and Jamba use too."""
WEIGHTS, META = "model.safetensors", "sequence_model.json"
"""The two files of a saved comparison model."""
_FORMAT, _VERSION = "ahm-sequence-model", 1

_AHM_ONLY = ("controller", "d_model", "n_layer", "d_state", "key_dim", "value_dim", "wm_slots", "ltm_capacity",
             "ltm_codec", "integration", "level_readout", "integration_init", "write_recency_init", "embedding_init",
             "export_dir", "keep_weight", "ask_weight")
"""TrainLMConfig fields that describe the AHM model (its backbone, memory and controller): a comparison model
is sized by --model-size and configured by --model-options instead."""


# ====================================================================== the loss of one window
class SequenceWindowOutput(NamedTuple):
    """What :func:`sequence_window_loss` measured on one window."""

    loss: Tensor
    """() the weighted loss (carries the graph)."""
    lm_loss: Tensor
    """() mean next-token cross-entropy (nats), detached."""
    answer_loss: Tensor
    """() mean answer cross-entropy (nats), detached (0 without answers)."""
    answers: int
    """Scored answers in the window."""
    answers_correct: int
    """Answers whose argmax is the target."""
    aux_loss: float
    """The model's auxiliary loss (0.0 for a model without one)."""


def answer_logits(logits: Tensor, chunk_size: int) -> Tensor:
    """The logits at the last token of each chunk: (b, W, V) -> (b, ceil(W / C), V).

    A window starts at a chunk boundary, so chunk i of the window ends at token min((i + 1) C, W) - 1.
    """
    width = logits.shape[1]
    ends = torch.arange(chunk_size, width + chunk_size, chunk_size, device=logits.device).clamp(max=width) - 1
    return logits[:, ends]


def sequence_window_loss(model: nn.Module, tokens: Tensor, next_token: Tensor, state: Any,
                         answer_targets: Tensor | None, chunk_size: int, lm_weight: float = 1.0,
                         answer_weight: float = 1.0) -> tuple[SequenceWindowOutput, Any]:
    """The loss of one window (module doc) and the state after it.

    tokens (b, W) int64; next_token (b,) the token after the window (-1: none, the sequence ends);
    answer_targets (b, ceil(W / C)) int64 (-1: no answer at that chunk) or None (text).
    """
    logits, state = model(tokens, state)
    logits = logits.float()  # (b, W, V)
    vocab = logits.shape[-1]
    lm_sum = F.cross_entropy(logits[:, :-1].reshape(-1, vocab), tokens[:, 1:].reshape(-1), reduction="sum")
    lm_count = tokens.shape[0] * (tokens.shape[1] - 1)
    has_next = next_token >= 0
    if bool(has_next.any()):
        lm_sum = lm_sum + F.cross_entropy(logits[has_next, -1], next_token[has_next], reduction="sum")
        lm_count += int(has_next.sum())
    lm_loss = lm_sum / max(lm_count, 1)
    answer_loss, answers, correct = lm_loss.new_zeros(()), 0, 0
    if answer_targets is not None:
        scored = answer_targets >= 0  # (b, n)
        if bool(scored.any()):
            answer = answer_logits(logits, chunk_size)[scored]  # (answers, V)
            target = answer_targets[scored]
            answer_loss = F.cross_entropy(answer, target)
            answers, correct = int(scored.sum()), int((answer.argmax(-1) == target).sum())
    loss = lm_weight * lm_loss + answer_weight * answer_loss
    aux = getattr(model, "aux_loss", None)
    if isinstance(aux, Tensor):
        loss = loss + AUX_LOSS_WEIGHT * aux
    if not loss.requires_grad:  # no term with a gradient (no LM weight, no answer): backward still runs
        loss = loss + 0.0 * sum(p.sum() for p in model.parameters())
    aux_value = float(aux.detach()) if isinstance(aux, Tensor) else 0.0
    return SequenceWindowOutput(loss, lm_loss.detach(), answer_loss.detach(), answers, correct, aux_value), state


# ====================================================================== the model of a config
def model_options(cfg: TrainLMConfig) -> dict[str, Any]:
    """``--model-options`` as the keyword arguments of :func:`~ahm.backbone.baselines.build_model`."""
    try:
        return parse_task_kwargs(cfg.model_options)
    except ValueError as err:
        raise AHMConfigError(f"--model-options must be key=value pairs like window=256,n_layer=2 (JSON values), "
                             f"got {','.join(cfg.model_options)!r}") from err


def model_size(cfg: TrainLMConfig) -> str | int:
    """``--model-size``: a name of :data:`~ahm.backbone.baselines.SIZES` as it is, a count (``5000``, ``50K``)
    as an int; anything else is passed on for :func:`~ahm.backbone.baselines.build_model` to refuse."""
    if cfg.model_size in SIZES:
        return cfg.model_size
    try:
        return parse_int(cfg.model_size)
    except ValueError:
        return cfg.model_size


def _check_supported(cfg: TrainLMConfig) -> None:
    if cfg.resume or cfg.init_from:
        raise AHMConfigError(f"--model {cfg.model}: --resume and --init-from are only for the AHM model; start a "
                             "fresh run (another --out-dir) instead")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise AHMConfigError(f"--model {cfg.model}: comparison models train in one process; run train_lm.py "
                             "without torchrun")


def _ignored_options_note(cfg: TrainLMConfig) -> str:
    default = TrainLMConfig()
    changed = [f"--{name.replace('_', '-')}" for name in _AHM_ONLY
               if getattr(cfg, name, None) != getattr(default, name, None)]
    note = f"--model {cfg.model}: the AHM model's options (memory, controller, backbone sizes) do not apply"
    if changed:
        note += f"; ignoring {', '.join(changed)}"
    return note + f" (the model is sized by --model-size {cfg.model_size} and set by --model-options)"


# ====================================================================== checkpoints
def save_sequence_checkpoint(directory: str | Path, model: nn.Module, meta: Mapping[str, Any]) -> None:
    """Write ``model``'s weights (safetensors, tied weights once) and ``meta`` (JSON, with ``model``, ``size``,
    ``options``, ``vocab_size``) into ``directory``, each file atomically."""
    directory = Path(directory)
    tensors = state_dict_for_saving(model)
    check_finite(tensors.items(), f"refusing to save a {meta['model']!r} model to {str(directory)!r}")
    atomic_save_tensors(directory / WEIGHTS, tensors)
    body = {"format": _FORMAT, "version": _VERSION, **meta}
    atomic_write_bytes(directory / META, json.dumps(body, indent=1).encode())


def load_sequence_checkpoint(directory: str | Path, map_location: str = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """The model saved by :func:`save_sequence_checkpoint` (rebuilt by name, size and options) and its meta.

    Raises:
        FileNotFoundError: no checkpoint in ``directory``. CheckpointError: a file is corrupted or does not fit.
    """
    directory = Path(directory)
    what = f"checkpoint {str(directory)!r}"
    if not (directory / META).is_file():
        raise FileNotFoundError(f"{what} has no {META}; train a comparison model there first "
                                "(train_lm.py --model NAME --out-dir ...)")
    try:
        meta = json.loads((directory / META).read_text())
        if meta.get("format") != _FORMAT or meta.get("version") != _VERSION:
            raise ValueError(f"expected format {_FORMAT!r} version {_VERSION}")
        model = build_model(meta["model"], meta["vocab_size"], meta["size"], **meta["options"])
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{what}: {META} is corrupted ({err})") from err
    weights = read_tensors(directory / WEIGHTS, what, "save one with save_sequence_checkpoint", map_location)
    expected = {k: v.shape for k, v in state_dict_for_saving(model).items()}
    found = {k: v.shape for k, v in weights.items()}
    if found != expected:
        differ = sorted(set(found) ^ set(expected)) or sorted(k for k in found if found[k] != expected[k])
        raise CheckpointError(f"{what}: {WEIGHTS} does not fit a {meta['model']!r} model of its {META} "
                              f"(tensors {differ[:5]} differ)")
    check_finite(weights.items(), f"{what}: {WEIGHTS}")
    model.load_state_dict(weights, strict=False)  # a tied weight is saved once, under its first name
    return model.to(map_location), meta


# ====================================================================== evaluation
@torch.no_grad()
def sequence_task_accuracy(model: nn.Module, task: str, length: int, episodes: int, chunk_size: int, seed: int,
                           task_kwargs: Mapping[str, Any] | None = None, batch: int = 8,
                           deadline: float | None = None) -> float:
    """Mean per-episode answer accuracy on ``episodes`` streams of ``task`` at ``length`` tokens.

    The streams are those :func:`ahm.training.evaluation.task_accuracy` draws for the same ``seed`` (pass
    ``cfg.seed + EVAL_SEED_OFFSET``: seeds training never draws). The model streams each batch chunk by chunk
    (C = ``chunk_size`` tokens) with its state carried; the answer at a query is the argmax of its logits at
    the last token of the query's chunk. ``deadline`` (a ``time.perf_counter()`` value): raise
    :class:`TimeoutError` once past it.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    rng = np.random.default_rng([seed, length])
    source = TaskSource([task], chunk_size, Curriculum((length,), "mixed"), task_kwargs)
    accs: list[float] = []
    try:
        for start in range(0, episodes, batch):
            sample = source.sample(min(batch, episodes - start), length, rng)
            assert sample.answer_targets is not None
            tokens = torch.from_numpy(sample.tokens).to(device)
            targets = torch.from_numpy(sample.answer_targets).to(device)  # (b, n)
            correct = torch.zeros(tokens.shape[0], dtype=torch.int64, device=device)
            state = model.init_state(tokens.shape[0], device)
            for i, s in enumerate(range(0, length, chunk_size)):
                logits, state = model(tokens[:, s : s + chunk_size], state)
                target = targets[:, i]
                correct += (logits[:, -1].argmax(-1) == target) & (target >= 0)
                if deadline is not None and time.perf_counter() > deadline:
                    raise TimeoutError(f"{task} at {length} tokens ran past its time limit")
            total = (targets >= 0).sum(1).clamp(min=1)
            accs.extend((correct / total).tolist())
    finally:
        model.train(was_training)
    return float(np.mean(accs))


def evaluate_sequence_model(model: nn.Module, cfg: TrainLMConfig, source: TextSource | TaskSource,
                            log: Callable[[str], None] = print) -> dict[str, Any]:
    """``--eval``: bits per byte on held-out text at each ``cfg.eval_contexts``, or the answer accuracy of each
    task at each ``cfg.eval_lengths`` (default: the curriculum's lengths) on held-out streams."""
    was_training = model.training
    model.eval()
    results: dict[str, Any] = {}
    try:
        if isinstance(source, TextSource):
            log(f"| context (bytes) | {cfg.model} (bits/byte) | bytes |\n|---|---|---|")
            for context in cfg.eval_contexts:
                bpb, n = bits_per_byte(model, source.corpus.heldout, chunk=cfg.window,  # type: ignore[arg-type]
                                       context=context, max_bytes=cfg.eval_bytes)
                label = str(context) if context else "whole document"
                results[label] = {"bits_per_byte": bpb, "bytes": n}
                log(f"| {label} | {bpb:.4f} | {n:,} |")
            return results
        log(f"| task | length | {cfg.model} accuracy |\n|---|---|---|")
        for task in source.tasks:
            for length in cfg.eval_lengths or cfg.lengths:
                acc = sequence_task_accuracy(model, task, length, cfg.eval_episodes, cfg.chunk_size,
                                             cfg.seed + EVAL_SEED_OFFSET, source.task_kwargs)
                results[f"{task}@{length}"] = {"accuracy": acc}
                log(f"| {task} | {length} | {acc:.3f} |")
        return results
    finally:
        model.train(was_training)


# ====================================================================== the training loop
def train_sequence_model(cfg: TrainLMConfig, log: Callable[[str], None] = print) -> TrainResult:
    """Train (or with ``cfg.eval`` only evaluate) the comparison model ``cfg.model`` (module doc).

    The model is built, so an unknown name or option raises its :class:`AHMConfigError`, before any data
    is loaded or file written.
    """
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out_dir = Path(cfg.out_dir)
    if cfg.eval:
        model, meta = load_sequence_checkpoint(out_dir)
        if meta["model"] != cfg.model:
            raise AHMConfigError(f"--eval: {str(out_dir)!r} holds a {meta['model']!r} model, not --model "
                                 f"{cfg.model!r}")
        log(f"loaded {meta['model']} ({meta['size']}) from {out_dir} at step {meta['step']}")
        source = _source(cfg, _task_source(cfg))
        return TrainResult(meta["step"], meta["seconds"], meta["tokens_per_s"], meta["losses"],
                           evaluate_sequence_model(model, cfg, source, log), model)
    _check_supported(cfg)
    options, size = model_options(cfg), model_size(cfg)
    check_writable(out_dir, "--out-dir")

    # Seeding, as the AHM trainer does: the initialisation from torch's global seed, the data from numpy
    # generators (sequences: seed; curriculum lengths: [seed, 7]).
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    length_rng = np.random.default_rng([cfg.seed, _LENGTH_STREAM])
    task_source = _task_source(cfg)
    vocab_size = 256 if task_source is None else task_source.vocab_size  # TextSource's bytes
    model = build_model(cfg.model, vocab_size, size, **options)
    log(_ignored_options_note(cfg))
    source = _source(cfg, task_source)
    curriculum = task_source.curriculum if task_source is not None else None
    opt = torch.optim.AdamW(weight_decay_groups(model.parameters(), cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.95))
    schedule = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(cfg.max_steps))
    log(f"{cfg.source}: {cfg.model} with {count_parameters(model):,} parameters ({cfg.model_size}), "
        f"options {options}")
    meta = {"model": cfg.model, "size": size, "options": options, "vocab_size": vocab_size,
            "parameters": count_parameters(model)}

    writer = _summary_writer(out_dir / "tb") if cfg.tensorboard else None
    bar = _progress(cfg, 0, 0)
    step, losses, tokens_seen, last_saved, stop = 0, [], 0, 0, False
    model.train()
    start_time = time.perf_counter()
    while step < cfg.max_steps and not stop:
        length = cfg.seq_len if curriculum is None else curriculum.draw(length_rng)
        batch = source.sample(cfg.batch, length, rng)
        tokens = torch.from_numpy(batch.tokens)
        targets = None if batch.answer_targets is None else torch.from_numpy(batch.answer_targets)
        state = model.init_state(cfg.batch)
        batch_answers = batch_correct = 0
        for w0 in range(0, length, cfg.window):
            w1 = min(w0 + cfg.window, length)
            t0, t1 = w0 // cfg.chunk_size, math.ceil(w1 / cfg.chunk_size)  # the window's chunks
            window_targets = None if targets is None else targets[:, t0:t1]
            next_token = tokens[:, w1] if w1 < length else torch.full((cfg.batch,), -1, dtype=torch.int64)
            out, state = sequence_window_loss(model, tokens[:, w0:w1], next_token, state, window_targets,
                                              cfg.chunk_size, cfg.lm_weight, cfg.answer_weight)
            opt.zero_grad(set_to_none=True)
            out.loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            _check_step(cfg, step + 1, float(out.loss.detach()), float(grad_norm))
            opt.step()
            _check_weights(model, cfg, step + 1)
            schedule.step()
            state = detach_state(state)
            step += 1
            tokens_seen += cfg.batch * (w1 - w0)
            losses.append(round(float(out.loss.detach()), 6))
            batch_answers += out.answers
            batch_correct += out.answers_correct
            elapsed = time.perf_counter() - start_time
            if writer is not None:
                writer.add_scalar("train/loss", float(out.loss.detach()), step)
                writer.add_scalar("train/lm_loss", float(out.lm_loss), step)
                writer.add_scalar("train/lr", schedule.get_last_lr()[0], step)
                writer.add_scalar("perf/tokens_per_s", tokens_seen / max(elapsed, 1e-9), step)
                if out.answers:
                    writer.add_scalar("train/answer_loss", float(out.answer_loss), step)
                if out.aux_loss:
                    writer.add_scalar("train/aux_loss", out.aux_loss, step)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{float(out.loss.detach()):.3f}", len=length)
            if step >= cfg.max_steps or (cfg.minutes and elapsed > cfg.minutes * 60):
                stop = True
                break
        if curriculum is not None and batch_answers:
            acc = batch_correct / batch_answers
            if writer is not None:
                writer.add_scalar(f"eval/train_answer_accuracy_len{length}", acc, step)
            if curriculum.update(length, acc):
                log(f"step {step}: curriculum adds length {curriculum.lengths[curriculum.active - 1]}")
        if step - last_saved >= cfg.checkpoint_every or step >= cfg.max_steps or stop:  # between sequence batches
            seconds = time.perf_counter() - start_time
            save_sequence_checkpoint(out_dir, model, {**meta, **_progress_meta(cfg, step, losses, tokens_seen,
                                                                               seconds)})
            last_saved = step
    if bar is not None:
        bar.close()
    if writer is not None:
        writer.close()
    seconds = time.perf_counter() - start_time
    tokens_per_s = tokens_seen / max(seconds, 1e-9)
    log(f"trained {step} steps in {seconds:.0f}s ({tokens_per_s:,.0f} tokens/s); checkpoint in {out_dir}/")
    return TrainResult(step, seconds, tokens_per_s, losses, {}, model)


def _task_source(cfg: TrainLMConfig) -> TaskSource | None:
    """The task source of ``cfg`` (cheap: it only probes the tasks' vocabularies), None for text."""
    if cfg.source == "text":
        return None
    return TaskSource(cfg.tasks, cfg.chunk_size, Curriculum(cfg.lengths, cfg.curriculum), cfg.task_kwargs_dict)


def _source(cfg: TrainLMConfig, task_source: TaskSource | None) -> TextSource | TaskSource:
    """The data of ``cfg``: the task source, or the text corpus (loaded here)."""
    return task_source if task_source is not None else TextSource(cfg.corpus, cfg.max_documents)


def _progress_meta(cfg: TrainLMConfig, step: int, losses: list[float], tokens: int, seconds: float) -> dict[str, Any]:
    return {"step": step, "losses": losses, "tokens": tokens, "seconds": round(seconds, 3),
            "tokens_per_s": round(tokens / max(seconds, 1e-9), 1), "config": asdict(cfg)}


def _divergence_hint(cfg: TrainLMConfig) -> str:
    return (f"likely cause: the learning rate (--lr {cfg.lr}) or the loss weights (--lm-weight {cfg.lm_weight}, "
            f"--answer-weight {cfg.answer_weight}) are too large for {cfg.model!r}; lower them and start again")


def _check_step(cfg: TrainLMConfig, step: int, loss: float, grad_norm: float) -> None:
    """Stop at a non-finite loss or gradient norm, before the optimizer applies it."""
    if not (math.isfinite(loss) and math.isfinite(grad_norm)):
        what, value = ("loss", loss) if not math.isfinite(loss) else ("gradient norm", grad_norm)
        raise NonFiniteError(f"--model {cfg.model}, step {step}: the {what} is {value} (training diverged; "
                             f"nothing of this step was saved); {_divergence_hint(cfg)}")


def _check_weights(model: nn.Module, cfg: TrainLMConfig, step: int) -> None:
    """Stop once an optimizer step made a weight non-finite."""
    if bool(torch.stack([torch.isfinite(p).all() for p in model.parameters()]).all()):
        return
    bad = first_non_finite(model.named_parameters())
    if bad is not None:
        raise NonFiniteError(f"--model {cfg.model}, step {step}: the update made weight {bad[0]!r} non-finite "
                             f"({bad[1]} of {bad[2]} values; nothing of this step was saved); "
                             f"{_divergence_hint(cfg)}")
