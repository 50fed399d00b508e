#!/usr/bin/env bash
# Session 17, call 2: why the bf16 residual passes stay slow. ncu's occupancy, launch, warp-state
# and memory sections for the first launches of residual_backward (every variant) and
# residual_forward in a step; the rmsnorm kernel test again (its bf16 add checks reworked).
set -u
D=$OUT; B=.bench
timeout 100 build/pgolf_tests -tc='kernel rmsnorm*' > $D/tests_rmsnorm.log 2>&1; echo "tests rc=$?" > $D/summary.txt
tail -3 $D/tests_rmsnorm.log >> $D/summary.txt
S="--section SpeedOfLight --section Occupancy --section LaunchStats --section WarpStateStats --section SchedulerStats --section MemoryWorkloadAnalysis"
timeout 200 ncu --profile-from-start off $S --kernel-name-base demangled --kernel-name regex:residual_backward_kernel --launch-count 4 $B/pgolf_bf16 bench model --rows 24 --recur on --warmup 2 --reps 1 --profile > $D/ncu_res_bwd.txt 2>&1
timeout 150 ncu --profile-from-start off $S --kernel-name-base demangled --kernel-name regex:residual_forward_kernel --launch-count 4 $B/pgolf_bf16 bench model --rows 24 --recur on --warmup 2 --reps 1 --profile > $D/ncu_res_fwd.txt 2>&1
grep -E "residual_|Duration|Registers Per|Achieved Occupancy|Theoretical Occupancy|Block Limit|Memory Throughput|DRAM Throughput|Issue Slots Busy|No Eligible|Active Warps Per|Eligible Warps|Warp Cycles Per Issued|Dynamic Shared" $D/ncu_res_bwd.txt $D/ncu_res_fwd.txt >> $D/summary.txt
cat $D/summary.txt
