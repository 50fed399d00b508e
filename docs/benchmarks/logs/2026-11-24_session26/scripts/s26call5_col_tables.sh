#!/bin/bash
# Session 26 call 5: the residual passes read their per-column weights (resid_mix, the branch
# and skip weights, the next block's resid_mix) from shared-memory tables formed once a block
# (ColTables), not from global memory at every row. Kernel tests; the kernels alone and the step,
# alternating call 3's commit (qkv3) and this build (cols).
set -u
mkdir -p $OUT
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm --format=csv,noheader
timeout 200 build/pgolf_tests -tc='*kernel*,*every gradient*' > $OUT/tests.log 2>&1
echo "tests: $(tail -2 $OUT/tests.log | head -1)"
grep -B4 -A20 "ERROR:" $OUT/tests.log | head -60
for b in qkv3 cols; do
  .bench/pgolf_$b bench model --rows 24 --recur on --kernels > /tmp/kernels_$b.log 2>&1
  echo "$b: $(grep -E 'residual_' /tmp/kernels_$b.log | tr -s ' ' | tr '\n' ';')"
done | tee $OUT/kernels.txt
for r in 1 2 3; do
  for b in qkv3 cols; do
    .bench/pgolf_$b bench model --rows 24 --recur both > /tmp/bench_${b}_$r.log 2>&1
    echo "$b round $r: $(grep -E '^ +24 +(on|off)' /tmp/bench_${b}_$r.log | awk '{printf "%s fwd %s bwd %s opt %s step %s ms  ", $2, $3, $4, $5, $6}')"
  done
done | tee $OUT/ab.txt
cd /tmp && tar czf $OUT/logs.tgz bench_*.log kernels_*.log
