"""Selective copying (Gu & Dao, 2023, Sec. 4.1.1, Table 1): does the selective SSM select?

Each sequence is a region of ``--length`` tokens that is all noise (token 0) except
``--data-tokens`` data tokens (ids 1 .. vocab-2) at random positions, followed by
``--data-tokens`` copy markers (id vocab-1). At each marker the model must output
the data tokens in order. Accuracy is per output token; chance is 1 / (vocab - 2).
The paper's setting (length 4096, vocabulary 16, 16 data tokens, 2 layers, width 64)
is the default; the paper reports 99.8% for Mamba (S6).

Trains for at most ``--minutes`` of wall-clock time (or exactly ``--steps`` steps), then
evaluates on held-out sequences and prints a markdown table. Not part of CI.

    python benchmarks/mamba_selective_copying.py --minutes 30

``--model hf`` trains Hugging Face's ``MambaForCausalLM`` (its CPU path; ``transformers``, the
``parity`` extra) of the same sizes on the same batches with the same optimizer: an independent
implementation to tell the budget from the model. ``--decay-all`` puts weight decay on every
parameter (``A_log``, ``D``, biases and norms too), as this script did before it followed the
reference recipe (``ahm.backbone.optim``): the A/B of that change.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from _common import adamw, markdown_table

from ahm.backbone import MambaConfig, MambaLM, mark_no_weight_decay
from ahm.cli import parse_config

MODELS = ("ahm", "hf")


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
    steps: int = 0
    """Train exactly this many steps instead (0: the --minutes budget): equal budgets for an A/B."""
    model: str = "ahm"
    """``ahm`` (this library's MambaLM) or ``hf`` (transformers' MambaForCausalLM, same sizes)."""
    init: str = "ahm"
    """``--model ahm``'s initial weights: ``ahm`` (MambaLM's own, mamba_ssm's recipe) or ``hf`` (those
    transformers' MambaForCausalLM draws with the same seed, copied in: the A/B of init against implementation)."""
    embedding_init: float = 0.02
    """Std of the embedding's init for ``--model ahm --init ahm`` (MambaLM's 0.02, as mamba_ssm; HF draws 0.1)."""
    weight_decay: float = 0.1
    decay_all: bool = False
    """Weight decay on every parameter (the recipe before ahm.backbone.optim), not matrices only."""
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


def build_model(args: Args) -> torch.nn.Module:
    """The model ``--model`` names, with the paper's sizes."""
    config = MambaConfig(vocab_size=args.vocab, d_model=args.d_model, n_layer=args.n_layer)
    if args.model == "ahm" and args.init == "ahm":
        lm = MambaLM(config)
        if args.embedding_init != 0.02:  # the default keeps torch's generator stream (and every earlier run) as it was
            with torch.no_grad():
                lm.backbone.embedding.weight.normal_(0.0, args.embedding_init)
        return lm
    from transformers import MambaConfig as HFMambaConfig
    from transformers import MambaForCausalLM

    hf = MambaForCausalLM(HFMambaConfig(vocab_size=args.vocab, hidden_size=args.d_model, num_hidden_layers=args.n_layer,
                                        state_size=16, expand=2, conv_kernel=4, use_cache=False,
                                        use_mambapy=True))  # mambapy's parallel scan, not a token loop
    if args.model == "ahm":  # --init hf: the same model, HF's initial weights (drawn first, as --model hf does)
        lm = MambaLM(config)
        lm.load_state_dict({k.replace("embeddings", "embedding"): v for k, v in hf.state_dict().items()})
        return lm
    for layer in hf.backbone.layers:
        mark_no_weight_decay(layer.mixer.A_log, layer.mixer.D)  # as mamba_ssm marks them
    return hf


def output_logits(lm: torch.nn.Module, tokens: torch.Tensor, k: int) -> torch.Tensor:
    logits = lm(tokens)[0] if isinstance(lm, MambaLM) else lm(input_ids=tokens, use_cache=False).logits
    return logits[:, -k:]  # (b, k, vocab): predictions at the markers


@torch.no_grad()
def evaluate(lm: torch.nn.Module, args: Args, n: int, seed: int, length: int = 0) -> float:
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
    if args.model not in MODELS or args.init not in MODELS:
        raise SystemExit(f"--model and --init must be one of {MODELS}, got {args.model!r} and {args.init!r}")
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    g = torch.Generator().manual_seed(args.seed)

    lm = build_model(args)
    opt = adamw(lm, args.lr, args.weight_decay, args.decay_all)
    budget = args.minutes * 60
    start = time.perf_counter()
    step, curve, tokens_seen = 0, [], 0
    length = min(256, args.length) if args.curriculum else args.length
    while (step < args.steps) if args.steps else (time.perf_counter() - start < budget):
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
            ["task", "model", "init", "weight decay", "length", "curriculum", "steps", "train time (s)", "train tokens",
             "accuracy", "chance", "paper"],
            [[
                "selective copying", args.model, args.init if args.model == "ahm" else "hf",
                "all parameters" if args.decay_all else "matrices",
                args.length, f"256 -> {length}" if args.curriculum else "no", step,
                result["train_seconds"], result["train_tokens"], f"{acc:.4f}", f"{result['chance']:.4f}", "0.998",
            ]],
        )
    )


if __name__ == "__main__":
    main()
