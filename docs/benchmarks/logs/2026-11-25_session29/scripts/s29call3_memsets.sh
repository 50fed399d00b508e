#!/bin/bash
# Session 29 call 3 (measurements, not a change): what cuBLASLt's workspace memsets cost the
# step. msx is HEAD with two switches: PG_GEMM_WS=bytes gives the chain's Gemm that workspace
# (0: cuBLASLt picks algorithms that need none, so no memset nodes), PG_MEMSET_ROOT=1 makes
# every memset node a root of its graph (its bytes are zeroed at the graph's start: not safe
# in general, a bound only). Alternating, three rounds, recurrence on.
set -u
mkdir -p $OUT
for r in 1 2 3; do
  for v in base29:x msx:x msx:ws0 msx:ws64k msx:root; do
    b=${v%%:*}; e=${v##*:}
    case $e in x) env="";; ws0) env="PG_GEMM_WS=0";; ws64k) env="PG_GEMM_WS=65536";; root) env="PG_MEMSET_ROOT=1";; esac
    env $env timeout 120 .bench/pgolf_$b bench model --rows 24 --recur on > /tmp/bench_${b}_${e}_$r.log 2>&1
    echo "$b $env round $r: $(grep -E '^ +24 +(on|off)' /tmp/bench_${b}_${e}_$r.log | awk '{printf "%s fwd %s bwd %s opt %s step %s ms  ", $2, $3, $4, $5, $6}') $(grep -m1 -i error /tmp/bench_${b}_${e}_$r.log)"
  done
done | tee $OUT/ab.txt
cd /tmp && tar czf $OUT/logs.tgz bench_*.log
