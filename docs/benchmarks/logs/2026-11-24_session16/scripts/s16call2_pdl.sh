#!/usr/bin/env bash
# Session 16, call 2: programmatic dependent launch for every pgolf kernel (common/launch.cuh).
# The GPU tests of the kernels, attention, MLP, model and optimizer on the new build, then the
# step, HEAD's binary (pgolf_base) and the new one (pgolf_pdl) alternately.
set -u
D=$OUT/c; mkdir -p $D
B=.bench
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv,noheader | tee $D/summary.txt
timeout 420 build/pgolf_tests -tc='kernel*,flash attention*,mlp gemm*,model cuda*,optim cuda*,gemm cuda*,qat cuda*,ttt cuda: the update*' > $D/tests.log 2>&1
echo "tests rc=$?" | tee -a $D/summary.txt
tail -3 $D/tests.log | tee -a $D/summary.txt
grep -B2 -A6 "ERROR" $D/tests.log | head -40 >> $D/summary.txt
for i in 1 2 3; do for b in pgolf_base pgolf_pdl; do
  echo "== $b run $i" >> $D/ab_bench_model.log
  timeout 120 $B/$b bench model --rows 24 --recur both >> $D/ab_bench_model.log 2>&1
done; done
grep -E "^==|    24" $D/ab_bench_model.log >> $D/summary.txt
cat $D/summary.txt
