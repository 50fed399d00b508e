#!/usr/bin/env bash
# Session 17, call 6: the residual passes with a minimum of blocks an SM in their launch bounds
# (forward 4, so <= 64 registers; backward without a skip 3, <= 80), for more rows in flight.
# The kernels alone and the step: HEAD (pgolf_cols) and the variant (pgolf_lb), alternately.
set -u
D=$OUT; B=.bench
for b in pgolf_cols pgolf_lb; do
  timeout 120 $B/$b bench model --rows 24 --recur on --kernels > $D/kernels_$b.log 2>&1
  echo "== $b" >> $D/summary.txt; grep -E "residual" $D/kernels_$b.log >> $D/summary.txt
done
for i in 1 2 3 4; do for b in pgolf_cols pgolf_lb; do
  echo "== $b run $i" >> $D/ab_bench_model.log
  timeout 120 $B/$b bench model --rows 24 --recur both >> $D/ab_bench_model.log 2>&1
done; done
grep -E "^==|    24" $D/ab_bench_model.log >> $D/summary.txt
cat $D/summary.txt
