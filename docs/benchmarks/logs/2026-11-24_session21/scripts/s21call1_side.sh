#!/usr/bin/env bash
# Session 21, call 1: the backward's weight-gradient products on a second stream (build/pgolf,
# the working tree). PG_NOSIDE=1 runs them on the chain's stream as before; PG_PRIO=1 gives the
# chain's stream the higher priority (graph nodes keep it); PG_SIDE_SMS=n sets cuBLASLt's SM
# count target of the side products. Model tests first, then alternating benchmarks.
set -u
D=${OUT:-/tmp/s21call1}; mkdir -p $D
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv,noheader | tee $D/summary.txt
timeout 240 build/pgolf_tests -tc='*odel*' > $D/tests.log 2>&1; echo "tests rc=$?" >> $D/summary.txt
grep -E "test cases|assertions" $D/tests.log >> $D/summary.txt
run() {  # name, env...
  local n=$1; shift
  echo "== $n" >> $D/model.log
  env "$@" timeout 90 build/pgolf bench model --rows 24 --recur both >> $D/model.log 2>&1
}
for rep in 1 2; do
  run noside PG_NOSIDE=1
  run side X=1
  run side_prio PG_PRIO=1
  run sms100 PG_SIDE_SMS=100
  run sms100_prio PG_SIDE_SMS=100 PG_PRIO=1
  run sms66_prio PG_SIDE_SMS=66 PG_PRIO=1
done
grep -E "^== |^ +24 " $D/model.log | tee -a $D/summary.txt
