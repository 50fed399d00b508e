#!/usr/bin/env bash
# Session 12, call 12: softcap_ce issuing its cached columns' four 16-byte loads before using any
# (pgolf) against the committed code (pgolf_base2). Tests of the kernel and the model; the kernel
# alone; the step alternately.
set -u
D=$OUT/c12; mkdir -p $D
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv,noheader
timeout 300 build/pgolf_tests -tc='*softcap*,model cuda*,eval cuda*' > $D/tests.log 2>&1; echo "tests rc=$?"; tail -3 $D/tests.log
grep -E "ERROR|FAILED" $D/tests.log | head -20
for i in 1 2; do for b in pgolf_base2 pgolf; do
  build/$b bench model --rows 24 --recur on --kernels > $D/kernels_${b}_$i.log 2>&1
  grep -i "softcap" $D/kernels_${b}_$i.log | sed "s/^/$b /"
done; done
for i in 1 2 3; do
for b in pgolf_base2 pgolf; do
  echo "== $b run $i" >> $D/ab_bench_model.log
  build/$b bench model --rows 24 --recur both >> $D/ab_bench_model.log 2>&1
done
done
grep -E "^==|    24" $D/ab_bench_model.log
