#!/bin/bash
# Session 29 call 6 (measurements): around call 5's best SM count targets, side-stream products
# at 66 (against HEAD's 100) and the Newton-Schulz products at 66 (against all): the pair, and
# each moved on its own. knobs as in call 5. Alternating, three rounds, recurrence on and off.
set -u
mkdir -p $OUT
for r in 1 2 3; do
  for e in base s66n66 s50n66 s40n66 s66n50 s66n80; do
    case $e in base) env="";; s66n66) env="PG_SIDE_SMS=66 PG_NS_SMS=66";; s50n66) env="PG_SIDE_SMS=50 PG_NS_SMS=66";;
      s40n66) env="PG_SIDE_SMS=40 PG_NS_SMS=66";; s66n50) env="PG_SIDE_SMS=66 PG_NS_SMS=50";; s66n80) env="PG_SIDE_SMS=66 PG_NS_SMS=80";; esac
    for rec in on off; do
      env $env timeout 120 .bench/pgolf_knobs bench model --rows 24 --recur $rec > /tmp/bench_${e}_${rec}_$r.log 2>&1
      echo "$e $env round $r: $(grep -E '^ +24 +(on|off)' /tmp/bench_${e}_${rec}_$r.log | awk '{printf "%s fwd %s bwd %s opt %s step %s ms  ", $2, $3, $4, $5, $6}') $(grep -oE 'loss [0-9.]+' /tmp/bench_${e}_${rec}_$r.log) $(grep -m1 -i error /tmp/bench_${e}_${rec}_$r.log)"
    done
  done
done | tee $OUT/ab.txt
cd /tmp && tar czf $OUT/logs.tgz bench_*.log
