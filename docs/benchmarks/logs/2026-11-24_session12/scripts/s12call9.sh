#!/usr/bin/env bash
# Session 12, call 9: the final code (cuBLASLt candidates in turns; the fused MLP forward reading
# fc^T, made by one batched transform a forward; the resume test's floors). The whole suite;
# bench mlp and the step against HEAD's binary (pgolf_base) alternately; an ncu step profile.
set -u
D=$OUT/final_gpu_check; mkdir -p $D
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv,noheader
timeout 330 build/pgolf_tests > $D/tests.log 2>&1; echo "tests rc=$?"; tail -3 $D/tests.log
grep -E "ERROR|FAILED" $D/tests.log | head -20
for b in pgolf_base pgolf pgolf_base pgolf; do echo "== $b" >> $D/bench_mlp.log; build/$b bench mlp >> $D/bench_mlp.log 2>&1; done
grep -E "^==|fused" $D/bench_mlp.log
for i in 1 2 3; do
for b in pgolf_base pgolf; do
  echo "== $b run $i" >> $D/ab_bench_model.log
  build/$b bench model --rows 24 --recur both >> $D/ab_bench_model.log 2>&1
done
done
grep -E "^==|    24" $D/ab_bench_model.log
timeout 100 ncu --profile-from-start off --clock-control none --metrics gpu__time_duration.sum,dram__bytes_read.sum,dram__bytes_write.sum --csv \
  build/pgolf bench model --rows 24 --recur on --warmup 2 --reps 1 --profile > /tmp/step.csv 2>&1
gzip -c /tmp/step.csv > $D/step_ncu.csv.gz
scripts/ncu_by_kernel.py /tmp/step.csv > $D/by_kernel.txt; head -8 $D/by_kernel.txt; tail -1 $D/by_kernel.txt
