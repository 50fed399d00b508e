#!/usr/bin/env bash
# Session 17, call 4: the U-Net skip's per-column values (sigmoid(gate), its derivative, the
# weight) formed once a block in shared memory, not once a row, in the residual passes through a
# skip. Residual kernel tests on the new build; the kernels alone (bench model --kernels) for
# HEAD (pgolf_bf16) and the new build (pgolf_cols); the step, alternately.
set -u
D=$OUT; B=.bench
timeout 200 build/pgolf_tests -tc='kernel residual*,kernel parameter gradients*,model cuda: loss and every*' > $D/tests.log 2>&1
echo "tests rc=$?" > $D/summary.txt; tail -3 $D/tests.log >> $D/summary.txt
grep -B2 -A8 "ERROR" $D/tests.log | head -40 >> $D/summary.txt
for b in pgolf_bf16 pgolf_cols; do
  timeout 120 $B/$b bench model --rows 24 --recur on --kernels > $D/kernels_$b.log 2>&1
  echo "== $b" >> $D/summary.txt; grep -E "residual" $D/kernels_$b.log >> $D/summary.txt
done
for i in 1 2 3; do for b in pgolf_bf16 pgolf_cols; do
  echo "== $b run $i" >> $D/ab_bench_model.log
  timeout 120 $B/$b bench model --rows 24 --recur both >> $D/ab_bench_model.log 2>&1
done; done
grep -E "^==|    24" $D/ab_bench_model.log >> $D/summary.txt
cat $D/summary.txt
