"""The loss of one truncated-backpropagation window (the supervised phase's objective, :mod:`ahm.training.supervised`).

A window is W tokens of b sequences, processed chunk by chunk (C tokens) with
:meth:`~ahm.backbone.AHMModel.process_chunk`, one backbone-level controller per chunk
deciding the memory operations. The loss is

    lm_weight * (mean next-token cross-entropy over the window's tokens)
    + answer_weight * (mean cross-entropy of the answers at query boundaries)
    + keep_weight * (balanced binary cross-entropy of the keep head at every boundary)
    + ask_weight * (cross-entropy of the ask head at every boundary a query follows)

The keep term trains the backbone's keep head (``AHMConfig.keep_head``) against the
hindsight labels (1 where a later query asks for the fact that ends in the chunk):
positives and negatives weigh half each, since needed chunks are rare in long
streams; the head's output is then a ranking score, not a calibrated probability.
The ask term trains the ask head (``AHMConfig.ask_head``) to name the first token of the
fact the next query asks for: an auxiliary objective that makes the backbone carry what
the stream will ask (module doc of :func:`ahm.envs.episode_scoring.next_asked_tokens`).

where an answer is scored exactly as the environment scores it: the next-token logits
at the boundary of the query's chunk from its last hidden state plus the memory
retrieved at that boundary (``model.readout(h_last_t, r_t)``).

Symbols: b sequences, W tokens per window, C tokens per chunk (``model.config.chunk_size``),
V vocabulary size.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ahm.agents.rollout import ReplayController
from ahm.backbone import AHMModel, AHMState, MemoryPolicy

if TYPE_CHECKING:
    from ahm.training.data import SequenceBatch

__all__ = ["WindowOutput", "WindowLoss", "WindowInputs", "window_inputs", "balanced_bce"]


class WindowOutput(NamedTuple):
    """What :class:`WindowLoss` measured on one window."""

    loss: Tensor
    """() the weighted loss (carries the graph)."""
    lm_loss: Tensor
    """() mean next-token cross-entropy (nats), detached."""
    answer_loss: Tensor
    """() mean answer cross-entropy (nats), detached."""
    answers: Tensor
    """Scored answers in the window."""
    answers_correct: Tensor
    """() int64: answers whose argmax is the target."""
    ops: Tensor
    """(5,) operation counts: writes, moves to LTM, WM retrievals, LTM retrievals, forgets."""
    keep_loss: Tensor = torch.zeros(())
    """() the keep head's balanced cross-entropy (nats), detached; 0 without keep targets."""
    ask_loss: Tensor = torch.zeros(())
    """() the ask head's mean cross-entropy (nats) over labelled boundaries, detached; 0 without ask targets."""


class WindowInputs(NamedTuple):
    """What :class:`WindowLoss` takes for the window of tokens ``[w0, w1)`` of a batch, besides the state."""

    tokens: Tensor
    """(b, w1 - w0) int64."""
    next_token: Tensor
    """(b,) the token after the window, -1 at the end of the sequences."""
    controllers: list[MemoryPolicy]
    """One per chunk of the window."""
    answer_targets: Tensor | None
    keep_targets: Tensor | None
    ask_targets: Tensor | None


def window_inputs(batch: SequenceBatch, w0: int, w1: int, chunk_size: int, actions: np.ndarray | None,
                  controller: MemoryPolicy | None = None, keep: bool = False, ask: bool = False) -> WindowInputs:
    """The inputs of tokens ``[w0, w1)`` of ``batch``: the memory operations replayed from ``actions`` (b, n, 5)
    (what a controller did on the task streams, with the answer targets), or, where ``actions`` is None (text),
    ``controller`` at every chunk and no answers; the keep / ask hindsight labels where asked for and present."""
    tokens = torch.from_numpy(batch.tokens)
    t0, t1 = w0 // chunk_size, math.ceil(w1 / chunk_size)
    if actions is not None:
        controllers: list[MemoryPolicy] = [ReplayController(actions[:, t], tokens.device) for t in range(t0, t1)]
        targets = torch.from_numpy(batch.answer_targets[:, t0:t1])
    else:
        assert controller is not None, "window_inputs: text windows need a controller"
        controllers, targets = [controller] * (t1 - t0), None
    labels = {name: torch.from_numpy(getattr(batch, name)[:, t0:t1]) if wanted and getattr(batch, name) is not None
              else None for name, wanted in (("keep_targets", keep), ("ask_targets", ask))}
    next_token = (tokens[:, w1] if w1 < tokens.shape[1] else
                  torch.full((tokens.shape[0],), -1, dtype=torch.int64))
    return WindowInputs(tokens[:, w0:w1], next_token, controllers, targets, labels["keep_targets"],
                        labels["ask_targets"])


