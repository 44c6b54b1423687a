"""Supervised training of the backbone as a byte-level language model.

Trains a :class:`ahm.backbone.MambaLM` on random windows of a byte corpus (by
default the built-in one: the Python standard library's sources, no download),
then reports held-out bits per byte with the context cut at the training window
and with the whole document as context (streamed, state carried), and saves a
safetensors checkpoint. ``make run`` calls this with its defaults.

    python train_lm.py --minutes 3
    python train_lm.py --help
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
from tqdm import tqdm

from ahm.backbone import MambaConfig, MambaLM
from ahm.backbone.checkpoint import save_lm_checkpoint
from ahm.backbone.language_modeling import bits_per_byte, next_token_loss
from ahm.cli import parse_config
from ahm.envs.text_corpus import load_corpus


@dataclass
class TrainLMConfig:
    """Train a byte-level Mamba language model and report held-out bits per byte."""

    corpus: str = "stdlib"
    """'stdlib' (the Python standard library's sources, built in) or a folder of .txt/.md/.py files."""
    max_documents: int = 0
    """Use only the first N documents of the corpus (0: all)."""
    d_model: int = 128
    """Width of the model."""
    n_layer: int = 2
    """Number of Mamba blocks."""
    d_state: int = 16
    """SSM state size per channel."""
    seq_len: int = 512
    """Bytes per training window."""
    batch: int = 8
    """Windows per optimisation step."""
    lr: float = 3e-3
    """Peak AdamW learning rate (linear warm-up over the first 5% of steps, cosine after)."""
    max_steps: int = 300
    """Optimisation steps (the run also stops at --minutes)."""
    minutes: float = 3.0
    """Wall-clock budget for training."""
    eval_bytes: int = 100_000
    """Held-out bytes to evaluate at each context length."""
    seed: int = 0
    """Seed of the model initialisation and of the data sampling."""
    threads: int = 0
    """torch intra-op threads (0: torch's default)."""
    out_dir: str = "checkpoints/lm"
    """Where the checkpoint (model.safetensors + checkpoint.json) is written."""

    def __post_init__(self) -> None:
        for name in ("d_model", "n_layer", "d_state", "seq_len", "batch", "max_steps", "eval_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if not self.lr > 0 or not self.minutes > 0:
            raise ValueError(f"--lr and --minutes must be > 0, got {self.lr} and {self.minutes}")


def main(argv: list[str] | None = None) -> dict:
    cfg = parse_config(TrainLMConfig, argv)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    # Seeding, in one place: model init from torch's global seed, data from its own generator.
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)

    corpus = load_corpus(cfg.corpus, max_documents=cfg.max_documents)
    lm = MambaLM(MambaConfig(vocab_size=256, d_model=cfg.d_model, n_layer=cfg.n_layer, d_state=cfg.d_state))
    n_params = sum(p.numel() for p in lm.parameters())
    print(f"corpus {cfg.corpus!r}: {len(corpus.train)} train documents ({corpus.train_bytes:,} bytes), "
          f"{len(corpus.heldout)} held out; model: {n_params:,} parameters")

    opt = torch.optim.AdamW(lm.parameters(), lr=cfg.lr, weight_decay=0.1, betas=(0.9, 0.95))
    warmup = max(1, cfg.max_steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: min(1.0, (s + 1) / warmup)
        * 0.5 * (1 + math.cos(math.pi * min(1.0, s / cfg.max_steps))),
    )
    start = time.perf_counter()
    bar = tqdm(range(cfg.max_steps), desc="train", unit="step")
    steps = 0
    for _ in bar:
        window = torch.from_numpy(corpus.sample_windows(cfg.batch, cfg.seq_len, rng)).long()
        loss = next_token_loss(lm, window)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(lm.parameters(), 1.0)
        opt.step()
        schedule.step()
        steps += 1
        bar.set_postfix(bpb=f"{loss.item() / math.log(2):.3f}")
        if time.perf_counter() - start > cfg.minutes * 60:
            break
    bar.close()
    train_seconds = time.perf_counter() - start
    tokens_per_s = steps * cfg.batch * cfg.seq_len / train_seconds

    lm.eval()
    bpb_window, n = bits_per_byte(lm, corpus.heldout, context=cfg.seq_len, max_bytes=cfg.eval_bytes)
    bpb_full, _ = bits_per_byte(lm, corpus.heldout, context=0, max_bytes=cfg.eval_bytes)
    result = {
        "steps": steps, "train_seconds": round(train_seconds, 1), "train_tokens_per_s": round(tokens_per_s),
        "heldout_bytes": n, "bpb_context_window": bpb_window, "bpb_full_document": bpb_full,
    }
    save_lm_checkpoint(cfg.out_dir, lm, extra={"train_config": asdict(cfg), "result": result})
    print(f"\ntrained {steps} steps in {train_seconds:.0f}s ({tokens_per_s:,.0f} tokens/s); "
          f"checkpoint in {cfg.out_dir}/\n")
    print("| held-out context | bits per byte |\n|---|---|")
    print(f"| {cfg.seq_len} bytes (training window) | {bpb_window:.3f} |")
    print(f"| whole document (streamed) | {bpb_full:.3f} |")
    print(f"\n({n:,} held-out bytes; uniform over bytes would be 8.000)")
    return result


if __name__ == "__main__":
    main()
