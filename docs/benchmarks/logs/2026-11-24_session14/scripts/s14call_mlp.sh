#!/usr/bin/env bash
# Session 14: the fused MLP kernel with 64-deep K stages (128-byte rows) and a ring of five
# 64-column epilogue chunks, against HEAD's (pgolf_base). MLP and model tests, bench mlp and
# the model step, the two binaries alternately. Run from the repo root with the binaries in .bench/.
set -u
D=$OUT/c; mkdir -p $D
B=.bench
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv,noheader | tee $D/summary.txt
timeout 500 $B/pgolf_tests -tc='mlp gemm*,model cuda*,train cuda*' > $D/tests.log 2>&1; echo "tests rc=$?" | tee -a $D/summary.txt
tail -3 $D/tests.log | tee -a $D/summary.txt
grep -A3 "ERROR" $D/tests.log | head -20 >> $D/summary.txt
for i in 1 2; do for b in pgolf_base pgolf_new; do
  timeout 60 $B/$b bench mlp > $D/bench_mlp_${b}_$i.log 2>&1
  echo "$b $(grep RESULT $D/bench_mlp_${b}_$i.log)" >> $D/summary.txt
done; done
for i in 1 2; do for b in pgolf_base pgolf_new; do
  echo "== $b run $i" >> $D/ab_bench_model.log
  timeout 120 $B/$b bench model --rows 24 --recur both >> $D/ab_bench_model.log 2>&1
done; done
grep -E "^==|    24" $D/ab_bench_model.log >> $D/summary.txt
cat $D/summary.txt
