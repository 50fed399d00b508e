#!/bin/bash
# Session 24 call 6: the fused MLP kernel as pairs of blocks (a 2-block cluster), each loading
# half of the weight's stages and multicasting it to both; its oracle test (under a timeout: a
# barrier bug hangs), then the kernels alone and the step, alternating call 5's binary (new4)
# and this one (new5).
set -u
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm --format=csv,noheader
timeout 180 build/pgolf_tests -tc='*mlp gemm*' 2>&1 | tail -6 > $OUT/tests.log; echo "tests rc=$?" >> $OUT/tests.log
cat $OUT/tests.log
grep -q "Status: SUCCESS" $OUT/tests.log || exit 1
for r in 1 2 3; do
  for b in new4 new5; do
    timeout 60 .bench/pgolf_$b bench mlp > /tmp/mlp_${b}_$r.log 2>&1
    timeout 120 .bench/pgolf_$b bench model --rows 24 --recur both > /tmp/bench_${b}_$r.log 2>&1
    echo "$b round $r: $(grep -E '^ +24 +(on|off)' /tmp/bench_${b}_$r.log | awk '{printf "%s %s ms  ", $2, $6}') mlp: $(grep RESULT /tmp/mlp_${b}_$r.log)"
  done
done | tee $OUT/ab.txt
timeout 300 build/pgolf_tests -tc='*odel*,*train*' 2>&1 | tail -4 | tee $OUT/tests_model.log
cd /tmp && tar czf $OUT/logs.tgz mlp_new*.log bench_new*.log
