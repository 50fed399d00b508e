#!/usr/bin/env bash
# Session 16, call 7: softcap_ce with fewer instructions a logit (exp2 with folded constants, no
# clamp, no per-element end-of-row or target tests) and 128 MiB head chunks (pgolf_new), against
# HEAD's binary (pgolf_base) and HEAD with 128 MiB chunks alone (pgolf_h26). GPU tests of the
# kernels, attention, model and evaluation on the new build; softcap_ce alone (bench model
# --kernels); the step, alternating.
set -u
D=$OUT/c; mkdir -p $D
B=.bench
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv,noheader | tee $D/summary.txt
timeout 420 build/pgolf_tests -tc='kernel*,flash attention*,model cuda*,eval cuda: plain*,ttt cuda*' > $D/tests.log 2>&1
echo "tests rc=$?" | tee -a $D/summary.txt
tail -3 $D/tests.log | tee -a $D/summary.txt
grep -B2 -A6 "ERROR" $D/tests.log | head -40 >> $D/summary.txt
for b in pgolf_base pgolf_new; do
  timeout 120 $B/$b bench model --rows 24 --recur on --kernels > $D/kernels_$b.log 2>&1
  echo "== $b" >> $D/summary.txt; grep -E "softcap" $D/kernels_$b.log >> $D/summary.txt
done
for i in 1 2 3; do for b in pgolf_base pgolf_h26 pgolf_new; do
  echo "== $b run $i" >> $D/ab_bench_model.log
  timeout 120 $B/$b bench model --rows 24 --recur both >> $D/ab_bench_model.log 2>&1
done; done
grep -E "^==|    24" $D/ab_bench_model.log >> $D/summary.txt
cat $D/summary.txt
