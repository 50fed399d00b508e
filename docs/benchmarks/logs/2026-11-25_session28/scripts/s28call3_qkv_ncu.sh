#!/bin/bash
# Session 28 call 3: what bounds qkv_prep's kernels (q's share of the backward at ~1.9 TB/s,
# the forward at ~2.2): ncu's speed of light, warp states and instruction counts of one call
# each, from the kernel rows of bench model.
set -u
mkdir -p $OUT
for k in forward backward; do
  timeout 200 ncu --kernel-name regex:qkv_prep_${k}_kernel --launch-skip 3 --launch-count 1 \
      --section SpeedOfLight --section WarpStateStats --section InstructionStats --section Occupancy \
      --section LaunchStats --section MemoryWorkloadAnalysis \
      .bench/pgolf_kv2 bench model --rows 24 --recur on --kernels > $OUT/ncu_qkv_$k.txt 2>&1
  echo "== $k"
  grep -E "Duration|DRAM Throughput|Memory Throughput|Compute \(SM\) Throughput|Issue Slots Busy|Executed Ipc A|Warp Cycles Per Issued|Achieved Occupancy|Registers Per|Theoretical Occ|Executed Instructions  |L1/TEX Hit|L2 Hit" $OUT/ncu_qkv_$k.txt | head -30
  grep -iE "^ +(OPT|WRN|INF)" -A3 $OUT/ncu_qkv_$k.txt | head -40
done
gzip -9 $OUT/ncu_qkv_*.txt
