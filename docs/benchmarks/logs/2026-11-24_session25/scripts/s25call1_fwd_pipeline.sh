#!/bin/bash
# Session 25 call 1: the attention forward with FlashAttention-3's overlap inside the warpgroup
# (tile kt's S product, then tile kt - 1's PV product under tile kt's softmax). The attention and
# model tests, then the kernel alone and in the step, alternating HEAD's binary and this one.
set -u
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm --format=csv,noheader
timeout 300 build/pgolf_tests -tc='*attention*,*odel*' 2>&1 | tail -4 > $OUT/tests.log
cat $OUT/tests.log
for r in 1 2 3; do
  for b in head fwdpipe; do
    .bench/pgolf_$b bench attention --batch 24 --head-dims 64 > /tmp/attn_${b}_$r.log 2>&1
    .bench/pgolf_$b bench model --rows 24 --recur both > /tmp/bench_${b}_$r.log 2>&1
    echo "$b round $r: $(grep -E '^ +24 +(on|off)' /tmp/bench_${b}_$r.log | awk '{printf "%s %s ms  ", $2, $6}') attn: $(grep -E 'D=64 (fwd|bwd)' /tmp/attn_${b}_$r.log | awk '{printf "%s %s ", $2, $(NF-1)}')"
  done
done | tee $OUT/ab.txt
cd /tmp && tar czf $OUT/logs.tgz attn_*.log bench_*.log
