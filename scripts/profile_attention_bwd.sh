#!/usr/bin/env bash
# Nsight Compute's full report of one attention backward launch at the training shape
# (B sequences of 2048, 8 query / 4 KV heads, head dim 64): pgolf's bwd_kernel, then the
# cuDNN kernel behind PyTorch's scaled_dot_product_attention on the same shape when python3
# has torch. For comparing the two kernels' occupancy, pipe use and stall reasons; the
# reports go to $OUT (default /tmp/attn_profile). Needs a GPU, ncu and `make`.
#   scripts/profile_attention_bwd.sh            # B=24
set -euo pipefail
B=${B:-24}
OUT=${OUT:-/tmp/attn_profile}
mkdir -p "$OUT"
sections="--section SpeedOfLight --section Occupancy --section LaunchStats --section WarpStateStats
          --section ComputeWorkloadAnalysis --section MemoryWorkloadAnalysis --section SchedulerStats"
# shellcheck disable=SC2086
ncu $sections --kernel-name regex:'bwd_kernel' --launch-skip 2 --launch-count 1 \
    build/pgolf bench attention --batch "$B" --head-dims 64 --warmup 2 --reps 1 >"$OUT/pgolf_bwd.txt" 2>&1
if python3 -c "import torch" 2>/dev/null; then
    # shellcheck disable=SC2086
    ncu $sections --kernel-name regex:'bprop' --launch-skip 2 --launch-count 1 python3 - "$B" >"$OUT/cudnn_bwd.txt" 2>&1 <<'PY'
import sys, torch
import torch.nn.functional as F
B = int(sys.argv[1])
q = torch.randn(B, 8, 2048, 64, device="cuda", dtype=torch.bfloat16, requires_grad=True)
k = torch.randn(B, 4, 2048, 64, device="cuda", dtype=torch.bfloat16, requires_grad=True)
v = torch.randn(B, 4, 2048, 64, device="cuda", dtype=torch.bfloat16, requires_grad=True)
for _ in range(4):
    F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True).sum().backward()
torch.cuda.synchronize()
PY
fi
for f in "$OUT"/*_bwd.txt; do
    echo "== $f"
    grep -E "^  [a-zA-Z_]+.*bwd|^  cudnn|Duration|Registers Per|Achieved Occupancy|Theoretical Occupancy|Compute \(SM\) Throughput|Memory Throughput|Issue Slots Busy|No Eligible|Warp Cycles Per Issued|Block Size|Grid Size|Shared Memory Configuration Size|Dynamic Shared" "$f" | head -30
done
