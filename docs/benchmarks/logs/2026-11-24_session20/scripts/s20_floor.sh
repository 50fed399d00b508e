#!/usr/bin/env bash
# Session 20 (no device): the step a 1.5x target would need against what the current data flow
# allows. From session 19's ncu profile of the step (by_kernel.txt, 48.82 ms of kernels in a
# 50.00-ms step): every memory-bound kernel at a plain copy's 2.94 TB/s on the bytes it moved,
# the two fused MLP products at cuBLAS's product speed (147 us forward storing f, 146 us backward;
# bench mlp), cuBLAS and the attention kernels as measured (the forward 0.36 ms faster, this
# session's TMA change), the launch gaps as measured. Run from the repo root.
set -eu
python3 - docs/benchmarks/logs/2026-11-24_session19/call7_profile/by_kernel.txt <<'PY'
import re, sys
k = {}
for line in open(sys.argv[1]):
    m = re.match(r'\s*([\d.]+) ms\s+(\d+) launches\s+\S+%\s+([\d.]+) GB\s+\d+ GB/s\s+(.*)', line)
    if m: k[m.group(4).strip()] = (float(m.group(1)), float(m.group(3)))
gemm = sum(ms for n, (ms, gb) in k.items() if 'cuBLAS' in n)
attn = k['pg::bwd_kernel'][0] + k['pg::fwd_kernel'][0] - 0.36
mem = [(ms, gb) for n, (ms, gb) in k.items()
       if 'cuBLAS' not in n and n not in ('pg::bwd_kernel', 'pg::fwd_kernel', 'pg::mlp_gemm_kernel')]
mem_ms, mem_gb = sum(m for m, _ in mem), sum(g for _, g in mem)
mlp = 13 * (0.147 + 0.146)
gaps = 50.00 - 48.82
floor = gemm + mlp + attn + mem_gb / 2.94 + gaps
print(f"cuBLAS {gemm:.2f} ms; attention kernels {attn:.2f}; fused MLP at cuBLAS speed {mlp:.2f} (now {k['pg::mlp_gemm_kernel'][0]:.2f})")
print(f"memory-bound kernels {mem_ms:.2f} ms moving {mem_gb:.2f} GB -> {mem_gb / 2.94:.2f} ms at 2.94 TB/s; gaps {gaps:.2f}")
print(f"RESULT floor_step_ms={floor:.2f} target_step_ms=42.4")
PY
