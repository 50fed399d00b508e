#!/bin/bash
# Session 29 call 4: cuBLASLt's workspace memsets wait for the previous product instead of the
# kernel before theirs (memsets_after_workspace_use). Graph-memset, GEMM, model and train tests;
# the step against session 28's HEAD (base29), alternating, three rounds, recurrence on and off.
set -u
mkdir -p $OUT
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm --format=csv,noheader
timeout 400 build/pgolf_tests -tc='*memset*,*gemm*,*model cuda*,*train cuda*' > $OUT/tests.log 2>&1
echo "tests: $(tail -2 $OUT/tests.log | head -1)"
grep -E "memsets moved" $OUT/tests.log | head -3
grep -B4 -A20 "ERROR:" $OUT/tests.log | head -40
for r in 1 2 3; do
  for b in base29 mw; do
    for rec in on off; do
      timeout 120 .bench/pgolf_$b bench model --rows 24 --recur $rec > /tmp/bench_${b}_${rec}_$r.log 2>&1
      echo "$b round $r: $(grep -E '^ +24 +(on|off)' /tmp/bench_${b}_${rec}_$r.log | awk '{printf "%s fwd %s bwd %s opt %s step %s ms  ", $2, $3, $4, $5, $6}') $(grep -oE 'loss [0-9.]+' /tmp/bench_${b}_${rec}_$r.log) $(grep -m1 -i error /tmp/bench_${b}_${rec}_$r.log)"
    done
  done
done | tee $OUT/ab.txt
cd /tmp && tar czf $OUT/logs.tgz bench_*.log
gzip -9 $OUT/tests.log
