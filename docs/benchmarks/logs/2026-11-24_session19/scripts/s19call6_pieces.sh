#!/usr/bin/env bash
# Session 19, call 6: the slab kernel (call 1) with its epilogue in pieces small enough to run under one
# stage's products (call 5's SASS had a 64-column chunk of it between two products of a stage
# and the tensor cores dry under it): pgolf_p8 (= build/, 8 pieces of 16 columns), pgolf_p4 (4 of
# 32). Tests of p8; bench mlp alternating with pgolf_base (HEAD) and pgolf_slab (call 1); p8's step.
set -u
D=$OUT; B=.bench
timeout 120 build/pgolf_tests -tc='mlp gemm*' > $D/tests_mlp.log 2>&1
echo "tests rc=$?" > $D/summary.txt; tail -2 $D/tests_mlp.log >> $D/summary.txt
grep -B2 -A12 "ERROR" $D/tests_mlp.log | head -30 >> $D/summary.txt
for i in 1 2; do for b in pgolf_base pgolf_slab pgolf_p8 pgolf_p4; do
  echo "== $b run $i" >> $D/bench_mlp.log
  timeout 60 $B/$b bench mlp >> $D/bench_mlp.log 2>&1
done; done
grep -E "^==|RESULT" $D/bench_mlp.log | sed 's/fwd_today_us=[0-9.]* //; s/bwd_today_us=[0-9.]* //; s/device=.*//' >> $D/summary.txt
for i in 1 2; do for b in pgolf_base pgolf_p8; do
  echo "== $b run $i" >> $D/ab_bench_model.log
  timeout 120 $B/$b bench model --rows 24 --recur both >> $D/ab_bench_model.log 2>&1
done; done
grep -E "^==|    24" $D/ab_bench_model.log >> $D/summary.txt
cat $D/summary.txt
