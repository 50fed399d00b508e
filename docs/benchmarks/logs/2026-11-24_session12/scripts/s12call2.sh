#!/usr/bin/env bash
# Session 12, call 2: pgolf_s = softcap_ce keeping exp(s - m) ds/dz per cached logit (no second
# exponential); pgolf adds 32 cuBLASLt candidates timed per shape (was 8). Tests of the touched
# parts; the softcap kernel alone; GEMM kernels of one step (ncu names and times); the step of
# the three binaries alternately.
set -u
D=$OUT/c2; mkdir -p $D
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv,noheader
timeout 300 build/pgolf_tests -tc='*softcap*,gemm*,model cuda*' > $D/tests.log 2>&1; echo "tests rc=$?"; tail -3 $D/tests.log
grep -E "ERROR|FAILED" $D/tests.log | head -20
for b in pgolf_base pgolf_s; do
  build/$b bench model --rows 24 --recur on --kernels > $D/kernels_$b.log 2>&1
  grep -i "softcap" $D/kernels_$b.log | sed "s/^/$b /"
done
for i in 1 2 3; do
for b in pgolf_base pgolf_s pgolf; do
  echo "== $b run $i" >> $D/ab_bench_model.log
  build/$b bench model --rows 24 --recur both >> $D/ab_bench_model.log 2>&1
done
done
grep -E "^==|    24" $D/ab_bench_model.log
for b in pgolf_base pgolf; do
  timeout 120 ncu --profile-from-start off --clock-control none --metrics gpu__time_duration.sum --csv \
    build/$b bench model --rows 24 --recur on --warmup 2 --reps 1 --profile > /tmp/step_$b.csv 2>&1
  gzip -c /tmp/step_$b.csv > $D/step_ncu_$b.csv.gz
  scripts/ncu_by_kernel.py /tmp/step_$b.csv > $D/by_kernel_$b.txt; head -3 $D/by_kernel_$b.txt; tail -1 $D/by_kernel_$b.txt
done
