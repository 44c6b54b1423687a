"""The benchmark's pictures: accuracy against length per task, and one episode's memory accesses over time.

:func:`write_plots` writes ``accuracy_<task>.png`` and ``accesses_<task>.png`` from the rows of
:func:`ahm.agents.benchmark.run_benchmark` (each a ``BenchmarkRow``); matplotlib is optional (the ``plots``
extra) and its absence is reported, not raised.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ahm.agents.evaluation import MemoryAccesses

__all__ = ["write_plots", "access_image", "format_length", "LENGTH_UNITS"]

LENGTH_UNITS = {"K": 2**10, "M": 2**20}
"""The suffixes of token counts (binary: 4K = 4096)."""


def format_length(tokens: int) -> str:
    """4096 -> ``"4K"``, 1048576 -> ``"1M"``, 1000 -> ``"1000"``."""
    for unit in ("M", "K"):
        if tokens % LENGTH_UNITS[unit] == 0:
            return f"{tokens // LENGTH_UNITS[unit]}{unit}"
    return str(tokens)


_MARKERS = ("o", "s", "^", "v", "D", "P", "X", "*", "h", "<", ">")
_LINESTYLES = ("-", "--")
_ACCESS_COLORS = ("white", "tab:blue", "tab:gray", "tab:green", "tab:orange", "tab:red")
_ACCESS_LABELS = ("none", "read (top-1)", "forget", "write", "write, old entry moved to LTM",
                  "write, old entry dropped")


def access_image(acc: MemoryAccesses) -> np.ndarray:
    """(K + 1, T) int codes of :data:`_ACCESS_LABELS` per slot and chunk; the last row is the long-term memory.

    Within a step, later operations win (read, then forget, then write: the env's order).
    """
    k = acc.writes.shape[1]
    image = np.zeros((k + 1, len(acc.writes)), dtype=np.int64)
    for code, events in ((1, acc.wm_reads), (2, acc.forgets), (3, acc.writes), (4, acc.moved_to_ltm),
                         (5, acc.dropped)):
        image[:k][events.T] = code
    image[k][acc.ltm_reads] = 1
    image[k][acc.ltm_forgets] = 2
    image[k][acc.moved_to_ltm.any(1)] = 4
    return image


def write_plots(rows: Sequence[Any], accesses: Mapping[str, Mapping[str, MemoryAccesses]], out: Path,
           say: Any) -> list[Path]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.colors import ListedColormap
        from matplotlib.patches import Patch
    except ImportError:
        say("matplotlib is not installed: no plots (pip install 'ahm-ssm[plots]')")
        return []
    written = []
    for task in dict.fromkeys(r.task for r in rows):
        cell = [r for r in rows if r.task == task]
        fig, ax = plt.subplots(figsize=(7.5, 4))
        names = list(dict.fromkeys(r.controller for r in cell))
        for i, name in enumerate(names):
            mine = sorted((r for r in cell if r.controller == name), key=lambda r: r.length)
            ci = [0.0 if math.isnan(r.accuracy_ci95) else r.accuracy_ci95 for r in mine]
            # Equal lines stay visible: each controller's points sit a little apart along the (log) length axis,
            # spread over 0.3 decade (lengths are usually 4x = 0.6 decade apart or more), each with its own marker.
            shift = 10 ** (0.3 * (i / max(len(names) - 1, 1) - 0.5)) if len(names) > 1 else 1.0
            ax.errorbar([r.length * shift for r in mine], [r.accuracy_mean for r in mine], yerr=ci, capsize=2,
                        marker=_MARKERS[i % len(_MARKERS)], linestyle=_LINESTYLES[i // len(_MARKERS) % 2],
                        markersize=5, linewidth=1.2, alpha=0.85, label=name)
        chance = cell[0].chance_accuracy
        if not math.isnan(chance):
            ax.axhline(chance, color="black", linestyle=":", linewidth=1, label="chance")
        ax.set_xscale("log")
        ax.minorticks_off()  # the log axis' minor labels (2 x 10^3, ...) collide with the K / M labels
        lengths = sorted({r.length for r in cell})
        ax.set_xticks(lengths, [format_length(x) for x in lengths])
        ax.set_ylim(-0.05, 1.05)  # room for the markers at 0 and 1
        ax.set(xlabel="sequence length (tokens)", ylabel="accuracy (mean, 95% CI over seeds)", title=task)
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
        fig.tight_layout()
        path = out / f"accuracy_{task}.png"
        fig.savefig(path, dpi=120)
        plt.close(fig)
        written.append(path)
    cmap = ListedColormap(_ACCESS_COLORS)
    for task, per_controller in accesses.items():
        fig, axes = plt.subplots(len(per_controller), 1, figsize=(8, 1.6 + 1.1 * len(per_controller)), squeeze=False)
        for ax, (name, acc) in zip(axes[:, 0], per_controller.items()):
            image = access_image(acc)
            ax.imshow(image, cmap=cmap, vmin=0, vmax=len(_ACCESS_COLORS) - 1, aspect="auto", interpolation="nearest")
            k = image.shape[0] - 1
            ax.set_yticks([0, k - 1, k], ["slot 0", f"slot {k - 1}", "LTM"], fontsize=6)
            ax.set_ylabel(name, fontsize=7)
        axes[-1, 0].set_xlabel("chunk")
        fig.legend(handles=[Patch(color=c, label=label) for c, label in zip(_ACCESS_COLORS[1:], _ACCESS_LABELS[1:])],
                   loc="lower center", ncol=3, fontsize=6)
        steps = max(len(a.writes) for a in per_controller.values())
        fig.suptitle(f"{task}: memory accesses in one episode ({steps} chunks)", fontsize=9)
        fig.tight_layout(rect=(0, 0.5 / fig.get_figheight(), 1, 1))  # room for the legend: half an inch
        path = out / f"accesses_{task}.png"
        fig.savefig(path, dpi=120)
        plt.close(fig)
        written.append(path)
    return written
