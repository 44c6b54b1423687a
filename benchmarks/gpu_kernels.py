"""GPU kernel checks in one command: Triton scan vs mamba_ssm, and retrieval bandwidth.

Needs a CUDA GPU (exits with a message otherwise) and, for the mamba_ssm rows, the
``cuda`` extra (``pip install 'ahm-ssm[cuda]'``). Prints:

1. selective scan, fp32, batch 8 / dim 1024 / d_state 16 at lengths 4K and 64K:
   max relative error of the Triton scan against ``mamba_ssm``'s CUDA kernel (and
   against the float64 reference at the smaller size), forward and forward+backward
   time of each, and their ratio;
2. retrieval of top-8 for 64 queries over 1M keys (dim 64), fp32 and int8: time,
   effective bandwidth (key bytes read / time), and that as a fraction of the
   device's copy bandwidth measured here with a device-to-device copy.

    python benchmarks/gpu_kernels.py
"""

from __future__ import annotations

import sys

import torch
from _common import markdown_table

from ahm.kernels import available_backends, quantize_int8, selective_scan, topk_similarity, topk_similarity_int8


def cuda_time(fn, repeat: int = 10) -> float:
    fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(repeat):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / repeat / 1e3


def scan_inputs(batch: int, dim: int, length: int, grad: bool):
    g = torch.Generator(device="cuda").manual_seed(0)
    x = dict(
        u=torch.randn(batch, dim, length, device="cuda", generator=g),
        delta=torch.rand(batch, dim, length, device="cuda", generator=g) - 2.0,
        A=-torch.arange(1.0, 17.0, device="cuda").repeat(dim, 1),
        B=torch.randn(batch, 16, length, device="cuda", generator=g),
        C=torch.randn(batch, 16, length, device="cuda", generator=g),
        D=torch.ones(dim, device="cuda"),
        z=torch.randn(batch, dim, length, device="cuda", generator=g),
        delta_bias=torch.zeros(dim, device="cuda"),
    )
    if grad:
        for v in x.values():
            v.requires_grad_(True)
    return x


def scan_time(x: dict, backend: str, backward: bool) -> float:
    """Seconds per call of the scan (forward, or forward + backward) on the GPU."""
    if not backward:
        return cuda_time(lambda: selective_scan(**x, delta_softplus=True, backend=backend))
    return cuda_time(lambda: selective_scan(**x, delta_softplus=True, backend=backend).sum().backward(), 3)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def main() -> None:
    if not torch.cuda.is_available():
        print("no CUDA GPU here: this script measures the Triton / mamba_ssm kernels on a GPU; run it on one.")
        sys.exit(0)
    names = available_backends("cuda")
    print(f"{torch.cuda.get_device_name()}; torch {torch.__version__}; scan backends {names}\n")

    rows = []
    for length in (4096, 65536):
        x = scan_inputs(8, 1024, length, grad=False)
        y_tr = selective_scan(**x, delta_softplus=True, backend="triton")
        row = [f"{length:,}"]
        if length == 4096:
            x64 = {k: v.double() for k, v in x.items()}
            y64 = selective_scan(**x64, delta_softplus=True, backend="chunked")
            row.append(f"{rel(y_tr, y64):.1e}")
        else:
            row.append("-")
        t_tr = scan_time(x, "triton", backward=False)
        xg = scan_inputs(8, 1024, length, grad=True)
        t_tr_bwd = scan_time(xg, "triton", backward=True)
        if "mamba_ssm" in names:
            y_ms = selective_scan(**x, delta_softplus=True, backend="mamba_ssm")
            t_ms = scan_time(x, "mamba_ssm", backward=False)
            t_ms_bwd = scan_time(xg, "mamba_ssm", backward=True)
            row += [f"{rel(y_tr, y_ms):.1e}", f"{t_tr * 1e3:.2f}", f"{t_ms * 1e3:.2f}", f"{t_tr / t_ms:.2f}",
                    f"{t_tr_bwd * 1e3:.1f}", f"{t_ms_bwd * 1e3:.1f}", f"{t_tr_bwd / t_ms_bwd:.2f}"]
        else:
            row += ["(no mamba_ssm)", f"{t_tr * 1e3:.2f}", "-", "-", f"{t_tr_bwd * 1e3:.1f}", "-", "-"]
        rows.append(row)
    print("Selective scan, fp32, batch 8, dim 1024, d_state 16")
    print(markdown_table(
        ["length", "rel err vs fp64", "rel err vs mamba_ssm", "triton fwd ms", "mamba_ssm fwd ms", "ratio",
         "triton fwd+bwd ms", "mamba_ssm fwd+bwd ms", "ratio"], rows) + "\n")

    n = 1 << 28  # 1 GiB copy for the bandwidth reference
    src = torch.empty(n, dtype=torch.float32, device="cuda")
    dst = torch.empty_like(src)
    copy_bw = 2 * src.nbytes / cuda_time(lambda: dst.copy_(src))  # read + write
    q = torch.randn(64, 64, device="cuda")
    keys = torch.randn(1 << 20, 64, device="cuda")
    codes, scales = quantize_int8(keys)
    rows = []
    for name, fn, nbytes, ref in (
        ("fp32", lambda: topk_similarity(q, keys, 8), keys.nbytes, lambda: torch.topk(q @ keys.T, 8, dim=-1)),
        ("int8", lambda: topk_similarity_int8(q, codes, scales, 8), codes.nbytes + scales.nbytes,
         lambda: torch.topk(q @ (codes.float() * scales[:, None]).T, 8, dim=-1)),
    ):
        same = torch.equal(fn()[1], ref()[1])
        t = cuda_time(fn)
        t_ref = cuda_time(ref)
        bw = nbytes / t
        rows.append([name, f"{t * 1e3:.3f}", f"{t_ref * 1e3:.3f}", f"{bw / 1e9:.0f}", f"{bw / copy_bw:.0%}",
                     "identical" if same else "DIFFERENT"])
    print(f"Retrieval, top-8, 64 queries x 1M keys (dim 64); device copy bandwidth {copy_bw / 1e9:.0f} GB/s")
    print(markdown_table(["keys", "triton ms", "matmul+topk ms", "GB/s", "of copy bandwidth", "results"], rows))


if __name__ == "__main__":
    main()
