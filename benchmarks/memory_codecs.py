"""Long-term memory codecs and search: bytes per entry, recall@8 and retrieval latency, 10K to 1M entries.

For each LTM size (default 10K, 100K, 1M entries in one sequence) and each codec,
the memory is filled with unit keys near a rank-8 subspace (d = 32, the shape of
AHMModel's learnt keys; the set of tests/test_codecs.py) and random values
(d = 64), and searched with queries that are perturbed stored keys. The denser
the store, the closer the true neighbours, so lossy codecs lose recall with size. Columns:

* bytes / entry: key code + value code (``LongTermMemory.bytes_per_entry``).
* recall@8: the fraction of the exact fp32 top-8 (inner product over the raw keys)
  that the row's search returns in its top-8, over ``--queries`` queries. For the
  exact rows this measures the codec's loss; for ``ivf`` / ``hnsw`` (faiss, over
  uncompressed keys) the index's.
* latency: median milliseconds of one ``LongTermMemory.search`` call with one query
  (what ``AHMModel`` does per chunk), ``--repeats`` calls.
* build: seconds to fit the codec (pq k-means, autoencoder training) or to build the
  faiss index (at the first approximate search).

    python benchmarks/memory_codecs.py                      # 10K, 100K, 1M
    python benchmarks/memory_codecs.py --sizes 10000,100000
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch
import torch.nn.functional as F
from _common import markdown_table, peak_rss_mib

from ahm.backbone import CODECS, CodecOptions, LongTermMemory, LTMConfig, faiss_available
from ahm.kernels.retrieval import topk_similarity

KEY_DIM, VALUE_DIM, K = 32, 64, 8


def structured_keys(n: int, generator: torch.Generator, rank: int = 8, noise: float = 0.1) -> torch.Tensor:
    """n unit keys near a rank-8 subspace (n, KEY_DIM), as in tests/test_codecs.py: learnt keys are low-rank."""
    basis = torch.randn(rank, KEY_DIM, generator=generator)
    x = torch.randn(n, rank, generator=generator) @ basis / rank**0.5
    return F.normalize(x + noise * torch.randn(n, KEY_DIM, generator=generator), dim=-1)


def recall(found: torch.Tensor, true: torch.Tensor) -> float:
    """found, true: (q, k) -> mean |found_i & true_i| / k."""
    return sum(len(set(a.tolist()) & set(b.tolist())) for a, b in zip(found, true)) / true.numel()


def latency_ms(ltm: LongTermMemory, queries: torch.Tensor, repeats: int, exact: bool | None) -> float:
    times = []
    for i in range(repeats):
        q = queries[i % queries.shape[0]].view(1, 1, KEY_DIM)
        start = time.perf_counter()
        ltm.search(q, K, exact=exact)
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def fill(ltm: LongTermMemory, keys: torch.Tensor, values: torch.Tensor, piece: int = 100_000) -> None:
    for s in range(0, keys.shape[0], piece):
        ltm.extend(keys[None, s : s + piece], values[None, s : s + piece])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10000,100000,1000000", help="LTM entries per sequence")
    parser.add_argument("--codecs", default=",".join(CODECS), help="codecs searched exactly")
    parser.add_argument("--ann", default="ivf,hnsw", help="faiss indexes searched approximately (empty: none)")
    parser.add_argument("--queries", type=int, default=200, help="queries for recall@8")
    parser.add_argument("--repeats", type=int, default=20, help="timed single-query searches per row")
    parser.add_argument("--hnsw-m", type=int, default=16, help="HNSW neighbours per node (build time grows with it)")
    parser.add_argument("--threads", type=int, default=1, help="torch (and faiss) threads; 1 gives stable latencies")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    ann = [a for a in args.ann.split(",") if a]
    if ann and not faiss_available():
        print("faiss is not installed: approximate rows skipped (pip install 'ahm-ssm[ann]')", file=sys.stderr)
        ann = []

    g = torch.Generator().manual_seed(args.seed)
    rows = []
    for n in (int(s) for s in args.sizes.split(",")):
        keys = structured_keys(n, g)
        values = torch.randn(n, VALUE_DIM, generator=g)
        picked = torch.randint(0, n, (args.queries,), generator=g)
        queries = F.normalize(keys[picked] + 0.1 * torch.randn(args.queries, KEY_DIM, generator=g), dim=-1)
        _, true = topk_similarity(queries[None], keys[None], K)  # exact fp32 ground truth (1, q, K)
        sample = torch.randperm(n, generator=g)[:20_000]
        configs = [(c, "exact") for c in args.codecs.split(",")] + [("none", a) for a in ann]
        for codec, search in configs:
            cfg = LTMConfig(capacity=n, key_dim=KEY_DIM, value_dim=VALUE_DIM, codec=codec, search=search,
                            codec_options=CodecOptions(seed=args.seed), ann_min_entries=1, hnsw_m=args.hnsw_m)
            ltm = LongTermMemory(1, cfg)
            start = time.perf_counter()
            ltm.fit_codecs(keys[sample], values[sample])
            build = time.perf_counter() - start
            fill(ltm, keys, values)
            exact = search == "exact"
            if not exact:  # the faiss index is built at the first approximate search
                start = time.perf_counter()
                ltm.search(queries[None, :1], K)
                build = time.perf_counter() - start
            found = ltm.search(queries[None], K, exact=exact).indices[0]
            rec = recall(found, true[0])
            ms = latency_ms(ltm, queries, args.repeats, exact)
            rows.append([f"{n:,}", codec, search, ltm.bytes_per_entry, f"{rec:.3f}", f"{ms:.2f}", f"{build:.1f}"])
            print(f"{n:>9,} {codec:>11} {search:>5}: recall@8 {rec:.3f}, {ms:.2f} ms/query, build {build:.1f} s",
                  file=sys.stderr, flush=True)
            del ltm
    print(f"LongTermMemory, 1 sequence, keys d={KEY_DIM} (unit, near rank 8), values d={VALUE_DIM}; recall@8 vs exact "
          f"fp32 over {args.queries} queries; latency: median of {args.repeats} single-query searches; "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, peak RSS {peak_rss_mib():.0f} MiB")
    print(markdown_table(["entries", "codec", "search", "bytes / entry", "recall@8", "latency (ms)", "build (s)"],
                         rows))


if __name__ == "__main__":
    main()
