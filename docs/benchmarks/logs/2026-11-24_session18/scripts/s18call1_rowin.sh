#!/usr/bin/env bash
# Session 18, call 1: the residual passes issue every load of a chunk before using any of it
# (raw bf16 chunks, TermChunk), instead of using each value right after its load inside ld8's
# branch. Kernel and model tests; the residual kernels alone and the step, the session's start
# (pgolf_base, e6d1b24) and the change (pgolf_rowin), alternately.
set -u
D=$OUT; B=.bench
timeout 240 build/pgolf_tests -tc='kernel*,model cuda*' > $D/tests.log 2>&1
echo "tests rc=$?" > $D/summary.txt; tail -3 $D/tests.log >> $D/summary.txt
grep -B2 -A8 "ERROR" $D/tests.log | head -40 >> $D/summary.txt
for b in pgolf_base pgolf_rowin; do
  timeout 120 $B/$b bench model --rows 24 --recur on --kernels > $D/kernels_$b.log 2>&1
  echo "== $b" >> $D/summary.txt; grep -E "residual" $D/kernels_$b.log >> $D/summary.txt
done
for i in 1 2; do for b in pgolf_base pgolf_rowin; do
  echo "== $b run $i" >> $D/ab_bench_model.log
  timeout 120 $B/$b bench model --rows 24 --recur both >> $D/ab_bench_model.log 2>&1
done; done
grep -E "^==|    24" $D/ab_bench_model.log >> $D/summary.txt
cat $D/summary.txt
