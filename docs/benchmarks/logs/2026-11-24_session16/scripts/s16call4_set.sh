#!/usr/bin/env bash
# Session 16, call 4: gradients overwritten by their first writer instead of zeroed and added to
# (dx, dx0, dv_first, XSA's dv, the smear and embedding norm inputs' gradients). GPU tests of the
# kernels and the model on the new build, then the step, HEAD's binary (pgolf_base) and the new
# one (pgolf_set) alternately, and an ncu profile of the new step's kernels.
set -u
D=$OUT/c; mkdir -p $D
B=.bench
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv,noheader | tee $D/summary.txt
timeout 420 build/pgolf_tests -tc='kernel*,model cuda*,ttt cuda*,train cuda: a stopped*' > $D/tests.log 2>&1
echo "tests rc=$?" | tee -a $D/summary.txt
tail -3 $D/tests.log | tee -a $D/summary.txt
grep -B2 -A6 "ERROR" $D/tests.log | head -40 >> $D/summary.txt
for i in 1 2 3; do for b in pgolf_base pgolf_set; do
  echo "== $b run $i" >> $D/ab_bench_model.log
  timeout 120 $B/$b bench model --rows 24 --recur both >> $D/ab_bench_model.log 2>&1
done; done
grep -E "^==|    24" $D/ab_bench_model.log >> $D/summary.txt
timeout 200 ncu --profile-from-start off --clock-control none --metrics gpu__time_duration.sum,dram__bytes_read.sum,dram__bytes_write.sum --csv $B/pgolf_set bench model --rows 24 --recur on --warmup 2 --reps 1 --profile 2> $D/ncu_stderr.txt | gzip > $D/step_ncu_set.csv.gz
python3 scripts/ncu_by_kernel.py <(zcat $D/step_ncu_set.csv.gz) > $D/by_kernel_set.txt
head -30 $D/by_kernel_set.txt >> $D/summary.txt
cat $D/summary.txt
