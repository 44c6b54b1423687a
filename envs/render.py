"""Pictures of an ``AHMMemory`` episode: a text view of the memory now, and an image of it over time.

* :func:`render_ansi`: the working-memory slots (occupied, age, uses, the chunk
  that wrote the entry and the fact it holds), the long-term memory's fill, the
  bytes held, the last action and reward.
* :func:`render_rgb`: one column per step, ``PX`` pixels per row; top band: WM
  slot contents over time (black when empty; each entry a colour hashed from the
  chunk that wrote it, fading with age); middle band: reads (white = attention
  weight on the slot); bottom rows: LTM fill (blue) and LTM read weight (white),
  then the step's reward (green > 0, red < 0).

Numpy only; no plotting library needed.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["render_ansi", "render_rgb", "PX", "MAX_COLUMNS"]

PX = 6
"""Pixel height of one row of the image."""

MAX_COLUMNS = 1024
"""Longer episodes are binned to at most this many columns (the maximum over each bin)."""

_RETRIEVE = ("none", "WM", "LTM", "both")


def render_ansi(s: dict[str, Any]) -> str:
    """A text view of the memory from :meth:`EpisodeBatch.snapshot` ``s``."""
    a = s["last_action"]
    lines = [
        f"chunk {s['chunk'] + 1}/{s['n_chunks']}  step {s['steps']}  answered {s['answered']}/{s['targets']} "
        f"correct {s['correct']}  last reward {s['last_reward']:+.4f}",
        f"last action: write {'-' if a[0] == 0 else a[0] - 1}  evict {'LTM' if a[1] else 'drop'}  "
        f"retrieve {_RETRIEVE[a[2]]}  forget {'-' if a[3] == 0 else a[3] - 1}  "
        f"ltm_forget {('-', 'oldest', 'least used', 'nearest to key')[a[4]]}",
        "slot  used  age  uses  written at chunk  fact",
    ]
    for k, occupied in enumerate(s["occupied"]):
        if occupied:
            origin = int(s["origin"][k])
            fact = int(s["fact_at"][origin]) if origin >= 0 else -1
            lines.append(f"{k:>4}  {'#':>4}  {int(s['age'][k]):>3}  {int(s['uses'][k]):>4}  {origin:>16}  "
                         f"{fact if fact >= 0 else '-':>4}")
        else:
            lines.append(f"{k:>4}  {'.':>4}")
    lines.append(f"LTM {s['ltm_count']}/{s['ltm_capacity']} entries, memory {s['bytes']} bytes")
    return "\n".join(lines) + "\n"


def _entry_colour(origin: np.ndarray) -> np.ndarray:
    """(..., 3) float colours in [0.25, 1] from the chunk that wrote an entry (a fixed hash)."""
    h = (origin.astype(np.uint64) * np.uint64(2654435761)) % np.uint64(2**32)
    channels = [((h >> np.uint64(s)) & np.uint64(255)).astype(np.float64) / 255.0 for s in (0, 8, 16)]
    return 0.25 + 0.75 * np.stack(channels, axis=-1)


def render_rgb(history: list[dict[str, Any]], slots: int) -> np.ndarray:
    """The episode so far as an (PX (2 K + 3), W, 3) uint8 image, one column per step (binned past MAX_COLUMNS)."""
    steps = max(1, len(history))
    k = slots
    grid = np.zeros((2 * k + 3, steps, 3))
    for i, h in enumerate(history):
        occupied, origin = h["occupied"], h["origin"]
        colour = _entry_colour(np.maximum(origin, 0))
        age = np.clip(h["chunk"] - origin, 0, None)
        fade = 1.0 / (1.0 + age / 64.0)
        grid[:k, i] = np.where(occupied[:, None], colour * (0.35 + 0.65 * fade[:, None]), 0.0)
        grid[k : 2 * k, i] = np.clip(h["wm_read"], 0, 1)[:, None]
        fill = h["ltm_fill"]
        grid[2 * k, i] = np.array((0.2, 0.4, 1.0)) * (0.3 + 0.7 * fill) * (fill > 0)
        grid[2 * k + 1, i] = np.clip(h["ltm_read"], 0, 1)
        r = np.tanh(10 * h["reward"])
        grid[2 * k + 2, i] = (max(-r, 0.0), max(r, 0.0), 0.0)
    if steps > MAX_COLUMNS:  # bin columns, keeping each bin's brightest value
        edges = np.linspace(0, steps, MAX_COLUMNS + 1).astype(int)
        grid = np.maximum.reduceat(grid, edges[:-1], axis=1)
    image = np.repeat(np.repeat(grid, PX, axis=0), max(1, 256 // grid.shape[1]), axis=1)
    return (np.clip(image, 0, 1) * 255).astype(np.uint8)
