#!/usr/bin/env bash
# Session 19, call 3: call 2 again with the products kept alive. Call 2's PG_EXP=1 and 3 left the
# accumulators unread, so ptxas dropped the products (94 us for 103 GFLOP is past the H100's
# peak). pgolf_yN: the epilogue math replaced by reading one accumulator of each chunk:
#   y1: epilogue math off, the movers' stores (and backward act loads) on;
#   y3: both off: the products and the A ring alone.
# pgolf_x2: the math on, the movers' global traffic off (as in call 2).
set -u
D=$OUT; B=.bench
for i in 1 2; do for b in pgolf_base pgolf_slab pgolf_y1 pgolf_x2 pgolf_y3; do
  echo "== $b run $i" >> $D/bench_mlp.log
  timeout 60 $B/$b bench mlp >> $D/bench_mlp.log 2>&1
done; done
grep -E "^==|RESULT" $D/bench_mlp.log | sed 's/fwd_today_us=[0-9.]* //; s/bwd_today_us=[0-9.]* //; s/device=.*//'
