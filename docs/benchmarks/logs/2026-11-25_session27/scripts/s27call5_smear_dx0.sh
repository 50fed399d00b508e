#!/bin/bash
# Session 27 call 5: the smear gate's backward reads x0's gradient in its two parts (dx and
# dx0) and sums them as it reads, so the backward's tail has no pass adding dx0 into dx (smear).
# Kernel and model tests; the kernels alone; the step, alternating with HEAD (base27).
set -u
mkdir -p $OUT
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm --format=csv,noheader
timeout 300 .bench/pgolf_tests_smear -tc='*kernel*,*model cuda*' > $OUT/tests.log 2>&1
echo "tests: $(tail -2 $OUT/tests.log | head -1)"
grep -B4 -A20 "ERROR:" $OUT/tests.log | head -40
for b in base27 smear; do
  .bench/pgolf_$b bench model --rows 24 --recur on --kernels > /tmp/kernels_$b.log 2>&1
  echo "$b: $(grep -iE 'smear|accumulate' /tmp/kernels_$b.log | tr -s ' ' | tr '\n' ';')"
done | tee $OUT/kernels.txt
for r in 1 2 3; do
  for b in base27 smear; do
    .bench/pgolf_$b bench model --rows 24 --recur both > /tmp/bench_${b}_$r.log 2>&1
    echo "$b round $r: $(grep -E '^ +24 +(on|off)' /tmp/bench_${b}_$r.log | awk '{printf "%s fwd %s bwd %s opt %s step %s ms  ", $2, $3, $4, $5, $6}')"
  done
done | tee $OUT/ab.txt
cd /tmp && tar czf $OUT/logs.tgz bench_*.log kernels_*.log
