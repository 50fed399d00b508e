#!/bin/bash
# Session 28 call 1: k's and v's share of qkv_prep's backward as the attention backward's
# epilogue (dk and dv never go through memory). Kernel, attention and model tests; the kernels
# alone (attention backward with and without the epilogue, q's share); the step against
# 5c4ade0 (c27), alternating.
set -u
mkdir -p $OUT
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm --format=csv,noheader
timeout 300 build/pgolf_tests -tc='*kernel*,*model cuda*,*attention*' > $OUT/tests.log 2>&1
echo "tests: $(tail -2 $OUT/tests.log | head -1)"
grep -B4 -A20 "ERROR:" $OUT/tests.log | head -40
for b in c27 kv; do
  .bench/pgolf_$b bench model --rows 24 --recur on --kernels > /tmp/kernels_$b.log 2>&1
  echo "$b: $(grep -iE 'qkv_prep_backward|flash_attention' /tmp/kernels_$b.log | tr -s ' ' | tr '\n' ';')"
done | tee $OUT/kernels.txt
for r in 1 2; do
  for b in c27 kv; do
    .bench/pgolf_$b bench model --rows 24 --recur both > /tmp/bench_${b}_$r.log 2>&1
    echo "$b round $r: $(grep -E '^ +24 +(on|off)' /tmp/bench_${b}_$r.log | awk '{printf "%s fwd %s bwd %s opt %s step %s ms  ", $2, $3, $4, $5, $6}')"
  done
done | tee $OUT/ab.txt
cd /tmp && tar czf $OUT/logs.tgz bench_*.log kernels_*.log
