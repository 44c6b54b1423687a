"""Where a controller's answers are lost: what memory holds, and where it reads, at the chunks that ask a fact.

For issue 18's "where a target is missed, what was reached and why". On the benchmark's streams of ``--seeds``
(which no training run draws), each controller plays one whole episode per seed; at every chunk that asks a fact,
the ground truth says whether the asked fact is in the working memory, in the long-term memory, or in neither
(lost: no read can answer it), and the controller's action says which level it read. Beside it, the writes per
chunk of each kind (``ahm.agents.behaviour.ops_by_chunk_kind``): a fact chunk not written is a fact lost at once.

    python benchmarks/query_outcomes.py --backbone runs/recall_keep3_export \\
        --learned runs/forgetbind_wp08_s1/round_0/controller

Controllers: each ``--learned`` checkpoint, ``keep_gated_update`` (``benchmarks/keep_gated_rule.py``: a
hand-written rule over the keep head, a diagnostic) at ``--keep-threshold``, ``update`` and the oracle. Last, the
accuracy of each learned controller as it is, with its reads (the retrieve component) replaced by ``update``'s
choice of level, and with its LTM forgets (``ltm_forget``) replaced by ``keep_gated_update``'s: what does each of
these decisions cost it?
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import markdown_table  # noqa: E402
from keep_gated_rule import KeepGatedUpdate  # noqa: E402

from ahm.agents import make_controller  # noqa: E402
from ahm.agents.behaviour import ops_by_chunk_kind  # noqa: E402
from ahm.agents.evaluation import evaluate_seeds, evaluation_stream_seeds, make_eval_env  # noqa: E402
from ahm.agents.rollout import rollout  # noqa: E402

READS = ("none", "WM", "LTM", "both")
"""The retrieve component's values, in order."""


def query_outcomes(controller: Any, env: Any, streams: list[int]) -> dict[str, float]:
    """Shares of the query chunks of one episode per stream: the asked fact in WM / in LTM only / lost, and each read.
    ``env`` is an eval env over ``streams`` (``make_eval_env``), shared by every controller so that the backbone
    reads each stream once."""
    held = {"in WM": 0, "in LTM only": 0, "lost": 0}
    reads = dict.fromkeys(READS, 0)
    ended = np.zeros(len(streams), dtype=bool)
    for step in rollout(controller, env.episodes, stream_seeds=streams):
        truth = step.shown_info["ground_truth"]
        asks = (np.asarray(truth["query_fact_id"]) >= 0) & ~ended
        in_wm = np.asarray(truth["query_fact_in_wm"], dtype=bool)
        in_ltm = np.asarray(truth["query_fact_in_ltm"], dtype=bool)
        held["in WM"] += int((asks & in_wm).sum())
        held["in LTM only"] += int((asks & ~in_wm & in_ltm).sum())
        held["lost"] += int((asks & ~in_wm & ~in_ltm).sum())
        for value, name in enumerate(READS):
            reads[name] += int((asks & (step.played[:, 2] == value)).sum())
        ended |= step.done
    total = max(1, sum(held.values()))
    return {"queries": float(total), **{k: v / total for k, v in held.items()},
            **{f"reads {k}": v / total for k, v in reads.items()}}


class Swapped:
    """``controller``'s actions with the components ``components`` replaced by ``donor``'s (both see the same
    observation): what that one decision of a hand-written rule is worth to the learned controller."""

    def __init__(self, controller: Any, donor: Any, components: tuple[int, ...], what: str) -> None:
        self.controller, self.donor, self.components = controller, donor, components
        self.name = f"{getattr(controller, 'name', 'learned')}, {what}"

    def reset(self, num_envs: int) -> None:
        self.controller.reset(num_envs)
        self.donor.reset(num_envs)

    def act(self, observation: Any, action_mask: Any = None, info: Any = None, episode_start: Any = None) -> Any:
        out = self.controller.act(observation, action_mask, info, episode_start)
        theirs = self.donor.act(observation, action_mask, info, episode_start)
        out[:, self.components] = theirs[:, self.components]
        return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbone", required=True, help="the backbone the controllers are evaluated on")
    parser.add_argument("--learned", action="append", default=[], help="a learned controller's checkpoint (repeat)")
    parser.add_argument("--env-id", default="AHMMemory-ForgetBind-v0")
    parser.add_argument("--seq-len", type=int, default=102_400)
    parser.add_argument("--keep-threshold", type=float, default=0.1,
                        help="keep_gated_update's t (0.1: the one keep_gated_rule.py chose at 100K)")
    parser.add_argument("--seeds", default="0,1,2")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    seeds = [int(s) for s in args.seeds.split(",")]
    controllers = [(f"learned {i}: {p}", make_controller(p)) for i, p in enumerate(args.learned)]
    controllers += [(f"keep_gated_update, t = {args.keep_threshold}", KeepGatedUpdate(args.keep_threshold)),
                    ("update", make_controller("update")), ("oracle", make_controller("oracle"))]
    streams = [s for seed in seeds for s in evaluation_stream_seeds(seed, 1)]  # the benchmark's, one per seed
    env = make_eval_env(args.env_id, num_envs=len(streams), stream_seeds=streams, seq_len=args.seq_len,
                        backbone=args.backbone)
    kinds_rows, query_rows = [], []
    for name, ctrl in controllers:
        ops = ops_by_chunk_kind(ctrl, args.env_id, args.seq_len, seeds, backbone=args.backbone)
        forgets = sum(o.forgets for o in ops.values())
        kinds_rows.append([name, *(f"{ops[k].per_chunk('writes'):.2f}" for k in ops), str(forgets)])
        q = query_outcomes(ctrl, env, streams)
        query_rows.append([name, f"{q['queries']:.0f}", *(f"{q[k]:.2f}" for k in ("in WM", "in LTM only", "lost")),
                           *(f"{q['reads ' + r]:.2f}" for r in READS)])
    kinds = list(ops)
    print(f"{args.env_id}, {args.seq_len:,} tokens, seeds {seeds} (one episode each), backbone {args.backbone}")
    print("\nShare of the chunks of each kind written, and the forgets (WM and LTM) in all the episodes:\n")
    print(markdown_table(["controller", *kinds, "forgets"], kinds_rows))
    print("\nAt the chunks that ask a fact: where the asked fact is, and which level the controller reads:\n")
    print(markdown_table(["controller", "queries", "in WM", "in LTM only", "lost", *(f"reads {r}" for r in READS)],
                         query_rows))
    swap_rows = []
    for name, ctrl in controllers[: len(args.learned)]:
        swaps = (("as learned", ctrl), ("update's reads", Swapped(ctrl, make_controller("update"), (2,), "reads")),
                 ("the rule's LTM forgets", Swapped(ctrl, KeepGatedUpdate(args.keep_threshold), (4,), "LTM forgets")))
        for label, c in swaps:
            results = evaluate_seeds(c, env, seeds=seeds, episodes=1)
            accs = [r.accuracy for r in results]
            swap_rows.append([name, label, f"{np.mean(accs):.3f}", " / ".join(f"{a:.2f}" for a in accs)])
    if swap_rows:
        print("\nAccuracy of each learned controller as it is, with update's choice of the level to read, and with "
              "keep_gated_update's LTM forgets (ltm_forget):\n")
        print(markdown_table(["controller", "decision replaced", "accuracy", "per seed"], swap_rows))
    env.close()


if __name__ == "__main__":
    main()
