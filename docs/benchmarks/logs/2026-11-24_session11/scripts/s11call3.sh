#!/usr/bin/env bash
# Session 11, call 3: pgolf_c1 is call 1's design rebuilt (consumers do the activation's
# arithmetic); pgolf adds cheaper epilogue arithmetic (sign bits from the bf16 pair's sign bits,
# the backward's g in fp32 with the factor's 2 folded into the select). MLP and model tests,
# bench mlp of the three binaries, and the step alternately.
set -u
D=$OUT/c3; mkdir -p $D
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv,noheader
timeout 300 build/pgolf_tests -tc='mlp gemm*,model cuda*' > $D/tests.log 2>&1; tail -3 $D/tests.log
grep -E "ERROR|FAILED" $D/tests.log | head -20
for b in pgolf_base pgolf_c1 pgolf; do build/$b bench mlp > $D/bench_mlp_$b.log 2>&1; done
paste <(grep -E "us " $D/bench_mlp_pgolf_base.log) <(grep -E "us " $D/bench_mlp_pgolf_c1.log | cut -c35-) <(grep -E "us " $D/bench_mlp_pgolf.log | cut -c35-)
for i in 1 2; do
for b in pgolf_base pgolf_c1 pgolf; do
  echo "== $b run $i" >> $D/ab_bench_model.log
  build/$b bench model --rows 24 --recur both >> $D/ab_bench_model.log 2>&1
done
done
grep -E "^==|    24" $D/ab_bench_model.log
