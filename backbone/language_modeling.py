"""Language-modelling loss and bits-per-byte evaluation for :class:`MambaLM`.

Bits per byte (as in MambaByte) is the mean next-byte cross-entropy in nats divided
by ln 2. Evaluation streams each document through the model in chunks with the
recurrent state carried, so the context is the whole document while memory stays
constant; ``context`` > 0 instead resets the state every ``context`` bytes, which
measures how much the model gains from context beyond that length.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .mamba import MambaLM

__all__ = ["next_token_loss", "bits_per_byte"]


def next_token_loss(lm: MambaLM, window: Tensor) -> Tensor:
    """Mean cross-entropy (nats) of predicting ``window[:, 1:]`` from ``window[:, :-1]``.

    window: (b, l + 1) token ids.
    """
    logits, _ = lm(window[:, :-1])
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), window[:, 1:].reshape(-1))


@torch.no_grad()
def bits_per_byte(
    lm: MambaLM,
    documents: Iterable[np.ndarray],
    chunk: int = 4096,
    context: int = 0,
    max_bytes: int = 0,
) -> tuple[float, int]:
    """Bits per byte over ``documents`` (uint8 arrays), streamed one document at a time.

    Args:
        chunk: bytes per forward call (does not change the result, only speed).
        context: reset the state every ``context`` bytes (0: whole-document context).
        max_bytes: stop after this many predicted bytes (0: all).

    Returns:
        (bits per byte, number of predicted bytes).
    """
    if chunk < 1 or context < 0 or max_bytes < 0:
        raise ValueError(f"need chunk >= 1, context >= 0, max_bytes >= 0; got {chunk}, {context}, {max_bytes}")
    device = next(lm.parameters()).device
    total_nats, total = 0.0, 0
    for doc in documents:
        if len(doc) < 2:
            continue
        tokens = torch.as_tensor(doc.astype(np.int64), device=device)
        n_pred = len(doc) - 1  # byte i + 1 is predicted from bytes 0 .. i
        segment = context or n_pred
        for a in range(0, n_pred, segment):
            state = lm.init_state(1, device)  # a fresh context every `segment` bytes
            b = min(a + segment, n_pred)
            for s in range(a, b, chunk):
                e = min(s + chunk, b)
                logits, state = lm(tokens[None, s:e], state)
                total_nats += F.cross_entropy(logits[0], tokens[s + 1 : e + 1], reduction="sum").item()
                total += e - s
                if max_bytes and total >= max_bytes:
                    return total_nats / total / math.log(2), total
    if total == 0:
        raise ValueError("bits_per_byte: no document has two or more bytes")
    return total_nats / total / math.log(2), total
