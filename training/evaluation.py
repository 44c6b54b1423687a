"""Evaluation of a trained AHM model: bits per byte on held-out text, answer accuracy on task streams.

``train_lm.py --eval`` (:func:`evaluate`) prints, for text, the bits per byte at each
context length with and without memory, and for tasks the accuracy per length with the
run's controller and with none. :func:`heldout_task_loss` is the supervised phase's own
objective on held-out task streams: what ``train_rl.py`` compares before and after each
backbone phase.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ahm.agents import Controller, make_controller
from ahm.agents.rollout import ObservationBridge, controller_actions
from ahm.backbone import AHMModel, HierarchicalMemory, NullController
from ahm.envs.spaces import ActionLayout
from ahm.training.config import TrainLMConfig
from ahm.training.data import Curriculum, TaskSource, TextSource
from ahm.training.window_loss import WindowLoss, window_inputs

__all__ = ["text_bits_per_byte", "task_accuracy", "heldout_task_loss", "evaluate", "flat_action_masks",
           "EVAL_SEED_OFFSET"]

EVAL_SEED_OFFSET = 1_000_000
"""Task evaluation draws its streams from seed + this: a generator of its own, apart from the training data's
(seeded seed + rank), so ``--eval`` scores the same streams whatever the run trained on."""


def flat_action_masks(memory: HierarchicalMemory) -> Callable[[], Tensor]:
    """A function returning the memory's valid-operation mask now, in the env's flat layout (b, 2 K + 12)
    (the ``memory_masks`` of :class:`~ahm.agents.rollout.ObservationBridge`)."""
    layout = ActionLayout(memory.config.wm_slots)
    return lambda: layout.join_masks(memory.op_masks())


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
                backbone_controller = ObservationBridge(controller, n_chunks, flat_action_masks(state.memory))
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


@torch.no_grad()
def heldout_task_loss(model: AHMModel, cfg: TrainLMConfig, controller: Controller, episodes: int = 8
                      ) -> dict[str, float]:
    """The supervised phase's loss (:class:`~ahm.training.window_loss.WindowLoss` with ``cfg``'s weights, each
    sequence in one window) on ``episodes`` held-out streams at each of ``cfg.lengths``, the memory operations from
    ``controller``, without gradient. Each length's streams are of one task, drawn from ``cfg.tasks`` as a training
    batch draws its task (``train_rl.py``'s phases have one).

    The streams are drawn as :func:`task_accuracy` draws them (seed ``cfg.seed + EVAL_SEED_OFFSET``), never as
    the training data is, and are the same at every call: so two calls compare two models on one set of streams.
    Returns ``loss`` (the weighted objective, mean over the lengths weighted by their tokens), ``answer_loss`` (nats
    per answer), ``accuracy`` (of the answers) and ``answers``.
    """
    if cfg.source != "tasks":
        raise ValueError("heldout_task_loss needs a task config (--source tasks)")
    if episodes < 1:
        raise ValueError(f"episodes must be >= 1, got {episodes!r}")
    was_training = model.training
    model.eval()
    loss_module = WindowLoss(model, cfg.lm_weight, cfg.answer_weight, cfg.keep_weight, cfg.ask_weight)
    loss_sum = answer_sum = 0.0
    tokens = answers = correct = 0
    source = TaskSource(cfg.tasks, model.config.chunk_size, Curriculum(cfg.lengths, "mixed"), cfg.task_kwargs_dict)
    try:
        for length in cfg.lengths:
            batch = source.sample(episodes, length, np.random.default_rng([cfg.seed + EVAL_SEED_OFFSET, length]))
            actions, _ = controller_actions(model, batch, controller, cfg.wm_slots, cfg.ltm_capacity,
                                            cfg.task_kwargs_dict)
            inputs = window_inputs(batch, 0, length, model.config.chunk_size, actions, keep=cfg.keep_weight > 0,
                                   ask=cfg.ask_weight > 0)  # one window: no gradient, so no need to truncate
            out, _ = loss_module(inputs.tokens, inputs.next_token, model.init_state(episodes), inputs.controllers,
                                 inputs.answer_targets, inputs.keep_targets, inputs.ask_targets)
            loss_sum += float(out.loss) * length
            tokens += length
            answer_sum += float(out.answer_loss) * int(out.answers)
            answers += int(out.answers)
            correct += int(out.answers_correct)
    finally:
        model.train(was_training)
    return {"loss": loss_sum / tokens, "answer_loss": answer_sum / max(answers, 1),
            "accuracy": correct / max(answers, 1), "answers": float(answers)}


def evaluate(model: AHMModel, cfg: TrainLMConfig, source: TextSource | TaskSource, controller: Controller,
             log: Callable[[str], None] = print) -> dict[str, Any]:
    """``--eval``: bits per byte at each context with and without memory (text), or accuracy per length (tasks)."""
    model.eval()
    results: dict[str, Any] = {}
    if isinstance(source, TextSource):
        log("| context (bytes) | with memory (bits/byte) | without memory (bits/byte) | bytes |\n|---|---|---|---|")
        for context in cfg.eval_contexts:
            with_mem, n = text_bits_per_byte(model, source.corpus.heldout, context, controller, cfg.eval_bytes)
            without, _ = text_bits_per_byte(model, source.corpus.heldout, context, None, cfg.eval_bytes)
            label = str(context) if context else "whole document"
            results[label] = {"with_memory": with_mem, "without_memory": without, "bytes": n}
            log(f"| {label} | {with_mem:.4f} | {without:.4f} | {n:,} |")
        return results
    lengths = cfg.eval_lengths or cfg.lengths
    none = make_controller("none")
    log(f"| task | length | {cfg.controller} | no memory |\n|---|---|---|---|")
    for task in source.tasks:
        for length in lengths:
            acc = task_accuracy(model, task, length, cfg.eval_episodes, controller, cfg.wm_slots, cfg.ltm_capacity,
                                cfg.seed + EVAL_SEED_OFFSET, source.task_kwargs)
            acc0 = task_accuracy(model, task, length, cfg.eval_episodes, none, cfg.wm_slots, cfg.ltm_capacity,
                                 cfg.seed + EVAL_SEED_OFFSET, source.task_kwargs)
            results[f"{task}@{length}"] = {"memory": acc, "no_memory": acc0}
            log(f"| {task} | {length} | {acc:.3f} | {acc0:.3f} |")
    return results
