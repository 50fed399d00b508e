#!/usr/bin/env bash
# Session 16, call 3: the GEMM tuner timing up to 64 of cuBLASLt's heuristic candidates a shape
# (pgolf_c64) against HEAD's 16 (pgolf_base), the step alternating.
set -u
D=$OUT/c; mkdir -p $D
B=.bench
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv,noheader | tee $D/summary.txt
for i in 1 2 3; do for b in pgolf_base pgolf_c64; do
  echo "== $b run $i" >> $D/ab_bench_model.log
  timeout 150 $B/$b bench model --rows 24 --recur both >> $D/ab_bench_model.log 2>&1
done; done
grep -E "^==|    24" $D/ab_bench_model.log >> $D/summary.txt
cat $D/summary.txt
