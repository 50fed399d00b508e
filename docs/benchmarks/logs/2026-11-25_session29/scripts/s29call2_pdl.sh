#!/bin/bash
# Session 29 call 2: programmatic dependent launch (common/launch.cuh) for the model's own
# kernels. Kernel, attention, MLP, model and train tests with it on; then the step with it on
# (PG_PDL=1) and off (PG_PDL=0, the same binary) and session 28's HEAD (base29), alternating,
# three rounds, recurrence on and off.
set -u
mkdir -p $OUT
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm --format=csv,noheader
timeout 400 build/pgolf_tests -tc='*kernel*,*model cuda*,*attention*,*mlp*,*train cuda*,*graph*' > $OUT/tests.log 2>&1
echo "tests: $(tail -2 $OUT/tests.log | head -1)"
grep -B4 -A20 "ERROR:" $OUT/tests.log | head -40
for r in 1 2 3; do
  for v in base29:1 pdl:1 pdl:0; do
    b=${v%%:*}; p=${v##*:}
    for rec in on off; do
      PG_PDL=$p .bench/pgolf_$b bench model --rows 24 --recur $rec > /tmp/bench_${b}${p}_${rec}_$r.log 2>&1
      echo "$b PG_PDL=$p round $r: $(grep -E '^ +24 +(on|off)' /tmp/bench_${b}${p}_${rec}_$r.log | awk '{printf "%s fwd %s bwd %s opt %s step %s ms  ", $2, $3, $4, $5, $6}') $(grep -m1 -i error /tmp/bench_${b}${p}_${rec}_$r.log)"
    done
  done
done | tee $OUT/ab.txt
cd /tmp && tar czf $OUT/logs.tgz bench_*.log
gzip -9 $OUT/tests.log
