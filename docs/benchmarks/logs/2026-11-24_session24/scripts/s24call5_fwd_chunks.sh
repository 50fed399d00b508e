#!/bin/bash
# Session 24 call 5: the attention forward's grid in chunks of (batch, head) pairs whose K/V fit
# in L2 (as the backward's); the attention tests, the kernel alone and in the step, alternating
# call 4's binary (new3) and this one (new4); then the forward's DRAM traffic in ncu.
set -u
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm --format=csv,noheader
build/pgolf_tests -tc='*attention*,*odel*' 2>&1 | tail -4 > $OUT/tests.log
cat $OUT/tests.log
for r in 1 2 3; do
  for b in new3 new4; do
    .bench/pgolf_$b bench attention --batch 24 --head-dims 64 > /tmp/attn_${b}_$r.log 2>&1
    .bench/pgolf_$b bench model --rows 24 --recur both > /tmp/bench_${b}_$r.log 2>&1
    echo "$b round $r: $(grep -E '^ +24 +(on|off)' /tmp/bench_${b}_$r.log | awk '{printf "%s %s ms  ", $2, $6}') attn: $(grep RESULT /tmp/attn_${b}_$r.log)"
  done
done | tee $OUT/ab.txt
for b in new3 new4; do
  ncu --profile-from-start off --clock-control none -k regex:fwd_kernel --metrics gpu__time_duration.sum,dram__bytes_read.sum,dram__bytes_write.sum --csv .bench/pgolf_$b bench model --rows 24 --recur on --warmup 2 --reps 1 --profile > /tmp/ncu_$b.csv 2>&1
  echo "$b: $(python3 scripts/ncu_by_kernel.py /tmp/ncu_$b.csv | head -1)"
done | tee $OUT/ncu_fwd.txt
cd /tmp && tar czf $OUT/logs.tgz attn_new*.log bench_new*.log ncu_new*.csv
