#!/usr/bin/env bash
# Session 19, call 1: the fused MLP kernel rewritten (model/mlp_gemm.cu): each block keeps a
# 128-column slab of B in shared memory and streams A past it; each consumer warpgroup keeps two
# accumulator sets and runs a tile's epilogue under the next tile's products.
# Tests of the new kernel (build/ = pgolf_slab); the kernel alone (bench mlp) and the step, for
# pgolf_base (HEAD db21699) and pgolf_slab, alternating.
set -u
D=$OUT; B=.bench
timeout 200 build/pgolf_tests -tc='mlp gemm*' > $D/tests_mlp.log 2>&1
echo "tests rc=$?" > $D/summary.txt; tail -3 $D/tests_mlp.log >> $D/summary.txt
grep -B2 -A12 "ERROR" $D/tests_mlp.log | head -40 >> $D/summary.txt
for i in 1 2; do for b in pgolf_base pgolf_slab; do
  echo "== $b run $i" >> $D/bench_mlp.log
  timeout 60 $B/$b bench mlp >> $D/bench_mlp.log 2>&1
done; done
grep -E "^==|fused|RESULT" $D/bench_mlp.log >> $D/summary.txt
if grep -q "tests rc=0" $D/summary.txt; then
  timeout 200 build/pgolf_tests -tc='model cuda*' > $D/tests_model.log 2>&1
  echo "model tests rc=$?" >> $D/summary.txt; tail -2 $D/tests_model.log >> $D/summary.txt
  for i in 1 2; do for b in pgolf_base pgolf_slab; do
    echo "== $b run $i" >> $D/ab_bench_model.log
    timeout 120 $B/$b bench model --rows 24 --recur both >> $D/ab_bench_model.log 2>&1
  done; done
  grep -E "^==|    24" $D/ab_bench_model.log >> $D/summary.txt
fi
cat $D/summary.txt
