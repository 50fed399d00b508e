#!/bin/bash
# Session 27 call 13: head chunks of 2^27 and 2^28 logits (256 / 512 MiB of bf16; 16384 /
# 32768 rows at vocab 8192) against 5c4ade0's 2^26 (c27), alternating, three rounds.
set -u
mkdir -p $OUT
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm --format=csv,noheader
for r in 1 2 3; do
  for b in c27 head27 head28; do
    .bench/pgolf_$b bench model --rows 24 --recur both > /tmp/bench_${b}_$r.log 2>&1
    echo "$b round $r: $(grep -E '^ +24 +(on|off)' /tmp/bench_${b}_$r.log | awk '{printf "%s fwd %s bwd %s step %s ms used %s GiB  ", $2, $3, $4, $6, $10}')"
  done
done | tee $OUT/ab.txt
cd /tmp && tar czf $OUT/logs.tgz bench_*.log
