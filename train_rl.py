"""The alternation: supervised backbone phases and RL controller phases, then the controller benchmark.

Thin: parses the typed config (every field's documentation is its ``--help``) and
calls :func:`ahm.training.alternation.run_alternation`. ``make run`` runs it with its
defaults (at most 10 minutes on a 2-core CPU), which ends by printing the learned
controller against every heuristic and the oracle::

    python train_rl.py
    python train_rl.py --env-id AHMMemory-Decoy-v0 --rounds 3 --rl-timesteps 200000
    python train_rl.py --out-dir runs/train_rl --resume
"""

from __future__ import annotations

import sys

from ahm.cli import parse_config
from ahm.training.alternation import TrainRLConfig, run_alternation


def main(argv: list[str] | None = None) -> dict:
    try:
        cfg = parse_config(TrainRLConfig, argv)
    except ValueError as err:
        sys.exit(f"train_rl.py: {err}")
    try:
        return run_alternation(cfg)
    except (FileNotFoundError, ValueError) as err:
        sys.exit(f"train_rl.py: {err}")


if __name__ == "__main__":
    main()
