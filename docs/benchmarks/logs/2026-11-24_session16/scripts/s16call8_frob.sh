#!/usr/bin/env bash
# Session 16, call 8: the Newton-Schulz input's Frobenius norm passes reading 16 bytes a thread
# (pgolf_frob) against HEAD's binary (pgolf_base). Optimizer GPU tests on the new build; an ncu
# step profile of the optimizer's kernels; the step, alternating.
set -u
D=$OUT/c; mkdir -p $D
B=.bench
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv,noheader | tee $D/summary.txt
timeout 420 build/pgolf_tests -tc='optim cuda*,dist cuda: one-rank*,model cuda: one training step*,train cuda: a stopped*' > $D/tests.log 2>&1
echo "tests rc=$?" | tee -a $D/summary.txt
tail -3 $D/tests.log | tee -a $D/summary.txt
grep -B2 -A6 "ERROR" $D/tests.log | head -40 >> $D/summary.txt
for b in pgolf_base pgolf_frob; do
  timeout 200 ncu --profile-from-start off --clock-control none --metrics gpu__time_duration.sum,dram__bytes_read.sum,dram__bytes_write.sum --csv $B/$b bench model --rows 24 --recur on --warmup 2 --reps 1 --profile 2> /dev/null | gzip > $D/step_ncu_$b.csv.gz
  echo "== $b" >> $D/summary.txt
  python3 scripts/ncu_by_kernel.py <(zcat $D/step_ncu_$b.csv.gz) | grep -E "frob|total" >> $D/summary.txt
done
for i in 1 2 3; do for b in pgolf_base pgolf_frob; do
  echo "== $b run $i" >> $D/ab_bench_model.log
  timeout 120 $B/$b bench model --rows 24 --recur both >> $D/ab_bench_model.log 2>&1
done; done
grep -E "^==|    24" $D/ab_bench_model.log >> $D/summary.txt
cat $D/summary.txt
