"""The loss of one truncated-backpropagation window (the supervised phase's objective, :mod:`ahm.training.supervised`).

A window is W tokens of b sequences, processed chunk by chunk (C tokens) with
:meth:`~ahm.backbone.AHMModel.process_chunk`, one backbone-level controller per chunk
deciding the memory operations. The loss is

    lm_weight * (mean next-token cross-entropy over the window's tokens)
    + answer_weight * (mean cross-entropy of the answers at query boundaries)

where an answer is scored exactly as the environment scores it: the next-token logits
at the boundary of the query's chunk from its last hidden state plus the memory
retrieved at that boundary (``model.readout(h_last_t, r_t)``).

Symbols: b sequences, W tokens per window, C tokens per chunk (``model.config.chunk_size``),
V vocabulary size.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ahm.backbone import AHMModel, AHMState, MemoryPolicy

__all__ = ["WindowOutput", "WindowLoss"]


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


class WindowLoss(nn.Module):
    """The loss of one TBPTT window as a module (so DistributedDataParallel can wrap it)."""

    def __init__(self, model: AHMModel, lm_weight: float, answer_weight: float) -> None:
        super().__init__()
        self.model, self.lm_weight, self.answer_weight = model, lm_weight, answer_weight

    def forward(self, tokens: Tensor, next_token: Tensor, state: AHMState, controllers: Sequence[MemoryPolicy],
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

