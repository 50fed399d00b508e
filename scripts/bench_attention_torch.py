#!/usr/bin/env python3
"""PyTorch baseline for `pgolf bench attention`: the same shapes through
torch.nn.functional.scaled_dot_product_attention(is_causal=True, enable_gqa=True) in bf16.

FLOPs as in pgolf: forward 4*B*Hq*T*T*D/2, backward 2.5x forward. The backward time is the
median of (forward + backward) minus the median forward. Each head dim of --head-dims is timed
in turn; the default dispatch gives the RESULT line (keys as in pgolf's: torch_attn_* for the
first head dim, torch_attn_d<D>_* for the others); each SDPA backend that accepts the shapes
is also timed on its own line.
"""
import argparse
import contextlib
import statistics
import warnings

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel


def median_ms(fn, warmup, reps):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def bench_dim(B, T, Hq, Hkv, D, warmup, reps):
    dev = torch.device("cuda")
    mk = lambda h: torch.randn(B, h, T, D, device=dev, dtype=torch.bfloat16, requires_grad=True)
    q, k, v = mk(Hq), mk(Hkv), mk(Hkv)
    dout = torch.randn(B, Hq, T, D, device=dev, dtype=torch.bfloat16)
    fwd_flops = 4 * B * Hq * T * T * D / 2
    bwd_flops = 2.5 * fwd_flops
    print(f"shape B={B} T={T} Hq={Hq} Hkv={Hkv} D={D} causal; FLOPs fwd 4*B*Hq*T*T*D/2 = "
          f"{fwd_flops * 1e-9:.2f} GFLOP, bwd 2.5x = {bwd_flops * 1e-9:.2f} GFLOP")

    def sdpa():
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)

    def fwd_bwd():
        torch.autograd.grad(sdpa(), (q, k, v), dout)

    results = {}
    backends = [("default", None), ("flash", SDPBackend.FLASH_ATTENTION),
                ("cudnn", SDPBackend.CUDNN_ATTENTION), ("efficient", SDPBackend.EFFICIENT_ATTENTION)]
    for name, backend in backends:
        ctx = sdpa_kernel([backend]) if backend is not None else contextlib.nullcontext()
        try:
            with ctx:
                t_fwd = median_ms(sdpa, warmup, reps)
                t_all = median_ms(fwd_bwd, warmup, reps)
        except RuntimeError as e:
            print(f"D={D} {name}: not available for these shapes ({str(e).splitlines()[0][:100]})")
            continue
        t_bwd = t_all - t_fwd
        results[name] = (fwd_flops / t_fwd * 1e-9, bwd_flops / t_bwd * 1e-9)
        print(f"D={D} {name}: fwd median {t_fwd:.4f} ms = {results[name][0]:.1f} TFLOP/s; fwd+bwd "
              f"{t_all:.4f} ms, bwd {t_bwd:.4f} ms = {results[name][1]:.1f} TFLOP/s")
    return results["default"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=2048)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--kv-heads", type=int, default=4)
    ap.add_argument("--head-dims", type=int, nargs="+", default=[64, 32])
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--reps", type=int, default=30)
    a = ap.parse_args()
    # A backend that refuses the shapes warns at length before raising; the raise is reported.
    warnings.filterwarnings("ignore", category=UserWarning)
    print(f"torch {torch.__version__} on {torch.cuda.get_device_name(torch.device('cuda'))}")
    result = "RESULT"
    for i, D in enumerate(a.head_dims):
        fwd_tf, bwd_tf = bench_dim(a.batch, a.seq, a.heads, a.kv_heads, D, a.warmup, a.reps)
        key = "torch_attn" if i == 0 else f"torch_attn_d{D}"
        result += f" {key}_fwd_tflops={fwd_tf:.1f} {key}_bwd_tflops={bwd_tf:.1f}"
    print(result)


if __name__ == "__main__":
    main()
