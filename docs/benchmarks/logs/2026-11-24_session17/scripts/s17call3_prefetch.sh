#!/usr/bin/env bash
# Session 17, call 3: the residual passes prefetch their next row into L2 (one bulk prefetch per
# tensor, lane 0). Residual kernel tests on the new build; the kernels alone (bench model
# --kernels) for the bf16 build without (pgolf_bf16) and with (pgolf_pf) the prefetch; the step,
# fp32 stream (pgolf_base), bf16 and bf16 + prefetch, alternately.
set -u
D=$OUT; B=.bench
timeout 200 build/pgolf_tests -tc='kernel residual*,kernel parameter gradients*,model cuda: loss and every*' > $D/tests.log 2>&1
echo "tests rc=$?" > $D/summary.txt; tail -3 $D/tests.log >> $D/summary.txt
grep -B2 -A8 "ERROR" $D/tests.log | head -40 >> $D/summary.txt
for b in pgolf_bf16 pgolf_pf; do
  timeout 120 $B/$b bench model --rows 24 --recur on --kernels > $D/kernels_$b.log 2>&1
  echo "== $b" >> $D/summary.txt; grep -E "residual" $D/kernels_$b.log >> $D/summary.txt
done
for i in 1 2 3; do for b in pgolf_base pgolf_bf16 pgolf_pf; do
  echo "== $b run $i" >> $D/ab_bench_model.log
  timeout 120 $B/$b bench model --rows 24 --recur both >> $D/ab_bench_model.log 2>&1
done; done
grep -E "^==|    24" $D/ab_bench_model.log >> $D/summary.txt
cat $D/summary.txt
