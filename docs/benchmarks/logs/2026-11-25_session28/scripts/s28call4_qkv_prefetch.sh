#!/bin/bash
# Session 28 call 4: qkv_prep's row loops fetch the rotation's angles (and, in the backward,
# q's rstd) into L1 with their loads ahead, group_sum's butterfly unrolled, the backward's
# 1 / hd a product (kv6); kv6 with the backward's loads 5 iterations ahead (kv7, its shared
# memory opted in). Tests of kv6; the kernels alone; the step against 5c4ade0 (c27) and call 2's
# kv2 (kv2b: the same code, built again), alternating, recurrence on.
set -u
mkdir -p $OUT
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm --format=csv,noheader
timeout 300 build/pgolf_tests -tc='*kernel*,*model cuda*,*attention*' > $OUT/tests.log 2>&1
echo "tests: $(tail -2 $OUT/tests.log | head -1)"
grep -B4 -A20 "ERROR:" $OUT/tests.log | head -40
for b in kv2b kv6 kv7; do
  .bench/pgolf_$b bench model --rows 24 --recur on --kernels > /tmp/kernels_$b.log 2>&1
  echo "$b: $(grep -iE 'qkv_prep|flash_attention' /tmp/kernels_$b.log | tr -s ' ' | tr '\n' ';')"
done | tee $OUT/kernels.txt
for r in 1 2 3; do
  for b in c27 kv2b kv6 kv7; do
    .bench/pgolf_$b bench model --rows 24 --recur on > /tmp/bench_${b}_$r.log 2>&1
    echo "$b round $r: $(grep -E '^ +24 +(on|off)' /tmp/bench_${b}_$r.log | awk '{printf "%s fwd %s bwd %s opt %s step %s ms  ", $2, $3, $4, $5, $6}')"
  done
done | tee $OUT/ab.txt
cd /tmp && tar czf $OUT/logs.tgz bench_*.log kernels_*.log
gzip -9 $OUT/tests.log
