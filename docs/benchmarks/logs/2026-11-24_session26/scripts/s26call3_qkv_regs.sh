#!/bin/bash
# Session 26 call 3: qkv_prep's kernels at three blocks an SM (80 registers, no spills; at four
# they spilled 36-44 bytes a thread, which ncu showed as local loads missing L1) with 3 stages
# ahead (qkv3) or 4 (qkv3s4), against call 2's commit (held26): the kernels alone, then the step.
set -u
mkdir -p $OUT
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm --format=csv,noheader
for b in held26 qkv3 qkv3s4; do
  .bench/pgolf_$b bench model --rows 24 --recur on --kernels > /tmp/kernels_$b.log 2>&1
  echo "$b: $(grep -E 'qkv_prep' /tmp/kernels_$b.log | tr -s ' ' | tr '\n' ';')"
done | tee $OUT/kernels.txt
for r in 1 2 3; do
  for b in held26 qkv3 qkv3s4; do
    .bench/pgolf_$b bench model --rows 24 --recur both > /tmp/bench_${b}_$r.log 2>&1
    echo "$b round $r: $(grep -E '^ +24 +(on|off)' /tmp/bench_${b}_$r.log | awk '{printf "%s fwd %s bwd %s opt %s step %s ms  ", $2, $3, $4, $5, $6}')"
  done
done | tee $OUT/ab.txt
cd /tmp && tar czf $OUT/logs.tgz bench_*.log kernels_*.log
