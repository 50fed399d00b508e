#!/usr/bin/env bash
# Session 17, call 5: (l2) the residual backward passes ask L2 for the tensors their second
# phase reads first (dx0, the skip gradient, the previous block's branch outputs) at the start of
# the row; (l2dxf) also the head's gradient into the final norm in bf16 (was fp32). Tests of the
# kernels and the model on l2dxf; the kernels alone and the step: HEAD (pgolf_cols), l2, l2dxf.
set -u
D=$OUT; B=.bench
timeout 240 build/pgolf_tests -tc='kernel residual*,kernel parameter gradients*,model cuda*' > $D/tests.log 2>&1
echo "tests rc=$?" > $D/summary.txt; tail -3 $D/tests.log >> $D/summary.txt
grep -B2 -A8 "ERROR" $D/tests.log | head -40 >> $D/summary.txt
for b in pgolf_cols pgolf_l2; do
  timeout 120 $B/$b bench model --rows 24 --recur on --kernels > $D/kernels_$b.log 2>&1
  echo "== $b" >> $D/summary.txt; grep -E "residual_backward" $D/kernels_$b.log >> $D/summary.txt
done
for i in 1 2 3; do for b in pgolf_cols pgolf_l2 pgolf_l2dxf; do
  echo "== $b run $i" >> $D/ab_bench_model.log
  timeout 120 $B/$b bench model --rows 24 --recur both >> $D/ab_bench_model.log 2>&1
done; done
grep -E "^==|    24" $D/ab_bench_model.log >> $D/summary.txt
cat $D/summary.txt