class WindowLoss(nn.Module):
    """The loss of one TBPTT window as a module (so DistributedDataParallel can wrap it)."""

    def __init__(self, model: AHMModel, lm_weight: float, answer_weight: float, keep_weight: float = 0.0,
                 ask_weight: float = 0.0) -> None:
        super().__init__()
        self.model, self.lm_weight, self.answer_weight = model, lm_weight, answer_weight
        self.keep_weight, self.ask_weight = keep_weight, ask_weight
        if keep_weight > 0 and not model.config.keep_head:
            raise ValueError("WindowLoss: keep_weight > 0 needs a model with a keep head (AHMConfig.keep_head)")
        if ask_weight > 0 and not model.config.ask_head:
            raise ValueError("WindowLoss: ask_weight > 0 needs a model with an ask head (AHMConfig.ask_head)")

    def forward(self, tokens: Tensor, next_token: Tensor, state: AHMState, controllers: Sequence[MemoryPolicy],
                answer_targets: Tensor | None, keep_targets: Tensor | None = None,
                ask_targets: Tensor | None = None) -> tuple[WindowOutput, AHMState]:
        """tokens (b, W), next_token (b,) the token after the window (-1: none), one controller per chunk,
        answer_targets (b, W / C) or None, keep_targets (b, W / C) and ask_targets (b, W / C) hindsight labels or
        None -> the losses and the state after the window."""
        model, c = self.model, self.model.config.chunk_size
        lm_sum = tokens.new_zeros((), dtype=torch.float32)
        lm_count = 0
        ans_sum = lm_sum.clone()
        answers = correct = torch.zeros((), dtype=torch.int64)
        ops = torch.zeros(5, dtype=torch.int64)
        keep_logits, ask_logits = [], []
        width = tokens.shape[1]
        for i, s in enumerate(range(0, width, c)):
            chunk = tokens[:, s : s + c]
            follow = tokens[:, s + c] if s + c < width else next_token
            if self.lm_weight > 0:
                out = model.process_chunk(chunk, state, controllers[i])
                state, hidden, o, boundary = out.state, out.features.hidden, out.ops, out.features.boundary
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
                boundary = features.boundary
            if keep_targets is not None and self.keep_weight > 0:
                keep_logits.append(boundary.keep_logit)
            if ask_targets is not None and self.ask_weight > 0:
                ask_logits.append(boundary.ask_logits)
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
        keep_loss = torch.zeros(())
        if keep_logits:
            keep_loss = balanced_bce(torch.stack(keep_logits, 1), keep_targets[:, : len(keep_logits)].float())
            loss = loss + self.keep_weight * keep_loss
        ask_loss = torch.zeros(())
        if ask_logits:
            labels = ask_targets[:, : len(ask_logits)]
            labelled = labels >= 0
            if bool(labelled.any()):
                ask_loss = F.cross_entropy(torch.stack(ask_logits, 1)[labelled], labels[labelled])
                loss = loss + self.ask_weight * ask_loss
        if not loss.requires_grad:  # no term in this window (no answer, no LM loss): a zero that keeps the graph,
            loss = loss + 0.0 * sum(p.sum() for p in model.parameters())  # so backward (and DDP) still run
        return WindowOutput(loss, lm_loss.detach(), answer_loss.detach(), answers, correct, ops,
                            keep_loss.detach(), ask_loss.detach()), state


def balanced_bce(logits: Tensor, labels: Tensor) -> Tensor:
    """Binary cross-entropy with the positives' mean and the negatives' mean weighing half each (a class that is
    absent contributes nothing): logits and labels of one shape, labels in {0, 1}."""
    losses = F.binary_cross_entropy_with_logits(logits, labels, reduction="none")
    pos = labels > 0.5
    terms = [losses[mask].mean() for mask in (pos, ~pos) if bool(mask.any())]
    return torch.stack(terms).mean()

