#!/usr/bin/env bash
# Session 15: the first-norm backward pass taken on through the U-Net skip to the previous
# entry's first pass (ResidualPrev), against HEAD's binary (pgolf_base). Kernel and model tests,
# the memory-bound kernels alone, then the step, the two binaries alternately. Run from the
# repo root with the binaries in .bench/.
set -u
D=$OUT/c; mkdir -p $D
B=.bench
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv,noheader | tee $D/summary.txt
timeout 400 $B/pgolf_tests -tc='kernel residual*,kernel parameter gradients*,model cuda*' > $D/tests.log 2>&1
echo "tests rc=$?" | tee -a $D/summary.txt
tail -3 $D/tests.log | tee -a $D/summary.txt
grep -B2 -A6 "ERROR" $D/tests.log | head -40 >> $D/summary.txt
timeout 120 $B/pgolf_new bench model --rows 24 --recur on --kernels > $D/kernels_new.log 2>&1
grep -E "residual_backward|skip_mix" $D/kernels_new.log >> $D/summary.txt
for i in 1 2; do for b in pgolf_base pgolf_new; do
  echo "== $b run $i" >> $D/ab_bench_model.log
  timeout 120 $B/$b bench model --rows 24 --recur both >> $D/ab_bench_model.log 2>&1
done; done
grep -E "^==|    24" $D/ab_bench_model.log >> $D/summary.txt
cat $D/summary.txt
