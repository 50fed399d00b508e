#!/usr/bin/env bash
# Session 19, call 2: where the slab kernel's time goes (bench mlp, M=49152 K=512 N=2048).
# pgolf_xN: model/mlp_gemm.cu with a temporary PG_EXP=N (not committed):
#   1: the epilogue math off (chunk returns at once);
#   2: the movers' global traffic off (no stores, no act brought in);
#   3: both off: products and the A ring alone.
set -u
D=$OUT; B=.bench
for i in 1 2; do for b in pgolf_base pgolf_slab pgolf_x1 pgolf_x2 pgolf_x3; do
  echo "== $b run $i" >> $D/bench_mlp.log
  timeout 60 $B/$b bench mlp >> $D/bench_mlp.log 2>&1
done; done
grep -E "^==|RESULT" $D/bench_mlp.log | sed 's/fwd_today_us=[0-9.]* //; s/bwd_today_us=[0-9.]* //; s/device=.*//'
