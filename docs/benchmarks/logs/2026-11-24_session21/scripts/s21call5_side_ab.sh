#!/usr/bin/env bash
# Session 21, call 5: the weight-gradient products on a second stream alone (the fused q|k|v
# projection reverted): PG_NOSIDE=1 (as HEAD), the side stream with cuBLASLt's SM target left
# at all SMs, and with 100 SMs; three rounds, alternating. The model tests first.
set -u
D=${OUT:-/tmp/s21call5}; mkdir -p $D
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv,noheader | tee $D/summary.txt
timeout 200 build/pgolf_tests -tc='*odel*' > $D/tests.log 2>&1; echo "tests rc=$?" >> $D/summary.txt
grep -E "test cases|assertions" $D/tests.log >> $D/summary.txt
run() {  # name, env...
  local n=$1; shift
  echo "== $n" >> $D/model.log
  env "$@" timeout 90 build/pgolf bench model --rows 24 --recur both >> $D/model.log 2>&1
}
for rep in 1 2 3; do
  run noside PG_NOSIDE=1
  run side X=1
  run side100 PG_SIDE_SMS=100
done
grep -E "^== |^ +24 " $D/model.log | tee -a $D/summary.txt
