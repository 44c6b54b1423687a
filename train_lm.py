"""Supervised training of the AHM model (backbone, memory projections, codec, readout) on text or task streams.

Thin: parses the typed config (every field's documentation is its ``--help``) and
calls :func:`ahm.training.supervised.train`. Examples::

    python train_lm.py                                   # byte-level LM on the built-in corpus, with memory
    python train_lm.py --source tasks --tasks passkey --controller oracle
    python train_lm.py --out-dir checkpoints/lm --eval   # bits per byte at 8K / 64K / whole document
    python train_lm.py --model mamba --model-size 1M     # a comparison model (ahm.backbone.baselines), no memory
    torchrun --nproc_per_node 2 train_lm.py --max-steps 20   # DistributedDataParallel (gloo on CPU)
"""

from __future__ import annotations

import json
import sys

from ahm.backbone.errors import NonFiniteError
from ahm.cli import parse_config
from ahm.training.config import TrainLMConfig
from ahm.training.sequence_lm import train_sequence_model
from ahm.training.supervised import TrainResult, train


def main(argv: list[str] | None = None) -> TrainResult:
    try:
        cfg = parse_config(TrainLMConfig, argv)
    except ValueError as err:  # a config value out of range: say which, change nothing
        sys.exit(f"train_lm.py: {err}")
    try:
        # --model NAME: a comparison model of ahm.backbone.baselines on the same data and budget
        result = train(cfg) if cfg.model == "ahm" else train_sequence_model(cfg)
    except (FileNotFoundError, ValueError, NonFiniteError) as err:  # empty corpus, missing file, corrupted
        sys.exit(f"train_lm.py: {err}")  # checkpoint, sizes beyond the machine, a diverged run
    except ImportError as err:  # an optional extra the corpus needs (pyarrow, datasets): the message names it
        sys.exit(f"train_lm.py: {err}")
    finally:
        _close_process_group()
    if result.evaluation:
        print(json.dumps(result.evaluation, indent=1))
    return result


def _close_process_group() -> None:
    """Under torchrun: end the process group. Left running at exit, gloo's threads can abort the process
    ("terminate called without an active exception", seen once in 3 full test runs)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
