"""Selective copying (Gu & Dao, 2023, Sec. 4.1.1, Table 1): does the selective SSM select?

Each sequence is a region of ``--length`` tokens that is all noise (token 0) except
``--data-tokens`` data tokens (ids 1 .. vocab-2) at random positions, followed by
``--data-tokens`` copy markers (id vocab-1). At each marker the model must output
the data tokens in order. Accuracy is per output token; chance is 1 / (vocab - 2).
The paper's setting (length 4096, vocabulary 16, 16 data tokens, 2 layers, width 64)
is the default; the paper reports 99.8% for Mamba (S6).

Trains for at most ``--minutes`` of wall-clock time, then evaluates on held-out
sequences and prints a markdown table. Not part of CI.

    python benchmarks/mamba_selective_copying.py --minutes 30
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from _common import markdown_table

from ahm.backbone import MambaConfig, MambaLM
from ahm.cli import parse_config


@dataclass
class Args:
    length: int = 4096
    """Length of the noise/data region (the paper's sequence length)."""
    vocab: int = 16
    """Vocabulary: 0 is noise, vocab-1 the copy marker, the rest are data tokens."""
    data_tokens: int = 16
    """Data tokens to memorise and copy."""
    d_model: int = 64
    n_layer: int = 2
    batch: int = 8
    lr: float = 2e-3
    minutes: float = 30.0
    """Training wall-clock budget."""
    eval_sequences: int = 256
    curriculum: bool = False
    """Train on short regions first (256, doubling whenever accuracy at the current length
    reaches 0.9), ending at --length; the test is always at --length."""
    seed: int = 0
    threads: int = 0
    """torch threads (0: leave the default)."""
    out: str = "benchmarks/results/selective_copying.json"


def make_batch(args: Args, batch: int, g: torch.Generator, length: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """tokens (b, length + k) and targets (b, k) for the k copy positions (length: --length by default)."""
    k = args.data_tokens
    length = length or args.length
    tokens = torch.zeros(batch, length + k, dtype=torch.long)
    # k distinct positions per sequence, kept in order: the order of the copy.
    pos = torch.rand(batch, length, generator=g).argsort(dim=1)[:, :k].sort(dim=1).values
    data = torch.randint(1, args.vocab - 1, (batch, k), generator=g)
    tokens.scatter_(1, pos, data)
    tokens[:, length:] = args.vocab - 1
    return tokens, data


def output_logits(lm: MambaLM, tokens: torch.Tensor, k: int) -> torch.Tensor:
    logits, _ = lm(tokens)
    return logits[:, -k:]  # (b, k, vocab): predictions at the markers


@torch.no_grad()
def evaluate(lm: MambaLM, args: Args, n: int, seed: int, length: int = 0) -> float:
    g = torch.Generator().manual_seed(seed)
    correct = total = 0
    for start in range(0, n, args.batch):
        tokens, data = make_batch(args, min(args.batch, n - start), g, length)
        pred = output_logits(lm, tokens, args.data_tokens).argmax(-1)
        correct += (pred == data).sum().item()
        total += data.numel()
    return correct / total


def main() -> None:
    args = parse_config(Args, description=__doc__)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    g = torch.Generator().manual_seed(args.seed)

    lm = MambaLM(MambaConfig(vocab_size=args.vocab, d_model=args.d_model, n_layer=args.n_layer))
    opt = torch.optim.AdamW(lm.parameters(), lr=args.lr, weight_decay=0.1, betas=(0.9, 0.95))
    budget = args.minutes * 60
    start = time.perf_counter()
    step, curve, tokens_seen = 0, [], 0
    length = min(256, args.length) if args.curriculum else args.length
    while time.perf_counter() - start < budget:
        # Linear warm-up over 100 steps, then constant: the run length is unknown in steps.
        for group in opt.param_groups:
            group["lr"] = args.lr * min(1.0, (step + 1) / 100)
        tokens, data = make_batch(args, args.batch, g, length)
        tokens_seen += tokens.numel()
        logits = output_logits(lm, tokens, args.data_tokens)
        loss = F.cross_entropy(logits.reshape(-1, args.vocab), data.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(lm.parameters(), 1.0)
        opt.step()
        step += 1
        if step % 25 == 0:
            elapsed = time.perf_counter() - start
            acc = evaluate(lm, args, 32, seed=10_000, length=length)
            curve.append({"step": step, "seconds": round(elapsed, 1), "length": length, "loss": loss.item(),
                          "acc32": acc})
            print(f"step {step:5d}  {elapsed:7.1f}s  length {length}  loss {loss.item():.4f}  "
                  f"acc(32 seqs) {acc:.3f}", flush=True)
            if args.curriculum and acc >= 0.9 and length < args.length:
                length = min(2 * length, args.length)
    train_seconds = time.perf_counter() - start

    acc = evaluate(lm, args, args.eval_sequences, seed=123_456)
    result = {
        "args": asdict(args),
        "steps": step,
        "train_seconds": round(train_seconds, 1),
        "train_tokens": tokens_seen,
        "accuracy": acc,
        "chance": 1 / (args.vocab - 2),
        "paper_accuracy": 0.998,
        "curve": curve,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print()
    print(
        markdown_table(
            ["task", "length", "curriculum", "steps", "train time (s)", "train tokens", "accuracy", "chance", "paper"],
            [[
                "selective copying", args.length, f"256 -> {length}" if args.curriculum else "no", step,
                result["train_seconds"], result["train_tokens"], f"{acc:.4f}", f"{result['chance']:.4f}", "0.998",
            ]],
        )
    )


if __name__ == "__main__":
    main()
