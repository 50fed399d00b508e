#!/bin/bash
# Session 29 call 12: the review commit 223d44d (one helper for the SM targets; the same values)
# against d755efb (s29): optimizer, model and train tests; the step, two rounds, on and off.
set -u
mkdir -p $OUT
timeout 300 build/pgolf_tests -tc='*optim*,*model cuda*,*train cuda*' > $OUT/tests.log 2>&1
echo "tests: $(tail -2 $OUT/tests.log | head -1)"
grep -B4 -A20 "ERROR:" $OUT/tests.log | head -40
for r in 1 2; do
  for b in s29 review; do
    for rec in on off; do
      timeout 120 .bench/pgolf_$b bench model --rows 24 --recur $rec > /tmp/bench_${b}_${rec}_$r.log 2>&1
      echo "$b round $r: $(grep -E '^ +24 +(on|off)' /tmp/bench_${b}_${rec}_$r.log | awk '{printf "%s fwd %s bwd %s opt %s step %s ms  ", $2, $3, $4, $5, $6}') $(grep -oE 'loss [0-9.]+' /tmp/bench_${b}_${rec}_$r.log)"
    done
  done
done | tee $OUT/ab.txt
gzip -9 $OUT/tests.log
