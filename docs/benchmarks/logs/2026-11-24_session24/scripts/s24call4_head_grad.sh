#!/bin/bash
# Session 24 call 4: the head's norm writes the last entry's output gradient where that entry
# reads it (no copy by its first pass), and the head's input gradient in bf16; the model tests,
# then the step alternating call 3's binary (new2) and this one (new3).
set -u
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm --format=csv,noheader
build/pgolf_tests -tc='*odel*,*train*' 2>&1 | tail -4 > $OUT/tests.log
cat $OUT/tests.log
for r in 1 2 3; do
  for b in new2 new3; do
    .bench/pgolf_$b bench model --rows 24 --recur both > /tmp/bench_${b}_$r.log 2>&1
    echo "$b round $r: $(grep -E '^ +24 +(on|off)' /tmp/bench_${b}_$r.log | awk '{printf "%s %s ms  ", $2, $6}')"
  done
done | tee $OUT/ab.txt
tar czf $OUT/bench_logs.tgz -C /tmp $(cd /tmp && ls bench_new*_*.log)
