"""Selective-scan backends: throughput, forward+backward, streaming cost and memory.

Prints four tables (all fp32, d_state 16, dim 256, on this machine's CPU threads):

1. forward, batch 1, lengths 1K / 16K / 64K / 1M: tokens/s of every backend and the
   ratio to ``ref`` (the plain PyTorch loop);
2. forward + backward at 16K, batch 1: the same;
3. batch 64 at length 4K: tokens/s of every backend;
4. the compiled backend streamed in 16K chunks (initial_state / return_last_state)
   against one call, and the peak RSS of a no-grad streamed forward from 16K to 1M
   (each length in a fresh subprocess).

Ratios are taken within one run: this machine is shared and noisy.

    python benchmarks/scan_backends.py
    python benchmarks/scan_backends.py --quick     # smaller lengths, for a smoke run
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import torch
from _common import markdown_table, peak_rss_mib

from ahm.kernels import available_backends, select_backend, selective_scan

DIM, D_STATE = 256, 16


def inputs(batch: int, length: int, grad: bool = False, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = dict(
        u=torch.randn(batch, DIM, length, generator=g),
        delta=torch.rand(batch, DIM, length, generator=g) - 2.0,  # softplus(delta + bias) ~ 0.1
        A=-torch.arange(1.0, D_STATE + 1).repeat(DIM, 1),
        B=torch.randn(batch, D_STATE, length, generator=g),
        C=torch.randn(batch, D_STATE, length, generator=g),
        D=torch.ones(DIM),
        z=torch.randn(batch, DIM, length, generator=g),
        delta_bias=torch.zeros(DIM),
    )
    if grad:
        for v in x.values():
            v.requires_grad_(True)
    return x


def timed(fn, repeat: int = 1) -> float:
    fn()  # warm-up (numba compiles, caches fill)
    start = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - start) / repeat


def forward_tps(backend: str, batch: int, length: int) -> float:
    x = inputs(batch, length)
    with torch.no_grad():
        seconds = timed(lambda: selective_scan(**x, delta_softplus=True, backend=backend))
    return batch * length / seconds


def fwd_bwd_tps(backend: str, length: int) -> float:
    x = inputs(1, length, grad=True)

    def step():
        y = selective_scan(**x, delta_softplus=True, backend=backend)
        y.sum().backward()

    return length / timed(step)


def streamed_peak(length: int, chunk: int) -> dict:
    """Child process: no-grad streamed forward of `length` steps; peak RSS."""
    backend = select_backend("cpu")
    h = None
    start = time.perf_counter()
    with torch.no_grad():
        for s in range(0, length, chunk):
            x = inputs(1, min(chunk, length - s), seed=s)
            _, h = selective_scan(**x, delta_softplus=True, return_last_state=True, initial_state=h, backend=backend)
    return {"seconds": time.perf_counter() - start, "peak_rss_mib": peak_rss_mib()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="lengths up to 64K only")
    parser.add_argument("--ref-max-length", type=int, default=65536,
                        help="longest length at which ref is timed; beyond it ref's tokens/s at this length is used "
                             "(its per-step cost does not depend on length: one loop iteration per step)")
    parser.add_argument("--threads", type=int, default=0, help="torch and numba threads (0: defaults)")
    parser.add_argument("--parts", default="forward,backward,batch,stream",
                        help="comma-separated tables to print: forward, backward, batch, stream")
    parser.add_argument("--child", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(streamed_peak(args.child, 16384)))
        return

    if args.threads:
        import numba

        torch.set_num_threads(args.threads)
        numba.set_num_threads(args.threads)
    backends = [b for b in available_backends("cpu") if b != "triton"]  # triton: GPU script
    lengths = [1024, 16384, 65536] + ([] if args.quick else [1 << 20])
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; backends {backends}; "
          f"auto on CPU = {select_backend('cpu')}\n")

    parts = set(args.parts.split(","))
    rows, ref_tps = [], None
    for length in lengths if "forward" in parts else []:
        timed_here = [b for b in backends if b != "ref" or length <= args.ref_max_length]
        tps = {b: forward_tps(b, 1, length) for b in timed_here}
        ref_tps = tps.get("ref", ref_tps)
        cells = [f"{tps[b]:,.0f} ({tps[b] / ref_tps:.1f}x)" if b in tps else f"({ref_tps:,.0f} at "
                 f"{args.ref_max_length:,})" for b in backends]
        rows.append([f"{length:,}"] + cells)
        print(f"  forward {length}: {tps}", file=sys.stderr, flush=True)
    if rows:
        print("Forward, fp32, batch 1, dim 256, d_state 16: tokens/s (ratio to ref; ref is timed up to "
              f"{args.ref_max_length:,} steps)")
        print(markdown_table(["length"] + backends, rows) + "\n")
    if "backward" in parts:
        backward_table(backends)
    if "batch" in parts:
        batch_table(backends)
    if "stream" in parts:
        stream_tables(args.quick)


def backward_table(backends: list[str]) -> None:
    tps = {b: fwd_bwd_tps(b, 16384) for b in backends}
    print("Forward + backward, fp32, batch 1, length 16,384: tokens/s (ratio to ref)")
    print(markdown_table(backends, [[f"{tps[b]:,.0f} ({tps[b] / tps['ref']:.1f}x)" for b in backends]]) + "\n")


def batch_table(backends: list[str]) -> None:
    tps = {b: forward_tps(b, 64, 4096) for b in backends}
    print("Forward, fp32, batch 64, length 4,096: tokens/s (ratio to ref)")
    print(markdown_table(backends, [[f"{tps[b]:,.0f} ({tps[b] / tps['ref']:.1f}x)" for b in backends]]) + "\n")



def stream_tables(quick: bool) -> None:
    backend = select_backend("cpu")
    x = inputs(1, 65536)
    with torch.no_grad():
        one = timed(lambda: selective_scan(**x, delta_softplus=True, backend=backend), repeat=3)

        def chunks():
            h = None
            for s in range(0, 65536, 16384):
                part = {k: (v[..., s : s + 16384] if v.dim() == 3 else v) for k, v in x.items()}
                _, h = selective_scan(**part, delta_softplus=True, return_last_state=True, initial_state=h,
                                      backend=backend)

        streamed = timed(chunks, repeat=3)
    print(f"Streaming cost, {backend}, 65,536 steps: one call {one * 1e3:.0f} ms, "
          f"4 chained chunks of 16,384 {streamed * 1e3:.0f} ms (ratio {streamed / one:.2f})\n")

    rows, base = [], None
    for length in [16384, 65536, 262144] + ([] if quick else [1 << 20]):
        out = subprocess.run([sys.executable, __file__, "--child", str(length)], check=True,
                             capture_output=True, text=True).stdout.splitlines()[-1]
        r = json.loads(out)
        base = base or r["peak_rss_mib"]
        rows.append([f"{length:,}", f"{length / r['seconds']:,.0f}", f"{r['peak_rss_mib']:.0f}",
                     f"{r['peak_rss_mib'] / base:.2f}"])
    print(f"No-grad streamed forward ({backend}, chunks of 16,384, batch 1): peak RSS per length (fresh process)")
    print(markdown_table(["length", "tokens/s", "peak RSS (MiB)", "ratio to 16K"], rows))


if __name__ == "__main__":
    main()
