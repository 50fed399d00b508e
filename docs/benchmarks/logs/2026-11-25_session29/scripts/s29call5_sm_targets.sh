#!/bin/bash
# Session 29 call 5 (measurements): cuBLASLt's SM count target for the backward's side-stream
# weight-gradient products (PG_SIDE_SMS; HEAD: 100 of 132) and for the optimizer's
# Newton-Schulz products, whose four parameter banks run on four streams (PG_NS_SMS; HEAD: 0,
# all SMs). knobs is HEAD with the two environment switches. Alternating, three rounds,
# recurrence on.
set -u
mkdir -p $OUT
for r in 1 2 3; do
  for e in base side84 side116 side66 ns33 ns66; do
    case $e in base) env="";; side84) env="PG_SIDE_SMS=84";; side116) env="PG_SIDE_SMS=116";; side66) env="PG_SIDE_SMS=66";;
      ns33) env="PG_NS_SMS=33";; ns66) env="PG_NS_SMS=66";; esac
    env $env timeout 120 .bench/pgolf_knobs bench model --rows 24 --recur on > /tmp/bench_${e}_$r.log 2>&1
    echo "$e $env round $r: $(grep -E '^ +24 +(on|off)' /tmp/bench_${e}_$r.log | awk '{printf "%s fwd %s bwd %s opt %s step %s ms  ", $2, $3, $4, $5, $6}') $(grep -oE 'loss [0-9.]+' /tmp/bench_${e}_$r.log) $(grep -m1 -i error /tmp/bench_${e}_$r.log)"
  done
done | tee $OUT/ab.txt
cd /tmp && tar czf $OUT/logs.tgz bench_*.log
