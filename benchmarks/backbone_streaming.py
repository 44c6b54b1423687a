"""Backbone forward in streaming mode: tokens per second and peak memory, 1K to 1M tokens.

Each length runs in a fresh subprocess (so the peak resident set size of one does
not hide in another's), feeding random tokens in chunks of ``--chunk`` with the
recurrent state carried and no autograd. Peak memory must stay flat in length:
the state is fixed-size and nothing grows with the sequence.

    python benchmarks/backbone_streaming.py            # 1K ... 1M
    python benchmarks/backbone_streaming.py --lengths 1024,65536
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import torch
from _common import markdown_table, peak_rss_mib

from ahm.backbone import MambaConfig, MambaLM


def run_one(length: int, chunk: int, d_model: int, n_layer: int, batch: int) -> dict:
    torch.manual_seed(0)
    lm = MambaLM(MambaConfig(vocab_size=256, d_model=d_model, n_layer=n_layer)).eval()
    g = torch.Generator().manual_seed(0)
    state = lm.init_state(batch)
    with torch.no_grad():
        lm(torch.zeros(batch, min(chunk, 64), dtype=torch.long), lm.init_state(batch))  # warm-up
        start = time.perf_counter()
        for s in range(0, length, chunk):
            tokens = torch.randint(0, 256, (batch, min(chunk, length - s)), generator=g)
            logits, state = lm(tokens, state)
        seconds = time.perf_counter() - start
    assert torch.isfinite(logits).all()
    return {"length": length, "seconds": seconds, "tokens_per_s": batch * length / seconds,
            "peak_rss_mib": peak_rss_mib()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", default="1024,4096,16384,65536,262144,1048576")
    parser.add_argument("--chunk", type=int, default=4096, help="tokens per forward call")
    parser.add_argument("--d-model", type=int, default=64)
    parser.add_argument("--n-layer", type=int, default=2)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--one", type=int, default=0, help=argparse.SUPPRESS)  # child mode
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one, args.chunk, args.d_model, args.n_layer, args.batch)))
        return
    rows, base = [], None
    for length in (int(x) for x in args.lengths.split(",")):
        cmd = [sys.executable, __file__, "--one", str(length), "--chunk", str(args.chunk),
               "--d-model", str(args.d_model), "--n-layer", str(args.n_layer), "--batch", str(args.batch)]
        r = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.splitlines()[-1])
        base = base or r["peak_rss_mib"]
        rows.append([f"{length:,}", f"{r['tokens_per_s']:,.0f}", f"{r['seconds']:.1f}",
                     f"{r['peak_rss_mib']:.0f}", f"{r['peak_rss_mib'] / base:.2f}"])
        print(f"{length:>9,} tokens: {r['tokens_per_s']:,.0f} tokens/s, peak RSS {r['peak_rss_mib']:.0f} MiB",
              file=sys.stderr, flush=True)
    print(f"MambaLM d_model={args.d_model} n_layer={args.n_layer} batch={args.batch}, "
          f"streamed in chunks of {args.chunk}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(markdown_table(["length", "tokens/s", "seconds", "peak RSS (MiB)", "peak / peak at first length"], rows))


if __name__ == "__main__":
    main()
