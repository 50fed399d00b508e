#!/bin/bash
# Session 26 call 2: the residual backward passes on to the previous entry hold what their first
# loop loaded for their second, and load dx0 and dskip with the rest (one round trip to memory a
# row); the m term gone from the residual kernels. Kernel and model tests, the memory-bound
# kernels alone (--kernels) and the step, alternating call 1's commit (woadd26) and this build.
set -u
mkdir -p $OUT
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm --format=csv,noheader
timeout 200 build/pgolf_tests -tc='*kernel*,*odel cuda*' > $OUT/tests.log 2>&1
echo "tests: $(tail -2 $OUT/tests.log | head -1)"
grep -B4 -A20 "ERROR:" $OUT/tests.log | head -60
for b in woadd26 held26; do
  .bench/pgolf_$b bench model --rows 24 --recur on --kernels > /tmp/kernels_$b.log 2>&1
  echo "$b: $(grep -E 'residual_backward' /tmp/kernels_$b.log | tr -s ' ' | tr '\n' ';')"
done | tee $OUT/kernels.txt
for r in 1 2 3; do
  for b in woadd26 held26; do
    .bench/pgolf_$b bench model --rows 24 --recur both > /tmp/bench_${b}_$r.log 2>&1
    echo "$b round $r: $(grep -E '^ +24 +(on|off)' /tmp/bench_${b}_$r.log | awk '{printf "%s fwd %s bwd %s opt %s step %s ms  ", $2, $3, $4, $5, $6}')"
  done
done | tee $OUT/ab.txt
cd /tmp && tar czf $OUT/logs.tgz bench_*.log kernels_*.log
