"""What a backbone's keep head allows a controller to reach: ``update``'s rule, gated by the head.

A diagnostic for issue 18, **not a learned controller**: a hand-written rule over a learned signal. At each chunk
it acts as ``update`` does (write into the slot whose key matches, else the first free or oldest one; forget the
LTM entry that the chunk's key re-assigns; read the level that matches), but writes and forgets only where the
keep head's ``keep_score`` exceeds a threshold t. Reads happen at every chunk.

The threshold is chosen on streams the score is not reported on: each t runs on the evaluation streams of
``--select-seeds``, the best is kept, and every t is then scored on those of ``--seeds`` (the benchmark's 0, 1, 2),
beside the chosen t without its LTM forgets (what they are worth), ``update``, ``surprise`` and the oracle on the
same streams.

    python benchmarks/keep_gated_rule.py --backbone runs/recall_keep3_export
    python benchmarks/keep_gated_rule.py --backbone runs/recall_keep3_export --seq-len 16384 --ltm-capacity 4 \\
        --episodes 8
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import markdown_table  # noqa: E402

from ahm.agents.evaluation import evaluate_seeds  # noqa: E402
from ahm.agents.heuristics import UpdateController  # noqa: E402
from ahm.envs.spaces import KEEP_SCORE  # noqa: E402


class KeepGatedUpdate(UpdateController):
    """``update``, writing and forgetting only where ``keep_score`` > ``keep_threshold``."""

    name = "keep_gated_update"

    def __init__(self, keep_threshold: float, threshold: float = 0.9, ltm_forgets: bool = True) -> None:
        super().__init__(threshold)
        self.keep_threshold = float(keep_threshold)
        self.ltm_forgets = ltm_forgets
        """False: never forget an LTM entry (``ltm_forget`` 0), to measure what those forgets are worth."""

    def act(self, observation: Mapping[str, np.ndarray], action_mask: np.ndarray | None = None,
            info: Mapping[str, Any] | None = None, episode_start: np.ndarray | None = None) -> np.ndarray:
        if KEEP_SCORE not in observation:
            raise ValueError("keep_gated_update reads the keep head's keep_score: give a --backbone with a keep head "
                             "(train_lm.py --keep-weight)")
        out = super().act(observation, action_mask, info, episode_start)
        skip = np.asarray(observation[KEEP_SCORE]).reshape(-1) <= self.keep_threshold
        out[skip, 0] = 0  # no write,
        out[skip, 1] = 0  # so no eviction,
        out[skip, 4] = 0  # and no LTM forget
        if not self.ltm_forgets:
            out[:, 4] = 0
        return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbone", required=True, help="an AHM checkpoint with a keep head")
    parser.add_argument("--env-id", default="AHMMemory-ForgetBind-v0")
    parser.add_argument("--thresholds", default="0.02,0.05,0.1,0.2,0.3,0.5,0.7")
    parser.add_argument("--seq-len", type=int, default=102_400)
    parser.add_argument("--ltm-capacity", type=int, default=0, help="0: the env's own")
    parser.add_argument("--episodes", type=int, default=1, help="episodes per seed")
    parser.add_argument("--select-seeds", default="10,11,12", help="seeds whose streams choose the threshold")
    parser.add_argument("--seeds", default="0,1,2", help="seeds whose streams are scored")
    args = parser.parse_args(argv)
    thresholds = [float(t) for t in args.thresholds.split(",")]
    select, seeds = ([int(s) for s in x.split(",")] for x in (args.select_seeds, args.seeds))
    if set(select) & set(seeds):
        parser.error(f"--select-seeds and --seeds share {sorted(set(select) & set(seeds))}: choose the threshold "
                     "on other streams than the reported ones")
    env_kwargs = {"ltm_capacity": args.ltm_capacity} if args.ltm_capacity else {}

    def score(controller: Any, on: list[int]) -> tuple[float, float]:
        results = evaluate_seeds(controller, args.env_id, seeds=on, seq_len=args.seq_len, episodes=args.episodes,
                                 num_envs=min(16, len(on) * args.episodes), backbone=args.backbone, **env_kwargs)
        return float(np.mean([r.accuracy for r in results])), float(np.mean([r.ops_per_1k_tokens for r in results]))

    chosen = max(thresholds, key=lambda t: score(KeepGatedUpdate(t), select)[0])
    rows = []
    for t in thresholds:
        acc, ops = score(KeepGatedUpdate(t), seeds)
        rows.append([f"keep_gated_update, t = {t}" + (" (chosen)" if t == chosen else ""), f"{acc:.3f}", f"{ops:.1f}"])
    acc, ops = score(KeepGatedUpdate(chosen, ltm_forgets=False), seeds)
    rows.append([f"keep_gated_update, t = {chosen}, no LTM forgets", f"{acc:.3f}", f"{ops:.1f}"])
    for name in ("update", "surprise", "oracle"):
        acc, ops = score(name, seeds)
        rows.append([name, f"{acc:.3f}", f"{ops:.1f}"])
    print(f"{args.env_id}, {args.seq_len:,} tokens, LTM {args.ltm_capacity or 'the env default'}, backbone "
          f"{args.backbone}; t chosen on seeds {select}, scored on seeds {seeds} ({args.episodes} episode(s) each)")
    print(markdown_table(["controller", "accuracy", "ops / 1K tokens"], rows))


if __name__ == "__main__":
    main()
