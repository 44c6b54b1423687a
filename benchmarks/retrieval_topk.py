"""Top-k retrieval over a large long-term memory: the kernels against matmul + topk.

64 queries, 1M keys of dim 64, top-8 (the issue's setting), fp32 and int8 keys
(per-vector scale). The baseline is what a user would write: ``torch.matmul`` of
the queries with all (dequantised) keys, then ``torch.topk``. Each result is
checked to be identical (same indices) before its time is reported.

    python benchmarks/retrieval_topk.py
    python benchmarks/retrieval_topk.py --keys 100000
"""

from __future__ import annotations

import argparse
import time

import torch
from _common import markdown_table

from ahm.kernels import dequantize_int8, quantize_int8, topk_similarity, topk_similarity_int8


def best_of(fn, repeat: int) -> tuple[float, object]:
    out = fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return min(times), out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--queries", type=int, default=64)
    parser.add_argument("--keys", type=int, default=1 << 20)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    g = torch.Generator().manual_seed(0)
    q = torch.randn(args.queries, args.dim, generator=g)
    keys = torch.randn(args.keys, args.dim, generator=g)
    codes, scales = quantize_int8(keys)

    rows = []
    t_base, (bv, bi) = best_of(lambda: torch.topk(q @ keys.T, args.k, dim=-1), args.repeat)
    t_fast, (fv, fi) = best_of(lambda: topk_similarity(q, keys, args.k), args.repeat)
    assert torch.equal(bi, fi), "fp32: indices differ from matmul + topk"
    rows.append(["fp32", f"{t_base * 1e3:.1f}", f"{t_fast * 1e3:.1f}", f"{t_base / t_fast:.2f}x", "identical"])

    t_base, (bv, bi) = best_of(
        lambda: torch.topk(q @ dequantize_int8(codes, scales).T, args.k, dim=-1), args.repeat
    )
    t_fast, (fv, fi) = best_of(lambda: topk_similarity_int8(q, codes, scales, args.k), args.repeat)
    assert torch.equal(bi, fi), "int8: indices differ from dequantise + matmul + topk"
    rows.append(["int8", f"{t_base * 1e3:.1f}", f"{t_fast * 1e3:.1f}", f"{t_base / t_fast:.2f}x", "identical"])

    flops = 2 * args.queries * args.keys * args.dim
    print(f"top-{args.k} of {args.queries} queries over {args.keys:,} keys of dim {args.dim}; "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads; best of {args.repeat}; "
          f"{flops / 1e9:.1f} GFLOP per search")
    print(markdown_table(["keys", "matmul + topk (ms)", "topk_similarity (ms)", "speed-up", "results"], rows))


if __name__ == "__main__":
    main()
