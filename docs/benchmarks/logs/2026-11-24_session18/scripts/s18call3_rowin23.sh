#!/usr/bin/env bash
# Session 18, call 3: the residual passes with their loads issued ahead of use, two variants,
# both with the fix for the skip whose source is the pass's own sum (call 1's NaN):
#   pgolf_rowin2: the forward loads every chunk of a row first; the backward loads all of a
#     chunk's tensors at once; 2 blocks an SM (more registers).
#   pgolf_rowin3 (= build/): the forward a chunk at a time; the backward reads a non-first norm's
#     terms after the rest; 3 blocks an SM but for the passes on to the previous entry.
# Tests of rowin3; kernels alone and the step for pgolf_base (e6d1b24), rowin2, rowin3.
set -u
D=$OUT; B=.bench
timeout 240 build/pgolf_tests -tc='kernel*,model cuda*' > $D/tests.log 2>&1
echo "tests rc=$?" > $D/summary.txt; tail -3 $D/tests.log >> $D/summary.txt
grep -B2 -A8 "ERROR" $D/tests.log | head -30 >> $D/summary.txt
for b in pgolf_base pgolf_rowin2 pgolf_rowin3; do
  timeout 120 $B/$b bench model --rows 24 --recur on --kernels > $D/kernels_$b.log 2>&1
  echo "== $b" >> $D/summary.txt; grep -E "residual" $D/kernels_$b.log >> $D/summary.txt
done
for i in 1 2; do for b in pgolf_base pgolf_rowin2 pgolf_rowin3; do
  echo "== $b run $i" >> $D/ab_bench_model.log
  timeout 120 $B/$b bench model --rows 24 --recur both >> $D/ab_bench_model.log 2>&1
done; done
grep -E "^==|    24" $D/ab_bench_model.log >> $D/summary.txt
cat $D/summary.txt
