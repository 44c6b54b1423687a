"""Induction heads (Gu & Dao, 2023, Sec. 4.1.2, Table 2): train short, recall at 2^20.

Each sequence is random tokens from ids 0 .. vocab-2; once, at a random position,
the trigger token (id vocab-1) appears and is followed by the target token; the
sequence ends with the trigger again and the model must predict the target.
Chance is 1 / (vocab - 1). The model (2 layers, width 64, vocabulary 16, the
paper's setting) is trained at length 256 and tested at lengths 2^8 ... 2^20 in
streaming mode: the sequence is fed in chunks with the recurrent state carried,
generated on the fly, so memory stays constant whatever the length. The paper
reports 100% for Mamba at every length up to 2^20.

Trains for at most ``--minutes`` of wall-clock time (or exactly ``--steps`` steps), then prints
the accuracy table. Not part of CI.

    python benchmarks/mamba_induction_heads.py --minutes 30
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from _common import adamw, markdown_table

from ahm.backbone import MambaConfig, MambaLM
from ahm.cli import parse_config


@dataclass
class Args:
    train_length: int = 256
    vocab: int = 16
    d_model: int = 64
    n_layer: int = 2
    batch: int = 32
    lr: float = 2e-3
    minutes: float = 30.0
    """Training wall-clock budget."""
    steps: int = 0
    """Train exactly this many steps instead (0: the --minutes budget): equal budgets for an A/B."""
    weight_decay: float = 0.1
    decay_all: bool = False
    """Weight decay on every parameter (A_log, D, biases and norms too), as this script did before it followed
    the reference recipe (matrices only; ahm.backbone.optim): the A/B of that change."""
    test_log2_min: int = 8
    test_log2_max: int = 20
    test_tokens: int = 1 << 20
    """Tokens evaluated per test length: sequences = clamp(test_tokens / length, 8, 256)."""
    stream_chunk: int = 8192
    """Tokens per streamed forward call at test time."""
    seed: int = 0
    threads: int = 0
    """torch threads (0: leave the default)."""
    out: str = "benchmarks/results/induction_heads.json"


class InductionStream:
    """A batch of induction-heads sequences of one length, generated chunk by chunk."""

    def __init__(self, args: Args, batch: int, length: int, g: torch.Generator) -> None:
        self.args, self.batch, self.length, self.g = args, batch, length, g
        self.trigger = args.vocab - 1
        # Trigger somewhere in [0, length - 3], so that trigger, target and the final
        # trigger never overlap.
        self.pos = torch.randint(0, length - 2, (batch,), generator=g)
        self.target = torch.randint(0, args.vocab - 1, (batch,), generator=g)

    def chunk(self, s: int, e: int) -> torch.Tensor:
        tokens = torch.randint(0, self.args.vocab - 1, (self.batch, e - s), generator=self.g)
        rows = torch.arange(self.batch)
        for offset, value in ((0, torch.full_like(self.target, self.trigger)), (1, self.target)):
            p = self.pos + offset
            inside = (p >= s) & (p < e)
            tokens[rows[inside], (p - s)[inside]] = value[inside]
        if e == self.length:
            tokens[:, -1] = self.trigger
        return tokens


@torch.no_grad()
def accuracy_at(lm: MambaLM, args: Args, length: int, sequences: int, seed: int) -> float:
    g = torch.Generator().manual_seed(seed)
    correct = 0
    per_batch = 64
    for start in range(0, sequences, per_batch):
        stream = InductionStream(args, min(per_batch, sequences - start), length, g)
        state = lm.init_state(stream.batch)
        for s in range(0, length, args.stream_chunk):
            e = min(s + args.stream_chunk, length)
            logits, state = lm(stream.chunk(s, e), state)
        correct += (logits[:, -1].argmax(-1) == stream.target).sum().item()
    return correct / sequences


def main() -> None:
    args = parse_config(Args, description=__doc__)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    g = torch.Generator().manual_seed(args.seed)

    lm = MambaLM(MambaConfig(vocab_size=args.vocab, d_model=args.d_model, n_layer=args.n_layer))
    opt = adamw(lm, args.lr, args.weight_decay, args.decay_all)
    start, step, curve = time.perf_counter(), 0, []
    while (step < args.steps) if args.steps else (time.perf_counter() - start < args.minutes * 60):
        for group in opt.param_groups:
            group["lr"] = args.lr * min(1.0, (step + 1) / 100)
        stream = InductionStream(args, args.batch, args.train_length, g)
        logits, _ = lm(stream.chunk(0, args.train_length))
        loss = F.cross_entropy(logits[:, -1], stream.target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(lm.parameters(), 1.0)
        opt.step()
        step += 1
        if step % 100 == 0:
            elapsed = time.perf_counter() - start
            acc = accuracy_at(lm, args, args.train_length, 256, seed=10_000)
            curve.append({"step": step, "seconds": round(elapsed, 1), "loss": loss.item(), "acc256": acc})
            print(f"step {step:6d}  {elapsed:7.1f}s  loss {loss.item():.4f}  acc@256 {acc:.3f}", flush=True)
    train_seconds = time.perf_counter() - start

    rows, table = [], {}
    for k in range(args.test_log2_min, args.test_log2_max + 1):
        length = 1 << k
        n = max(8, min(256, args.test_tokens // length))
        t0 = time.perf_counter()
        acc = accuracy_at(lm, args, length, n, seed=1_000 + k)
        seconds = time.perf_counter() - t0
        table[length] = {"accuracy": acc, "sequences": n, "seconds": round(seconds, 1)}
        rows.append([f"2^{k}", n, f"{acc:.4f}", f"{n * length / seconds:,.0f}"])
        print(f"length 2^{k}: accuracy {acc:.4f} over {n} sequences ({seconds:.0f}s)", flush=True)

    result = {
        "args": asdict(args), "steps": step, "train_seconds": round(train_seconds, 1),
        "chance": 1 / (args.vocab - 1), "paper_accuracy": 1.0, "test": table, "curve": curve,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(f"\ntrained {step} steps in {train_seconds:.0f}s at length {args.train_length}; "
          f"chance {result['chance']:.4f}; paper: 1.0 at every length\n")
    print(markdown_table(["test length", "sequences", "accuracy", "eval tokens/s"], rows))


if __name__ == "__main__":
    main()
