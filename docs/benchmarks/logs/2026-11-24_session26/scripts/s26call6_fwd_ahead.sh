#!/bin/bash
# Session 26 call 6: the residual forward passes fetch each row's inputs two rows ahead (cp.async
# into shared memory, Ahead with its pieces a runtime count). Kernel and model tests; the kernels
# alone and the step, alternating call 5's commit (cols) and this build (fwdahead); then ncu of
# the step with this build, by kernel.
set -u
mkdir -p $OUT
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm --format=csv,noheader
timeout 200 build/pgolf_tests -tc='*kernel*,*every gradient*' > $OUT/tests.log 2>&1
echo "tests: $(tail -2 $OUT/tests.log | head -1)"
grep -B4 -A20 "ERROR:" $OUT/tests.log | head -60
for b in cols fwdahead; do
  .bench/pgolf_$b bench model --rows 24 --recur on --kernels > /tmp/kernels_$b.log 2>&1
  echo "$b: $(grep -E 'residual_forward|qkv_prep' /tmp/kernels_$b.log | tr -s ' ' | tr '\n' ';')"
done | tee $OUT/kernels.txt
for r in 1 2 3; do
  for b in cols fwdahead; do
    .bench/pgolf_$b bench model --rows 24 --recur both > /tmp/bench_${b}_$r.log 2>&1
    echo "$b round $r: $(grep -E '^ +24 +(on|off)' /tmp/bench_${b}_$r.log | awk '{printf "%s fwd %s bwd %s opt %s step %s ms  ", $2, $3, $4, $5, $6}')"
  done
done | tee $OUT/ab.txt
ncu --profile-from-start off --clock-control none --metrics gpu__time_duration.sum,dram__bytes_read.sum,dram__bytes_write.sum --csv .bench/pgolf_fwdahead bench model --rows 24 --recur on --warmup 2 --reps 1 --profile > /tmp/ncu_fwdahead.csv 2>&1
python3 scripts/ncu_by_kernel.py /tmp/ncu_fwdahead.csv > $OUT/by_kernel_fwdahead.txt
head -12 $OUT/by_kernel_fwdahead.txt; tail -1 $OUT/by_kernel_fwdahead.txt
cd /tmp && tar czf $OUT/logs.tgz bench_*.log kernels_*.log ncu_*.csv
