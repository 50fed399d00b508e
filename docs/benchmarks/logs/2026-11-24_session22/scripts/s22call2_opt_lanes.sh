#!/bin/bash
# Session 22, call 2: each Muon bank's update on its own stream (build/pgolf) against the
# session's base (.bench/pgolf_base, HEAD b098005); the optimizer, model and train tests first.
set -o pipefail
mkdir -p $OUT
build/pgolf_tests -tc='*optim*,*odel*,*train*,*dist*' 2>&1 | tail -40 | tee $OUT/tests.log
for round in 1 2 3; do
  for b in .bench/pgolf_base build/pgolf; do
    echo "== $b round $round"
    $b bench model --rows 24 --recur both | grep -E "^ +24"
  done
done 2>&1 | tee $OUT/ab_bench_model.log
build/pgolf_tests -tc='optim cuda: record-layout step time' --no-skip 2>&1 | grep -E "RESULT|step|record" | tee $OUT/opt_time.log
