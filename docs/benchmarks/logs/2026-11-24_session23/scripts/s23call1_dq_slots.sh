#!/bin/bash
# Session 23, call 1: the attention backward's two dq accumulators (each call zeroes the next
# one's while its products run; AttnBwdPlan) and D_i formed by xsa_backward. pgolf_new is the
# working tree, pgolf_base HEAD c6156af. Tests first, then the step alternating, then the
# attention benchmark of both.
set -o pipefail
mkdir -p $OUT
build/pgolf_tests -tc='*attention*,*xsa*,*odel*,*train*' 2>&1 | tail -25 | tee $OUT/tests.log
for round in 1 2 3; do
  for b in pgolf_base pgolf_new; do
    echo "== $b round $round"
    .bench/$b bench model --rows 24 --recur both | grep -E "^ +24"
  done
done 2>&1 | tee $OUT/ab_step.log
for b in pgolf_base pgolf_new; do
  echo "== $b"
  .bench/$b bench attention --head-dims 64 | grep -E "D=64"
done 2>&1 | tee $OUT/attention.log
