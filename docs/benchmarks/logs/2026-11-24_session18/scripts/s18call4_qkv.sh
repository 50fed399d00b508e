#!/usr/bin/env bash
# Session 18, call 4: qkv_prep's backward loads what it does not fetch ahead (the rope angles,
# q/k rstd, v's other gradients) before it waits for what it did, instead of using each as soon
# as loaded. pgolf_qa: that; pgolf_qb: also v_first's gradient read ahead, 3 blocks an SM (its
# registers). Against pgolf_rowin3 (da18ac0). Tests of qb (build/pgolf_tests).
set -u
D=$OUT; B=.bench
timeout 240 build/pgolf_tests -tc='kernel*,model cuda*' > $D/tests.log 2>&1
echo "tests rc=$?" > $D/summary.txt; tail -3 $D/tests.log >> $D/summary.txt
grep -B2 -A8 "ERROR" $D/tests.log | head -30 >> $D/summary.txt
for b in pgolf_rowin3 pgolf_qa pgolf_qb; do
  timeout 120 $B/$b bench model --rows 24 --recur on --kernels > $D/kernels_$b.log 2>&1
  echo "== $b" >> $D/summary.txt; grep -E "qkv_prep" $D/kernels_$b.log >> $D/summary.txt
done
for i in 1 2; do for b in pgolf_rowin3 pgolf_qa pgolf_qb; do
  echo "== $b run $i" >> $D/ab_bench_model.log
  timeout 120 $B/$b bench model --rows 24 --recur both >> $D/ab_bench_model.log 2>&1
done; done
grep -E "^==|    24" $D/ab_bench_model.log >> $D/summary.txt
cat $D/summary.txt
