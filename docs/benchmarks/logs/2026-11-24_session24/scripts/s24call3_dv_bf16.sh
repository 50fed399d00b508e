#!/bin/bash
# Session 24 call 3: v's gradient sums in bf16 (dv_first_, XSA's dv_) on top of call 2's change;
# the kernel and model tests, then the step alternating HEAD, call 2's binary and this one.
set -u
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm --format=csv,noheader
build/pgolf_tests -tc='*qkv*,*xsa*,*convert*,*odel*,*train*' 2>&1 | tail -4 | tee $OUT/tests.log
for r in 1 2 3; do
  for b in base new new2; do
    .bench/pgolf_$b bench model --rows 24 --recur both > $OUT/bench_${b}_$r.log 2>&1
    echo "$b round $r: $(grep -E '^ +24 +(on|off)' $OUT/bench_${b}_$r.log | awk '{printf "%s %s ms  ", $2, $6}')"
  done
done | tee $OUT/ab.txt
