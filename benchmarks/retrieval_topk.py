"""Top-k retrieval over a large long-term memory: the kernels against matmul + topk.

64 queries, 1M keys of dim 64, top-8 (the issue's setting), 2 threads, fp32 and
int8 keys (per-vector scale). The peer is what a user would write:
``torch.matmul`` of the queries with all (dequantised) keys, then ``torch.topk``;
it is timed in the same run, interleaved with ours (best of ``--repeat``), so the
ratio holds on a shared machine where absolute times drift. Each result is
checked to have the peer's indices before its time is reported.

    python benchmarks/retrieval_topk.py
    python benchmarks/retrieval_topk.py --keys 100000 --threads 1
"""

from __future__ import annotations

import argparse
import time

import torch
from _common import markdown_table

import ahm.kernels.retrieval as retrieval
from ahm.kernels import dequantize_int8, quantize_int8, topk_similarity, topk_similarity_int8


def best_of_pair(ours, peer, repeat: int) -> tuple[float, float, object, object]:
    """Best times of ``ours`` and ``peer``, run alternately after one warm-up call each."""
    out, ref = ours(), peer()
    t_ours, t_peer = [], []
    for _ in range(repeat):
        start = time.perf_counter()
        out = ours()
        t_ours.append(time.perf_counter() - start)
        start = time.perf_counter()
        ref = peer()
        t_peer.append(time.perf_counter() - start)
    return min(t_ours), min(t_peer), out, ref


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--queries", type=int, default=64)
    parser.add_argument("--keys", type=int, default=1 << 20)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (the issue: 2 cores)")
    parser.add_argument("--block", type=int, default=retrieval._BLOCK, help="keys per block of the fp32 path")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    retrieval._BLOCK = args.block
    g = torch.Generator().manual_seed(0)
    q = torch.randn(args.queries, args.dim, generator=g)
    keys = torch.randn(args.keys, args.dim, generator=g)
    codes, scales = quantize_int8(keys)
    k = args.k

    cases = [
        ("fp32", lambda: topk_similarity(q, keys, k), lambda: torch.topk(q @ keys.T, k, dim=-1)),
        ("int8, int8 arithmetic", lambda: topk_similarity_int8(q, codes, scales, k),
         lambda: torch.topk(q @ dequantize_int8(codes, scales).T, k, dim=-1)),
        ("int8, float arithmetic", lambda: topk_similarity_int8(q, codes, scales, k, arithmetic="float"),
         lambda: torch.topk(q @ dequantize_int8(codes, scales).T, k, dim=-1)),
    ]
    rows = []
    for name, ours, peer in cases:
        t_ours, t_peer, (_, idx), (_, ref_idx) = best_of_pair(ours, peer, args.repeat)
        assert torch.equal(idx, ref_idx), f"{name}: indices differ from the peer's"
        rows.append([name, f"{t_peer * 1e3:.1f}", f"{t_ours * 1e3:.1f}", f"{t_peer / t_ours:.2f}x", "identical"])

    flops = 2 * args.queries * args.keys * args.dim
    print(f"top-{k} of {args.queries} queries over {args.keys:,} keys of dim {args.dim}; "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, block {args.block}; "
          f"best of {args.repeat}; {flops / 1e9:.1f} GFLOP per search")
    print(markdown_table(["keys", "matmul + topk (ms)", "ours (ms)", "speed-up", "indices"], rows))


if __name__ == "__main__":
    main()
