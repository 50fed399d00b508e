#!/usr/bin/env bash
# Session 12, call 3: cuBLASLt candidates timed in turns, five rounds, each keeping its best
# (pgolf_t: 8 candidates as before; pgolf: 16). GEMM and model tests; the step of the three
# binaries alternately, each process choosing its kernels anew; the GEMMs of one step by ncu.
set -u
D=$OUT/c3; mkdir -p $D
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv,noheader
timeout 300 build/pgolf_tests -tc='gemm*,model cuda*' > $D/tests.log 2>&1; echo "tests rc=$?"; tail -3 $D/tests.log
grep -E "ERROR|FAILED" $D/tests.log | head -20
for i in 1 2 3; do
for b in pgolf_base pgolf_t pgolf; do
  echo "== $b run $i" >> $D/ab_bench_model.log
  build/$b bench model --rows 24 --recur both >> $D/ab_bench_model.log 2>&1
done
done
grep -E "^==|    24" $D/ab_bench_model.log
for b in pgolf_base pgolf_t pgolf; do
  timeout 120 ncu --profile-from-start off --clock-control none --metrics gpu__time_duration.sum --csv \
    build/$b bench model --rows 24 --recur on --warmup 2 --reps 1 --profile > /tmp/step_$b.csv 2>&1
  gzip -c /tmp/step_$b.csv > $D/step_ncu_$b.csv.gz
  scripts/ncu_by_kernel.py /tmp/step_$b.csv > $D/by_kernel_$b.txt; head -1 $D/by_kernel_$b.txt; tail -1 $D/by_kernel_$b.txt
done
