"""Kill train_lm.py with SIGKILL mid-run, resume it, and compare with an uninterrupted run of the same seed.

Prints the loss curve around the kill for both runs and the largest weight difference
at the end (0.0 means bit-identical). Each run is a fresh process, as a user would run it::

    python benchmarks/train_lm_resume.py --steps 60 --kill-after 25
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ahm.backbone.checkpoint import load_ahm_checkpoint
from ahm.cli import parse_config
from ahm.training.checkpoint import current_model_dir

REPO = Path(__file__).resolve().parents[1]


@dataclass
class ResumeConfig:
    """SIGKILL a text run mid-way, resume it, compare with an uninterrupted run."""

    steps: int = 60
    """Optimisation steps of each run."""
    kill_after: int = 25
    """Kill the run once its checkpoint has reached this step."""
    args: str = ("--seq-len 2048 --window 512 --chunk-size 128 --batch 4 --d-model 32 --max-documents 40 "
                 "--checkpoint-every 1 --threads 1 --no-progress")
    """Further train_lm.py arguments of both runs."""


def main(argv: list[str] | None = None) -> None:
    cfg = parse_config(ResumeConfig, argv)
    common = [sys.executable, str(REPO / "train_lm.py"), "--max-steps", str(cfg.steps), *cfg.args.split()]
    with tempfile.TemporaryDirectory() as tmp:
        full, killed = Path(tmp) / "full", Path(tmp) / "killed"
        subprocess.run([*common, "--out-dir", str(full)], check=True, capture_output=True)
        proc = subprocess.Popen([*common, "--out-dir", str(killed)], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        while proc.poll() is None:
            try:
                if json.loads((killed / "trainer.json").read_text())["state"]["step"] >= cfg.kill_after:
                    break
            except (FileNotFoundError, json.JSONDecodeError, KeyError):
                pass
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        at = json.loads((killed / "trainer.json").read_text())["state"]["step"]
        subprocess.run([*common, "--out-dir", str(killed), "--resume"], check=True, capture_output=True)
        a = json.loads((full / "trainer.json").read_text())["state"]["losses"]
        b = json.loads((killed / "trainer.json").read_text())["state"]["losses"]
        x, _ = load_ahm_checkpoint(current_model_dir(full))
        y, _ = load_ahm_checkpoint(current_model_dir(killed))
        diff = max(float((u - v).abs().max()) for u, v in zip(x.state_dict().values(), y.state_dict().values()))
    print(f"killed with SIGKILL after the checkpoint of step {at}, resumed, ran to step {cfg.steps}\n")
    print("| step | uninterrupted loss | killed + resumed loss |\n|---|---|---|")
    for s in range(max(0, at - 3), min(len(a), at + 4)):
        print(f"| {s + 1}{' (first after resume)' if s == at else ''} | {a[s]:.6f} | {b[s]:.6f} |")
    print(f"\nloss curves identical: {a == b}; largest final weight difference: {diff}")
    assert torch.isfinite(torch.tensor(diff))


if __name__ == "__main__":
    main()
