#!/usr/bin/env bash
# Session 20, call 3: how much of the attention forward its K/V loads cost. pgolf_noload issues
# the first K/V tile only (wrong output, timing only): the bound on what loading by TMA, one
# thread a tile instead of 8 cp.async a thread, could gain. Then ncu on HEAD's forward (bc64):
# pipes (XU = MUFU), scheduler, warp states.
set -u
D=${OUT:-/tmp/s20call3}; mkdir -p $D
B=.bench
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv,noheader | tee $D/summary.txt
for rep in 1 2 3; do for b in bc64 noload; do
  echo "== $b rep $rep" >> $D/attn.log
  timeout 60 $B/pgolf_$b bench attention --batch 24 --head-dims 64 >> $D/attn.log 2>&1
done; done
timeout 180 ncu --kernel-name-base demangled --kernel-name regex:fwd_kernel --launch-skip 3 --launch-count 1 \
  --section SpeedOfLight --section ComputeWorkloadAnalysis --section InstructionStats --section WarpStateStats \
  --section SchedulerStats --section Occupancy --section LaunchStats \
  $B/pgolf_bc64 bench attention --batch 24 --head-dims 64 --warmup 2 --reps 2 > $D/ncu_fwd_bc64.txt 2>&1
echo "ncu rc=$?" >> $D/summary.txt
grep -E "^== |RESULT" $D/attn.log | tee -a $D/summary.txt
grep -E "Duration|Issue Slots Busy|Issued Ipc|No Eligible|Eligible Warps|Active Warps Per|Warp Cycles Per Issued|Achieved Occupancy|Registers Per|Stall" $D/ncu_fwd_bc64.txt | tee -a $D/summary.txt
