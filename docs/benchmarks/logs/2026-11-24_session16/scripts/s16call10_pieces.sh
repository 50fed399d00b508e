#!/usr/bin/env bash
# Session 16, call 10: the q|k|v weight gradient added into its three banks in one pass
# (accumulate_pieces; build/pgolf) against the binary before it (pgolf_head, commit 4ae1aa9's
# code). GPU tests of the kernels and the model on the new build; the step, alternating.
set -u
D=$OUT/c; mkdir -p $D
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv,noheader | tee $D/summary.txt
timeout 420 build/pgolf_tests -tc='kernel*,model cuda*' > $D/tests.log 2>&1
echo "tests rc=$?" | tee -a $D/summary.txt
tail -3 $D/tests.log | tee -a $D/summary.txt
grep -B2 -A6 "ERROR" $D/tests.log | head -40 >> $D/summary.txt
for i in 1 2 3; do for b in .bench/pgolf_head build/pgolf; do
  echo "== $b run $i" >> $D/ab_bench_model.log
  timeout 120 $b bench model --rows 24 --recur both >> $D/ab_bench_model.log 2>&1
done; done
grep -E "^==|    24" $D/ab_bench_model.log >> $D/summary.txt
cat $D/summary.txt
