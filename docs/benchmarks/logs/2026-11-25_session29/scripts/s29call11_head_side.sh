#!/bin/bash
# Session 29 call 11: the head's weight gradient on the side stream (each chunk's dhead share
# beside the next chunk's logits, two chunk buffers), against the commit d755efb (s29). Model
# and train tests; the step alternating, three rounds, recurrence on and off.
set -u
mkdir -p $OUT
timeout 300 build/pgolf_tests -tc='*model cuda*,*train cuda*' > $OUT/tests.log 2>&1
echo "tests: $(tail -2 $OUT/tests.log | head -1)"
grep -B4 -A20 "ERROR:" $OUT/tests.log | head -40
for r in 1 2 3; do
  for b in s29 head; do
    for rec in on off; do
      timeout 120 .bench/pgolf_$b bench model --rows 24 --recur $rec > /tmp/bench_${b}_${rec}_$r.log 2>&1
      echo "$b round $r: $(grep -E '^ +24 +(on|off)' /tmp/bench_${b}_${rec}_$r.log | awk '{printf "%s fwd %s bwd %s opt %s step %s ms %s GiB ", $2, $3, $4, $5, $6, $10}') $(grep -oE 'loss [0-9.]+' /tmp/bench_${b}_${rec}_$r.log) $(grep -m1 -i error /tmp/bench_${b}_${rec}_$r.log)"
    done
  done
done | tee $OUT/ab.txt
cd /tmp && tar czf $OUT/logs.tgz bench_*.log
gzip -9 $OUT/tests.log
